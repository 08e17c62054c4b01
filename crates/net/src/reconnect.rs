//! Keeping one outbound session alive with exponential backoff.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::driver::{Config, Incoming, SessionHandle};
use crate::tcp::{ConnectError, connect_stream};

/// Backoff parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Upper bound of the delay (before jitter).
    pub max: Duration,
    /// Fraction (0..=1) of each delay that is randomized away: the actual delay lies in
    /// `[d * (1 - jitter), d]`. Values outside `[0, 1]` are clamped; NaN means 0.
    pub jitter: f64,
    /// A session that stayed ready at least this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
            jitter: 0.5,
            reset_after: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff state (pure; the caller supplies randomness).
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// Fresh backoff.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempt: 0 }
    }

    /// Failures since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt, given `random` uniform in `[0, 1)`; counts a failure.
    /// `min(max, base * 2^attempt)` reduced by up to `jitter` of itself.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let exp = self.attempt.min(31);
        let raw = self
            .config
            .base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.config.max)
            .min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = unit(self.config.jitter) * unit(random);
        raw.mul_f64(1.0 - jitter)
    }
}

/// `x` clamped to `[0, 1]`, NaN as 0.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// What a [`Reconnector`] is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconnectState {
    /// Connecting; `attempt` counts failures since the last reset.
    Connecting {
        /// Failures so far.
        attempt: u32,
    },
    /// A session is ready (see [`Reconnector::session`]).
    Connected,
    /// Waiting `delay` before the next attempt after `error`.
    Waiting {
        /// Failures so far.
        attempt: u32,
        /// Delay before the next attempt.
        delay: Duration,
        /// Why the last attempt or session ended.
        error: String,
    },
    /// Stopped for good.
    Stopped,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// Keeps one outbound session alive, reconnecting with exponential backoff. Incoming items of
/// every session it makes are forwarded (with backpressure) to one channel. Dropping the
/// reconnector stops it and closes the current session.
#[derive(Debug)]
pub struct Reconnector {
    state_rx: watch::Receiver<ReconnectState>,
    session_rx: watch::Receiver<Option<SessionHandle>>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Reconnector {
    /// Starts reconnecting with `connect`, which opens a fresh transport stream each time
    /// (TCP, TLS, ...). Each connect is bounded by [`Config::handshake_timeout`], and so is the
    /// session handshake after it.
    pub fn spawn<C, Fut, S>(
        mut connect: C,
        config: Config,
        backoff: BackoffConfig,
    ) -> (Reconnector, mpsc::Receiver<Incoming>)
    where
        C: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (state_tx, state_rx) = watch::channel(ReconnectState::Connecting { attempt: 0 });
        let (session_tx, session_rx) = watch::channel(None);
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_channel_capacity());
        let stop = Arc::new(Notify::new());
        let connect_boxed = move || -> BoxFuture<io::Result<S>> { Box::pin(connect()) };
        let task = tokio::spawn(run(
            Box::new(connect_boxed),
            config,
            backoff,
            state_tx,
            session_tx,
            incoming_tx,
            stop.clone(),
        ));
        (
            Reconnector {
                state_rx,
                session_rx,
                stop,
                task,
            },
            incoming_rx,
        )
    }

    /// Reconnects to a TCP address.
    pub fn tcp(
        addr: SocketAddr,
        config: Config,
        backoff: BackoffConfig,
    ) -> (Reconnector, mpsc::Receiver<Incoming>) {
        let nodelay = config.tcp_nodelay;
        Self::spawn(
            move || async move {
                let stream = TcpStream::connect(addr).await?;
                if nodelay {
                    stream.set_nodelay(true)?;
                }
                Ok(stream)
            },
            config,
            backoff,
        )
    }

    /// Current state.
    pub fn state(&self) -> ReconnectState {
        self.state_rx.borrow().clone()
    }

    /// Watches state changes.
    pub fn subscribe(&self) -> watch::Receiver<ReconnectState> {
        self.state_rx.clone()
    }

    /// The current ready session, if any.
    pub fn session(&self) -> Option<SessionHandle> {
        self.session_rx
            .borrow()
            .as_ref()
            .filter(|h| h.is_ready())
            .cloned()
    }

    /// Waits for a ready session; `None` once stopped.
    pub async fn ready_session(&self) -> Option<SessionHandle> {
        let mut rx = self.session_rx.clone();
        loop {
            if let Some(h) = rx.borrow_and_update().as_ref().filter(|h| h.is_ready()) {
                return Some(h.clone());
            }
            if *self.state_rx.borrow() == ReconnectState::Stopped {
                return None;
            }
            rx.changed().await.ok()?;
        }
    }

    /// Stops reconnecting and closes the current session.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Whether the background task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Reconnector {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

type Connector<S> = Box<dyn FnMut() -> BoxFuture<io::Result<S>> + Send>;

