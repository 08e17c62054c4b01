//! The task that drives one session: it owns the sans-I/O [`Session`] and the byte stream,
//! reads and writes, applies the handle's commands and the application's answers, delivers
//! the peer's queries and messages, and keeps every buffer within the [`Config`] bounds
//! described in the parent module.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant as TokioInstant;

use super::{
    Command, Config, Incoming, QueryError, QueryReply, Responder, Response, SessionState, Shared,
    deadline_after, timed_out,
};
use crate::session::{CloseReason, Event, QueryId, Session};

/// Most commands (or answers) the driver takes from its channels per wake-up.
const BATCH: usize = 64;

/// Size of the driver's write coalescing buffer.
const WRITE_CHUNK: usize = 64 * 1024;

/// Starts the task driving `session` over `stream`; returns the handle's ends of its
/// channels (commands, incoming items, state).
pub(super) fn spawn<S>(
    stream: S,
    session: Session,
    config: Config,
    shared: Arc<Shared>,
    cancel_rx: mpsc::UnboundedReceiver<u64>,
) -> (
    mpsc::Sender<Command>,
    mpsc::Receiver<Incoming>,
    watch::Receiver<SessionState>,
)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (cmd_tx, cmd_rx) = mpsc::channel(config.command_capacity);
    let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_capacity);
    let (resp_tx, resp_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(SessionState::Handshaking);
    let driver = Driver {
        session,
        config,
        shared,
        cmd_rx,
        cmd_closed: false,
        cancel_rx,
        resp_tx,
        resp_rx,
        open_incoming: 0,
        incoming_tx: Some(incoming_tx),
        pending_in: VecDeque::new(),
        waiters: HashMap::new(),
        tokens: HashMap::new(),
        state_tx,
    };
    tokio::spawn(driver.run(stream));
    (cmd_tx, incoming_rx, state_rx)
}

struct Driver {
    session: Session,
    /// Clamped.
    config: Config,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_closed: bool,
    cancel_rx: mpsc::UnboundedReceiver<u64>,
    resp_tx: mpsc::UnboundedSender<Response>,
    resp_rx: mpsc::UnboundedReceiver<Response>,
    /// The peer's queries open: responders made minus responses applied (each responder sends
    /// exactly one response, also when dropped).
    open_incoming: usize,
    /// `None` once the application dropped the receiver or the session closed.
    incoming_tx: Option<mpsc::Sender<Incoming>>,
    /// Incoming items waiting for room in the channel (at most one frame's worth: feeding
    /// stops while it is not empty).
    pending_in: VecDeque<Incoming>,
    /// Our queries in flight: reply channel and token, by query id.
    waiters: HashMap<QueryId, (u64, QueryReply)>,
    /// Query id by token, for cancellation.
    tokens: HashMap<u64, QueryId>,
    state_tx: watch::Sender<SessionState>,
}

