//! Sans-I/O session state machine.
//!
//! A [`Session`] owns one direction pair of a connection: framing, the
//! `tcp.connect`/`tcp.connected` opening, pings, idle timeout, and query bookkeeping. It does no
//! I/O and never reads a clock: raw bytes are fed in with [`Session::handle_bytes`], time is
//! passed in as [`Instant`]s, framed bytes to write come out of [`Session::poll_transmit`] and
//! application events out of [`Session::poll_event`]. [`Session::poll_timeout`] says when
//! [`Session::handle_timeout`] must be called next. A caller that wants to stop reading part
//! way through its input feeds it frame by frame with [`Session::handle_next_frame`].
//!
//! A caller that stops reading for its own reasons (its consumer is slow) calls
//! [`Session::pause_idle`] so that the idle timeout and pings do not fire against a peer whose
//! frames are merely unread, and [`Session::resume_idle`] when it reads again.
//!
//! Guarantees:
//! * every query sent with [`Session::send_query`] completes with exactly one
//!   [`Event::QueryAnswer`] or [`Event::QueryFailed`] (remote error, local timeout, or session
//!   close), unless the caller forgets it with [`Session::forget_query`];
//! * inbound data is never buffered beyond one partial frame;
//! * answering the peer's pings cannot grow the transmit queue: at most one `tcp.pong` waits in
//!   it at any time (a ping arriving while one does is not answered separately);
//! * nothing the peer sends can make the session panic: protocol violations close it with
//!   [`CloseReason::ProtocolError`] (code 621).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use cocoon_tl::codes::ErrorCode;
use cocoon_tl::enums::tcp::Packet;
use cocoon_tl::frame::{FRAME_HEADER_LEN, FrameDecoder, FrameEncoder, FrameError, MAX_FRAME_LEN};
use cocoon_tl::types::tcp as t;
use cocoon_tl::{TlRead, TlWrite};

/// Identifier of a query (ours or the peer's).
pub type QueryId = i64;

/// Default idle timeout of the connecting side.
pub const INITIATOR_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default idle timeout of the accepting side.
pub const ACCEPTOR_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Shortest interval [`SessionConfig::ping_every`] is taken as.
pub const MIN_PING_EVERY: Duration = Duration::from_millis(100);

/// Which side of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Connecting side: sends `tcp.connect`, pings when idle.
    Initiator,
    /// Accepting side: answers `tcp.connect` with `tcp.connected`.
    Acceptor,
}

/// Timing parameters of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The session fails with [`CloseReason::IdleTimeout`] when nothing was received for this
    /// long.
    pub idle_timeout: Duration,
    /// Send a `tcp.ping` after `idle_timeout / 2` of receive silence (once, until something is
    /// received). On by default on the initiator only.
    pub ping: bool,
    /// With `ping`: send a `tcp.ping` after this long of receive silence and again every
    /// this long while the silence lasts, instead of once after `idle_timeout / 2`. The
    /// proxy's worker sessions use it (`worker_ping_seconds`) to notice a silent worker long
    /// before the idle timeout; any peer answers `tcp.ping` with `tcp.pong`. At least
    /// [`MIN_PING_EVERY`].
    pub ping_every: Option<Duration>,
    /// Fail with [`CloseReason::HandshakeTimeout`] if not ready this long after creation.
    /// `None`: only the idle timeout applies.
    pub handshake_timeout: Option<Duration>,
}

impl SessionConfig {
    /// Defaults for `role` (COCOON-compatible, see docs/cocoon-compat.md): initiator 20 s
    /// idle with pings, acceptor 60 s without.
    pub fn for_role(role: Role) -> Self {
        match role {
            Role::Initiator => SessionConfig {
                idle_timeout: INITIATOR_IDLE_TIMEOUT,
                ping: true,
                ping_every: None,
                handshake_timeout: None,
            },
            Role::Acceptor => SessionConfig {
                idle_timeout: ACCEPTOR_IDLE_TIMEOUT,
                ping: false,
                ping_every: None,
                handshake_timeout: None,
            },
        }
    }
}

