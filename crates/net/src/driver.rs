//! Tokio driver running a [`Session`] over any byte stream.
//!
//! [`spawn_session`] moves the stream into a task that owns the session. Applications talk to
//! it through a cloneable [`SessionHandle`] (queries, messages, close) and receive the peer's
//! queries and messages as [`Incoming`] items on a bounded channel.
//!
//! Memory stays bounded in both directions:
//! * inbound: the driver reads from the stream only while the [`Incoming`] channel has room
//!   and the outbound buffer is below its high-water mark, so a flooding peer is pushed back by
//!   transport flow control;
//! * outbound: [`SessionHandle::send_message`] and [`SessionHandle::query`] wait for room in a
//!   byte budget ([`Config::outbound_queue_bytes`]) and the driver takes new work only while
//!   the session's unwritten bytes are below [`Config::write_buffer_bytes`], so a peer that
//!   does not read makes senders wait instead of making us buffer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_tl::codes::ErrorCode;
use cocoon_tl::frame::MAX_FRAME_LEN;
use cocoon_tl::{TlRead, TlWrite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::session::{
    ACCEPTOR_IDLE_TIMEOUT, CloseReason, Event, INITIATOR_IDLE_TIMEOUT, QueryId, Role, SendError,
    Session, SessionConfig, SessionStats,
};

/// Largest query/message/answer body accepted by the handle API (the frame limit minus
/// room for the `tcp.*` envelope).
pub const MAX_DATA_LEN: usize = MAX_FRAME_LEN - 32;

/// Size of the driver's write coalescing buffer.
const WRITE_CHUNK: usize = 64 * 1024;

/// Driver configuration. `Default` gives COCOON's timing.
#[derive(Debug, Clone)]
pub struct Config {
    /// Idle timeout of the connecting side (COCOON: 20 s). It pings after half of it.
    pub initiator_idle_timeout: Duration,
    /// Idle timeout of the accepting side (COCOON: 60 s).
    pub acceptor_idle_timeout: Duration,
    /// Time allowed for the TCP connect (in [`crate::connect_tcp`]) and, separately, for the
    /// `tcp.connect`/`tcp.connected` exchange.
    pub handshake_timeout: Duration,
    /// Capacity of the [`Incoming`] channel (items). When it is full the driver stops reading.
    pub incoming_capacity: usize,
    /// Capacity of the command channel from handles to the driver (items).
    pub command_capacity: usize,
    /// Byte budget of queries/messages accepted by handles but not yet taken by the driver.
    pub outbound_queue_bytes: usize,
    /// High-water mark of framed bytes not yet written to the stream. Above it the driver
    /// takes no new commands and reads nothing (the peer's pings would need answers).
    pub write_buffer_bytes: usize,
    /// Size of the read buffer.
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
            handshake_timeout: Duration::from_secs(10),
            incoming_capacity: 256,
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
        cfg.handshake_timeout = Some(self.handshake_timeout);
        cfg
    }
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

/// Something the peer sent us.
#[derive(Debug)]
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

#[derive(Debug)]
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
/// Answers travel to the driver on an unbounded channel (they must be sendable from `Drop`);
/// their number is bounded by the number of queries delivered.
#[derive(Debug)]
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

enum Command {
    Query {
        data: Vec<u8>,
        timeout: Duration,
        reply: QueryReply,
        _permit: OwnedSemaphorePermit,
    },
    Message {
        data: Vec<u8>,
        _permit: OwnedSemaphorePermit,
    },
}

#[derive(Debug)]
struct Shared {
    close_requested: AtomicBool,
    close_notify: Notify,
    stats: Mutex<SessionStats>,
    budget: Arc<Semaphore>,
    budget_total: usize,
}

/// Cloneable handle to a running session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
    cmd_tx: mpsc::Sender<Command>,
    state_rx: watch::Receiver<SessionState>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Query { data, .. } => write!(f, "Query({} bytes)", data.len()),
            Command::Message { data, .. } => write!(f, "Message({} bytes)", data.len()),
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

    /// Sends a query and waits for its answer, at most `timeout` (then error 652). Waits for
    /// room in the outbound queue first. Never hangs past the timeout or the session's end.
    pub async fn query(&self, data: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, QueryError> {
        let closed = |e: SendError| match e {
            SendError::Closed => QueryError::new(ErrorCode::NotReady, "session closed"),
            SendError::TooLarge { len } => {
                QueryError::new(ErrorCode::Error, format!("query too large: {len} bytes"))
            }
        };
        let permit = self.reserve(data.len()).await.map_err(closed)?;
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Query {
            data,
            timeout,
            reply,
            _permit: permit,
        };
        self.cmd_tx
            .send(cmd)
            .await
            .map_err(|_| closed(SendError::Closed))?;
        match rx.await {
            Ok(res) => res,
            Err(_) => Err(QueryError::new(ErrorCode::NotReady, "session closed")),
        }
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
        self.shared.close_requested.store(true, Ordering::SeqCst);
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
    let now = tokio::time::Instant::now().into_std();
    let session = Session::new(role, now, rand::random(), config.session_config(role));
    let budget_total = config.outbound_queue_bytes.clamp(1, u32::MAX as usize);
    let shared = Arc::new(Shared {
        close_requested: AtomicBool::new(false),
        close_notify: Notify::new(),
        stats: Mutex::new(session.stats()),
        budget: Arc::new(Semaphore::new(budget_total)),
        budget_total,
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(config.command_capacity.max(1));
    let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_capacity.max(1));
    let (resp_tx, resp_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(SessionState::Handshaking);
    let driver = Driver {
        session,
        config: config.clone(),
        shared: shared.clone(),
        cmd_rx,
        cmd_closed: false,
        resp_tx,
        resp_rx,
        incoming_tx: Some(incoming_tx),
        pending_in: VecDeque::new(),
        waiters: HashMap::new(),
        state_tx,
    };
    tokio::spawn(driver.run(stream));
    (
        SessionHandle {
            shared,
            cmd_tx,
            state_rx,
        },
        incoming_rx,
    )
}

struct Driver {
    session: Session,
    config: Config,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_closed: bool,
    resp_tx: mpsc::UnboundedSender<Response>,
    resp_rx: mpsc::UnboundedReceiver<Response>,
    /// `None` once the application dropped the receiver or the session closed.
    incoming_tx: Option<mpsc::Sender<Incoming>>,
    /// Incoming items waiting for room in the channel (at most one read's worth).
    pending_in: VecDeque<Incoming>,
    waiters: HashMap<QueryId, QueryReply>,
    state_tx: watch::Sender<SessionState>,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

enum Step {
    Continue,
    Wrote(usize),
}

impl Driver {
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut rbuf = vec![0u8; self.config.read_buffer_bytes.max(1)];
        let mut wbuf: Vec<u8> = Vec::new();
        let mut wpos = 0usize;
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<std::time::Instant> = None;
        let mut read_eof = false;

        loop {
            self.process_events();
            self.publish_stats();
            if self.session.is_closed() {
                break;
            }
            if wpos == wbuf.len() {
                wbuf.clear();
                wpos = 0;
                fill_write_buffer(&mut self.session, &mut wbuf);
            }
            let below_hwm = self.session.pending_transmit_bytes() < self.config.write_buffer_bytes;
            let can_read = below_hwm && self.pending_in.is_empty();
            let deadline = self.session.poll_timeout();
            if deadline != armed {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(d));
                }
                armed = deadline;
            }
            let has_pending_in = !self.pending_in.is_empty();
            let incoming_tx = self.incoming_tx.clone();
            // Unbiased: branches are polled in random order, so a busy direction cannot
            // starve the others.
            let step = tokio::select! {
                _ = self.shared.close_notify.notified() => {
                    self.local_close();
                    Step::Continue
                }
                res = writer.write(&wbuf[wpos..]), if wpos < wbuf.len() => match res {
                    Ok(0) => {
                        self.io_error("write returned zero bytes".to_owned());
                        Step::Continue
                    }
                    Ok(n) => Step::Wrote(n),
                    Err(e) => {
                        self.io_error(format!("write: {e}"));
                        Step::Continue
                    }
                },
                Some(resp) = self.resp_rx.recv() => {
                    self.apply_response(resp);
                    Step::Continue
                }
                permit = reserve(&incoming_tx), if has_pending_in => {
                    match permit {
                        Some(permit) => {
                            if let Some(item) = self.pending_in.pop_front() {
                                permit.send(item);
                            }
                        }
                        None => self.incoming_gone(),
                    }
                    Step::Continue
                }
                cmd = self.cmd_rx.recv(), if below_hwm && !self.cmd_closed => {
                    match cmd {
                        Some(cmd) => self.apply_command(cmd),
                        None => {
                            tracing::debug!("all session handles dropped");
                            self.cmd_closed = true;
                            self.maybe_close_unused();
                        }
                    }
                    Step::Continue
                }
                _ = closed(&incoming_tx), if self.cmd_closed => {
                    self.incoming_gone();
                    Step::Continue
                }
                res = reader.read(&mut rbuf), if can_read && !read_eof => {
                    match res {
                        Ok(0) => {
                            read_eof = true;
                            self.session.close(CloseReason::PeerClosed);
                        }
                        Ok(n) => self.session.handle_bytes(now(), &rbuf[..n]),
                        Err(e) => self.io_error(format!("read: {e}")),
                    }
                    Step::Continue
                }
                _ = &mut sleep, if armed.is_some() => {
                    self.session.handle_timeout(now());
                    // Force re-arming even if the deadline did not move.
                    armed = None;
                    Step::Continue
                }
            };
            if let Step::Wrote(n) = step {
                wpos += n;
            }
        }

        // Closed: fail whatever is left, deliver what we can, then shut down gracefully.
        self.process_events();
        self.finish_commands();
        self.deliver_remaining_incoming();
        self.publish_stats();
        let reason = self
            .session
            .close_reason()
            .cloned()
            .unwrap_or(CloseReason::Local);
        if !matches!(reason, CloseReason::Io(_)) {
            let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
            let flush = async {
                loop {
                    if wpos < wbuf.len() {
                        writer.write_all(&wbuf[wpos..]).await?;
                    }
                    wbuf.clear();
                    wpos = 0;
                    fill_write_buffer(&mut self.session, &mut wbuf);
                    if wbuf.is_empty() {
                        break;
                    }
                }
                writer.flush().await?;
                writer.shutdown().await
            };
            match tokio::time::timeout_at(deadline, flush).await {
                Ok(Ok(())) => {
                    if !read_eof {
                        // Wait (bounded) for the peer's EOF so that closing the socket with
                        // unread data does not reset the connection under the peer.
                        let linger = async {
                            loop {
                                match reader.read(&mut rbuf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {}
                                }
                            }
                        };
                        let _ = tokio::time::timeout_at(deadline, linger).await;
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "error while flushing on close"),
                Err(_) => tracing::debug!("graceful shutdown timed out"),
            }
        }
        self.publish_stats();
        tracing::debug!(%reason, "session driver finished");
    }

    fn publish_stats(&self) {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.session.stats();
    }

    fn io_error(&mut self, message: String) {
        tracing::debug!(%message, "transport error");
        self.session.discard_transmit();
        self.session.close(CloseReason::Io(message));
    }

    fn local_close(&mut self) {
        // Commands queued before close() are still sent (bounded by the channel capacity).
        for _ in 0..self.config.command_capacity.max(1) {
            match self.cmd_rx.try_recv() {
                Ok(cmd) => self.apply_command(cmd),
                Err(_) => break,
            }
        }
        while let Ok(resp) = self.resp_rx.try_recv() {
            self.apply_response(resp);
        }
        self.session.close(CloseReason::Local);
    }

    fn apply_command(&mut self, cmd: Command) {
        match cmd {
            Command::Query {
                data,
                timeout,
                reply,
                _permit,
            } => {
                let id = self.session.send_query(now(), data, timeout);
                self.waiters.insert(id, reply);
            }
            Command::Message { data, _permit } => {
                let len = data.len();
                if let Err(e) = self.session.send_message(data) {
                    tracing::debug!(len, error = %e, "message not sent");
                }
            }
        }
    }

    fn apply_response(&mut self, resp: Response) {
        let res = match resp {
            Response::Answer { id, data } => self.session.answer_query(id, data),
            Response::Error { id, code, message } => {
                self.session.answer_query_error(id, code, message)
            }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "query answer not sent");
        }
    }

    fn process_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Ready => {
                    self.state_tx.send_replace(SessionState::Ready);
                }
                Event::Query { id, data } => {
                    let responder = Responder {
                        id,
                        tx: Some(self.resp_tx.clone()),
                    };
                    if self.incoming_tx.is_some() {
                        self.pending_in
                            .push_back(Incoming::Query { data, responder });
                    } else {
                        // Nobody listens: the responder's drop answers "query dropped".
                        drop(responder);
                    }
                }
                Event::Message { data } => {
                    if self.incoming_tx.is_some() {
                        self.pending_in.push_back(Incoming::Message { data });
                    } else {
                        tracing::debug!(len = data.len(), "message dropped: nobody listens");
                    }
                }
                Event::QueryAnswer { id, data } => {
                    if let Some(w) = self.waiters.remove(&id) {
                        let _ = w.send(Ok(data));
                    }
                }
                Event::QueryFailed { id, code, message } => {
                    if let Some(w) = self.waiters.remove(&id) {
                        let _ = w.send(Err(QueryError { code, message }));
                    }
                }
                Event::Closed { reason } => {
                    self.state_tx.send_replace(SessionState::Closed(reason));
                }
            }
        }
    }

    fn incoming_gone(&mut self) {
        tracing::debug!("incoming receiver dropped");
        self.incoming_tx = None;
        // Dropping queued queries answers them with "query dropped".
        self.pending_in.clear();
        self.maybe_close_unused();
    }

    /// Nobody can use the session any more: no handle and no incoming receiver.
    fn maybe_close_unused(&mut self) {
        let incoming_gone = self.incoming_tx.as_ref().is_none_or(|tx| tx.is_closed());
        if self.cmd_closed && incoming_gone {
            tracing::debug!("session unused, closing");
            self.session.close(CloseReason::Local);
        }
    }

    fn finish_commands(&mut self) {
        self.shared.budget.close();
        self.cmd_rx.close();
        let reason = self
            .session
            .close_reason()
            .cloned()
            .unwrap_or(CloseReason::Local);
        let err = QueryError::new(
            reason.pending_query_code(),
            format!("session closed: {reason}"),
        );
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            if let Command::Query { reply, .. } = cmd {
                let _ = reply.send(Err(err.clone()));
            }
        }
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(err.clone()));
        }
    }

    fn deliver_remaining_incoming(&mut self) {
        if let Some(tx) = self.incoming_tx.take() {
            while let Some(item) = self.pending_in.pop_front() {
                if tx.try_send(item).is_err() {
                    break;
                }
            }
        }
        self.pending_in.clear();
    }
}

/// Moves queued frames into `wbuf`, coalescing small ones up to [`WRITE_CHUNK`].
/// Large frames are moved, not copied.
fn fill_write_buffer(session: &mut Session, wbuf: &mut Vec<u8>) {
    while let Some(len) = session.next_transmit_len() {
        if !wbuf.is_empty() && wbuf.len() + len > WRITE_CHUNK {
            break;
        }
        match session.poll_transmit() {
            Some(chunk) if wbuf.is_empty() => *wbuf = chunk,
            Some(chunk) => wbuf.extend_from_slice(&chunk),
            None => break,
        }
    }
}

async fn reserve(tx: &Option<mpsc::Sender<Incoming>>) -> Option<mpsc::Permit<'_, Incoming>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => None,
    }
}

async fn closed(tx: &Option<mpsc::Sender<Incoming>>) {
    match tx {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}