async fn run<S>(
    mut connect: Connector<S>,
    config: Config,
    backoff_config: BackoffConfig,
    state_tx: watch::Sender<ReconnectState>,
    session_tx: watch::Sender<Option<SessionHandle>>,
    incoming_tx: mpsc::Sender<Incoming>,
    stop: Arc<Notify>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let reset_after = backoff_config.reset_after;
    let mut backoff = Backoff::new(backoff_config);
    'outer: loop {
        state_tx.send_replace(ReconnectState::Connecting {
            attempt: backoff.attempt(),
        });
        let attempt = async {
            let stream = tokio::time::timeout(config.handshake_timeout, connect())
                .await
                .map_err(|_| ConnectError::Timeout)??;
            connect_stream(stream, &config).await
        };
        let res = tokio::select! {
            _ = stop.notified() => break 'outer,
            res = attempt => res,
        };
        let error = match res {
            Ok((handle, mut incoming)) => {
                tracing::debug!("reconnector: session ready");
                let ready_at = tokio::time::Instant::now();
                session_tx.send_replace(Some(handle.clone()));
                state_tx.send_replace(ReconnectState::Connected);
                loop {
                    tokio::select! {
                        _ = stop.notified() => {
                            handle.close();
                            session_tx.send_replace(None);
                            break 'outer;
                        }
                        item = incoming.recv() => match item {
                            Some(item) => {
                                tokio::select! {
                                    _ = stop.notified() => {
                                        handle.close();
                                        session_tx.send_replace(None);
                                        break 'outer;
                                    }
                                    // If the application dropped its receiver, the item is
                                    // dropped (queries are answered "query dropped").
                                    _ = incoming_tx.send(item) => {}
                                }
                            }
                            None => break,
                        }
                    }
                }
                session_tx.send_replace(None);
                let reason = handle.closed().await;
                if ready_at.elapsed() >= reset_after {
                    backoff.reset();
                }
                tracing::debug!(%reason, "reconnector: session ended");
                reason.to_string()
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconnector: connect failed");
                e.to_string()
            }
        };
        let delay = backoff.next_delay(rand::random::<f64>());
        state_tx.send_replace(ReconnectState::Waiting {
            attempt: backoff.attempt(),
            delay,
            error,
        });
        tokio::select! {
            _ = stop.notified() => break 'outer,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    session_tx.send_replace(None);
    state_tx.send_replace(ReconnectState::Stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(BackoffConfig {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
            reset_after: Duration::from_secs(1),
        });
        let delays: Vec<u128> = (0..7).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(b.attempt(), 7);
        b.reset();
        assert_eq!(b.next_delay(0.9), Duration::from_millis(100));
    }

    #[test]
    fn backoff_jitter_bounds() {
        let cfg = BackoffConfig {
            base: Duration::from_millis(1000),
            max: Duration::from_secs(10),
            jitter: 0.5,
            reset_after: Duration::from_secs(1),
        };
        assert_eq!(
            Backoff::new(cfg.clone()).next_delay(0.0),
            Duration::from_millis(1000)
        );
        assert_eq!(
            Backoff::new(cfg.clone()).next_delay(1.0),
            Duration::from_millis(500)
        );
        let d = Backoff::new(cfg).next_delay(0.5);
        assert_eq!(d, Duration::from_millis(750));
    }

    #[test]
    fn backoff_bad_jitter_and_random_do_not_panic() {
        let cfg = |jitter| BackoffConfig {
            base: Duration::from_millis(1000),
            max: Duration::from_secs(10),
            jitter,
            reset_after: Duration::from_secs(1),
        };
        // NaN jitter means none.
        assert_eq!(
            Backoff::new(cfg(f64::NAN)).next_delay(0.5),
            Duration::from_millis(1000)
        );
        // Out-of-range jitter is clamped to [0, 1].
        assert_eq!(
            Backoff::new(cfg(7.0)).next_delay(0.5),
            Duration::from_millis(500)
        );
        assert_eq!(
            Backoff::new(cfg(-1.0)).next_delay(0.5),
            Duration::from_millis(1000)
        );
        assert_eq!(
            Backoff::new(cfg(f64::INFINITY)).next_delay(1.0),
            Duration::ZERO
        );
        // So is the random input.
        for random in [f64::NAN, f64::INFINITY, -3.0, 2.0] {
            let d = Backoff::new(cfg(0.5)).next_delay(random);
            assert!(d <= Duration::from_millis(1000), "{random}: {d:?}");
        }
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::new(BackoffConfig {
            base: Duration::from_secs(u64::MAX / 4),
            max: Duration::from_secs(60),
            jitter: 0.0,
            reset_after: Duration::from_secs(1),
        });
        for _ in 0..100 {
            assert!(b.next_delay(0.3) <= Duration::from_secs(60));
        }
    }
}
