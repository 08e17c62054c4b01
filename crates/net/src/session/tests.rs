use super::*;
use cocoon_tl::frame::{FrameDecoder, FrameEncoder, encode_frame};
use proptest::prelude::*;

const S: Duration = Duration::from_secs(1);

/// A hand-driven peer speaking raw frames to a session.
struct RawPeer {
    enc: FrameEncoder,
    dec: FrameDecoder,
}

impl RawPeer {
    fn new() -> Self {
        RawPeer {
            enc: FrameEncoder::new(),
            dec: FrameDecoder::new(),
        }
    }

    fn send(&mut self, s: &mut Session, now: Instant, p: Packet) {
        let bytes = self.enc.encode_to_vec(&p.to_bytes()).unwrap();
        s.handle_bytes(now, &bytes);
    }

    fn send_raw_payload(&mut self, s: &mut Session, now: Instant, payload: &[u8]) {
        let bytes = self.enc.encode_to_vec(payload).unwrap();
        s.handle_bytes(now, &bytes);
    }

    fn recv(&mut self, s: &mut Session) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(chunk) = s.poll_transmit() {
            for f in self.dec.decode_all(&chunk).unwrap() {
                out.push(Packet::from_bytes(&f.payload).unwrap());
            }
        }
        out
    }
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn ready_initiator(t0: Instant) -> (Session, RawPeer) {
    let mut s = Session::initiator(t0, 42);
    let mut p = RawPeer::new();
    assert_eq!(p.recv(&mut s), [Packet::Connect(t::Connect { id: 42 })]);
    p.send(&mut s, t0, Packet::Connected(t::Connected { id: 42 }));
    assert_eq!(events(&mut s), [Event::Ready]);
    (s, p)
}

fn ready_acceptor(t0: Instant) -> (Session, RawPeer) {
    let mut s = Session::acceptor(t0);
    let mut p = RawPeer::new();
    p.send(&mut s, t0, Packet::Connect(t::Connect { id: 7 }));
    assert_eq!(p.recv(&mut s), [Packet::Connected(t::Connected { id: 7 })]);
    assert_eq!(events(&mut s), [Event::Ready]);
    (s, p)
}

fn assert_protocol_error(s: &mut Session, needle: &str) {
    assert!(s.is_closed());
    match s.close_reason() {
        Some(CloseReason::ProtocolError(msg)) => {
            assert!(msg.contains(needle), "{msg:?} does not contain {needle:?}")
        }
        other => panic!("expected protocol error, got {other:?}"),
    }
    assert_eq!(s.close_reason().unwrap().code(), ErrorCode::ProtoViolation);
    let ev = events(s);
    assert!(matches!(ev.last(), Some(Event::Closed { .. })), "{ev:?}");
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn handshake_initiator() {
    let t0 = Instant::now();
    let mut s = Session::initiator(t0, 42);
    assert!(!s.is_ready());
    let mut p = RawPeer::new();
    assert_eq!(p.recv(&mut s), [Packet::Connect(t::Connect { id: 42 })]);
    assert!(events(&mut s).is_empty());
    p.send(&mut s, t0 + S, Packet::Connected(t::Connected { id: 42 }));
    assert_eq!(events(&mut s), [Event::Ready]);
    assert!(s.is_ready());
    assert!(p.recv(&mut s).is_empty());
}

#[test]
fn handshake_acceptor() {
    let t0 = Instant::now();
    let mut s = Session::acceptor(t0);
    assert!(
        s.poll_transmit().is_none(),
        "acceptor speaks only after tcp.connect"
    );
    let mut p = RawPeer::new();
    p.send(&mut s, t0, Packet::Connect(t::Connect { id: -5 }));
    assert_eq!(p.recv(&mut s), [Packet::Connected(t::Connected { id: -5 })]);
    assert_eq!(events(&mut s), [Event::Ready]);
    assert!(s.is_ready());
}

#[test]
fn handshake_in_one_byte_chunks() {
    let t0 = Instant::now();
    let mut s = Session::acceptor(t0);
    let mut enc = FrameEncoder::new();
    let mut bytes = enc
        .encode_to_vec(&Packet::Connect(t::Connect { id: 1 }).to_bytes())
        .unwrap();
    bytes.extend(
        enc.encode_to_vec(&Packet::Packet(t::Packet { data: vec![9; 300] }).to_bytes())
            .unwrap(),
    );
    for b in &bytes {
        s.handle_bytes(t0, std::slice::from_ref(b));
    }
    assert_eq!(
        events(&mut s),
        [Event::Ready, Event::Message { data: vec![9; 300] }]
    );
}

#[test]
fn acceptor_rejects_wrong_first_frame() {
    let t0 = Instant::now();
    let mut s = Session::acceptor(t0);
    let mut p = RawPeer::new();
    p.send(&mut s, t0, Packet::Ping(t::Ping { id: 1 }));
    assert_protocol_error(&mut s, "expected tcp.connect");
    assert!(p.recv(&mut s).is_empty());
}

#[test]
fn acceptor_rejects_query_before_connect() {
    let t0 = Instant::now();
    let mut s = Session::acceptor(t0);
    let mut p = RawPeer::new();
    p.send(
        &mut s,
        t0,
        Packet::Query(t::Query {
            id: 1,
            data: vec![1],
        }),
    );
    assert_protocol_error(&mut s, "got tcp.query");
}

#[test]
fn initiator_rejects_wrong_first_frame() {
    let t0 = Instant::now();
    let mut s = Session::initiator(t0, 42);
    let mut p = RawPeer::new();
    p.recv(&mut s);
    p.send(&mut s, t0, Packet::Connect(t::Connect { id: 42 }));
    assert_protocol_error(&mut s, "expected tcp.connected");
}

#[test]
fn initiator_rejects_connected_with_wrong_id() {
    let t0 = Instant::now();
    let mut s = Session::initiator(t0, 42);
    let mut p = RawPeer::new();
    p.recv(&mut s);
    p.send(&mut s, t0, Packet::Connected(t::Connected { id: 43 }));
    assert_protocol_error(&mut s, "wrong id");
}

#[test]
fn stray_handshake_packets_after_init_are_ignored() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    p.send(&mut s, t0, Packet::Connect(t::Connect { id: 1 }));
    p.send(&mut s, t0, Packet::Connected(t::Connected { id: 1 }));
    assert!(s.is_ready());
    assert!(events(&mut s).is_empty());
    assert!(p.recv(&mut s).is_empty());
}

