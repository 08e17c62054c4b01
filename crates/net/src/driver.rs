//! Tokio driver running a [`Session`] over any byte stream.
//!
//! [`spawn_session`] moves the stream into a task that owns the session. Applications talk to
//! it through a cloneable [`SessionHandle`] (queries, messages, close) and receive the peer's
//! queries and messages as [`Incoming`] items on a bounded channel. This file holds what
//! callers use (the handle, its configuration and errors); the task that drives the session
//! is in `driver/task.rs`.
//!
//! # Memory bounds
//!
//! Everything the driver holds is bounded by [`Config`] values, whatever the peer does:
//!
//! * inbound: one read buffer ([`Config::read_buffer_bytes`]) plus one partial frame (at most
//!   [`MAX_FRAME_LEN`]) plus [`Config::incoming_capacity`] + 1 items. The driver hands the
//!   session one frame at a time and stops (leaving the rest of the read buffer unconsumed,
//!   and the socket unread) while the [`Incoming`] channel is full or while
//!   [`Config::max_incoming_queries`] of the peer's queries are open, so a flooding peer is
//!   pushed back by transport flow control;
//! * outbound, our own traffic: [`SessionHandle::send_message`] and [`SessionHandle::query`]
//!   wait for room in a byte budget ([`Config::outbound_queue_bytes`], or one item if larger),
//!   and the driver takes new commands only while the session's unwritten bytes are below
//!   [`Config::write_buffer_bytes`];
//! * outbound, answers to the peer's queries: at most [`Config::max_incoming_queries`] queries
//!   are open (delivered and not yet answered, or answered and not yet handed to the session),
//!   so at most that many answers wait in the driver's answer channel; they are handed to the
//!   session only while its unwritten bytes are below [`Config::write_buffer_bytes`]. Answer
//!   memory is thus at most `max_incoming_queries` × the largest answer the application gives;
//! * unwritten bytes in the session: [`Config::write_buffer_bytes`] + one frame (each command
//!   or answer is taken while below the mark) + one `tcp.pong` (the session never queues a
//!   second one, so the driver can keep reading above the mark without queueing pongs).
//!
//! Reading stops only for local reasons (the application is not draining [`Incoming`] or not
//! answering queries); while it does, the session's idle timeout and ping are paused
//! ([`Session::pause_idle`]) so that an active peer is not mistaken for a silent one. When
//! the open queries are answered but their answers wait for the peer to read, the idle clock
//! keeps running: a peer that neither reads nor is heard from times out as usual.
//!
//! A query's timeout covers the whole [`SessionHandle::query`] call: waiting for budget, for
//! the driver, and for the answer. Dropping a query future forgets the query in the driver.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_tl::codes::ErrorCode;
use cocoon_tl::frame::{FRAME_HEADER_LEN, MAX_FRAME_LEN};
use cocoon_tl::{TlRead, TlWrite};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;

mod task;

use crate::session::{
    ACCEPTOR_IDLE_TIMEOUT, CloseReason, INITIATOR_IDLE_TIMEOUT, QueryId, Role, SendError, Session,
    SessionConfig, SessionStats,
};

/// Largest query/message/answer body accepted by the handle API (the frame limit minus
/// room for the `tcp.*` envelope).
pub const MAX_DATA_LEN: usize = MAX_FRAME_LEN - 32;

/// Largest channel capacity tokio accepts.
const MAX_CHANNEL: usize = Semaphore::MAX_PERMITS;

