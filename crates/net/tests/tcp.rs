//! Integration tests over real loopback TCP.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cocoon_net::{
    BackoffConfig, CloseReason, Config, ConnectError, ErrorCode, Incoming, Listener,
    ReconnectState, Reconnector, connect_tcp,
};
use cocoon_tl::enums::tcp::Packet;
use cocoon_tl::types::tcp as t;
use common::{RawConn, TestServer, tcp_pair, within};
use tokio::net::TcpListener;

const Q: Duration = Duration::from_secs(30);

#[tokio::test]
async fn query_answer_roundtrip() {
    let server = TestServer::start(Config::default()).await;
    let (client, _incoming) = connect_tcp(server.addr, &Config::default()).await.unwrap();
    assert!(client.is_ready());
    for size in [0usize, 1, 253, 254, 1000, 70_000, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let answer = within(client.query(data.clone(), Q)).await.unwrap();
        assert_eq!(answer, data);
    }
    let stats = client.stats();
    assert!(stats.frames_out >= 8 && stats.frames_in >= 8, "{stats:?}");
    client.close();
    assert_eq!(within(client.closed()).await, CloseReason::Local);
    server.stop().await;
}

#[tokio::test]
async fn query_errors_from_peer() {
    let server = TestServer::start(Config::default()).await;
    let (client, _incoming) = connect_tcp(server.addr, &Config::default()).await.unwrap();
    let err = within(client.query(b"error".to_vec(), Q))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (603, "asked for an error")
    );
    let err = within(client.query(b"drop".to_vec(), Q)).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (602, "query dropped"));
    assert_eq!(err.error_code(), Some(ErrorCode::Error));
    assert_eq!(err.http_status(), 400);
    // The session survives query errors.
    assert_eq!(within(client.query(b"x".to_vec(), Q)).await.unwrap(), b"x");
    server.stop().await;
}

#[tokio::test]
async fn query_timeout_completes_with_652() {
    let server = TestServer::start(Config::default()).await;
    let (client, _incoming) = connect_tcp(server.addr, &Config::default()).await.unwrap();
    let err = within(client.query(b"hold".to_vec(), Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(err.code, 652);
    assert_eq!(err.http_status(), 504);
    assert!(client.is_ready());
    server.stop().await;
}

#[tokio::test]
async fn concurrent_queries() {
    let server = TestServer::start(Config::default()).await;
    let (client, _incoming) = connect_tcp(server.addr, &Config::default()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            // Out-of-order answers: later queries sleep less.
            let data = if i % 3 == 0 {
                format!("sleep:{}", (200 - i) / 10).into_bytes()
            } else {
                format!("q{i}").into_bytes()
            };
            let answer = c.query(data.clone(), Q).await.unwrap();
            assert_eq!(answer, data);
        }));
    }
    for t in tasks {
        within(t).await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn messages_both_ways() {
    let server = TestServer::start(Config::default()).await;
    let (client, mut incoming) = connect_tcp(server.addr, &Config::default()).await.unwrap();
    // The server echoes messages back as messages.
    for i in 0..50u32 {
        client.send_message(i.to_le_bytes().to_vec()).await.unwrap();
    }
    for i in 0..50u32 {
        match within(incoming.recv()).await {
            Some(Incoming::Message { data }) => assert_eq!(data, i.to_le_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn queries_from_acceptor_to_initiator() {
    let listener = Listener::bind("127.0.0.1:0", Config::default())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let (handle, incoming) = connect_tcp(addr, &Config::default()).await.unwrap();
        common::serve(handle, incoming, Default::default()).await;
    });
    let (server_side, _incoming, _peer) = listener.accept().await.unwrap();
    within(server_side.ready()).await.unwrap();
    let answer = within(server_side.query(b"from server".to_vec(), Q))
        .await
        .unwrap();
    assert_eq!(answer, b"from server");
    server_side.close();
    within(client).await.unwrap();
}

#[tokio::test]
async fn typed_queries() {
    let server = TestServer::start(Config::default()).await;
    let (client, _incoming) = connect_tcp(server.addr, &Config::default()).await.unwrap();
    // The echo server returns the request; decoding it as the same type succeeds...
    let ping = t::Ping { id: 12 };
    let back: t::Ping = within(client.query_tl(&ping, Q)).await.unwrap();
    assert_eq!(back, ping);
    // ...and as another type is a protocol violation of the answer.
    let err = within(client.query_tl::<_, t::Pong>(&ping, Q))
        .await
        .unwrap_err();
    assert_eq!(err.code, 621);
    assert!(err.message.contains("malformed"), "{}", err.message);
    server.stop().await;
}

#[tokio::test]
async fn peer_drop_fails_pending_queries() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut raw = RawConn::new(stream);
        raw.accept_handshake().await;
        // Wait for two queries, then drop the connection without answering.
        for _ in 0..2 {
            assert!(matches!(raw.recv_non_ping().await, Some(Packet::Query(_))));
        }
    });
    let (client, mut incoming) = connect_tcp(addr, &Config::default()).await.unwrap();
    let q1 = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"a".to_vec(), Duration::from_secs(3600)).await }
    });
    let q2 = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"b".to_vec(), Duration::from_secs(3600)).await }
    });
    for q in [q1, q2] {
        let err = within(q).await.unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::NotReady.as_i32(), "{err:?}");
    }
    within(server).await.unwrap();
    assert_eq!(within(client.closed()).await, CloseReason::PeerClosed);
    assert!(within(incoming.recv()).await.is_none());
    // Using a closed session fails at once.
    let err = within(client.query(b"c".to_vec(), Q)).await.unwrap_err();
    assert_eq!(err.code, 651);
    assert!(client.send_message(vec![1]).await.is_err());
}