/// Why a session closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Closed by the local application.
    Local,
    /// The peer closed the connection (EOF).
    PeerClosed,
    /// The peer violated the protocol; the message says how.
    ProtocolError(String),
    /// Nothing was received for the idle timeout.
    IdleTimeout,
    /// The opening handshake did not complete in time.
    HandshakeTimeout,
    /// A transport error.
    Io(String),
}

impl CloseReason {
    /// TON error code describing this reason.
    pub fn code(&self) -> ErrorCode {
        match self {
            CloseReason::Local => ErrorCode::Cancelled,
            CloseReason::PeerClosed | CloseReason::Io(_) => ErrorCode::NotReady,
            CloseReason::ProtocolError(_) => ErrorCode::ProtoViolation,
            CloseReason::IdleTimeout | CloseReason::HandshakeTimeout => ErrorCode::Timeout,
        }
    }

    /// Code with which queries still pending at close fail: cancelled (653) on a local close,
    /// notready (651) otherwise.
    pub fn pending_query_code(&self) -> ErrorCode {
        match self {
            CloseReason::Local => ErrorCode::Cancelled,
            _ => ErrorCode::NotReady,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::PeerClosed => f.write_str("connection closed by peer"),
            CloseReason::ProtocolError(msg) => write!(f, "protocol violation: {msg}"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timeout"),
            CloseReason::Io(msg) => write!(f, "i/o error: {msg}"),
        }
    }
}

/// Something the application must know about. `Debug` shows ids and body lengths, never
/// bodies.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// The opening handshake completed.
    Ready,
    /// The peer sent a query; answer it with [`Session::answer_query`] or
    /// [`Session::answer_query_error`].
    Query {
        /// The peer's query id.
        id: QueryId,
        /// Query body.
        data: Vec<u8>,
    },
    /// The peer sent a one-way message (`tcp.packet`).
    Message {
        /// Message body.
        data: Vec<u8>,
    },
    /// One of our queries was answered.
    QueryAnswer {
        /// Our query id.
        id: QueryId,
        /// Answer body.
        data: Vec<u8>,
    },
    /// One of our queries failed: remote `tcp.queryError`, local timeout (652), or session
    /// close (651/653).
    QueryFailed {
        /// Our query id.
        id: QueryId,
        /// TON error code.
        code: i32,
        /// Human-readable message.
        message: String,
    },
    /// The session closed; no further events follow.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Ready => f.write_str("Ready"),
            Event::Query { id, data } => f
                .debug_struct("Query")
                .field("id", id)
                .field("len", &data.len())
                .finish(),
            Event::Message { data } => f.debug_struct("Message").field("len", &data.len()).finish(),
            Event::QueryAnswer { id, data } => f
                .debug_struct("QueryAnswer")
                .field("id", id)
                .field("len", &data.len())
                .finish(),
            Event::QueryFailed { id, code, message } => f
                .debug_struct("QueryFailed")
                .field("id", id)
                .field("code", code)
                .field("message", message)
                .finish(),
            Event::Closed { reason } => f.debug_struct("Closed").field("reason", reason).finish(),
        }
    }
}

/// Why something could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// The encoded packet would exceed the maximum frame length.
    #[error("packet too large: {len} bytes (maximum {max})", max = MAX_FRAME_LEN)]
    TooLarge {
        /// Encoded packet length.
        len: usize,
    },
}

/// Traffic counters. Outbound counters count frames when they are produced (queued for
/// transmission); inbound ones count every byte fed in and every complete frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Complete frames received.
    pub frames_in: u64,
    /// Frames produced for transmission.
    pub frames_out: u64,
    /// Raw bytes received.
    pub bytes_in: u64,
    /// Raw bytes produced for transmission (headers included).
    pub bytes_out: u64,
    /// `tcp.ping` frames received (counted in `frames_in` too). A peer's own pings show
    /// that it sends, not that it hears us: the proxy's liveness check leaves them out.
    pub pings_in: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Ready,
    Closed,
}