/// Driver configuration; `Default` is COCOON-compatible (see docs/cocoon-compat.md).
/// Out-of-range values are clamped (zero capacities to one, and so on) rather than rejected;
/// durations too large to add to the current time mean "never".
#[derive(Debug, Clone)]
pub struct Config {
    /// Idle timeout of the connecting side (default 20 s). It pings after half of it.
    pub initiator_idle_timeout: Duration,
    /// Idle timeout of the accepting side (default 60 s).
    pub acceptor_idle_timeout: Duration,
    /// The accepting side pings after this long of receive silence, and again every this
    /// long while it lasts (default `None`: an acceptor does not ping, as in COCOON). See
    /// [`SessionConfig::ping_every`].
    pub acceptor_ping_every: Option<Duration>,
    /// Time allowed for the TCP connect (in [`crate::connect_tcp`]) and, separately, for the
    /// `tcp.connect`/`tcp.connected` exchange.
    pub handshake_timeout: Duration,
    /// Capacity of the [`Incoming`] channel (items). When it is full the driver stops reading.
    pub incoming_capacity: usize,
    /// Most queries from the peer open at once: delivered as [`Incoming::Query`] (or waiting
    /// to be) and not yet answered, or answered and waiting to be written into the session.
    /// At this many the driver stops reading. Bounds the memory of unsent answers (see the
    /// [module docs](self)).
    pub max_incoming_queries: usize,
    /// Capacity of the command channel from handles to the driver (items).
    pub command_capacity: usize,
    /// Byte budget of queries/messages accepted by handles but not yet taken by the driver.
    pub outbound_queue_bytes: usize,
    /// High-water mark of framed bytes not yet written to the stream. Above it the driver
    /// takes no new commands and no new answers (it keeps reading: what the peer sends cannot
    /// make it queue more than one `tcp.pong`).
    pub write_buffer_bytes: usize,
    /// Size of the read buffer (at most one maximal frame is useful).
    pub read_buffer_bytes: usize,
    /// Bound on the graceful shutdown: flushing queued frames, shutting down the write side,
    /// and waiting for the peer's EOF.
    pub shutdown_timeout: Duration,
    /// Set `TCP_NODELAY` on TCP streams made by the helpers.
    pub tcp_nodelay: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            initiator_idle_timeout: INITIATOR_IDLE_TIMEOUT,
            acceptor_idle_timeout: ACCEPTOR_IDLE_TIMEOUT,
            acceptor_ping_every: None,
            handshake_timeout: Duration::from_secs(10),
            incoming_capacity: 256,
            max_incoming_queries: 256,
            command_capacity: 1024,
            outbound_queue_bytes: 4 << 20,
            write_buffer_bytes: 1 << 20,
            read_buffer_bytes: 64 << 10,
            shutdown_timeout: Duration::from_secs(5),
            tcp_nodelay: true,
        }
    }
}

impl Config {
    /// The session configuration used for `role`.
    pub fn session_config(&self, role: Role) -> SessionConfig {
        let mut cfg = SessionConfig::for_role(role);
        cfg.idle_timeout = match role {
            Role::Initiator => self.initiator_idle_timeout,
            Role::Acceptor => self.acceptor_idle_timeout,
        };
        if role == Role::Acceptor
            && let Some(every) = self.acceptor_ping_every
        {
            cfg.ping = true;
            cfg.ping_every = Some(every);
        }
        cfg.handshake_timeout = Some(self.handshake_timeout);
        cfg
    }

    /// Capacity of the [`Incoming`] channel actually used.
    pub(crate) fn incoming_channel_capacity(&self) -> usize {
        self.incoming_capacity.clamp(1, MAX_CHANNEL)
    }

    /// A copy with every size clamped to what the driver can use.
    fn clamped(&self) -> Config {
        Config {
            incoming_capacity: self.incoming_channel_capacity(),
            max_incoming_queries: self.max_incoming_queries.max(1),
            command_capacity: self.command_capacity.clamp(1, MAX_CHANNEL),
            outbound_queue_bytes: self.outbound_queue_bytes.clamp(1, u32::MAX as usize),
            write_buffer_bytes: self.write_buffer_bytes.max(1),
            read_buffer_bytes: self
                .read_buffer_bytes
                .clamp(1, MAX_FRAME_LEN + FRAME_HEADER_LEN),
            ..self.clone()
        }
    }
}

/// `now + d`, or about 30 years from now if that overflows (tokio's "far future").
pub(crate) fn deadline_after(d: Duration) -> TokioInstant {
    let now = TokioInstant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(now)
}

/// A failed query: a TON error code and message (remote `tcp.queryError`, local timeout 652,
/// session closed 651/653, malformed answer 621, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query failed: {message} (code {code})")]
pub struct QueryError {
    /// TON error code.
    pub code: i32,
    /// Message.
    pub message: String,
}