#[tokio::test]
async fn handshake_timeout_against_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        // Accept and hold the connection, never answering.
        let (stream, _) = listener.accept().await.unwrap();
        let mut raw = RawConn::new(stream);
        assert!(matches!(raw.recv().await, Some(Packet::Connect(_))));
        // Read until the client gives up.
        while raw.recv().await.is_some() {}
    });
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let res = within(connect_tcp(addr, &config)).await;
    assert!(matches!(res, Err(ConnectError::Timeout)), "{res:?}");
    within(server).await.unwrap();
}

#[tokio::test]
async fn handshake_rejected_on_wrong_first_packet() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut raw = RawConn::new(stream);
        assert!(matches!(raw.recv().await, Some(Packet::Connect(_))));
        raw.send(Packet::Ping(t::Ping { id: 1 })).await;
        while raw.recv().await.is_some() {}
    });
    let res = within(connect_tcp(addr, &Config::default())).await;
    match res {
        Err(ConnectError::Closed(CloseReason::ProtocolError(msg))) => {
            assert!(msg.contains("tcp.connected"), "{msg}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn garbage_from_peer_closes_with_protoviolation() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut raw = RawConn::new(stream);
        raw.accept_handshake().await;
        // Once the client is up and sends a query, answer with a frame claiming 1 GiB.
        assert!(matches!(raw.recv_non_ping().await, Some(Packet::Query(_))));
        use tokio::io::AsyncWriteExt;
        let mut header = (1u32 << 30).to_le_bytes().to_vec();
        header.extend_from_slice(&1i32.to_le_bytes());
        raw.stream.write_all(&header).await.unwrap();
        while raw.recv().await.is_some() {}
    });
    let (client, _incoming) = connect_tcp(addr, &Config::default()).await.unwrap();
    let err = within(client.query(b"q".to_vec(), Q)).await.unwrap_err();
    assert_eq!(err.code, 651);
    let reason = within(client.closed()).await;
    assert!(
        matches!(&reason, CloseReason::ProtocolError(m) if m.contains("too long")),
        "{reason:?}"
    );
    assert_eq!(reason.code(), ErrorCode::ProtoViolation);
}

#[tokio::test]
async fn graceful_close_flushes_queued_messages() {
    let (client, _ci, server_side, mut incoming) = tcp_pair().await;
    let pending = tokio::spawn({
        let c = client.clone();
        async move { c.query(b"never answered".to_vec(), Q).await }
    });
    for i in 0..100u32 {
        client
            .send_message(vec![i as u8; 10_000 + i as usize])
            .await
            .unwrap();
    }
    client.close();
    let mut n = 0u32;
    let mut queries = Vec::new();
    while let Some(item) = within(incoming.recv()).await {
        match item {
            Incoming::Message { data } => {
                assert_eq!(data, vec![n as u8; 10_000 + n as usize]);
                n += 1;
            }
            Incoming::Query { responder, .. } => queries.push(responder),
        }
    }
    assert_eq!(n, 100);
    assert_eq!(within(server_side.closed()).await, CloseReason::PeerClosed);
    let err = within(pending).await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled.as_i32());
    assert_eq!(within(client.closed()).await, CloseReason::Local);
}

#[tokio::test]
async fn dropping_everything_closes_the_session() {
    let (client, incoming, server_side, _si) = tcp_pair().await;
    drop(client);
    drop(incoming);
    assert_eq!(within(server_side.closed()).await, CloseReason::PeerClosed);
}