pub(super) fn now() -> std::time::Instant {
    TokioInstant::now().into_std()
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
        let mut rbuf = vec![0u8; self.config.read_buffer_bytes];
        // Bytes read but not yet fed to the session: `rbuf[rpos..rlen]`.
        let (mut rpos, mut rlen) = (0usize, 0usize);
        let mut wbuf: Vec<u8> = Vec::new();
        let mut wpos = 0usize;
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<std::time::Instant> = None;
        let mut read_eof = false;

        loop {
            self.drain_cancels();
            if rpos < rlen {
                let mut input = &rbuf[rpos..rlen];
                self.feed(&mut input);
                rpos = rlen - input.len();
            }
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
            let below_hwm = self.below_hwm();
            let input_allowed = self.input_allowed();
            // Paused for a local reason: the application is not draining `Incoming`, or holds
            // too many unanswered queries. (Answers waiting for the peer to read are not a
            // local reason.)
            let local_pause = !self.pending_in.is_empty()
                || (below_hwm && self.open_incoming >= self.config.max_incoming_queries);
            if local_pause {
                self.session.pause_idle();
            } else if self.session.is_idle_paused() {
                self.session.resume_idle(now());
            }
            let can_read = input_allowed && rpos == rlen && !read_eof;
            let deadline = self.session.poll_timeout();
            if deadline != armed {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(TokioInstant::from_std(d));
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
                Some(token) = self.cancel_rx.recv() => {
                    self.cancel(token);
                    Step::Continue
                }
                Some(resp) = self.resp_rx.recv(), if below_hwm => {
                    self.apply_response(resp);
                    self.apply_queued(|d| d.resp_rx.try_recv().ok(), Self::apply_response);
                    Step::Continue
                }
                permit = reserve(&incoming_tx), if has_pending_in => {
                    match permit {
                        Some(permit) => {
                            if let Some(item) = self.pending_in.pop_front() {
                                permit.send(item);
                            }
                            self.flush_incoming();
                        }
                        None => self.incoming_gone(),
                    }
                    Step::Continue
                }
                cmd = self.cmd_rx.recv(), if below_hwm && !self.cmd_closed => {
                    match cmd {
                        Some(cmd) => {
                            self.apply_command(cmd);
                            self.apply_queued(|d| d.cmd_rx.try_recv().ok(), Self::apply_command);
                        }
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
                res = reader.read(&mut rbuf), if can_read => {
                    match res {
                        Ok(0) => {
                            read_eof = true;
                            self.session.close(CloseReason::PeerClosed);
                        }
                        Ok(n) => (rpos, rlen) = (0, n),
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
            let deadline = deadline_after(self.config.shutdown_timeout);
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

    /// Takes what else is queued (`next`) in the same wake-up: up to a batch in all, while
    /// below the high-water mark.
    fn apply_queued<T>(&mut self, next: fn(&mut Self) -> Option<T>, apply: fn(&mut Self, T)) {
        for _ in 1..BATCH {
            if !self.below_hwm() {
                break;
            }
            match next(self) {
                Some(item) => apply(self, item),
                None => break,
            }
        }
    }

    fn below_hwm(&self) -> bool {
        self.session.pending_transmit_bytes() < self.config.write_buffer_bytes
    }

    /// Whether the session may be fed another frame.
    fn input_allowed(&self) -> bool {
        self.pending_in.is_empty() && self.open_incoming < self.config.max_incoming_queries
    }

    /// Feeds buffered input to the session frame by frame while allowed, delivering what each
    /// frame produces before taking the next.
    fn feed(&mut self, input: &mut &[u8]) {
        let now = now();
        while !input.is_empty() && self.input_allowed() && !self.session.is_closed() {
            self.session.handle_next_frame(now, input);
            self.process_events();
            self.flush_incoming();
        }
    }

    fn publish_stats(&self) {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.session.stats();
        self.shared
            .pending_queries
            .store(self.session.pending_queries(), Ordering::Relaxed);
    }

    fn io_error(&mut self, message: String) {
        tracing::debug!(%message, "transport error");
        self.session.discard_transmit();
        self.session.close(CloseReason::Io(message));
    }

    fn local_close(&mut self) {
        // Commands queued before close() are still sent (bounded by the channel capacity).
        for _ in 0..self.config.command_capacity {
            match self.cmd_rx.try_recv() {
                Ok(cmd) => self.apply_command(cmd),
                Err(_) => break,
            }
        }
        // At most `max_incoming_queries` answers.
        while let Ok(resp) = self.resp_rx.try_recv() {
            self.apply_response(resp);
        }
        self.session.close(CloseReason::Local);
    }

    fn drain_cancels(&mut self) {
        while let Ok(token) = self.cancel_rx.try_recv() {
            self.cancel(token);
        }
    }

    /// The caller of query `token` lost interest: forget it.
    fn cancel(&mut self, token: u64) {
        if let Some(id) = self.tokens.remove(&token) {
            self.waiters.remove(&id);
            self.session.forget_query(id);
        }
    }

    fn apply_command(&mut self, cmd: Command) {
        match cmd {
            Command::Query {
                data,
                deadline,
                token,
                reply,
                _permit,
            } => {
                if reply.is_closed() {
                    // The caller gave up (timed out or dropped) before we got here.
                    tracing::trace!(len = data.len(), "query abandoned before sending");
                    return;
                }
                if deadline.is_some_and(|d| d <= TokioInstant::now()) {
                    let _ = reply.send(Err(timed_out()));
                    return;
                }
                let id = self
                    .session
                    .send_query_until(data, deadline.map(TokioInstant::into_std));
                self.waiters.insert(id, (token, reply));
                self.tokens.insert(token, id);
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
        self.open_incoming = self.open_incoming.saturating_sub(1);
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

    fn complete(&mut self, id: QueryId, res: Result<Vec<u8>, QueryError>) {
        if let Some((token, reply)) = self.waiters.remove(&id) {
            self.tokens.remove(&token);
            let _ = reply.send(res);
        }
    }

    fn process_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Ready => {
                    self.state_tx.send_replace(SessionState::Ready);
                }
                Event::Query { id, data } => {
                    self.open_incoming += 1;
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
                Event::QueryAnswer { id, data } => self.complete(id, Ok(data)),
                Event::QueryFailed { id, code, message } => {
                    self.complete(id, Err(QueryError { code, message }))
                }
                Event::Closed { reason } => {
                    self.state_tx.send_replace(SessionState::Closed(reason));
                }
            }
        }
    }

    /// Moves pending incoming items into the channel while it has room.
    fn flush_incoming(&mut self) {
        let Some(tx) = &self.incoming_tx else {
            self.pending_in.clear();
            return;
        };
        while let Some(item) = self.pending_in.pop_front() {
            match tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.pending_in.push_front(item);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.incoming_gone();
                    return;
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
        self.tokens.clear();
        for (_, (_, w)) in self.waiters.drain() {
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

/// Moves queued frames into the (empty) `wbuf`, coalescing small ones up to [`WRITE_CHUNK`].
/// Large frames are moved, not copied. `wbuf` keeps at most a coalescing buffer's capacity
/// between calls.
fn fill_write_buffer(session: &mut Session, wbuf: &mut Vec<u8>) {
    if wbuf.capacity() > WRITE_CHUNK {
        // It held a large frame: do not keep that much memory around.
        *wbuf = Vec::new();
    }
    while let Some(len) = session.next_transmit_len() {
        if !wbuf.is_empty() && wbuf.len() + len > WRITE_CHUNK {
            break;
        }
        match session.poll_transmit() {
            Some(chunk) if wbuf.is_empty() && chunk.len() > WRITE_CHUNK / 2 => *wbuf = chunk,
            Some(chunk) => {
                if wbuf.capacity() == 0 {
                    wbuf.reserve_exact(WRITE_CHUNK);
                }
                wbuf.extend_from_slice(&chunk);
            }
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