impl QueryError {
    /// A query error with a known code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        QueryError {
            code: code.as_i32(),
            message: message.into(),
        }
    }

    /// The code, if it is a well-known one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_i32(self.code)
    }

    /// HTTP status a proxy should answer with.
    pub fn http_status(&self) -> u16 {
        cocoon_tl::codes::http_status_for_code(self.code)
    }
}

/// Connection state as seen by handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Opening handshake in progress.
    Handshaking,
    /// Ready for traffic.
    Ready,
    /// Closed, with the reason.
    Closed(CloseReason),
}

/// Something the peer sent us. `Debug` shows ids and body lengths, never bodies.
pub enum Incoming {
    /// A query; answer it through `responder` (dropping it answers error 602).
    Query {
        /// Query body.
        data: Vec<u8>,
        /// Answers this query exactly once.
        responder: Responder,
    },
    /// A one-way message.
    Message {
        /// Message body.
        data: Vec<u8>,
    },
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incoming::Query { data, responder } => f
                .debug_struct("Query")
                .field("id", &responder.id)
                .field("len", &data.len())
                .finish(),
            Incoming::Message { data } => {
                f.debug_struct("Message").field("len", &data.len()).finish()
            }
        }
    }
}

enum Response {
    Answer {
        id: QueryId,
        data: Vec<u8>,
    },
    Error {
        id: QueryId,
        code: i32,
        message: String,
    },
}

/// Answers one incoming query. If dropped unanswered, the peer gets error 602
/// `"query dropped"`.
///
/// Answers travel to the driver on a channel that never blocks (they must be sendable from
/// `Drop`); it holds at most [`Config::max_incoming_queries`] answers, since the driver stops
/// reading while that many queries are open. The driver writes answers into the session only
/// while its write buffer is below [`Config::write_buffer_bytes`].
pub struct Responder {
    id: QueryId,
    tx: Option<mpsc::UnboundedSender<Response>>,
}

impl Responder {
    /// The peer's query id.
    pub fn id(&self) -> QueryId {
        self.id
    }

    fn respond(&mut self, response: Response) -> Result<(), SendError> {
        let tx = self.tx.take().ok_or(SendError::Closed)?;
        tx.send(response).map_err(|_| SendError::Closed)
    }

    /// Answers the query. Fails only if the session is gone. An answer larger than
    /// [`MAX_DATA_LEN`] is replaced by error 602.
    pub fn answer(mut self, data: Vec<u8>) -> Result<(), SendError> {
        let id = self.id;
        self.respond(Response::Answer { id, data })
    }

    /// Answers the query with a TL-serialized value.
    pub fn answer_tl<T: TlWrite>(self, value: &T) -> Result<(), SendError> {
        self.answer(value.to_bytes())
    }

    /// Answers the query with an error.
    pub fn error(mut self, code: i32, message: impl Into<String>) -> Result<(), SendError> {
        let id = self.id;
        self.respond(Response::Error {
            id,
            code,
            message: message.into(),
        })
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("id", &self.id)
            .field("answered", &self.tx.is_none())
            .finish()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            tracing::debug!(query_id = self.id, "incoming query dropped unanswered");
            let _ = tx.send(Response::Error {
                id: self.id,
                code: ErrorCode::Error.as_i32(),
                message: "query dropped".to_owned(),
            });
        }
    }
}

type QueryReply = oneshot::Sender<Result<Vec<u8>, QueryError>>;
type QueryReplyRx = oneshot::Receiver<Result<Vec<u8>, QueryError>>;

enum Command {
    Query {
        data: Vec<u8>,
        /// `None`: no timeout.
        deadline: Option<TokioInstant>,
        /// Names the query in [`Shared::cancel_tx`] messages.
        token: u64,
        reply: QueryReply,
        _permit: OwnedSemaphorePermit,
    },
    Message {
        data: Vec<u8>,
        _permit: OwnedSemaphorePermit,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Query { data, .. } => write!(f, "Query({} bytes)", data.len()),
            Command::Message { data, .. } => write!(f, "Message({} bytes)", data.len()),
        }
    }
}