/// Capacity to reserve for the frame of `p`: an upper bound of its encoded size (the frame
/// length itself is checked by the encoder).
fn frame_capacity(p: &Packet) -> usize {
    // Header, constructor, id, code, length prefix and padding take at most 32 bytes.
    FRAME_HEADER_LEN
        + 32
        + match p {
            Packet::Packet(x) => x.data.len(),
            Packet::Query(x) => x.data.len(),
            Packet::QueryAnswer(x) => x.data.len(),
            Packet::QueryError(x) => x.message.len(),
            Packet::Ping(_) | Packet::Pong(_) | Packet::Connect(_) | Packet::Connected(_) => 0,
        }
}

/// The session state machine. See the [module docs](self). `Debug` shows state and sizes,
/// never payloads.
pub struct Session {
    role: Role,
    config: SessionConfig,
    state: State,
    /// Initiator: the id sent in `tcp.connect`.
    connect_id: i64,
    created: Instant,
    last_recv: Instant,
    /// The caller stopped reading for local reasons: no idle timeout, no pings.
    idle_paused: bool,
    ping_sent: bool,
    /// When the last ping was sent (repeated pings, [`SessionConfig::ping_every`]).
    last_ping: Instant,
    next_ping_id: i64,
    next_query_id: QueryId,
    encoder: FrameEncoder,
    decoder: FrameDecoder,
    /// Framed bytes ready to be written, in order.
    transmit: VecDeque<Vec<u8>>,
    transmit_bytes: usize,
    /// Frames taken from `transmit` (or discarded) so far; `stats.frames_out` counts those
    /// put in.
    frames_taken: u64,
    /// Position (in `stats.frames_out` numbering) of the last `tcp.pong` queued.
    last_pong: Option<u64>,
    /// Encoded packets (unframed) queued before the session became ready.
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
    events: VecDeque<Event>,
    /// Our pending queries and their deadlines.
    pending: HashMap<QueryId, Option<Instant>>,
    deadlines: BTreeSet<(Instant, QueryId)>,
    close_reason: Option<CloseReason>,
    stats: SessionStats,
}

impl Session {
    /// A connecting session with default timing; `connect_id` should be random.
    /// The `tcp.connect` frame is queued immediately.
    pub fn initiator(now: Instant, connect_id: i64) -> Self {
        Self::new(
            Role::Initiator,
            now,
            connect_id,
            SessionConfig::for_role(Role::Initiator),
        )
    }

    /// An accepting session with default timing.
    pub fn acceptor(now: Instant) -> Self {
        Self::new(
            Role::Acceptor,
            now,
            0,
            SessionConfig::for_role(Role::Acceptor),
        )
    }

    /// A session with explicit configuration (`connect_id` is ignored for acceptors).
    pub fn new(role: Role, now: Instant, connect_id: i64, config: SessionConfig) -> Self {
        let mut session = Session {
            role,
            config,
            state: State::Handshaking,
            connect_id,
            created: now,
            last_recv: now,
            idle_paused: false,
            ping_sent: false,
            last_ping: now,
            next_ping_id: 1,
            next_query_id: 1,
            encoder: FrameEncoder::new(),
            decoder: FrameDecoder::new(),
            transmit: VecDeque::new(),
            transmit_bytes: 0,
            frames_taken: 0,
            last_pong: None,
            held: VecDeque::new(),
            held_bytes: 0,
            events: VecDeque::new(),
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            close_reason: None,
            stats: SessionStats::default(),
        };
        if role == Role::Initiator {
            session.transmit_control(&Packet::Connect(t::Connect { id: connect_id }));
        }
        session
    }

    /// This session's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration in use.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Whether the opening handshake completed and the session is not closed.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// Number of our queries awaiting an answer.
    pub fn pending_queries(&self) -> usize {
        self.pending.len()
    }