#[test]
fn seqno_violation_closes() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_acceptor(t0);
    // The peer's next seqno must be 1.
    let bytes = encode_frame(2, &Packet::Pong(t::Pong { id: 1 }).to_bytes()).unwrap();
    s.handle_bytes(t0, &bytes);
    assert_protocol_error(&mut s, "seqno");
    // Further input is ignored.
    s.handle_bytes(t0, &bytes);
    assert!(events(&mut s).is_empty());
}

#[test]
fn oversize_frame_rejected_from_header() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_initiator(t0);
    let mut header = Vec::new();
    header.extend_from_slice(&((MAX_FRAME_LEN + 1) as u32).to_le_bytes());
    header.extend_from_slice(&1i32.to_le_bytes());
    s.handle_bytes(t0, &header);
    assert_protocol_error(&mut s, "too long");
    assert_eq!(s.buffered_inbound_bytes(), 0);
}

#[test]
fn undersize_frame_rejected() {
    let t0 = Instant::now();
    let mut s = Session::acceptor(t0);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&2u32.to_le_bytes());
    bytes.extend_from_slice(&0i32.to_le_bytes());
    s.handle_bytes(t0, &bytes);
    assert_protocol_error(&mut s, "too short");
}

#[test]
fn garbage_payload_is_protoviolation() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    p.send_raw_payload(&mut s, t0, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_protocol_error(&mut s, "malformed tcp.Packet");
}

#[test]
fn trailing_bytes_in_payload_is_protoviolation() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    let mut payload = Packet::Ping(t::Ping { id: 3 }).to_bytes();
    payload.extend_from_slice(&[0; 4]);
    p.send_raw_payload(&mut s, t0, &payload);
    assert_protocol_error(&mut s, "malformed tcp.Packet");
}

#[test]
fn truncated_payload_is_protoviolation() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let payload = Packet::Query(t::Query {
        id: 3,
        data: vec![1; 40],
    })
    .to_bytes();
    p.send_raw_payload(&mut s, t0, &payload[..payload.len() - 8]);
    assert_protocol_error(&mut s, "malformed tcp.Packet");
}

#[test]
fn query_and_answer() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let id = s.send_query(t0, b"hello".to_vec(), 30 * S);
    assert_eq!(s.pending_queries(), 1);
    assert_eq!(
        p.recv(&mut s),
        [Packet::Query(t::Query {
            id,
            data: b"hello".to_vec()
        })]
    );
    p.send(
        &mut s,
        t0 + S,
        Packet::QueryAnswer(t::QueryAnswer {
            id,
            data: b"world".to_vec(),
        }),
    );
    assert_eq!(
        events(&mut s),
        [Event::QueryAnswer {
            id,
            data: b"world".to_vec()
        }]
    );
    assert_eq!(s.pending_queries(), 0);
    // A second answer for the same id is ignored.
    p.send(
        &mut s,
        t0 + S,
        Packet::QueryAnswer(t::QueryAnswer { id, data: vec![] }),
    );
    assert!(events(&mut s).is_empty());
    assert!(s.is_ready());
}