#[derive(Debug)]
struct Shared {
    close_notify: Notify,
    stats: Mutex<SessionStats>,
    /// The session's pending queries, as of the driver's last wake-up.
    pending_queries: AtomicUsize,
    budget: Arc<Semaphore>,
    budget_total: usize,
    next_token: AtomicU64,
    /// Tokens of query futures dropped before completion (sent from `Drop`; one per dropped
    /// future, drained by the driver on every wake-up).
    cancel_tx: mpsc::UnboundedSender<u64>,
}

/// Cloneable handle to a running session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
    cmd_tx: mpsc::Sender<Command>,
    state_rx: watch::Receiver<SessionState>,
}

fn timed_out() -> QueryError {
    QueryError::new(ErrorCode::Timeout, "query timed out")
}

fn session_closed() -> QueryError {
    QueryError::new(ErrorCode::NotReady, "session closed")
}

/// A query handed to the driver. Dropped before its answer arrived (the caller's future was
/// dropped, or its deadline passed), it tells the driver to forget the query.
struct PendingQuery<'a> {
    shared: &'a Shared,
    token: u64,
    rx: QueryReplyRx,
    done: bool,
}

impl PendingQuery<'_> {
    async fn wait(&mut self) -> Result<Vec<u8>, QueryError> {
        let res = (&mut self.rx).await;
        self.done = true;
        res.unwrap_or_else(|_| Err(session_closed()))
    }
}

impl Drop for PendingQuery<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Closing first makes the driver skip the command if it has not taken it yet.
            self.rx.close();
            let _ = self.shared.cancel_tx.send(self.token);
        }
    }
}

