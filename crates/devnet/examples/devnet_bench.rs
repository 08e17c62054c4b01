//! Devnet speed: start-up (chain + root deployment), wallet transfers per second, and
//! get-method latency, in process and over loopback HTTP.
//!
//! `cargo run --release -p cocoon-devnet --example devnet_bench [transfers]`

use std::time::Instant;

use cocoon_devnet::run::{RunOptions, start};
use cocoon_devnet::{Devnet, GetMethodId, api};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::wallet::{OutMsg, Wallet};
use tycho_types::models::StdAddr;
use tycho_types::prelude::*;

const T0: u32 = 1_750_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);

    // 1. Start-up: config parse, chain, owner key, root deployment.
    let key_dir = std::env::temp_dir().join(format!("devnet-bench-{}", std::process::id()));
    let t = Instant::now();
    let started = start(&RunOptions {
        listen: "127.0.0.1:0".parse()?,
        dir: Some(key_dir.clone()),
        now: Some(T0),
        deploy_root: true,
    })?;
    let startup = t.elapsed();
    let root = started.root.clone().ok_or("no root")?.address;
    println!(
        "start (persistent dir, root deployed): {:.1} ms",
        startup.as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let _plain = Devnet::new(T0)?;
    println!(
        "start (in-memory chain only):          {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // 2. Transfers: a v4r2 wallet paying a fresh address each time (2 transactions each).
    let mut chain = Devnet::new(T0)?;
    let key = SigningKey::from_seed(&[7; 32])?;
    let wallet = Wallet::v4r2(key.public_key(), 0);
    let wa = wallet.address()?;
    chain.faucet(&wa, 1_000_000 * 1_000_000_000)?;
    let mut bocs = Vec::with_capacity(n as usize);
    for seqno in 0..n {
        let to = StdAddr::new(0, HashBytes([(seqno % 251) as u8 + 1; 32]));
        let msg = OutMsg::new(to, 1_000_000, None);
        let ext = wallet.external_transfer(&key, seqno, T0 + 3600, &[msg], seqno == 0)?;
        bocs.push(Boc::encode(ext));
    }
    let t = Instant::now();
    let mut txs = 0usize;
    for boc in &bocs {
        txs += chain.send_external(boc)?.len();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "transfers: {n} externals -> {txs} transactions in {:.2} s = {:.0} tx/s ({:.0} transfers/s)",
        el,
        txs as f64 / el,
        f64::from(n) / el
    );

    // 2b. The same with a state directory (state.json replaced + log appended, fsync'd, per
    // batch).
    let pdir = std::env::temp_dir().join(format!("devnet-bench-p-{}", std::process::id()));
    let mut pchain = Devnet::open(&pdir, T0)?;
    pchain.faucet(&wa, 1_000_000 * 1_000_000_000)?;
    let pn = bocs.len().min(200);
    let t = Instant::now();
    let mut ptxs = 0usize;
    for boc in &bocs[..pn] {
        ptxs += pchain.send_external(boc)?.len();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "transfers, persistent: {pn} externals -> {ptxs} transactions in {el:.2} s = {:.0} tx/s",
        ptxs as f64 / el
    );
    drop(pchain);
    let _ = std::fs::remove_dir_all(&pdir);

    // 3. Get-methods in process.
    let iters = 2000;
    let t = Instant::now();
    for _ in 0..iters {
        let out = chain.run_get_method(&wa, &GetMethodId::Name("seqno".into()), vec![])?;
        assert_eq!(out.exit_code, 0);
    }
    println!(
        "get-method seqno (wallet v4r2), in process: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
    );
    let root_chain = started.state.lock();
    let t = Instant::now();
    for _ in 0..iters {
        let out =
            root_chain.run_get_method(&root, &GetMethodId::Name("get_prices".into()), vec![])?;
        assert_eq!(out.exit_code, 0);
    }
    println!(
        "get-method get_prices (Cocoon root), in process: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
    );
    drop(root_chain);

    // 4. Get-methods over loopback HTTP (one connection per request, as the test client).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (srv, _task) = api::spawn("127.0.0.1:0".parse()?, started.state.clone()).await?;
        let body = format!(r#"{{"address":"{root}","method":"get_prices","stack":[]}}"#);
        let req = format!(
            "POST /api/v2/runGetMethod HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let http_iters = 500;
        let t = Instant::now();
        for _ in 0..http_iters {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(srv).await?;
            s.write_all(req.as_bytes()).await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            assert!(out.starts_with(b"HTTP/1.1 200"));
        }
        println!(
            "runGetMethod get_prices over HTTP (new connection each): {:.0} us",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(http_iters)
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let _ = std::fs::remove_dir_all(&key_dir);
    Ok(())
}
