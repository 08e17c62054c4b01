//! The sans-I/O `cocoon_net::Session` driven by arbitrary peer bytes, time and local actions.
//!
//! Input: `cfg:u8` (bit 0: initiator; bit 1: custom timing from the next 3 bytes), for an
//! initiator the 8-byte connect id, then operations (one op byte, then its arguments):
//!
//! | op % 10 | action |
//! |---|---|
//! | 0 | feed `len:u8` raw peer bytes (`len` 0: all the rest of the input) |
//! | 1 | advance the clock by `u16` × 10 ms |
//! | 2 | `handle_timeout` at the session's `poll_timeout` (or now) |
//! | 3 | `send_query` (`len:u8` data, timeout `u16` × 10 ms) |
//! | 4 | `send_message` (`len:u8` data) |
//! | 5 | `answer_query` to a query the peer made, or any id |
//! | 6 | `answer_query_error` |
//! | 7 | the peer sends a well-formed `tcp.Packet`, framed with the next seqno, in 2 chunks |
//! | 8 | `close` |
//! | 9 | take the queued frames (`poll_transmit`), or with an odd byte `discard_transmit` |
//!
//! Checked: no panic; every query we send completes exactly once (answer or failure), all of
//! them before `Closed`; `Closed` comes once and then nothing but the immediate failures of
//! queries sent after it; once closed the session stays closed, has no timeout and produces
//! no frames; every frame it transmits is well-formed with consecutive seqnos and the right
//! opening packet; inbound buffering stays within one frame. (Payloads over the 16 MiB frame
//! limit are left to the unit tests: allocating them makes each run take ~50 ms under ASan.)
#![no_main]

use cocoon_net::session::{CloseReason, Event, QueryId, Role, Session, SessionConfig};
use cocoon_tl::enums::tcp::Packet;
use cocoon_tl::frame::{FRAME_HEADER_LEN, FrameDecoder, MAX_FRAME_LEN, encode_frame};
use cocoon_tl::types::tcp as t;
use cocoon_tl::{TlRead, TlWrite};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::time::{Duration, Instant};

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        i64::from_le_bytes(b)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct Harness {
    session: Session,
    role: Role,
    connect_id: i64,
    now: Instant,
    /// Our queries not completed yet.
    pending: HashSet<QueryId>,
    /// Every query id the session gave us.
    issued: HashSet<QueryId>,
    /// Queries sent after `Closed`: they fail at once.
    after_close: HashSet<QueryId>,
    /// Ids of queries the peer made (to answer).
    peer_queries: Vec<QueryId>,
    ready_seen: bool,
    closed_seen: bool,
    frames_out_at_close: u64,
    /// Decodes what the session transmits.
    out_decoder: FrameDecoder,
    /// Whether the first frame sent (the opening packet) was checked or discarded.
    opening_checked: bool,
}

impl Harness {
    fn check(&mut self) {
        let s = &mut self.session;
        while let Some(ev) = s.poll_event() {
            if self.closed_seen {
                match ev {
                    Event::QueryFailed { id, code, .. } if self.after_close.remove(&id) => {
                        assert_eq!(code, 651, "query on a closed session");
                    }
                    other => panic!("event after Closed: {other:?}"),
                }
                continue;
            }
            match ev {
                Event::Ready => {
                    assert!(!self.ready_seen, "Ready twice");
                    self.ready_seen = true;
                }
                Event::Query { id, .. } => {
                    assert!(self.ready_seen, "query before Ready");
                    if self.peer_queries.len() < 64 {
                        self.peer_queries.push(id);
                    }
                }
                Event::Message { .. } => assert!(self.ready_seen, "message before Ready"),
                Event::QueryAnswer { id, .. } => {
                    assert!(self.pending.remove(&id), "answer to query {id} not pending");
                }
                Event::QueryFailed { id, code, message } => {
                    assert!(
                        self.pending.remove(&id),
                        "failure of query {id} not pending"
                    );
                    let _ = (code, message);
                }
                Event::Closed { reason } => {
                    assert!(s.is_closed(), "Closed event but session not closed");
                    assert!(
                        self.pending.is_empty(),
                        "Closed while queries pending: {:?}",
                        self.pending
                    );
                    assert_eq!(s.close_reason(), Some(&reason));
                    let _ = reason.to_string();
                    self.closed_seen = true;
                    self.frames_out_at_close = s.stats().frames_out;
                }
            }
        }
        assert_eq!(
            s.is_closed(),
            self.closed_seen,
            "closed without a Closed event"
        );
        if self.closed_seen {
            assert!(s.is_closed() && !s.is_ready());
            assert_eq!(s.poll_timeout(), None, "closed session asks for a timeout");
            assert_eq!(s.pending_queries(), 0);
            assert_eq!(
                s.stats().frames_out,
                self.frames_out_at_close,
                "frames produced after close"
            );
        } else {
            assert_eq!(s.pending_queries(), self.pending.len(), "pending count");
        }
        assert!(s.buffered_inbound_bytes() <= FRAME_HEADER_LEN + MAX_FRAME_LEN);
    }