#[test]
fn query_ids_are_unique() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_initiator(t0);
    let mut ids: Vec<QueryId> = (0..100).map(|_| s.send_query(t0, vec![], S)).collect();
    s.handle_timeout(t0 + S);
    ids.extend((0..100).map(|_| s.send_query(t0 + S, vec![], S)));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn incoming_query_answered() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    p.send(
        &mut s,
        t0,
        Packet::Query(t::Query {
            id: 77,
            data: vec![1, 2],
        }),
    );
    assert_eq!(
        events(&mut s),
        [Event::Query {
            id: 77,
            data: vec![1, 2]
        }]
    );
    s.answer_query(77, vec![3]).unwrap();
    s.answer_query_error(78, 602, "nope").unwrap();
    assert_eq!(
        p.recv(&mut s),
        [
            Packet::QueryAnswer(t::QueryAnswer {
                id: 77,
                data: vec![3]
            }),
            Packet::QueryError(t::QueryError {
                id: 78,
                code: 602,
                message: "nope".into()
            })
        ]
    );
}

#[test]
fn query_error_from_peer() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let id = s.send_query(t0, vec![0; 10], 30 * S);
    p.recv(&mut s);
    p.send(
        &mut s,
        t0,
        Packet::QueryError(t::QueryError {
            id,
            code: 1234,
            message: "bad".into(),
        }),
    );
    assert_eq!(
        events(&mut s),
        [Event::QueryFailed {
            id,
            code: 1234,
            message: "bad".into()
        }]
    );
    assert_eq!(s.pending_queries(), 0);
}

#[test]
fn query_timeout() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let a = s.send_query(t0, vec![1], 5 * S);
    let b = s.send_query(t0, vec![2], 8 * S);
    assert_eq!(s.poll_timeout(), Some(t0 + 5 * S));
    s.handle_timeout(t0 + 4 * S);
    assert!(events(&mut s).is_empty());
    s.handle_timeout(t0 + 5 * S);
    assert_eq!(
        events(&mut s),
        [Event::QueryFailed {
            id: a,
            code: 652,
            message: "query timed out".into()
        }]
    );
    assert_eq!(s.pending_queries(), 1);
    assert_eq!(s.poll_timeout(), Some(t0 + 8 * S));
    // A late answer to the timed-out query is ignored; the other one still completes.
    p.recv(&mut s);
    p.send(
        &mut s,
        t0 + 6 * S,
        Packet::QueryAnswer(t::QueryAnswer {
            id: a,
            data: vec![],
        }),
    );
    p.send(
        &mut s,
        t0 + 6 * S,
        Packet::QueryAnswer(t::QueryAnswer {
            id: b,
            data: vec![],
        }),
    );
    assert_eq!(
        events(&mut s),
        [Event::QueryAnswer {
            id: b,
            data: vec![]
        }]
    );
    assert!(s.is_ready());
}

#[test]
fn query_with_huge_timeout_does_not_overflow() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_initiator(t0);
    s.send_query(t0, vec![1], Duration::MAX);
    assert_eq!(s.pending_queries(), 1);
    assert_eq!(s.poll_timeout(), Some(t0 + 10 * S));
    s.close(CloseReason::Local);
    assert!(matches!(
        events(&mut s)[0],
        Event::QueryFailed { code: 653, .. }
    ));
}

#[test]
fn close_fails_all_pending_queries() {
    for (reason, code) in [
        (CloseReason::Local, 653),
        (CloseReason::PeerClosed, 651),
        (CloseReason::Io("reset".into()), 651),
    ] {
        let t0 = Instant::now();
        let (mut s, _p) = ready_initiator(t0);
        let a = s.send_query(t0, vec![1], 30 * S);
        let b = s.send_query(t0, vec![2], 30 * S);
        s.close(reason.clone());
        let ev = events(&mut s);
        assert_eq!(ev.len(), 3, "{ev:?}");
        for (e, id) in ev.iter().zip([a, b]) {
            match e {
                Event::QueryFailed {
                    id: got, code: c, ..
                } => {
                    assert_eq!((*got, *c), (id, code));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ev[2], Event::Closed { reason });
        assert_eq!(s.pending_queries(), 0);
        assert!(s.is_closed() && !s.is_ready());
        // Closing again does nothing.
        s.close(CloseReason::Local);
        assert!(events(&mut s).is_empty());
    }
}

#[test]
fn use_after_close() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_initiator(t0);
    s.close(CloseReason::Local);
    events(&mut s);
    assert_eq!(s.send_message(vec![1]), Err(SendError::Closed));
    assert_eq!(s.answer_query(1, vec![1]), Err(SendError::Closed));
    let id = s.send_query(t0, vec![1], S);
    assert!(matches!(
        events(&mut s)[..],
        [Event::QueryFailed { id: i, code: 651, .. }] if i == id
    ));
    s.handle_timeout(t0 + 100 * S);
    assert!(events(&mut s).is_empty());
}

#[test]
fn close_keeps_queued_frames_for_flush() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    s.send_message(vec![5; 10]).unwrap();
    s.close(CloseReason::Local);
    assert_eq!(
        p.recv(&mut s),
        [Packet::Packet(t::Packet { data: vec![5; 10] })]
    );
}