    /// Traffic counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Bytes waiting to be written: framed bytes not yet taken with
    /// [`Session::poll_transmit`] plus packets held until the handshake completes.
    pub fn pending_transmit_bytes(&self) -> usize {
        self.transmit_bytes + self.held_bytes
    }

    /// Bytes of a partial inbound frame held by the decoder (at most one frame).
    pub fn buffered_inbound_bytes(&self) -> usize {
        self.decoder.buffered_len()
    }

    /// Next chunk of framed bytes to write to the peer (one frame per call).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let chunk = self.transmit.pop_front()?;
        self.transmit_bytes -= chunk.len();
        self.frames_taken += 1;
        Some(chunk)
    }

    /// Length of the chunk the next [`Session::poll_transmit`] call returns.
    pub fn next_transmit_len(&self) -> Option<usize> {
        self.transmit.front().map(Vec::len)
    }

    /// Next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Earliest instant at which [`Session::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut earliest = self.idle_deadline();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        };
        if self.state == State::Handshaking {
            consider(self.handshake_deadline());
        }
        consider(self.ping_deadline());
        consider(self.deadlines.first().map(|(t, _)| *t));
        earliest
    }

    fn handshake_deadline(&self) -> Option<Instant> {
        self.config
            .handshake_timeout
            .and_then(|d| self.created.checked_add(d))
    }

    fn idle_deadline(&self) -> Option<Instant> {
        if self.idle_paused {
            return None;
        }
        self.last_recv.checked_add(self.config.idle_timeout)
    }

    fn ping_deadline(&self) -> Option<Instant> {
        if !self.config.ping || self.state != State::Ready || self.idle_paused {
            return None;
        }
        // A zero interval would ping on every wake-up.
        let ping_every = self.config.ping_every.map(|d| d.max(MIN_PING_EVERY));
        match ping_every {
            Some(every) if self.ping_sent => self.last_ping.checked_add(every),
            Some(every) => self.last_recv.checked_add(every),
            None if self.ping_sent => None,
            None => self.last_recv.checked_add(self.config.idle_timeout / 2),
        }
    }

    /// Processes expired deadlines: query timeouts (652), ping, idle and handshake timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            self.pending.remove(&id);
            tracing::debug!(query_id = id, "query timed out");
            self.events.push_back(Event::QueryFailed {
                id,
                code: ErrorCode::Timeout.as_i32(),
                message: "query timed out".to_owned(),
            });
        }
        if self.state == State::Handshaking && self.handshake_deadline().is_some_and(|d| now >= d) {
            self.close(CloseReason::HandshakeTimeout);
            return;
        }
        if self.idle_deadline().is_some_and(|d| now >= d) {
            self.close(CloseReason::IdleTimeout);
            return;
        }
        if self.ping_deadline().is_some_and(|d| now >= d) {
            let id = self.next_ping_id;
            self.next_ping_id = self.next_ping_id.wrapping_add(1);
            self.ping_sent = true;
            self.last_ping = now;
            tracing::trace!(ping_id = id, "sending ping");
            self.transmit_control(&Packet::Ping(t::Ping { id }));
        }
    }

    /// Feeds raw bytes received from the peer (any chunking).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        let mut input = bytes;
        while !input.is_empty() && self.state != State::Closed {
            self.handle_next_frame(now, &mut input);
        }
    }

    /// Consumes bytes from the front of `input` until one frame is complete and handled, or
    /// `input` is exhausted (the partial frame is kept). Returns whether a frame was handled.
    /// Unconsumed bytes stay in `input`, so a caller can stop between frames (e.g. while its
    /// consumer is full) and feed the rest later. A closed session consumes all input.
    pub fn handle_next_frame(&mut self, now: Instant, input: &mut &[u8]) -> bool {
        if self.state == State::Closed {
            *input = &[];
            return false;
        }
        let before = input.len();
        let res = self.decoder.decode(input);
        self.stats.bytes_in += (before - input.len()) as u64;
        match res {
            Ok(None) => false,
            Ok(Some(frame)) => {
                self.stats.frames_in += 1;
                self.last_recv = now;
                self.ping_sent = false;
                self.handle_payload(&frame.payload);
                true
            }
            Err(err) => {
                self.protocol_error(format!("framing: {err}"));
                *input = &[];
                false
            }
        }
    }

    /// The caller stopped reading for a local reason (its consumer is not keeping up): until
    /// [`Session::resume_idle`], neither the idle timeout nor the ping fires, since the peer's
    /// silence cannot be observed. The handshake and query timeouts still apply.
    pub fn pause_idle(&mut self) {
        self.idle_paused = true;
    }

    /// The caller reads again: the idle clock restarts at `now` (and the ping is re-armed).
    /// No-op unless paused.
    pub fn resume_idle(&mut self, now: Instant) {
        if self.idle_paused {
            self.idle_paused = false;
            self.last_recv = self.last_recv.max(now);
            self.ping_sent = false;
        }
    }

    /// Whether [`Session::pause_idle`] is in effect.
    pub fn is_idle_paused(&self) -> bool {
        self.idle_paused
    }

    fn protocol_error(&mut self, message: String) {
        tracing::debug!(%message, "protocol violation, closing session");
        self.close(CloseReason::ProtocolError(message));
    }

    fn handle_payload(&mut self, payload: &[u8]) {
        let packet = match Packet::from_bytes(payload) {
            Ok(p) => p,
            Err(err) => {
                self.protocol_error(format!("malformed tcp.Packet: {err}"));
                return;
            }
        };
        match self.state {
            State::Closed => {}
            State::Handshaking => match (self.role, packet) {
                (Role::Acceptor, Packet::Connect(c)) => {
                    tracing::debug!("received tcp.connect, session ready");
                    self.transmit_control(&Packet::Connected(t::Connected { id: c.id }));
                    self.become_ready();
                }
                (Role::Initiator, Packet::Connected(c)) if c.id == self.connect_id => {
                    tracing::debug!("received tcp.connected, session ready");
                    self.become_ready();
                }
                (Role::Initiator, Packet::Connected(_)) => {
                    self.protocol_error("tcp.connected with a wrong id".to_owned());
                }
                (role, other) => {
                    let expected = match role {
                        Role::Acceptor => "tcp.connect",
                        Role::Initiator => "tcp.connected",
                    };
                    self.protocol_error(format!(
                        "expected {expected} as first packet, got {}",
                        other.constructor_name()
                    ));
                }
            },
            State::Ready => self.handle_ready_packet(packet),
        }
    }

    fn handle_ready_packet(&mut self, packet: Packet) {
        match packet {
            Packet::Ping(p) => {
                self.stats.pings_in += 1;
                // At most one pong waits in the transmit queue: a peer flooding pings without
                // reading cannot make us queue pongs.
                if self.last_pong.is_some_and(|n| n >= self.frames_taken) {
                    tracing::trace!(ping_id = p.id, "pong already queued, ping not answered");
                } else {
                    self.last_pong = Some(self.stats.frames_out);
                    self.transmit_control(&Packet::Pong(t::Pong { id: p.id }));
                }
            }
            Packet::Pong(_) => {}
            Packet::Packet(p) => {
                tracing::trace!(len = p.data.len(), "received message");
                self.events.push_back(Event::Message { data: p.data });
            }
            Packet::Query(q) => {
                tracing::trace!(query_id = q.id, len = q.data.len(), "received query");
                self.events.push_back(Event::Query {
                    id: q.id,
                    data: q.data,
                });
            }
            Packet::QueryAnswer(a) => {
                if self.take_pending(a.id) {
                    tracing::trace!(query_id = a.id, len = a.data.len(), "query answered");
                    self.events.push_back(Event::QueryAnswer {
                        id: a.id,
                        data: a.data,
                    });
                } else {
                    tracing::debug!(query_id = a.id, "answer to unknown query ignored");
                }
            }
            Packet::QueryError(e) => {
                if self.take_pending(e.id) {
                    tracing::debug!(query_id = e.id, code = e.code, "query failed remotely");
                    self.events.push_back(Event::QueryFailed {
                        id: e.id,
                        code: e.code,
                        message: e.message,
                    });
                } else {
                    tracing::debug!(query_id = e.id, "error for unknown query ignored");
                }
            }
            Packet::Connect(_) | Packet::Connected(_) => {
                tracing::debug!("stray handshake packet after init ignored");
            }
        }
    }

    fn take_pending(&mut self, id: QueryId) -> bool {
        match self.pending.remove(&id) {
            Some(deadline) => {
                if let Some(d) = deadline {
                    self.deadlines.remove(&(d, id));
                }
                true
            }
            None => false,
        }
    }

    fn become_ready(&mut self) {
        self.state = State::Ready;
        self.events.push_back(Event::Ready);
        while let Some(payload) = self.held.pop_front() {
            let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
            match self.encoder.encode(&payload, &mut buf) {
                Ok(()) => self.push_frame(buf),
                // Unreachable: the length was checked when the packet was held.
                Err(err) => tracing::error!(%err, "dropping unframeable packet"),
            }
        }
        self.held_bytes = 0;
    }

    fn push_frame(&mut self, frame: Vec<u8>) {
        self.stats.frames_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        self.transmit_bytes += frame.len();
        self.transmit.push_back(frame);
    }

    /// Frames `packet` into the transmit queue; the encoder checks the frame length.
    fn transmit_packet(&mut self, packet: &Packet) -> Result<(), SendError> {
        let mut buf = Vec::with_capacity(frame_capacity(packet));
        self.encoder
            .encode_with(&mut buf, |out| packet.write_to(out))
            .map_err(too_large)?;
        self.push_frame(buf);
        Ok(())
    }

    /// Queues a small control packet (connect, connected, ping, pong), which always fits.
    fn transmit_control(&mut self, packet: &Packet) {
        if let Err(err) = self.transmit_packet(packet) {
            // Unreachable: control packets are 12 bytes. Never panic on it.
            tracing::error!(%err, "dropping unframeable packet");
        }
    }

    /// Sends `packet` now if ready, holds it until ready while handshaking.
    fn send_packet(&mut self, packet: Packet) -> Result<(), SendError> {
        match self.state {
            State::Closed => Err(SendError::Closed),
            State::Ready => self.transmit_packet(&packet),
            State::Handshaking => {
                let payload = packet.to_bytes();
                if payload.len() > MAX_FRAME_LEN {
                    return Err(SendError::TooLarge { len: payload.len() });
                }
                self.held_bytes += FRAME_HEADER_LEN + payload.len();
                self.held.push_back(payload);
                Ok(())
            }
        }
    }

    /// Sends a query. Always returns a fresh id; the outcome arrives as exactly one
    /// [`Event::QueryAnswer`] or [`Event::QueryFailed`] (immediately, if the session is closed or
    /// the query is too large), unless the query is forgotten with [`Session::forget_query`].
    /// Queries made before the handshake completes are sent once it does; their timeout runs
    /// from now. A timeout too large to represent means no timeout.
    pub fn send_query(&mut self, now: Instant, data: Vec<u8>, timeout: Duration) -> QueryId {
        self.send_query_until(data, now.checked_add(timeout))
    }

    /// Like [`Session::send_query`] with an absolute deadline (`None`: no timeout). A deadline
    /// already past fails the query (652) at the next [`Session::handle_timeout`].
    pub fn send_query_until(&mut self, data: Vec<u8>, deadline: Option<Instant>) -> QueryId {
        let id = self.next_query_id;
        self.next_query_id += 1;
        let len = data.len();
        match self.send_packet(Packet::Query(t::Query { id, data })) {
            Ok(()) => {
                if let Some(d) = deadline {
                    self.deadlines.insert((d, id));
                }
                self.pending.insert(id, deadline);
                tracing::trace!(query_id = id, len, "query sent");
            }
            Err(err) => {
                let code = match err {
                    SendError::Closed => ErrorCode::NotReady,
                    SendError::TooLarge { .. } => ErrorCode::Error,
                };
                self.events.push_back(Event::QueryFailed {
                    id,
                    code: code.as_i32(),
                    message: err.to_string(),
                });
            }
        }
        id
    }

    /// Stops tracking our pending query `id` (its caller lost interest): no event will be
    /// emitted for it and a late answer is ignored. Returns whether it was pending.
    pub fn forget_query(&mut self, id: QueryId) -> bool {
        let was_pending = self.take_pending(id);
        if was_pending {
            tracing::trace!(query_id = id, "query forgotten");
        }
        was_pending
    }

    /// Sends a one-way message (`tcp.packet`).
    pub fn send_message(&mut self, data: Vec<u8>) -> Result<(), SendError> {
        self.send_packet(Packet::Packet(t::Packet { data }))
    }

    /// Answers the peer's query `id`. If the answer is too large, the peer gets a
    /// `tcp.queryError` (602) instead and `TooLarge` is returned.
    pub fn answer_query(&mut self, id: QueryId, data: Vec<u8>) -> Result<(), SendError> {
        match self.send_packet(Packet::QueryAnswer(t::QueryAnswer { id, data })) {
            Err(SendError::TooLarge { len }) => {
                tracing::warn!(
                    query_id = id,
                    len,
                    "answer too large, sending error instead"
                );
                self.answer_query_error(
                    id,
                    ErrorCode::Error.as_i32(),
                    format!("answer too large: {len} bytes"),
                )?;
                Err(SendError::TooLarge { len })
            }
            other => other,
        }
    }

    /// Answers the peer's query `id` with an error. Overlong messages are truncated.
    pub fn answer_query_error(
        &mut self,
        id: QueryId,
        code: i32,
        message: impl Into<String>,
    ) -> Result<(), SendError> {
        let mut message = message.into();
        const MAX_MESSAGE: usize = 64 * 1024;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.send_packet(Packet::QueryError(t::QueryError { id, code, message }))
    }

    /// Closes the session: every pending query fails (653 on a local close, 651 otherwise),
    /// held packets are dropped, and [`Event::Closed`] is emitted. Frames already queued for
    /// transmission stay available from [`Session::poll_transmit`] so they can be flushed.
    /// Closing twice is a no-op.
    pub fn close(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        tracing::debug!(%reason, pending = self.pending.len(), "session closed");
        self.state = State::Closed;
        self.held.clear();
        self.held_bytes = 0;
        let code = reason.pending_query_code().as_i32();
        let mut ids: Vec<QueryId> = self.pending.drain().map(|(id, _)| id).collect();
        ids.sort_unstable();
        self.deadlines.clear();
        for id in ids {
            self.events.push_back(Event::QueryFailed {
                id,
                code,
                message: format!("session closed: {reason}"),
            });
        }
        self.close_reason = Some(reason.clone());
        self.events.push_back(Event::Closed { reason });
    }

    /// Drops any frames still queued for transmission (e.g. after a transport error).
    pub fn discard_transmit(&mut self) {
        self.transmit.clear();
        self.transmit_bytes = 0;
        self.frames_taken = self.stats.frames_out;
    }
}

fn too_large(err: FrameError) -> SendError {
    match err {
        FrameError::TooLong { len } | FrameError::TooShort { len } => SendError::TooLarge { len },
        // The encoder checks only lengths (not seqnos).
        _ => SendError::TooLarge { len: 0 },
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("pending_queries", &self.pending.len())
            .field("pending_transmit_bytes", &self.pending_transmit_bytes())
            .field("buffered_inbound_bytes", &self.buffered_inbound_bytes())
            .field("queued_events", &self.events.len())
            .field("idle_paused", &self.idle_paused)
            .field("close_reason", &self.close_reason)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