    /// Takes every queued frame, as a driver writing to the socket would, and checks it.
    fn flush(&mut self) {
        while let Some(chunk) = self.session.poll_transmit() {
            let frames = self
                .out_decoder
                .decode_all(&chunk)
                .unwrap_or_else(|e| panic!("session sent a bad frame: {e}"));
            assert_eq!(frames.len(), 1, "one frame per transmit chunk");
            assert!(!self.out_decoder.has_partial());
            let packet = Packet::from_bytes(&frames[0].payload)
                .unwrap_or_else(|e| panic!("session sent a bad packet: {e}"));
            if !self.opening_checked {
                self.opening_checked = true;
                match (self.role, &packet) {
                    (Role::Initiator, Packet::Connect(c)) => assert_eq!(c.id, self.connect_id),
                    (Role::Acceptor, Packet::Connected(_)) => {}
                    (role, p) => panic!("{role:?} opened with {}", p.constructor_name()),
                }
            }
        }
        assert_eq!(self.session.next_transmit_len(), None);
    }

    fn discard(&mut self) {
        self.session.discard_transmit();
        assert_eq!(self.session.next_transmit_len(), None);
        let produced = self.session.stats().frames_out;
        // The discarded frames used their seqnos: the next frame carries `produced`.
        self.out_decoder = FrameDecoder::with_seqno(produced as i32);
        if produced > 0 {
            self.opening_checked = true;
        }
    }

    fn new_query(&mut self, id: QueryId) {
        assert!(self.issued.insert(id), "query id {id} reused");
        if self.closed_seen {
            self.after_close.insert(id);
        } else {
            self.pending.insert(id);
        }
    }

    fn pick_peer_query(&mut self, inp: &mut Input<'_>) -> QueryId {
        let b = inp.byte();
        if b < 0xC0 && !self.peer_queries.is_empty() {
            self.peer_queries[usize::from(b) % self.peer_queries.len()]
        } else {
            inp.i64()
        }
    }

    fn pick_our_query(&mut self, inp: &mut Input<'_>) -> QueryId {
        let b = inp.byte();
        let mut ids: Vec<QueryId> = self.issued.iter().copied().collect();
        ids.sort_unstable();
        if b < 0xC0 && !ids.is_empty() {
            ids[usize::from(b) % ids.len()]
        } else {
            inp.i64()
        }
    }

