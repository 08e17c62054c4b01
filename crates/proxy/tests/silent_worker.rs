//! A worker that goes silent (cut off from the proxy in both directions, as a partition or a
//! frozen host leaves it): real `cocoon-worker` instances with fake engines dial the proxy
//! over RA-TLS, one of them through a TCP relay the test can cut; the proxy's pings
//! (`worker_ping_seconds`) find it silent, route around it, and a request it had not started
//! answering is answered by the other worker and billed once.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cocoon_testkit::client::collect;
use cocoon_testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const JSON_TOKENS: [i64; 5] = [18, 0, 12, 0, 30];

/// A TCP relay to `target`; while cut, nothing passes in either direction (the connections
/// stay open, as across a partition or to a frozen host). Armed, it cuts itself on the first
/// read from the proxy of at least [`REQUEST_BYTES`] (a request, not a ping), keeping it:
/// the worker goes silent the moment a request is routed to it.
struct Relay {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    armed: Arc<AtomicBool>,
}

/// Bytes of one read from the proxy that an armed relay takes for a request (pings and
/// pongs are far smaller, a `proxy.runQueryEx` far larger).
const REQUEST_BYTES: usize = 256;

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::channel(false).0);
        let armed = Arc::new(AtomicBool::new(false));
        let (cut_tx, armed_tx) = (Arc::clone(&cut), Arc::clone(&armed));
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pump(ir, ow, cut_tx.subscribe(), None));
                let trip = Some((Arc::clone(&cut_tx), Arc::clone(&armed_tx)));
                tokio::spawn(pump(or, iw, cut_tx.subscribe(), trip));
            }
        });
        Relay { addr, cut, armed }
    }

    /// Cuts the relay when the next request passes towards the worker.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies `r` to `w`, holding what it read while the relay is cut; with `trip` (the relay's
/// switch and whether it is armed), a read of a request cuts the relay before it passes.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
    trip: Option<(Arc<watch::Sender<bool>>, Arc<AtomicBool>)>,
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
        if let Some((switch, armed)) = &trip
            && n >= REQUEST_BYTES
            && armed.swap(false, Ordering::SeqCst)
        {
            switch.send_replace(true);
        }
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

/// A proxy pinging its workers every `ping`, with `relayed` workers behind relays (owners
/// 0x41, 0x42, …, registered in that order, so that ties go to the first) and one direct
/// worker (owner 0x4f) registered last when `direct`.
async fn workers(
    ping: Duration,
    relayed: u8,
    direct: bool,
) -> (Net, Vec<(Relay, TestWorker)>, Option<TestWorker>) {
    let net = start_proxy_with(root(1, true, true), |cfg| {
        cfg.timings.worker_ping = Some(ping);
    })
    .await;
    let mut behind = Vec::new();
    for i in 0..relayed {
        let relay = Relay::start(net.proxy.worker_addr()).await;
        let w = start_worker_with(&net, 0x41 + i, |cfg| {
            cfg.proxies = vec![relay.addr.to_string()];
        })
        .await;
        net.wait_workers(usize::from(i) + 1).await;
        behind.push((relay, w));
    }
    let direct = if direct {
        let w = start_worker(&net, 0x4f).await;
        net.wait_workers(usize::from(relayed) + 1).await;
        Some(w)
    } else {
        None
    };
    (net, behind, direct)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_while_every_worker_is_silent_until_one_is_heard_or_the_deadline() {
    let (net, behind, _) = workers(Duration::from_secs(1), 2, false).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    for (relay, _) in &behind {
        relay.set_cut(true);
    }
    eventually("both workers suspect", || {
        behind.iter().all(|(_, w)| stat(&net, w).suspect)
    })
    .await;

    // Nobody is heard before its 3 s deadline: it waited for one, and says so (the old
    // code refused it at once, as if the model had no workers).
    let t0 = std::time::Instant::now();
    c.run(1, "json", 100, 3.0).await;
    let r = collect(&mut c, &[1], false).await;
    let (code, msg) = r[&1].error.clone().expect("the deadline is reported");
    assert_eq!(code, cocoon_net::ErrorCode::Timeout as i32, "{msg}");
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(net.proxy.stats().queue.expired, 1);

    // One is heard again while the next request waits: it is served there.
    c.run(2, "json", 100, 30.0).await;
    eventually("the request waits in the queue", || {
        net.proxy.stats().queue.waiting == vec![("Smol".to_owned(), 1)]
    })
    .await;
    let (relay, healed) = &behind[1];
    relay.set_cut(false);
    let r = collect(&mut c, &[2], true).await;
    assert_eq!(r[&2].error, None);
    assert_eq!(r[&2].tokens, Some(JSON_TOKENS));
    assert_eq!(healed.engine.requests(), 1);
    assert_eq!(behind[0].1.engine.requests(), 0);
    let st = net.proxy.stats();
    assert_eq!(st.queue.served, 1);
    assert_eq!(st.counters.requests_success, 1);
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_going_silent_one_after_another_are_each_replaced_by_the_next() {
    // Two relayed workers that fall silent the moment a request reaches them, one direct:
    // the request goes to the first, then the second (each healthy when picked), and is
    // answered by the third, all before its deadline (the old code gave up after the
    // second and waited for the deadline).
    let (net, behind, direct) = workers(Duration::from_secs(1), 2, true).await;
    let direct = direct.unwrap();
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    for (relay, _) in &behind {
        relay.arm();
    }
    c.run(1, "json", 100, 12.0).await;
    let r = collect(&mut c, &[1], true).await;
    assert_eq!(r[&1].error, None);
    assert_eq!(r[&1].tokens, Some(JSON_TOKENS));
    assert_eq!(direct.engine.requests(), 1);
    for (i, (_, w)) in behind.iter().enumerate() {
        assert_eq!(w.engine.requests(), 0, "relayed worker {i} never got it");
        let s = stat(&net, w);
        assert!(s.suspect, "relayed worker {i}");
        assert_eq!(
            (s.failed, s.served),
            (1, 0),
            "relayed worker {i} was tried once"
        );
    }
    let st = net.proxy.stats();
    assert_eq!(st.counters.retries, 2);
    assert_eq!(st.counters.requests_success, 1);
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 30);
    eventually("reservation released", || {
        net.meter.open_reservations() == 0
    })
    .await;
}
