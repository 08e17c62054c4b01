//! Driver tests over in-memory streams, with paused (virtual) time where timing matters.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cocoon_net::{
    CloseReason, Config, Incoming, Role, SessionState, connect_stream, spawn_session,
};
use cocoon_tl::enums::tcp::Packet;
use cocoon_tl::types::tcp as t;
use common::{RawConn, opened_initiator, within};

const Q: Duration = Duration::from_secs(30);

/// Lets every runnable task run until nothing can make progress.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn idle_session_kept_alive_by_pings() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let config = Config::default();
    let (server, server_in) = spawn_session(b, Role::Acceptor, &config);
    tokio::spawn(common::serve(server.clone(), server_in, Default::default()));
    let (client, _client_in) = connect_stream(a, &config).await.unwrap();
    let before = client.stats();
    // Ten virtual minutes of silence: far beyond both idle timeouts (20 s / 60 s).
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(client.is_ready(), "{:?}", client.state());
    assert!(server.is_ready(), "{:?}", server.state());
    let after = client.stats();
    // One ping (and pong) per 10 s of silence.
    let pings = after.frames_out - before.frames_out;
    assert!((55..=61).contains(&pings), "{pings} pings");
    assert_eq!(after.frames_in - before.frames_in, pings);
    assert_eq!(
        within(client.query(b"hi".to_vec(), Q)).await.unwrap(),
        b"hi"
    );
}

