//! Balances, transfers, devnet faucet top-ups and contract deployments.

use tycho_types::models::StdAddr;

use super::{OpsError, WalletOps};
#[cfg(feature = "toncenter")]
use crate::chain::Devnet;
use crate::chain::{AccountStatus, Chain};
use crate::contracts::Deployable;
use crate::wallet::{OutMsg, Wallet, text_comment};

/// An account's balance and status, with the seqno when it is an active wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// nanoTON.
    pub balance: u128,
    /// Account status.
    pub status: AccountStatus,
    /// The wallet's seqno (`None` unless `wallet` was given and the account is active).
    pub seqno: Option<u32>,
}

/// Reads `address`; when it is `wallet`'s active contract, its seqno too.
pub async fn balance<C: Chain>(
    chain: &C,
    address: &StdAddr,
    wallet: Option<&Wallet>,
) -> Result<Balance, OpsError> {
    let st = chain.account_state(address).await?;
    let seqno = match (wallet, &st.data, st.status) {
        (Some(w), Some(d), AccountStatus::Active) => Some(w.seqno_from_data(d)?),
        _ => None,
    };
    Ok(Balance {
        balance: st.balance,
        status: st.status,
        seqno,
    })
}

/// Sends `value` nanoTON to `to` with an optional text comment (bounceable unless
/// `bounce` is false, as uninitialised destinations need) and waits until the wallet
/// accepted it; returns the accepted seqno.
pub async fn transfer<C: Chain>(
    ops: &mut WalletOps<C>,
    to: &StdAddr,
    value: u64,
    comment: Option<&str>,
    bounce: bool,
) -> Result<u32, OpsError> {
    let body = comment.map(text_comment).transpose()?;
    let mut msg = OutMsg::new(to.clone(), value, body);
    msg.bounce = bounce;
    ops.send(vec![msg]).await
}

/// Tops `address` up with `grant` nanoTON from the devnet faucet when it holds less than
/// `low`; returns what was minted (`None` when it had enough). The faucet is an extension of
/// the devnet's toncenter API, hence feature `toncenter`.
#[cfg(feature = "toncenter")]
pub async fn faucet_top_up<C: Chain + Devnet>(
    chain: &C,
    address: &StdAddr,
    low: u128,
    grant: u128,
) -> Result<Option<u128>, OpsError> {
    if chain.account_state(address).await?.balance >= low {
        return Ok(None);
    }
    chain
        .faucet(address, grant)
        .await
        .map_err(OpsError::Faucet)?;
    Ok(Some(grant))
}

/// Deploys `contract` from `ops`'s wallet with `value` nanoTON and waits until it is
/// active; `Ok(false)` when it already was. `what` names it in errors.
pub async fn deploy_contract<C: Chain>(
    ops: &mut WalletOps<C>,
    contract: &Deployable,
    value: u64,
    what: &str,
) -> Result<bool, OpsError> {
    let address = &contract.address;
    let active = |st: crate::chain::AccountState| st.status == AccountStatus::Active;
    if active(ops.chain().account_state(address).await?) {
        return Ok(false);
    }
    let msg = OutMsg::deploy(address.clone(), value, contract.state_init()?, None);
    ops.send_checked(msg, what).await?;
    let done = ops
        .settle(|| async { Ok(active(ops.chain().account_state(address).await?).then_some(())) })
        .await?;
    match done {
        Some(()) => Ok(true),
        None => Err(OpsError::NotApplied(format!(
            "the {what} {address} was sent but is not active"
        ))),
    }
}