#[test]
fn initiator_pings_after_half_idle() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + 10 * S));
    s.handle_timeout(t0 + 9 * S);
    assert!(p.recv(&mut s).is_empty());
    s.handle_timeout(t0 + 10 * S);
    let sent = p.recv(&mut s);
    assert!(matches!(sent[..], [Packet::Ping(_)]), "{sent:?}");
    // Only one ping until something is received.
    assert_eq!(s.poll_timeout(), Some(t0 + 20 * S));
    s.handle_timeout(t0 + 15 * S);
    s.handle_timeout(t0 + 19 * S);
    assert!(p.recv(&mut s).is_empty());
    // Any frame resets idle and re-arms the ping.
    p.send(&mut s, t0 + 19 * S, Packet::Pong(t::Pong { id: 1 }));
    assert!(events(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(t0 + 29 * S));
    s.handle_timeout(t0 + 20 * S);
    assert!(s.is_ready());
    s.handle_timeout(t0 + 29 * S);
    assert!(matches!(p.recv(&mut s)[..], [Packet::Ping(_)]));
}

#[test]
fn initiator_does_not_ping_before_ready() {
    let t0 = Instant::now();
    let mut s = Session::initiator(t0, 1);
    let mut p = RawPeer::new();
    p.recv(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + 20 * S));
    s.handle_timeout(t0 + 15 * S);
    assert!(p.recv(&mut s).is_empty());
    s.handle_timeout(t0 + 20 * S);
    assert_eq!(s.close_reason(), Some(&CloseReason::IdleTimeout));
}

#[test]
fn initiator_idle_timeout_20s() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let id = s.send_query(t0, vec![], 100 * S);
    s.handle_timeout(t0 + 10 * S);
    p.recv(&mut s);
    s.handle_timeout(t0 + 20 * S - Duration::from_millis(1));
    assert!(s.is_ready());
    s.handle_timeout(t0 + 20 * S);
    assert!(s.is_closed());
    assert_eq!(s.close_reason(), Some(&CloseReason::IdleTimeout));
    assert_eq!(s.close_reason().unwrap().code(), ErrorCode::Timeout);
    let ev = events(&mut s);
    assert!(matches!(ev[0], Event::QueryFailed { id: i, code: 651, .. } if i == id));
    assert_eq!(
        ev[1],
        Event::Closed {
            reason: CloseReason::IdleTimeout
        }
    );
}

#[test]
fn acceptor_idle_timeout_60s_and_no_pings() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + 60 * S));
    for secs in [10, 30, 59] {
        s.handle_timeout(t0 + secs * S);
        assert!(p.recv(&mut s).is_empty(), "acceptor must not ping");
    }
    // Receiving resets the idle timer.
    p.send(&mut s, t0 + 50 * S, Packet::Ping(t::Ping { id: 5 }));
    assert_eq!(p.recv(&mut s), [Packet::Pong(t::Pong { id: 5 })]);
    s.handle_timeout(t0 + 60 * S);
    assert!(s.is_ready());
    assert_eq!(s.poll_timeout(), Some(t0 + 110 * S));
    s.handle_timeout(t0 + 110 * S);
    assert_eq!(s.close_reason(), Some(&CloseReason::IdleTimeout));
}

#[test]
fn partial_frame_does_not_reset_idle() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_acceptor(t0);
    let bytes = encode_frame(1, &Packet::Pong(t::Pong { id: 1 }).to_bytes()).unwrap();
    s.handle_bytes(t0 + 30 * S, &bytes[..5]);
    s.handle_timeout(t0 + 60 * S);
    assert!(s.is_closed());
}

#[test]
fn pong_answers_ping_both_roles() {
    let t0 = Instant::now();
    let (mut a, mut pa) = ready_acceptor(t0);
    let (mut i, mut pi) = ready_initiator(t0);
    for (s, p) in [(&mut a, &mut pa), (&mut i, &mut pi)] {
        p.send(s, t0, Packet::Ping(t::Ping { id: -9 }));
        assert_eq!(p.recv(s), [Packet::Pong(t::Pong { id: -9 })]);
        assert!(events(s).is_empty());
    }
}

#[test]
fn unknown_answer_ids_ignored() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    p.send(
        &mut s,
        t0,
        Packet::QueryAnswer(t::QueryAnswer {
            id: 12345,
            data: vec![1],
        }),
    );
    p.send(
        &mut s,
        t0,
        Packet::QueryError(t::QueryError {
            id: -1,
            code: 602,
            message: "x".into(),
        }),
    );
    assert!(events(&mut s).is_empty());
    assert!(s.is_ready());
}

#[test]
fn messages_both_ways() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    s.send_message(vec![1, 2, 3]).unwrap();
    assert_eq!(
        p.recv(&mut s),
        [Packet::Packet(t::Packet {
            data: vec![1, 2, 3]
        })]
    );
    p.send(&mut s, t0, Packet::Packet(t::Packet { data: vec![] }));
    assert_eq!(events(&mut s), [Event::Message { data: vec![] }]);
}