    fn peer_packet(&mut self, inp: &mut Input<'_>) -> Packet {
        let kind = inp.byte();
        let data = |inp: &mut Input<'_>| {
            let len = usize::from(inp.byte());
            inp.take(len).to_vec()
        };
        match kind % 8 {
            0 => Packet::Connect(t::Connect { id: inp.i64() }),
            1 => {
                let id = if inp.byte() & 1 == 0 {
                    self.connect_id
                } else {
                    inp.i64()
                };
                Packet::Connected(t::Connected { id })
            }
            2 => Packet::Ping(t::Ping { id: inp.i64() }),
            3 => Packet::Pong(t::Pong { id: inp.i64() }),
            4 => Packet::Query(t::Query {
                id: inp.i64(),
                data: data(inp),
            }),
            5 => Packet::QueryAnswer(t::QueryAnswer {
                id: self.pick_our_query(inp),
                data: data(inp),
            }),
            6 => Packet::QueryError(t::QueryError {
                id: self.pick_our_query(inp),
                code: i32::from(inp.u16()),
                message: String::from_utf8_lossy(&data(inp)).into_owned(),
            }),
            _ => Packet::Packet(t::Packet { data: data(inp) }),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let cfg = inp.byte();
    let role = if cfg & 1 != 0 {
        Role::Initiator
    } else {
        Role::Acceptor
    };
    let config = if cfg & 2 != 0 {
        let idle = Duration::from_millis(u64::from(inp.byte()) * 250);
        let ping = inp.byte() & 1 != 0;
        let hs = inp.byte();
        let every = inp.byte();
        SessionConfig {
            idle_timeout: idle,
            ping,
            handshake_timeout: (hs != 0).then(|| Duration::from_millis(u64::from(hs) * 100)),
            ping_every: (every != 0).then(|| Duration::from_millis(u64::from(every) * 100)),
        }
    } else {
        SessionConfig::for_role(role)
    };
    let connect_id = if role == Role::Initiator {
        inp.i64()
    } else {
        0
    };
    let now = Instant::now();
    let mut h = Harness {
        session: Session::new(role, now, connect_id, config),
        role,
        connect_id,
        now,
        pending: HashSet::new(),
        issued: HashSet::new(),
        after_close: HashSet::new(),
        peer_queries: Vec::new(),
        ready_seen: false,
        closed_seen: false,
        frames_out_at_close: 0,
        out_decoder: FrameDecoder::new(),
        opening_checked: false,
    };
    h.check();

    let mut steps = 0;
    while !inp.is_empty() && steps < 4096 {
        steps += 1;
        let op = inp.byte();
        match op % 10 {
            0 => {
                let len = usize::from(inp.byte());
                let chunk = if len == 0 {
                    inp.take(usize::MAX)
                } else {
                    inp.take(len)
                };
                h.session.handle_bytes(h.now, chunk);
            }
            1 => {
                h.now += Duration::from_millis(u64::from(inp.u16()) * 10);
            }
            2 => {
                if let Some(t) = h.session.poll_timeout() {
                    h.now = h.now.max(t);
                }
                h.session.handle_timeout(h.now);
            }
            3 => {
                let len = usize::from(inp.byte());
                let body = inp.take(len).to_vec();
                let timeout = Duration::from_millis(u64::from(inp.u16()) * 10);
                let id = h.session.send_query(h.now, body, timeout);
                h.new_query(id);
            }
            4 => {
                let len = usize::from(inp.byte());
                let body = inp.take(len).to_vec();
                let res = h.session.send_message(body);
                assert_eq!(res.is_err(), h.session.is_closed(), "send_message: {res:?}");
            }
            5 => {
                let id = h.pick_peer_query(&mut inp);
                let len = usize::from(inp.byte());
                let body = inp.take(len).to_vec();
                let res = h.session.answer_query(id, body);
                assert_eq!(res.is_err(), h.session.is_closed(), "answer_query: {res:?}");
            }
            6 => {
                let id = h.pick_peer_query(&mut inp);
                let code = i32::from(inp.u16());
                let len = usize::from(inp.byte());
                let msg = String::from_utf8_lossy(inp.take(len)).into_owned();
                let res = h.session.answer_query_error(id, code, msg);
                assert_eq!(res.is_err(), h.session.is_closed());
            }
            7 => {
                let packet = h.peer_packet(&mut inp);
                let seqno = h.session.stats().frames_in as i32;
                let frame = encode_frame(seqno, &packet.to_bytes()).expect("small frame");
                let cut = usize::from(inp.byte()) % (frame.len() + 1);
                h.session.handle_bytes(h.now, &frame[..cut]);
                h.check();
                h.session.handle_bytes(h.now, &frame[cut..]);
            }
            8 => {
                let reason = match inp.byte() % 4 {
                    0 => CloseReason::Local,
                    1 => CloseReason::PeerClosed,
                    2 => CloseReason::Io("broken pipe".into()),
                    _ => CloseReason::ProtocolError("fuzz".into()),
                };
                h.session.close(reason);
            }
            _ => {
                if inp.byte() & 1 == 0 {
                    h.flush();
                } else {
                    h.discard();
                }
            }
        }
        h.check();
    }

    // Closing completes every query that is still pending.
    h.session.close(CloseReason::Local);
    h.check();
    h.flush();
    assert!(h.closed_seen);
    assert!(
        h.pending.is_empty(),
        "queries never completed: {:?}",
        h.pending
    );
    assert!(h.after_close.is_empty(), "queries after close never failed");
});
