//! Connect/accept helpers. The TCP-specific parts are thin: [`connect_stream`] and
//! [`accept_stream`] work on any stream (e.g. a TLS stream).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;

use crate::driver::{Config, Incoming, SessionHandle, spawn_session};
use crate::session::{CloseReason, Role};

/// Why establishing a session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The transport connection could not be made.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// The transport connect or the `tcp.connect` handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// The session closed before becoming ready.
    #[error("session closed during handshake: {0}")]
    Closed(CloseReason),
}

/// Runs the initiator side over an established stream and waits until the session is ready
/// (bounded by [`Config::handshake_timeout`]).
pub async fn connect_stream<S>(
    stream: S,
    config: &Config,
) -> Result<(SessionHandle, mpsc::Receiver<Incoming>), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (handle, incoming) = spawn_session(stream, Role::Initiator, config);
    // The session enforces the handshake timeout itself; the outer bound is a safety net.
    let wait =
        tokio::time::timeout(config.handshake_timeout.saturating_mul(2), handle.ready()).await;
    match wait {
        Ok(Ok(())) => Ok((handle, incoming)),
        Ok(Err(CloseReason::HandshakeTimeout)) | Err(_) => {
            handle.close();
            Err(ConnectError::Timeout)
        }
        Ok(Err(reason)) => Err(ConnectError::Closed(reason)),
    }
}

/// Runs the acceptor side over an accepted stream. Returns at once; the session becomes
/// ready when the peer's `tcp.connect` arrives.
pub fn accept_stream<S>(stream: S, config: &Config) -> (SessionHandle, mpsc::Receiver<Incoming>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    spawn_session(stream, Role::Acceptor, config)
}

/// Opens a TCP connection to `addr` and runs the initiator handshake. The TCP connect and the
/// handshake are each bounded by [`Config::handshake_timeout`].
pub async fn connect_tcp(
    addr: impl ToSocketAddrs,
    config: &Config,
) -> Result<(SessionHandle, mpsc::Receiver<Incoming>), ConnectError> {
    let stream = tokio::time::timeout(config.handshake_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    if config.tcp_nodelay {
        stream.set_nodelay(true)?;
    }
    let peer = stream.peer_addr().ok();
    tracing::debug!(?peer, "tcp connected, starting session");
    connect_stream(stream, config).await
}

/// A TCP listener producing acceptor sessions.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    config: Config,
}

impl Listener {
    /// Binds a listener.
    pub async fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        Ok(Listener {
            inner: TcpListener::bind(addr).await?,
            config,
        })
    }

    /// Wraps an existing listener.
    pub fn from_tcp(inner: TcpListener, config: Config) -> Self {
        Listener { inner, config }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The configuration used for accepted sessions.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accepts one connection and starts its session (not yet ready: the handshake runs in
    /// the background).
    pub async fn accept(
        &self,
    ) -> io::Result<(SessionHandle, mpsc::Receiver<Incoming>, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        if self.config.tcp_nodelay {
            // Best effort: a failure here does not make the connection unusable.
            let _ = stream.set_nodelay(true);
        }
        tracing::debug!(%peer, "accepted tcp connection");
        let (handle, incoming) = accept_stream(stream, &self.config);
        Ok((handle, incoming, peer))
    }

    /// Accepts connections forever, calling `handler` for each new session. Transient accept
    /// errors (e.g. out of file descriptors) are logged and retried after a short pause. Stop it
    /// by dropping or aborting the future.
    pub async fn run<F>(self, mut handler: F)
    where
        F: FnMut(SessionHandle, mpsc::Receiver<Incoming>, SocketAddr),
    {
        loop {
            match self.accept().await {
                Ok((handle, incoming, peer)) => handler(handle, incoming, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Accepts connections on `listener` forever, calling `handler` for each new session.
/// See [`Listener::run`].
pub async fn accept_loop<F>(listener: TcpListener, config: Config, handler: F)
where
    F: FnMut(SessionHandle, mpsc::Receiver<Incoming>, SocketAddr),
{
    Listener::from_tcp(listener, config).run(handler).await
}