#[test]
fn sends_before_ready_are_held() {
    let t0 = Instant::now();
    let mut s = Session::acceptor(t0);
    s.send_message(vec![1]).unwrap();
    let id = s.send_query(t0, vec![2], 30 * S);
    assert!(s.poll_transmit().is_none());
    assert!(s.pending_transmit_bytes() > 0);
    let mut p = RawPeer::new();
    p.send(&mut s, t0, Packet::Connect(t::Connect { id: 3 }));
    assert_eq!(
        p.recv(&mut s),
        [
            Packet::Connected(t::Connected { id: 3 }),
            Packet::Packet(t::Packet { data: vec![1] }),
            Packet::Query(t::Query { id, data: vec![2] }),
        ]
    );
    assert_eq!(s.pending_transmit_bytes(), 0);
}

#[test]
fn handshake_timeout() {
    let t0 = Instant::now();
    let mut cfg = SessionConfig::for_role(Role::Acceptor);
    cfg.handshake_timeout = Some(5 * S);
    let mut s = Session::new(Role::Acceptor, t0, 0, cfg);
    assert_eq!(s.poll_timeout(), Some(t0 + 5 * S));
    s.handle_timeout(t0 + 5 * S);
    assert_eq!(s.close_reason(), Some(&CloseReason::HandshakeTimeout));
    assert_eq!(s.close_reason().unwrap().code(), ErrorCode::Timeout);
}

#[test]
fn too_large_payloads() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    let big = vec![0u8; MAX_FRAME_LEN];
    assert!(matches!(
        s.send_message(big.clone()),
        Err(SendError::TooLarge { .. })
    ));
    let id = s.send_query(t0, big.clone(), S);
    assert!(matches!(
        events(&mut s)[..],
        [Event::QueryFailed { id: i, code: 602, .. }] if i == id
    ));
    assert_eq!(s.pending_queries(), 0);
    // An overlong answer becomes an error answer.
    assert!(matches!(
        s.answer_query(9, big),
        Err(SendError::TooLarge { .. })
    ));
    assert!(matches!(
        &p.recv(&mut s)[..],
        [Packet::QueryError(e)] if e.id == 9 && e.code == 602
    ));
    // The largest allowed message goes through.
    s.send_message(vec![1u8; MAX_FRAME_LEN - 8]).unwrap();
    assert_eq!(p.recv(&mut s).len(), 1);
    assert!(s.is_ready());
}

#[test]
fn stats_count_frames_and_bytes() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    let st = s.stats();
    assert_eq!((st.frames_in, st.frames_out), (1, 1));
    p.send(&mut s, t0, Packet::Ping(t::Ping { id: 1 }));
    p.recv(&mut s);
    let st = s.stats();
    assert_eq!((st.frames_in, st.frames_out), (2, 2));
    // tcp.connect and tcp.ping frames: 8 header + 4 ctor + 8 id each.
    assert_eq!(st.bytes_in, 40);
    assert_eq!(st.bytes_out, 40);
}

#[test]
fn paused_idle_neither_times_out_nor_pings() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let q = s.send_query(t0, vec![1], 30 * S);
    p.recv(&mut s);
    s.pause_idle();
    assert!(s.is_idle_paused());
    // Only the query deadline remains.
    assert_eq!(s.poll_timeout(), Some(t0 + 30 * S));
    s.handle_timeout(t0 + 25 * S);
    assert!(s.is_ready());
    assert!(p.recv(&mut s).is_empty(), "no ping while paused");
    // Query timeouts still apply.
    s.handle_timeout(t0 + 30 * S);
    assert!(matches!(
        events(&mut s)[..],
        [Event::QueryFailed { id, code: 652, .. }] if id == q
    ));
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + 1000 * S);
    assert!(s.is_ready());
    // Resuming restarts the idle clock: ping after 10 s, idle timeout after 20 s.
    s.resume_idle(t0 + 1000 * S);
    assert!(!s.is_idle_paused());
    assert_eq!(s.poll_timeout(), Some(t0 + 1010 * S));
    s.handle_timeout(t0 + 1010 * S);
    assert!(matches!(p.recv(&mut s)[..], [Packet::Ping(_)]));
    s.handle_timeout(t0 + 1020 * S - Duration::from_millis(1));
    assert!(s.is_ready());
    s.handle_timeout(t0 + 1020 * S);
    assert_eq!(s.close_reason(), Some(&CloseReason::IdleTimeout));
}

#[test]
fn resume_idle_without_pause_changes_nothing() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_acceptor(t0);
    s.resume_idle(t0 + 30 * S);
    assert_eq!(s.poll_timeout(), Some(t0 + 60 * S));
}

#[test]
fn paused_idle_keeps_handshake_timeout() {
    let t0 = Instant::now();
    let mut cfg = SessionConfig::for_role(Role::Acceptor);
    cfg.handshake_timeout = Some(5 * S);
    let mut s = Session::new(Role::Acceptor, t0, 0, cfg);
    s.pause_idle();
    assert_eq!(s.poll_timeout(), Some(t0 + 5 * S));
    s.handle_timeout(t0 + 5 * S);
    assert_eq!(s.close_reason(), Some(&CloseReason::HandshakeTimeout));
}