#[tokio::test(start_paused = true)]
async fn initiator_times_out_when_peer_is_silent() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let peer = tokio::spawn(async move {
        let mut raw = RawConn::new(b);
        raw.accept_handshake().await;
        // Never answer anything (pings included); count what arrives.
        let mut pings = 0;
        while let Some(p) = raw.recv().await {
            if matches!(p, Packet::Ping(_)) {
                pings += 1;
            }
        }
        pings
    });
    let start = tokio::time::Instant::now();
    let (client, _in) = connect_stream(a, &Config::default()).await.unwrap();
    let pending = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"x".to_vec(), Duration::from_secs(3600)).await }
    });
    assert_eq!(client.closed().await, CloseReason::IdleTimeout);
    // Exactly 20 s of virtual time after the last frame received (the handshake).
    assert_eq!(start.elapsed(), Duration::from_secs(20));
    let err = pending.await.unwrap().unwrap_err();
    assert_eq!(err.code, 651);
    // A single ping was sent during the silence.
    assert_eq!(peer.await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn acceptor_times_out_after_60s() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, _in) = spawn_session(b, Role::Acceptor, &Config::default());
    let mut raw = RawConn::new(a);
    raw.connect_handshake(1).await;
    let start = tokio::time::Instant::now();
    assert_eq!(server.closed().await, CloseReason::IdleTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    // The acceptor never pinged; it shut its side down.
    assert!(raw.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn acceptor_handshake_timeout() {
    let (_a, b) = tokio::io::duplex(1024);
    let config = Config::default();
    let (server, _in) = spawn_session(b, Role::Acceptor, &config);
    assert_eq!(server.ready().await, Err(CloseReason::HandshakeTimeout));
    assert!(matches!(server.state(), SessionState::Closed(_)));
}

#[tokio::test(start_paused = true)]
async fn query_timeout_is_per_query() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let config = Config::default();
    let (server, server_in) = spawn_session(b, Role::Acceptor, &config);
    let held = common::Held::default();
    tokio::spawn(common::serve(server, server_in, held.clone()));
    let (client, _in) = connect_stream(a, &config).await.unwrap();
    let start = tokio::time::Instant::now();
    let slow = tokio::spawn({
        let c = client.clone();
        async move {
            c.query(b"sleep:50000".to_vec(), Duration::from_secs(60))
                .await
        }
    });
    let err = client
        .query(b"hold".to_vec(), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code, 652);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    // The other query is unaffected and answered after 50 s.
    assert_eq!(slow.await.unwrap().unwrap(), b"sleep:50000");
    assert_eq!(start.elapsed(), Duration::from_secs(50));
    assert!(client.is_ready());
}

#[tokio::test]
async fn outbound_memory_bounded_when_peer_does_not_read() {
    const SIZE: usize = 64 * 1024;
    const N: usize = 200;
    // A small pipe: the peer's unread bytes fill it quickly.
    let (a, b) = tokio::io::duplex(16 * 1024);
    let config = Config {
        outbound_queue_bytes: 256 * 1024,
        write_buffer_bytes: 128 * 1024,
        initiator_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        let mut raw = RawConn::new(b);
        raw.accept_handshake().await;
        rx.await.unwrap();
        let mut n = 0;
        while n < N {
            match raw.recv().await {
                Some(Packet::Packet(p)) => {
                    assert_eq!(p.data.len(), SIZE);
                    n += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let (client, _in) = connect_stream(a, &config).await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let (c, sent) = (client.clone(), sent.clone());
        async move {
            for _ in 0..N {
                c.send_message(vec![1; SIZE]).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    settle().await;
    // Accepted so far: the queue budget + the write buffer high-water mark + what the pipe
    // holds, a handful of frames; never the whole 12.5 MiB.
    let accepted = sent.load(Ordering::SeqCst);
    let bound = (config.outbound_queue_bytes + config.write_buffer_bytes + 16 * 1024) / SIZE + 3;
    assert!(accepted <= bound, "accepted {accepted} > {bound}");
    assert!(!sender.is_finished());
    assert!(client.queued_outbound_bytes() <= config.outbound_queue_bytes);
    // Stays blocked while the peer does not read.
    settle().await;
    assert_eq!(sent.load(Ordering::SeqCst), accepted);

    tx.send(()).unwrap();
    within(sender).await.unwrap();
    within(peer).await.unwrap();
}

#[tokio::test]
async fn inbound_not_read_when_consumer_does_not_drain() {
    const SIZE: usize = 8 * 1024;
    const N: usize = 500;
    let (a, b) = tokio::io::duplex(16 * 1024);
    let config = Config {
        incoming_capacity: 4,
        read_buffer_bytes: 16 * 1024,
        acceptor_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let (server, mut incoming) = spawn_session(b, Role::Acceptor, &config);
    let written = Arc::new(AtomicUsize::new(0));
    let flooder = tokio::spawn({
        let written = written.clone();
        async move {
            let mut raw = RawConn::new(a);
            raw.connect_handshake(9).await;
            for i in 0..N {
                raw.send(Packet::Packet(t::Packet {
                    data: vec![i as u8; SIZE],
                }))
                .await;
                written.fetch_add(1, Ordering::SeqCst);
            }
            raw
        }
    });
    settle().await;
    // Channel (4) + at most one read buffer's worth of decoded messages + the pipe (16 KiB)
    // + one partial frame: a few dozen KiB, not 4 MiB.
    let w = written.load(Ordering::SeqCst);
    let bound = 4 + (16 * 1024 / SIZE + 1) + (16 * 1024 / SIZE + 1) + 2;
    assert!(w <= bound, "flooder wrote {w} frames > {bound}");
    assert!(!flooder.is_finished());
    settle().await;
    assert_eq!(written.load(Ordering::SeqCst), w, "reading did not stop");
    assert!(server.is_ready());

    for i in 0..N {
        match within(incoming.recv()).await {
            Some(Incoming::Message { data }) => assert_eq!(data, vec![i as u8; SIZE]),
            other => panic!("unexpected {other:?}"),
        }
    }
    within(flooder).await.unwrap();
}

#[tokio::test]
async fn flood_of_pings_from_a_non_reading_peer_queues_at_most_one_pong() {
    // The peer sends pings but never reads our pongs. We keep reading (the peer is active),
    // and the session never queues a second pong while one waits, so nothing accumulates.
    const PINGS: usize = 100_000;
    let (a, b) = tokio::io::duplex(4 * 1024);
    let config = Config {
        write_buffer_bytes: 8 * 1024,
        acceptor_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let (server, _incoming) = spawn_session(b, Role::Acceptor, &config);
    let flooder = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut raw = RawConn::new(a);
        raw.send(Packet::Connect(t::Connect { id: 1 })).await;
        let mut bytes = Vec::new();
        for i in 0..PINGS as i64 {
            bytes.extend(raw.encode(&Packet::Ping(t::Ping { id: i })));
        }
        raw.stream.write_all(&bytes).await.unwrap();
        raw
    });
    // Every ping is read although none of our pongs is.
    let _raw = within(flooder).await.unwrap();
    within(async {
        while server.stats().frames_in < PINGS as u64 + 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(server.is_ready());
    // Produced: tcp.connected and the pongs that fit in the 4 KiB pipe, plus at most one
    // being written and one queued (20 bytes each).
    let out = server.stats().bytes_out;
    assert!(out <= 4 * 1024 + 4 * 20, "{out} bytes produced");
    server.close();
}

/// Writes `n` small queries (ids `0..n`) in one go.
async fn send_queries<S>(raw: &mut RawConn<S>, n: i64, body: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut bytes = Vec::new();
    for id in 0..n {
        bytes.extend(raw.encode(&Packet::Query(t::Query {
            id,
            data: body.to_vec(),
        })));
    }
    raw.stream.write_all(&bytes).await.unwrap();
}

#[tokio::test]
async fn open_incoming_queries_are_limited() {
    const N: i64 = 50;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let config = Config {
        max_incoming_queries: 4,
        acceptor_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let (server, mut incoming) = spawn_session(b, Role::Acceptor, &config);
    let mut raw = RawConn::new(a);
    raw.connect_handshake(3).await;
    send_queries(&mut raw, N, b"secret prompt").await;
    settle().await;
    let mut held = Vec::new();
    while let Ok(item) = incoming.try_recv() {
        held.push(item);
    }
    // Four open queries: reading stopped right after the fourth (the handshake + 4 frames).
    assert_eq!(held.len(), 4);
    assert_eq!(server.stats().frames_in, 5);
    settle().await;
    assert!(incoming.try_recv().is_err());
    // Debug output names the query, not its body.
    let text = format!("{:?}", held[0]);
    assert_eq!(text, "Query { id: 0, len: 13 }");
    // Answering one lets exactly one more in.
    match held.remove(0) {
        Incoming::Query { responder, .. } => responder.answer(b"a0".to_vec()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
    settle().await;
    let item = incoming.try_recv().expect("one more query");
    assert!(matches!(&item, Incoming::Query { responder, .. } if responder.id() == 4));
    held.push(item);
    assert!(incoming.try_recv().is_err());
    // Dropping a responder (answers 602) frees a slot too.
    drop(held.pop());
    settle().await;
    held.push(incoming.try_recv().expect("one more query"));
    assert!(incoming.try_recv().is_err());
    // Answer everything: all queries get through and are answered.
    let answerer = tokio::spawn(async move {
        for item in held {
            if let Incoming::Query { responder, .. } = item {
                let id = responder.id();
                responder.answer(format!("a{id}").into_bytes()).unwrap();
            }
        }
        while let Some(item) = incoming.recv().await {
            if let Incoming::Query { responder, .. } = item {
                let id = responder.id();
                responder.answer(format!("a{id}").into_bytes()).unwrap();
            }
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N as usize {
        match within(raw.recv()).await {
            Some(Packet::QueryAnswer(a)) => {
                assert_eq!(a.data, format!("a{}", a.id).into_bytes());
                assert!(seen.insert(a.id));
            }
            Some(Packet::QueryError(e)) => {
                assert_eq!((e.id, e.code), (4, 602));
                assert!(seen.insert(e.id));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(server.is_ready());
    server.close();
    within(answerer).await.unwrap();
}

#[tokio::test]
async fn answers_to_a_peer_that_does_not_read_are_bounded() {
    // The peer sends many queries and never reads; the application answers each with 64 KiB.
    const N: i64 = 300;
    const ANSWER: usize = 64 * 1024;
    const PIPE: usize = 64 * 1024;
    let (a, b) = tokio::io::duplex(PIPE);
    let config = Config {
        max_incoming_queries: 16,
        write_buffer_bytes: 256 * 1024,
        acceptor_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let (server, mut incoming) = spawn_session(b, Role::Acceptor, &config);
    let mut raw = RawConn::new(a);
    raw.connect_handshake(3).await;
    send_queries(&mut raw, N, b"q").await;
    let answered = Arc::new(AtomicUsize::new(0));
    let app = tokio::spawn({
        let answered = answered.clone();
        async move {
            while let Some(item) = incoming.recv().await {
                if let Incoming::Query { responder, .. } = item {
                    responder.answer(vec![0; ANSWER]).unwrap();
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    settle().await;
    let out = server.stats().bytes_out as usize;
    let n = answered.load(Ordering::SeqCst);
    // Framed: the high-water mark + one answer past it + what the pipe holds.
    let bound = config.write_buffer_bytes + (ANSWER + 64) + PIPE + 64;
    assert!(out <= bound, "{out} bytes framed > {bound}");
    // Answered but not framed: at most `max_incoming_queries` answers.
    let framed = out / ANSWER + 1;
    assert!(n <= framed + 16, "{n} answers made, {framed} framed");
    assert!(n < N as usize);
    settle().await;
    assert_eq!(answered.load(Ordering::SeqCst), n, "still answering");
    assert!(server.is_ready());
    // Once the peer reads, everything completes.
    for _ in 0..N {
        match within(raw.recv()).await {
            Some(Packet::QueryAnswer(a)) => assert_eq!(a.data.len(), ANSWER),
            other => panic!("unexpected {other:?}"),
        }
    }
    server.close();
    within(app).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_does_not_idle_timeout_an_active_peer() {
    let (client, mut incoming, mut raw) = opened_initiator(1 << 20, &Config::default()).await;
    // More messages than the incoming channel holds, then a ping every 5 s for 60 s.
    for i in 0..600u32 {
        raw.send(Packet::Packet(t::Packet {
            data: i.to_le_bytes().to_vec(),
        }))
        .await;
    }
    let pinger = tokio::spawn(async move {
        for i in 0..12 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            raw.send(Packet::Ping(t::Ping { id: i })).await;
        }
        raw
    });
    // The application does not read for 100 s (five idle timeouts).
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(client.is_ready(), "{:?}", client.state());
    for i in 0..600u32 {
        match within(incoming.recv()).await {
            Some(Incoming::Message { data }) => assert_eq!(data, i.to_le_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let _raw = pinger.await.unwrap();
    // Reading again, and the peer is silent now: the idle clock restarted when reading did.
    let resumed = tokio::time::Instant::now();
    assert_eq!(within(client.closed()).await, CloseReason::IdleTimeout);
    assert_eq!(resumed.elapsed(), Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn peer_that_sends_but_does_not_read_is_not_idle() {
    // Our write buffer is above its high-water mark because the peer does not read, but the
    // peer keeps sending: we keep reading, so it is not taken for silent.
    let (client, _incoming, mut raw) = opened_initiator(64 * 1024, &Config::default()).await;
    let sender = tokio::spawn({
        let c = client.clone();
        async move {
            for _ in 0..8 {
                if c.send_message(vec![1; 1 << 20]).await.is_err() {
                    break;
                }
            }
        }
    });
    let pinger = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            raw.send(Packet::Ping(t::Ping { id: i })).await;
        }
        raw
    });
    tokio::time::sleep(Duration::from_secs(99)).await;
    assert!(client.is_ready(), "{:?}", client.state());
    assert!(!sender.is_finished());
    assert!(client.stats().frames_in >= 20);
    let _raw = pinger.await.unwrap();
    client.close();
    sender.abort();
}

#[tokio::test(start_paused = true)]
async fn query_timeout_covers_waiting_for_the_driver() {
    // The peer does not read: our write buffer goes above its mark and the driver stops
    // taking commands. A query queued behind the messages still fails at its deadline.
    let config = Config {
        outbound_queue_bytes: 64 << 20,
        ..Config::default()
    };
    let (client, _incoming, mut raw) = opened_initiator(4096, &config).await;
    for i in 0..3u8 {
        client.send_message(vec![i; 1 << 20]).await.unwrap();
    }
    let start = tokio::time::Instant::now();
    let err = client
        .query(b"x".to_vec(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.code, 652);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(client.pending_queries(), 0);
    // The abandoned query is never sent: after the messages the peer sees the next query.
    let next = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"y".to_vec(), Duration::from_secs(30)).await }
    });
    for i in 0..3u8 {
        match within(raw.recv_non_ping()).await {
            Some(Packet::Packet(p)) => assert_eq!(p.data, vec![i; 1 << 20]),
            other => panic!("unexpected {other:?}"),
        }
    }
    match within(raw.recv_non_ping()).await {
        Some(Packet::Query(q)) => {
            assert_eq!(q.data, b"y");
            raw.send(Packet::QueryAnswer(t::QueryAnswer {
                id: q.id,
                data: b"ok".to_vec(),
            }))
            .await;
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(next).await.unwrap().unwrap(), b"ok");
}

#[tokio::test(start_paused = true)]
async fn query_timeout_covers_waiting_for_budget() {
    let config = Config {
        outbound_queue_bytes: 1 << 20,
        ..Config::default()
    };
    let (client, _incoming, raw) = opened_initiator(4096, &config).await;
    let sender = tokio::spawn({
        let c = client.clone();
        async move {
            for _ in 0..4 {
                c.send_message(vec![1; 1 << 20]).await.unwrap();
            }
        }
    });
    settle().await;
    assert_eq!(client.queued_outbound_bytes(), 1 << 20);
    let start = tokio::time::Instant::now();
    let err = client
        .query(b"x".to_vec(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (652, "query timed out"));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(client.is_ready());
    sender.abort();
    let _keep = raw;
}

#[tokio::test(start_paused = true)]
async fn dropped_query_futures_are_forgotten() {
    let (client, _incoming, mut raw) = opened_initiator(64 * 1024, &Config::default()).await;
    // One query without a deadline (the timeout overflows), one with a long one.
    let q1 = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"a".to_vec(), Duration::MAX).await }
    });
    let q2 = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"b".to_vec(), Duration::from_secs(3600)).await }
    });
    let mut ids = Vec::new();
    for _ in 0..2 {
        match within(raw.recv_non_ping()).await {
            Some(Packet::Query(q)) => ids.push(q.id),
            other => panic!("unexpected {other:?}"),
        }
    }
    settle().await;
    assert_eq!(client.pending_queries(), 2);
    q1.abort();
    q2.abort();
    assert!(q1.await.unwrap_err().is_cancelled());
    assert!(q2.await.unwrap_err().is_cancelled());
    settle().await;
    assert_eq!(client.pending_queries(), 0);
    // Late answers are ignored; the session carries on.
    for id in ids {
        raw.send(Packet::QueryAnswer(t::QueryAnswer {
            id,
            data: b"late".to_vec(),
        }))
        .await;
    }
    let next = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"c".to_vec(), Q).await }
    });
    match within(raw.recv_non_ping()).await {
        Some(Packet::Query(q)) => {
            raw.send(Packet::QueryAnswer(t::QueryAnswer {
                id: q.id,
                data: b"fresh".to_vec(),
            }))
            .await
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(next).await.unwrap().unwrap(), b"fresh");
    assert!(client.is_ready());
}

#[tokio::test(start_paused = true)]
async fn extreme_config_values_do_not_panic() {
    let config = Config {
        initiator_idle_timeout: Duration::MAX,
        acceptor_idle_timeout: Duration::MAX,
        acceptor_ping_every: Some(Duration::MAX),
        handshake_timeout: Duration::MAX,
        shutdown_timeout: Duration::MAX,
        incoming_capacity: usize::MAX,
        max_incoming_queries: 0,
        command_capacity: usize::MAX,
        outbound_queue_bytes: usize::MAX,
        write_buffer_bytes: 0,
        read_buffer_bytes: usize::MAX,
        tcp_nodelay: true,
    };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, server_in) = spawn_session(b, Role::Acceptor, &config);
    tokio::spawn(common::serve(server.clone(), server_in, Default::default()));
    let (client, _in) = within(connect_stream(a, &config)).await.unwrap();
    for i in 0..3u8 {
        assert_eq!(
            within(client.query(vec![i; 100], Duration::MAX))
                .await
                .unwrap(),
            vec![i; 100]
        );
    }
    client.send_message(vec![1; 10]).await.unwrap();
    client.close();
    assert_eq!(within(client.closed()).await, CloseReason::Local);
    assert_eq!(within(server.closed()).await, CloseReason::PeerClosed);
    let zero = Config {
        incoming_capacity: 0,
        command_capacity: 0,
        outbound_queue_bytes: 0,
        read_buffer_bytes: 0,
        handshake_timeout: Duration::ZERO,
        ..Config::default()
    };
    let (_a, b) = tokio::io::duplex(1024);
    let (server, _in) = spawn_session(b, Role::Acceptor, &zero);
    assert_eq!(within(server.closed()).await, CloseReason::HandshakeTimeout);
}
