//! The proxy's client contract reads (`TonClientChain`) through a quorum of toncenter
//! endpoints over the devnet, with the real client and proxy contracts in a TVM. Three
//! endpoints serve the same chain; the test makes some of them lie about a client contract's
//! balance (its storage cell rewritten in the `getAddressInformation` answer, as a host on
//! the path could do):
//!
//! - one liar among three with quorum 2: the proxy reads the true balance; the same liar as
//!   the only endpoint (the old configuration) makes the proxy believe the forged balance;
//! - all three disagreeing: the proxy keeps the last agreed state (not the liars' balances,
//!   not the honest endpoint's newer one either), counts the disagreement, and refuses a
//!   client it never had an agreed state for;
//! - liars honest again: the real, newer balance is read.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use cocoon_devnet::fake::FakeEndpoint;
use cocoon_proxy::{ClientChain, TonClientChain};
use cocoon_testkit::devnet::{TON, deploy_client, stake_proxy, start_chain, top_up};
use cocoon_ton::StdAddr;
use cocoon_ton::chain::Chain;
use cocoon_ton::codec::{Coins, Layout, decode_boc_base64, encode_boc_base64};
use cocoon_ton::contracts::ClientStorage;
use cocoon_ton::{QuorumChain, QuorumConfig};
use cocoon_ton::{Toncenter, ToncenterConfig};

/// Makes `e` answer `getAddressInformation` for `account` with its storage's balance set to
/// `balance` (everything else as on chain).
fn lie_about_balance(e: &FakeEndpoint, account: &StdAddr, balance: u64) {
    let account = account.clone();
    e.lie(move |asked, result| {
        if asked.method != "getAddressInformation"
            || asked
                .param("address")
                .and_then(|a| cocoon_ton::parse_address(a).ok())
                .as_ref()
                != Some(&account)
        {
            return;
        }
        let Some(data) = result["data"].as_str() else {
            return;
        };
        let mut s = ClientStorage::from_cell(&decode_boc_base64(data).unwrap()).unwrap();
        s.balance = Coins(balance);
        result["data"] = encode_boc_base64(&s.to_cell().unwrap()).into();
    });
}

fn client_chain_config(url: &str) -> ToncenterConfig {
    let mut c = ToncenterConfig::new(url);
    c.max_attempts = 1;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_balance_lies_are_outvoted_and_a_disagreement_keeps_the_last_agreed_state() {
    // The devnet with the root, served by three endpoints over one chain.
    let (started, _dir) = start_chain().await;
    let root = started.root.clone().unwrap().address;
    let e: Vec<FakeEndpoint> = vec![
        FakeEndpoint::spawn(started.state.clone()).await.unwrap(),
        FakeEndpoint::spawn(started.state.clone()).await.unwrap(),
        FakeEndpoint::spawn(started.state.clone()).await.unwrap(),
    ];
    let tc = Toncenter::with_url(&e[0].url()).unwrap();

    // A staked proxy contract and two client contracts with 5 TON each.
    let params = cocoon_devnet::root::test_params().unwrap();
    let (_proxy_owner, proxy) = stake_proxy(&tc, &params, &root).await;
    let mut owners = Vec::new();
    let mut clients = Vec::new();
    for seed in [2u8, 3] {
        let (owner, c) = deploy_client(&tc, &params, &proxy.address, seed).await;
        owners.push(owner);
        clients.push(c);
    }
    let (alice_sc, bob_sc) = (clients[0].clone(), clients[1].clone());

    // Quorum 2 of 3; the second endpoint says Alice has 1000 TON.
    let mut q = QuorumConfig::new(2);
    q.retry_delay = Duration::from_millis(20);
    let quorum =
        QuorumChain::toncenter(e.iter().map(|x| client_chain_config(&x.url())).collect(), q)
            .unwrap();
    let chain = TonClientChain::new(
        quorum.clone(),
        proxy.address.clone(),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    lie_about_balance(&e[1], &alice_sc, 1000 * TON as u64);
    let st = chain.client_state(&alice_sc).await.unwrap().unwrap();
    assert_eq!(st.balance, 5 * TON as u64, "the lie is outvoted");
    assert_eq!(chain.ton_disagreements(), 0);

    // The same liar as the only endpoint: the proxy believes it (the old behaviour).
    let single =
        QuorumChain::toncenter(vec![client_chain_config(&e[1].url())], QuorumConfig::new(1))
            .unwrap();
    let alone = TonClientChain::new(single, proxy.address.clone(), Duration::from_millis(50))
        .await
        .unwrap();
    let st = alone.client_state(&alice_sc).await.unwrap().unwrap();
    assert_eq!(
        st.balance,
        1000 * TON as u64,
        "one endpoint: the attack works"
    );

    // All three disagree: Alice tops up 2 TON for real (the honest endpoint shows 7), while
    // the two liars show 1000 and 2000 TON. The last agreed state (5 TON) stays in use.
    lie_about_balance(&e[2], &alice_sc, 2000 * TON as u64);
    let body = top_up(&owners[0].address, 2 * TON);
    owners[0]
        .send(&tc, &alice_sc, 2 * TON + TON / 10, body, None)
        .await;
    let honest = Toncenter::with_url(&e[0].url()).unwrap();
    let real =
        ClientStorage::from_cell(&honest.account_state(&alice_sc).await.unwrap().data.unwrap())
            .unwrap()
            .balance
            .0;
    assert_eq!(real, 7 * TON as u64);
    let st = chain.client_state(&alice_sc).await.unwrap().unwrap();
    assert_eq!(st.balance, 5 * TON as u64, "the last agreed state is kept");
    assert_eq!(
        chain.ton_disagreements(),
        1,
        "and the disagreement is counted"
    );
    let stats = quorum.stats();
    assert_eq!(stats.disagreements, 1);

    // Bob was never read while the endpoints agreed: with no agreed state he is refused
    // rather than given a minority answer.
    lie_about_balance(&e[1], &bob_sc, 1000 * TON as u64);
    lie_about_balance(&e[2], &bob_sc, 2000 * TON as u64);
    let refused = chain.client_state(&bob_sc).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(chain.ton_disagreements(), 2);

    // The liars turn honest: the real, newer balance is read.
    e[1].honest();
    e[2].honest();
    let st = chain.client_state(&alice_sc).await.unwrap().unwrap();
    assert_eq!(st.balance, 7 * TON as u64);
    let st = chain.client_state(&bob_sc).await.unwrap().unwrap();
    assert_eq!(st.balance, 5 * TON as u64);
}