#[tokio::test]
async fn reconnect_after_server_restart() {
    let server = TestServer::start(Config::default()).await;
    let addr = server.addr;
    let backoff = BackoffConfig {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        jitter: 0.5,
        reset_after: Duration::from_secs(1),
    };
    let (reconnector, _incoming) = Reconnector::tcp(addr, Config::default(), backoff);
    let mut states = reconnector.subscribe();
    let s1 = within(reconnector.ready_session()).await.unwrap();
    assert_eq!(within(s1.query(b"one".to_vec(), Q)).await.unwrap(), b"one");
    assert_eq!(reconnector.state(), ReconnectState::Connected);

    server.stop().await;
    within(s1.closed()).await;
    // The reconnector notices and starts retrying (connection refused while down).
    within(states.wait_for(|s| matches!(s, ReconnectState::Waiting { .. })))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let server = TestServer::start_at(addr, Config::default()).await;
    let s2 = within(async {
        loop {
            if let Some(s) = reconnector.ready_session().await
                && !s.is_closed()
                && s.is_ready()
            {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(within(s2.query(b"two".to_vec(), Q)).await.unwrap(), b"two");
    assert!(s1.is_closed());

    reconnector.stop();
    within(states.wait_for(|s| *s == ReconnectState::Stopped))
        .await
        .unwrap();
    within(s2.closed()).await;
    assert!(reconnector.session().is_none());
    server.stop().await;
}

#[tokio::test]
async fn idle_session_stays_alive_with_pings_over_tcp() {
    // Short (real-time) timeouts: the initiator pings after 500 ms of silence.
    let config = Config {
        initiator_idle_timeout: Duration::from_millis(1000),
        acceptor_idle_timeout: Duration::from_millis(1500),
        ..Config::default()
    };
    let server = TestServer::start(config.clone()).await;
    let (client, _incoming) = connect_tcp(server.addr, &config).await.unwrap();
    let before = client.stats();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert!(client.is_ready(), "{:?}", client.state());
    let after = client.stats();
    assert!(after.frames_out > before.frames_out, "no pings sent");
    assert!(after.frames_in > before.frames_in, "no pongs received");
    assert_eq!(
        within(client.query(b"ok".to_vec(), Q)).await.unwrap(),
        b"ok"
    );
    server.stop().await;
}

#[tokio::test]
async fn backpressure_peer_that_never_reads() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (start_reading_tx, start_reading_rx) = tokio::sync::oneshot::channel::<()>();
    const N: usize = 256;
    const SIZE: usize = 1 << 20;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut raw = RawConn::new(stream);
        raw.accept_handshake().await;
        // Do not read until told to.
        start_reading_rx.await.unwrap();
        let mut got = 0;
        while got < N {
            match raw.recv_non_ping().await {
                Some(Packet::Packet(p)) => {
                    assert_eq!(p.data.len(), SIZE);
                    got += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        raw
    });
    let config = Config {
        // Generous idle timeouts: the test must not depend on timing.
        initiator_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    };
    let (client, _incoming) = connect_tcp(addr, &config).await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let (c, sent) = (client.clone(), sent.clone());
        async move {
            for _ in 0..N {
                c.send_message(vec![7u8; SIZE]).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Let the sender run until it stops making progress (kernel buffers full).
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    // Sends block: far fewer than N messages were accepted, and what we hold is bounded by
    // the configured budgets (the rest sits in kernel socket buffers).
    let accepted = sent.load(Ordering::SeqCst);
    assert!(
        accepted < N,
        "all {N} MiB accepted without the peer reading"
    );
    assert!(!sender.is_finished());
    assert!(client.queued_outbound_bytes() <= config.outbound_queue_bytes.max(SIZE));
    assert!(client.is_ready());

    start_reading_tx.send(()).unwrap();
    within(sender).await.unwrap();
    within(server).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), N);
}

#[tokio::test]
async fn backpressure_flooding_peer_is_not_read() {
    let listener = Listener::bind(
        "127.0.0.1:0",
        Config {
            incoming_capacity: 4,
            acceptor_idle_timeout: Duration::from_secs(3600),
            ..Config::default()
        },
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    const N: usize = 256;
    const SIZE: usize = 256 * 1024;
    let written = Arc::new(AtomicUsize::new(0));
    let flooder = tokio::spawn({
        let written = written.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut raw = RawConn::new(stream);
            raw.connect_handshake(5).await;
            for _ in 0..N {
                raw.send(Packet::Packet(t::Packet {
                    data: vec![3u8; SIZE],
                }))
                .await;
                written.fetch_add(1, Ordering::SeqCst);
            }
            raw
        }
    });
    let (server_side, mut incoming, _) = listener.accept().await.unwrap();
    // Nobody drains `incoming`; wait until the flooder stops making progress.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    // The flooder is blocked: we stopped reading instead of buffering 64 MiB.
    assert!(written.load(Ordering::SeqCst) < N);
    assert!(!flooder.is_finished());
    assert!(server_side.is_ready());
    let st = server_side.stats();
    assert!(st.bytes_in < (N * SIZE) as u64);

    // Draining lets everything through, in order and complete.
    let mut got = 0;
    while got < N {
        match within(incoming.recv()).await {
            Some(Incoming::Message { data }) => {
                assert_eq!(data.len(), SIZE);
                got += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    within(flooder).await.unwrap();
}

#[tokio::test]
async fn accept_loop_serves_many_clients() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(cocoon_net::accept_loop(
        listener,
        Config::default(),
        |handle, incoming, _| {
            tokio::spawn(common::serve(handle, incoming, Default::default()));
        },
    ));
    let mut clients = Vec::new();
    for i in 0..10u8 {
        clients.push(tokio::spawn(async move {
            let (c, _in) = connect_tcp(addr, &Config::default()).await.unwrap();
            assert_eq!(c.query(vec![i; 3], Q).await.unwrap(), vec![i; 3]);
            c.close();
            c.closed().await;
        }));
    }
    for c in clients {
        within(c).await.unwrap();
    }
    task.abort();
}