impl SessionHandle {
    async fn reserve(&self, len: usize) -> Result<OwnedSemaphorePermit, SendError> {
        if len > MAX_DATA_LEN {
            return Err(SendError::TooLarge { len });
        }
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        // Large items take the whole budget (they wait until the queue is empty).
        let n = len
            .clamp(1, self.shared.budget_total)
            .min(u32::MAX as usize) as u32;
        self.shared
            .budget
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Sends a query and waits for its answer. `timeout` runs from this call and covers all of
    /// it: waiting for room in the outbound queue, for the driver, and for the answer; when it
    /// expires the query fails with error 652 and is forgotten (a late answer is ignored). A
    /// timeout too large to represent means none. Never hangs past the timeout or the
    /// session's end. Dropping the returned future also forgets the query.
    pub async fn query(&self, data: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, QueryError> {
        let deadline = TokioInstant::now().checked_add(timeout);
        let call = async {
            let (token, rx) = self.submit_query(data, deadline).await?;
            let mut pending = PendingQuery {
                shared: &self.shared,
                token,
                rx,
                done: false,
            };
            pending.wait().await
        };
        // The driver may not take the command for a while (its write buffer is full), so the
        // deadline is enforced here for the whole call; the session enforces it too once it
        // has the query.
        match deadline {
            Some(d) => tokio::time::timeout_at(d, call)
                .await
                .unwrap_or_else(|_| Err(timed_out())),
            None => call.await,
        }
    }

    /// Hands a query to the driver: waits for budget and room in the command channel.
    async fn submit_query(
        &self,
        data: Vec<u8>,
        deadline: Option<TokioInstant>,
    ) -> Result<(u64, QueryReplyRx), QueryError> {
        let permit = self.reserve(data.len()).await.map_err(|e| match e {
            SendError::Closed => session_closed(),
            SendError::TooLarge { len } => {
                QueryError::new(ErrorCode::Error, format!("query too large: {len} bytes"))
            }
        })?;
        let (reply, rx) = oneshot::channel();
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let cmd = Command::Query {
            data,
            deadline,
            token,
            reply,
            _permit: permit,
        };
        self.cmd_tx.send(cmd).await.map_err(|_| session_closed())?;
        Ok((token, rx))
    }

    /// Sends a TL query and decodes the answer as `R`; an undecodable answer is error 621.
    pub async fn query_tl<F: TlWrite, R: TlRead>(
        &self,
        request: &F,
        timeout: Duration,
    ) -> Result<R, QueryError> {
        let answer = self.query(request.to_bytes(), timeout).await?;
        R::from_bytes(&answer).map_err(|e| {
            QueryError::new(
                ErrorCode::ProtoViolation,
                format!("malformed query answer: {e}"),
            )
        })
    }

    /// Queues a one-way message, waiting for room in the outbound queue. `Ok` means queued,
    /// not delivered.
    pub async fn send_message(&self, data: Vec<u8>) -> Result<(), SendError> {
        let permit = self.reserve(data.len()).await?;
        self.cmd_tx
            .send(Command::Message {
                data,
                _permit: permit,
            })
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Requests a graceful close: queued outbound frames are flushed, the write side is shut
    /// down, pending queries fail with 653 and the [`Incoming`] receiver ends.
    pub fn close(&self) {
        // `notify_one` stores a permit if the driver is not waiting right now.
        self.shared.close_notify.notify_one();
    }

    /// Waits until the session is closed and returns why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.state_rx.clone();
        let res = rx
            .wait_for(|s| matches!(s, SessionState::Closed(_)))
            .await
            .map(|s| s.clone());
        match res {
            Ok(SessionState::Closed(reason)) => reason,
            // The driver is gone without reporting (it always reports, but never hang).
            _ => CloseReason::Io("session driver terminated".to_owned()),
        }
    }

    /// Waits until the handshake completes (`Ok`) or the session closes first (`Err`).
    pub async fn ready(&self) -> Result<(), CloseReason> {
        let mut rx = self.state_rx.clone();
        let res = rx
            .wait_for(|s| !matches!(s, SessionState::Handshaking))
            .await
            .map(|s| s.clone());
        match res {
            Ok(SessionState::Ready) => Ok(()),
            Ok(SessionState::Closed(reason)) => Err(reason),
            _ => Err(CloseReason::Io("session driver terminated".to_owned())),
        }
    }

    /// Whether the session is ready.
    pub fn is_ready(&self) -> bool {
        matches!(*self.state_rx.borrow(), SessionState::Ready)
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        matches!(*self.state_rx.borrow(), SessionState::Closed(_))
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.state_rx.borrow().clone()
    }

    /// Traffic counters (updated by the driver as it goes).
    pub fn stats(&self) -> SessionStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Our queries sent and awaiting an answer (updated by the driver as it goes; queries
    /// still waiting for the driver are not counted). Queries whose callers gave up are
    /// forgotten, so this does not grow with abandoned queries.
    pub fn pending_queries(&self) -> usize {
        self.shared.pending_queries.load(Ordering::Relaxed)
    }

    /// Bytes of queued commands not yet taken by the driver (bounded by
    /// [`Config::outbound_queue_bytes`], or one item if larger).
    pub fn queued_outbound_bytes(&self) -> usize {
        self.shared
            .budget_total
            .saturating_sub(self.shared.budget.available_permits())
    }
}

/// Spawns a task running a session of `role` over `stream`. Must be called within a Tokio
/// runtime. The handshake starts at once; use [`SessionHandle::ready`] to wait for it.
pub fn spawn_session<S>(
    stream: S,
    role: Role,
    config: &Config,
) -> (SessionHandle, mpsc::Receiver<Incoming>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = config.clamped();
    let session = Session::new(
        role,
        task::now(),
        rand::random(),
        config.session_config(role),
    );
    let budget_total = config.outbound_queue_bytes;
    let (cancel_tx, cancel_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        close_notify: Notify::new(),
        stats: Mutex::new(session.stats()),
        pending_queries: AtomicUsize::new(0),
        budget: Arc::new(Semaphore::new(budget_total)),
        budget_total,
        next_token: AtomicU64::new(0),
        cancel_tx,
    });
    let (cmd_tx, incoming_rx, state_rx) =
        task::spawn(stream, session, config, Arc::clone(&shared), cancel_rx);
    (
        SessionHandle {
            shared,
            cmd_tx,
            state_rx,
        },
        incoming_rx,
    )
}
