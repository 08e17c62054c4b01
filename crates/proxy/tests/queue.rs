//! The proxy's queue through its real paths: real workers with fake engines, test clients
//! speaking TL over RA-TLS (sim attestation). While every worker of the model is busy,
//! requests wait: round-robin across client sessions, in order within one, until a slot
//! frees, a worker joins, the client cancels or the deadline passes.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_proxy::ProxyStats;
use cocoon_testkit::prelude::*;
use cocoon_tl::codes::ErrorCode;

/// Requests waiting for the test model.
fn waiting(s: &ProxyStats) -> usize {
    s.queue
        .waiting
        .iter()
        .find(|(m, _)| m == "Smol")
        .map_or(0, |(_, n)| *n)
}

/// A proxy with a funded client `addr(0x51)` and one worker serving one request at a time.
async fn one_slot() -> (Net, TestWorker) {
    let net = start_proxy(root(1, true, true)).await;
    net.fund_client(&addr(0x51), 100_000_000, true);
    let w = start_worker_with(&net, 0x41, |c| c.max_active_requests = 1).await;
    net.wait_workers(1).await;
    (net, w)
}

/// Reads until request `id` ended (other requests' messages and payments are skipped).
async fn end_of(c: &mut TestClient, id: u8) -> Collected {
    let mut got = Collected::default();
    loop {
        let m = c.next().await;
        if m.request_byte() == id && !matches!(m, FromProxy::Payment(_)) && got.add(m) {
            return got;
        }
    }
}

async fn client(net: &Net) -> TestClient {
    let c = TestClient::connect(net, &addr(0x51)).await;
    c.authorize_short().await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_takes_turns_between_client_sessions_and_keeps_order_within_one() {
    let (net, w) = one_slot().await;
    let mut a = client(&net).await;
    let mut b = client(&net).await;
    // Session A's request 1 runs (held at the engine's gate); its 2, 3, 4 wait, then B's 10.
    a.run(1, "gated", 100, 30.0).await;
    eventually("request 1 running", || {
        net.proxy.stats().workers[0].running == 1
    })
    .await;
    for id in 2..=4 {
        a.run(id, "gated", 100, 30.0).await;
        eventually("queued", || {
            waiting(&net.proxy.stats()) == usize::from(id) - 1
        })
        .await;
    }
    b.run(10, "gated", 100, 30.0).await;
    eventually("B queued", || waiting(&net.proxy.stats()) == 4).await;
    // One slot: the requests start one after the other, in the order the queue grants it.
    w.engine.gate.add_permits(5);
    let mut started = Vec::new();
    let mut ended = 0;
    while ended < 5 {
        let m = tokio::select! {
            m = a.next() => m,
            m = b.next() => m,
        };
        let id = m.request_byte();
        match m {
            FromProxy::Head(..) => started.push(id),
            FromProxy::Part(p) if p.final_info.is_some() => ended += 1,
            FromProxy::Error(e) => panic!("request {id} failed: {}", e.error),
            _ => {}
        }
    }
    // A's head of 1 came before the permits; B's request takes the turn after A's 2.
    assert_eq!(started, [1, 2, 10, 3, 4]);
    let s = net.proxy.stats();
    assert_eq!(s.counters.requests_success, 5);
    assert_eq!((s.queue.served, s.queue.rejected, waiting(&s)), (4, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_leaves_on_cancel_or_deadline_billed_nothing_and_a_joining_worker_takes_the_next()
 {
    let (net, w) = one_slot().await;
    let mut c = client(&net).await;
    c.run(1, "gated", 100, 30.0).await;
    eventually("request 1 running", || {
        net.proxy.stats().workers[0].running == 1
    })
    .await;
    // Cancelled while waiting: a cancel error, no tokens.
    c.run(2, "json", 100, 30.0).await;
    eventually("2 queued", || waiting(&net.proxy.stats()) == 1).await;
    c.cancel(2).await;
    let two = end_of(&mut c, 2).await;
    assert_eq!(
        two.error.as_ref().map(|e| e.0),
        Some(ErrorCode::Cancelled as i32)
    );
    assert_eq!(two.tokens, Some([0; 5]));
    // Its deadline passes while it waits: 652, no tokens.
    c.run(3, "json", 100, 1.0).await;
    let three = end_of(&mut c, 3).await;
    assert_eq!(
        three.error,
        Some((ErrorCode::Timeout as i32, "timeout in proxy".into()))
    );
    assert_eq!(three.tokens, Some([0; 5]));
    let s = net.proxy.stats();
    assert_eq!((s.queue.expired, waiting(&s)), (1, 0));
    // A worker joining serves the next one while request 1 still holds the first.
    c.run(4, "json", 100, 30.0).await;
    eventually("4 queued", || waiting(&net.proxy.stats()) == 1).await;
    let w2 = start_worker(&net, 0x42).await;
    let four = end_of(&mut c, 4).await;
    assert_eq!(four.error, None);
    assert_eq!((w.engine.requests(), w2.engine.requests()), (1, 1));
    // Only requests 1 and 4 are booked (nothing for 2 and 3).
    w.engine.gate.add_permits(1);
    eventually("request 1 done", || {
        net.proxy.stats().counters.requests_success == 2
    })
    .await;
    let s = net.proxy.stats();
    assert_eq!(s.counters.requests_failed, 2);
    assert_eq!(
        (s.queue.served, s.queue.expired, s.queue.rejected),
        (1, 1, 0)
    );
}
