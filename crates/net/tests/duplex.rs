//! Driver tests over in-memory streams, with paused (virtual) time where timing matters.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cocoon_net::{
    CloseReason, Config, Incoming, Role, SessionState, connect_stream, spawn_session,
};
use cocoon_tl::enums::tcp::Packet;
use cocoon_tl::types::tcp as t;
use common::{RawConn, within};

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
async fn flood_of_pings_from_a_non_reading_peer_is_bounded() {
    // The peer sends pings but never reads our pongs: we must stop reading instead of
    // queueing pongs without bound.
    let (a, b) = tokio::io::duplex(4 * 1024);
    let config = Config {
        write_buffer_bytes: 8 * 1024,
        acceptor_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let (server, _incoming) = spawn_session(b, Role::Acceptor, &config);
    let written = Arc::new(AtomicUsize::new(0));
    let flooder = tokio::spawn({
        let written = written.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut raw = RawConn::new(a);
            raw.send(Packet::Connect(t::Connect { id: 1 })).await;
            for i in 0..100_000i64 {
                let bytes = raw.encode(&Packet::Ping(t::Ping { id: i }));
                raw.stream.write_all(&bytes).await.unwrap();
                written.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    settle().await;
    let w = written.load(Ordering::SeqCst);
    // Each ping is 20 bytes and so is each pong: pongs queued ≤ the 8 KiB mark + one read
    // (64 KiB), plus the two 4 KiB pipes.
    let bound = (8 * 1024 + 64 * 1024 + 2 * 4 * 1024) / 20 + 10;
    assert!(w <= bound, "flooder wrote {w} pings > {bound}");
    assert!(!flooder.is_finished());
    assert!(server.is_ready());
    server.close();
    // Close is bounded even though the peer never reads (shutdown timeout).
    flooder.abort();
}
