//! A worker that goes silent (cut off from the proxy in both directions, as a partition or a
//! frozen host leaves it): real `cocoon-worker` instances with fake engines dial the proxy
//! over RA-TLS, one of them through a TCP relay the test can cut; the proxy's pings
//! (`worker_ping_seconds`) find it silent, route around it, and a request it had not started
//! answering is answered by the other worker and billed once.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use cocoon_testkit::client::collect;
use cocoon_testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const JSON_TOKENS: [i64; 5] = [18, 0, 12, 0, 30];

/// A TCP relay to `target`; while cut, nothing passes in either direction (the connections
/// stay open, as across a partition or to a frozen host).
struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pump(ir, ow, cut_rx.clone()));
                tokio::spawn(pump(or, iw, cut_rx.clone()));
            }
        });
        Relay { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies `r` to `w`, holding what it read while the relay is cut.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = cut.wait_for(|c| *c) => continue,
        };
        let n = match n {
            Ok(0) | Err(_) => {
                let _ = w.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if cut.wait_for(|c| !*c).await.is_err() || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A proxy pinging its workers every `ping`, one worker (owner 0x41) behind a relay and
/// registered first (so that it wins the first, tied, pick), another (owner 0x42) direct.
async fn two_workers(ping: Duration) -> (Net, Relay, TestWorker, TestWorker) {
    let net = start_proxy_with(root(1, true, true), |cfg| {
        cfg.timings.worker_ping = Some(ping);
    })
    .await;
    let relay = Relay::start(net.proxy.worker_addr()).await;
    let relayed = start_worker_with(&net, 0x41, |cfg| {
        cfg.proxies = vec![relay.addr.to_string()];
    })
    .await;
    net.wait_workers(1).await;
    let direct = start_worker(&net, 0x42).await;
    net.wait_workers(2).await;
    (net, relay, relayed, direct)
}

fn stat(net: &Net, w: &TestWorker) -> cocoon_proxy::WorkerStat {
    net.proxy
        .stats()
        .workers
        .into_iter()
        .find(|s| s.owner == w.owner.to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_silent_before_its_first_byte_is_failed_over_billed_nothing_and_avoided() {
    let (net, relay, silent, good) = two_workers(Duration::from_secs(2)).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;

    // The relayed worker goes silent; the request routed to it (it is not suspect yet) is
    // answered by the other worker once the silent one misses its pongs, long before the
    // request's 30 s deadline (which would end it with a timeout error).
    relay.set_cut(true);
    c.run(1, "json", 100, 30.0).await;
    let r = collect(&mut c, &[1], true).await;
    assert_eq!(r[&1].error, None);
    assert_eq!(r[&1].tokens, Some(JSON_TOKENS));
    assert_eq!(silent.engine.requests(), 0, "the cut worker never got it");
    assert_eq!(good.engine.requests(), 1);
    let st = net.proxy.stats();
    assert_eq!(st.counters.retries, 1);
    assert_eq!(st.counters.requests_success, 1);
    let s = stat(&net, &silent);
    assert!(s.suspect, "silent for two ping intervals");
    assert_eq!((s.failed, s.served), (1, 0));

    // While it is suspect, new requests go to the other worker directly.
    for id in 2..=3u8 {
        c.run(id, "json", 100, 30.0).await;
        let r = collect(&mut c, &[id], true).await;
        assert_eq!(r[&id].error, None, "request {id}");
        assert_eq!(r[&id].tokens, Some(JSON_TOKENS));
    }
    assert_eq!(good.engine.requests(), 3);
    assert_eq!(net.proxy.stats().counters.retries, 1);

    // Healed: its pongs clear the suspicion. The attempt it was given arrives late, with
    // the cancel behind it; whatever it answers belongs to no request and is not billed.
    relay.set_cut(false);
    eventually("the worker is heard again", || !stat(&net, &silent).suspect).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 3 * 30);
    assert_eq!(net.meter.worker_earned(&silent.worker_sc(&net)), 0);
    assert_eq!(net.meter.open_reservations(), 0);
    assert_eq!(net.proxy.stats().counters.requests_success, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_silent_mid_stream_ends_at_the_deadline_billed_what_was_delivered() {
    let (net, relay, silent, other) = two_workers(Duration::from_secs(1)).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "endless", 1000, 6.0).await;
    // Bytes reached the client: the answer cannot be replayed elsewhere.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("t1") {
        match c.next().await {
            FromProxy::Head(_, r) => seen.extend_from_slice(&r.payload),
            FromProxy::Part(p) => seen.extend_from_slice(&p.answer),
            other => panic!("unexpected {other:?}"),
        }
    }
    relay.set_cut(true);
    let r = collect(&mut c, &[1], true).await;
    let (code, _) = r[&1].error.clone().expect("the deadline is reported");
    assert_eq!(code, cocoon_net::ErrorCode::Timeout as i32);
    // Billed what the proxy saw usage for: the worker's usage never came (it is cut off),
    // and the fake engine puts none in its chunks, so nothing, as the client is told.
    let billed = r[&1].tokens.unwrap()[4];
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        billed as u64
    );
    assert_eq!(other.engine.requests(), 0, "no retry after the first byte");
    assert_eq!(net.proxy.stats().counters.retries, 0);
    assert!(stat(&net, &silent).suspect);
    eventually("reservation released", || {
        net.meter.open_reservations() == 0
    })
    .await;
}