#[test]
fn handle_next_frame_stops_after_one_frame() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    let mut bytes = Vec::new();
    for i in 0..3u8 {
        bytes.extend(
            p.enc
                .encode_to_vec(&Packet::Packet(t::Packet { data: vec![i; 5] }).to_bytes())
                .unwrap(),
        );
    }
    let frame_len = bytes.len() / 3;
    let mut input = &bytes[..];
    assert!(s.handle_next_frame(t0, &mut input));
    assert_eq!(input.len(), 2 * frame_len);
    assert_eq!(events(&mut s), [Event::Message { data: vec![0; 5] }]);
    // A partial frame is consumed and kept.
    let mut partial = &input[..frame_len - 1];
    assert!(!s.handle_next_frame(t0, &mut partial));
    assert!(partial.is_empty());
    let mut rest = &input[frame_len - 1..];
    assert!(s.handle_next_frame(t0, &mut rest));
    assert!(s.handle_next_frame(t0, &mut rest));
    assert!(rest.is_empty());
    assert_eq!(
        events(&mut s),
        [
            Event::Message { data: vec![1; 5] },
            Event::Message { data: vec![2; 5] }
        ]
    );
    // A closed session swallows its input.
    s.close(CloseReason::Local);
    let mut more = &bytes[..];
    assert!(!s.handle_next_frame(t0, &mut more));
    assert!(more.is_empty());
}

#[test]
fn at_most_one_pong_is_queued() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    for id in 0..1000 {
        p.send(&mut s, t0, Packet::Ping(t::Ping { id }));
    }
    assert_eq!(s.stats().frames_in, 1001);
    assert_eq!(p.recv(&mut s), [Packet::Pong(t::Pong { id: 0 })]);
    // Once the pong is taken, the next ping is answered again.
    p.send(&mut s, t0, Packet::Ping(t::Ping { id: 5000 }));
    assert_eq!(p.recv(&mut s), [Packet::Pong(t::Pong { id: 5000 })]);
    // Also when other frames are queued in front of it.
    s.send_message(vec![1; 10]).unwrap();
    p.send(&mut s, t0, Packet::Ping(t::Ping { id: 6000 }));
    p.send(&mut s, t0, Packet::Ping(t::Ping { id: 6001 }));
    s.send_message(vec![2; 10]).unwrap();
    assert_eq!(
        p.recv(&mut s),
        [
            Packet::Packet(t::Packet { data: vec![1; 10] }),
            Packet::Pong(t::Pong { id: 6000 }),
            Packet::Packet(t::Packet { data: vec![2; 10] }),
        ]
    );
    // Discarded frames do not count as queued.
    p.send(&mut s, t0, Packet::Ping(t::Ping { id: 7000 }));
    s.discard_transmit();
    p.send(&mut s, t0, Packet::Ping(t::Ping { id: 7001 }));
    assert_eq!(s.next_transmit_len(), Some(20));
}

#[test]
fn forgotten_query_is_silent_and_late_answer_ignored() {
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let a = s.send_query(t0, vec![1], 5 * S);
    let b = s.send_query_until(vec![2], None);
    assert_eq!(s.pending_queries(), 2);
    p.recv(&mut s);
    assert!(s.forget_query(a));
    assert!(!s.forget_query(a));
    assert!(s.forget_query(b));
    assert_eq!(s.pending_queries(), 0);
    // No deadline left for it: only the ping.
    assert_eq!(s.poll_timeout(), Some(t0 + 10 * S));
    s.handle_timeout(t0 + 5 * S);
    assert!(events(&mut s).is_empty());
    p.send(
        &mut s,
        t0 + 6 * S,
        Packet::QueryAnswer(t::QueryAnswer {
            id: a,
            data: vec![9],
        }),
    );
    assert!(events(&mut s).is_empty());
    assert!(s.is_ready());
    // Forgotten queries do not fail at close either.
    s.close(CloseReason::Local);
    assert_eq!(
        events(&mut s),
        [Event::Closed {
            reason: CloseReason::Local
        }]
    );
}

#[test]
fn query_deadline_in_the_past_fails_at_next_timeout() {
    let t0 = Instant::now();
    let (mut s, _p) = ready_initiator(t0);
    let id = s.send_query_until(vec![1], Some(t0));
    assert_eq!(s.poll_timeout(), Some(t0));
    s.handle_timeout(t0);
    assert!(matches!(
        events(&mut s)[..],
        [Event::QueryFailed { id: i, code: 652, .. }] if i == id
    ));
}

#[test]
fn query_error_with_invalid_utf8_fails_only_that_query() {
    use cocoon_tl::{Identifiable, write};
    let t0 = Instant::now();
    let (mut s, mut p) = ready_initiator(t0);
    let a = s.send_query(t0, b"a".to_vec(), 30 * S);
    let b = s.send_query(t0, b"b".to_vec(), 30 * S);
    p.recv(&mut s);
    let mut payload = Vec::new();
    write::u32(&mut payload, t::QueryError::CONSTRUCTOR_ID);
    write::i64(&mut payload, a);
    write::i32(&mut payload, 602);
    write::bytes(&mut payload, b"bad \xe2\x82"); // truncated UTF-8 sequence
    p.send_raw_payload(&mut s, t0, &payload);
    assert!(s.is_ready(), "{:?}", s.close_reason());
    match &events(&mut s)[..] {
        [Event::QueryFailed { id, code, message }] => {
            assert_eq!((*id, *code), (a, 602));
            assert!(message.starts_with("bad "), "{message:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The other query is unaffected.
    assert_eq!(s.pending_queries(), 1);
    p.send(
        &mut s,
        t0,
        Packet::QueryAnswer(t::QueryAnswer {
            id: b,
            data: vec![7],
        }),
    );
    assert_eq!(
        events(&mut s),
        [Event::QueryAnswer {
            id: b,
            data: vec![7]
        }]
    );
}

#[test]
fn debug_output_hides_payloads() {
    let secret = b"my secret prompt".to_vec();
    for e in [
        Event::Query {
            id: 5,
            data: secret.clone(),
        },
        Event::Message {
            data: secret.clone(),
        },
        Event::QueryAnswer {
            id: 6,
            data: secret.clone(),
        },
    ] {
        let text = format!("{e:?}");
        assert!(text.contains("len: 16"), "{text}");
        assert!(!text.contains("109, 121"), "payload bytes in {text}"); // "my"
    }
    let t0 = Instant::now();
    let (mut s, mut p) = ready_acceptor(t0);
    s.send_message(secret.clone()).unwrap();
    let mut bytes = p
        .enc
        .encode_to_vec(
            &Packet::Packet(t::Packet {
                data: secret.clone(),
            })
            .to_bytes(),
        )
        .unwrap();
    bytes.truncate(bytes.len() - 2);
    s.handle_bytes(t0, &bytes);
    let text = format!("{s:?}");
    assert!(text.contains("pending_transmit_bytes"), "{text}");
    assert!(!text.contains("109, 121"), "payload bytes in {text}");
}

// ---------------------------------------------------------------------------------------------
// Two sessions against each other through random chunkings.

#[derive(Debug, Clone)]
enum Op {
    Msg {
        from_a: bool,
        data: Vec<u8>,
    },
    Query {
        from_a: bool,
        data: Vec<u8>,
    },
    /// Move at most `n` bytes in each direction.
    Pump(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let data = prop::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (any::<bool>(), data.clone()).prop_map(|(from_a, data)| Op::Msg { from_a, data }),
        (any::<bool>(), data).prop_map(|(from_a, data)| Op::Query { from_a, data }),
        (1usize..200).prop_map(Op::Pump),
    ]
}

/// Bytes written by one side but not yet delivered to the other.
#[derive(Default)]
struct Wire {
    bytes: std::collections::VecDeque<u8>,
}

impl Wire {
    fn take_from(&mut self, s: &mut Session) {
        while let Some(c) = s.poll_transmit() {
            self.bytes.extend(c);
        }
    }

    fn deliver(&mut self, to: &mut Session, now: Instant, chunks: &[usize], max: usize) {
        let mut moved = 0;
        let mut i = 0;
        while moved < max && !self.bytes.is_empty() {
            let n = chunks[i % chunks.len()]
                .min(self.bytes.len())
                .min(max - moved);
            let chunk: Vec<u8> = self.bytes.drain(..n).collect();
            to.handle_bytes(now, &chunk);
            moved += n;
            i += 1;
        }
    }
}

#[derive(Default)]
struct Seen {
    messages: Vec<Vec<u8>>,
    queries: Vec<Vec<u8>>,
    answers: HashMap<QueryId, Vec<u8>>,
}

fn answer_for(q: &[u8]) -> Vec<u8> {
    let mut a: Vec<u8> = q.iter().rev().copied().collect();
    a.push(0xAA);
    a
}

fn drain(s: &mut Session, seen: &mut Seen) -> Result<(), TestCaseError> {
    while let Some(e) = s.poll_event() {
        match e {
            Event::Ready => {}
            Event::Message { data } => seen.messages.push(data),
            Event::Query { id, data } => {
                s.answer_query(id, answer_for(&data)).unwrap();
                seen.queries.push(data);
            }
            Event::QueryAnswer { id, data } => {
                prop_assert!(seen.answers.insert(id, data).is_none(), "answered twice");
            }
            other => prop_assert!(false, "unexpected event {other:?}"),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn two_sessions_random_chunking(
        ops in prop::collection::vec(op(), 0..60),
        chunks_ab in prop::collection::vec(1usize..40, 1..8),
        chunks_ba in prop::collection::vec(1usize..40, 1..8),
    ) {
        let t0 = Instant::now();
        let mut a = Session::initiator(t0, 99);
        let mut b = Session::acceptor(t0);
        let (mut ab, mut ba) = (Wire::default(), Wire::default());
        let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
        // What each side sent, in order; queries with the id they got.
        let (mut msgs_a, mut msgs_b) = (Vec::new(), Vec::new());
        let (mut qs_a, mut qs_b) = (Vec::new(), Vec::new());

        let mut step = |a: &mut Session, b: &mut Session, max: usize,
                        seen_a: &mut Seen, seen_b: &mut Seen| -> Result<(), TestCaseError> {
            ab.take_from(a);
            ab.deliver(b, t0, &chunks_ab, max);
            drain(b, seen_b)?;
            ba.take_from(b);
            ba.deliver(a, t0, &chunks_ba, max);
            drain(a, seen_a)?;
            Ok(())
        };

        for op in ops {
            match op {
                Op::Msg { from_a: true, data } => {
                    a.send_message(data.clone()).unwrap();
                    msgs_a.push(data);
                }
                Op::Msg { from_a: false, data } => {
                    b.send_message(data.clone()).unwrap();
                    msgs_b.push(data);
                }
                Op::Query { from_a: true, data } => {
                    qs_a.push((a.send_query(t0, data.clone(), S), data));
                }
                Op::Query { from_a: false, data } => {
                    qs_b.push((b.send_query(t0, data.clone(), S), data));
                }
                Op::Pump(n) => step(&mut a, &mut b, n, &mut seen_a, &mut seen_b)?,
            }
        }
        // Flush everything.
        for _ in 0..4 {
            step(&mut a, &mut b, usize::MAX, &mut seen_a, &mut seen_b)?;
        }
        prop_assert!(a.is_ready() && b.is_ready());
        prop_assert_eq!(&seen_b.messages, &msgs_a);
        prop_assert_eq!(&seen_a.messages, &msgs_b);
        let sent_a: Vec<Vec<u8>> = qs_a.iter().map(|(_, d)| d.clone()).collect();
        let sent_b: Vec<Vec<u8>> = qs_b.iter().map(|(_, d)| d.clone()).collect();
        prop_assert_eq!(&seen_b.queries, &sent_a);
        prop_assert_eq!(&seen_a.queries, &sent_b);
        prop_assert_eq!(seen_a.answers.len(), qs_a.len());
        prop_assert_eq!(seen_b.answers.len(), qs_b.len());
        for (id, data) in &qs_a {
            prop_assert_eq!(&seen_a.answers[id], &answer_for(data));
        }
        for (id, data) in &qs_b {
            prop_assert_eq!(&seen_b.answers[id], &answer_for(data));
        }
        prop_assert_eq!(a.pending_queries(), 0);
        prop_assert_eq!(b.pending_queries(), 0);
        prop_assert!(a.buffered_inbound_bytes() == 0 && b.buffered_inbound_bytes() == 0);
    }
}

#[test]
fn acceptor_with_ping_every_pings_repeatedly_while_silent() {
    let t0 = Instant::now();
    let mut cfg = SessionConfig::for_role(Role::Acceptor);
    cfg.ping = true;
    cfg.ping_every = Some(5 * S);
    let mut s = Session::new(Role::Acceptor, t0, 0, cfg);
    let mut p = RawPeer::new();
    p.send(&mut s, t0, Packet::Connect(t::Connect { id: 7 }));
    assert_eq!(p.recv(&mut s), [Packet::Connected(t::Connected { id: 7 })]);
    assert_eq!(events(&mut s), [Event::Ready]);
    s.handle_timeout(t0 + 4 * S);
    assert!(p.recv(&mut s).is_empty(), "no ping before 5 s of silence");
    // One ping per interval of silence, not only the first.
    for k in 1..=3u32 {
        assert_eq!(s.poll_timeout(), Some(t0 + 5 * k * S));
        s.handle_timeout(t0 + 5 * k * S);
        assert!(matches!(p.recv(&mut s)[..], [Packet::Ping(_)]), "ping {k}");
    }
    // A pong restarts the interval from its arrival.
    p.send(&mut s, t0 + 16 * S, Packet::Pong(t::Pong { id: 3 }));
    assert_eq!(s.stats().pings_in, 0);
    p.send(&mut s, t0 + 16 * S, Packet::Ping(t::Ping { id: 9 }));
    assert_eq!(p.recv(&mut s), [Packet::Pong(t::Pong { id: 9 })]);
    assert_eq!(s.stats().pings_in, 1);
    assert_eq!(s.poll_timeout(), Some(t0 + 21 * S));
    s.handle_timeout(t0 + 20 * S);
    assert!(p.recv(&mut s).is_empty());
    // The idle timeout still closes the session.
    s.handle_timeout(t0 + 76 * S);
    assert_eq!(s.close_reason(), Some(&CloseReason::IdleTimeout));
}
