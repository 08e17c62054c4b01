//! Helpers shared by the integration tests.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_net::{Config, Incoming, Listener, Responder, SessionHandle};
use cocoon_tl::enums::tcp::Packet;
use cocoon_tl::frame::{FrameDecoder, FrameEncoder};
use cocoon_tl::{TlRead, TlWrite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Safety net so that a broken test fails instead of hanging CI. Not a performance bound.
pub(crate) const SAFETY: Duration = Duration::from_secs(60);

pub(crate) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(SAFETY, f)
        .await
        .expect("test step hung (safety timeout)")
}

/// An initiator session over an in-memory pipe of `capacity` bytes whose peer is a
/// [`RawConn`] that answered the opening; returns once the session is ready.
pub(crate) async fn opened_initiator(
    capacity: usize,
    config: &Config,
) -> (
    SessionHandle,
    mpsc::Receiver<Incoming>,
    RawConn<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(capacity);
    let (client, incoming) = cocoon_net::spawn_session(b, cocoon_net::Role::Initiator, config);
    let mut raw = RawConn::new(a);
    raw.accept_handshake().await;
    within(client.ready()).await.unwrap();
    (client, incoming, raw)
}

/// A session over loopback TCP with default settings: the client's handle and incoming,
/// then the server's.
pub(crate) async fn tcp_pair() -> (
    SessionHandle,
    mpsc::Receiver<Incoming>,
    SessionHandle,
    mpsc::Receiver<Incoming>,
) {
    let listener = Listener::bind("127.0.0.1:0", Config::default())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Config::default();
    let (client, server) = tokio::join!(cocoon_net::connect_tcp(addr, &cfg), listener.accept());
    let (client, client_in) = client.unwrap();
    let (server, server_in, _) = server.unwrap();
    (client, client_in, server, server_in)
}

/// A peer speaking raw frames, for protocol-level control in tests.
pub(crate) struct RawConn<S> {
    pub stream: S,
    enc: FrameEncoder,
    dec: FrameDecoder,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub(crate) fn new(stream: S) -> Self {
        RawConn {
            stream,
            enc: FrameEncoder::new(),
            dec: FrameDecoder::new(),
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub(crate) fn encode(&mut self, p: &Packet) -> Vec<u8> {
        self.enc.encode_to_vec(&p.to_bytes()).unwrap()
    }

    pub(crate) async fn send(&mut self, p: Packet) {
        let bytes = self.encode(&p);
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// Next packet, or `None` at EOF.
    pub(crate) async fn recv(&mut self) -> Option<Packet> {
        loop {
            let mut input = &self.buf[self.pos..];
            let before = input.len();
            let frame = self.dec.decode(&mut input).unwrap();
            self.pos += before - input.len();
            if let Some(f) = frame {
                return Some(Packet::from_bytes(&f.payload).unwrap());
            }
            self.buf.clear();
            self.pos = 0;
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Next packet that is not a ping (pings are answered).
    pub(crate) async fn recv_non_ping(&mut self) -> Option<Packet> {
        loop {
            match self.recv().await? {
                Packet::Ping(p) => {
                    self.send(Packet::Pong(cocoon_tl::types::tcp::Pong { id: p.id }))
                        .await
                }
                other => return Some(other),
            }
        }
    }

    /// Acceptor side of the opening.
    pub(crate) async fn accept_handshake(&mut self) {
        match self.recv().await {
            Some(Packet::Connect(c)) => {
                self.send(Packet::Connected(cocoon_tl::types::tcp::Connected {
                    id: c.id,
                }))
                .await
            }
            other => panic!("expected tcp.connect, got {other:?}"),
        }
    }

    /// Initiator side of the opening.
    pub(crate) async fn connect_handshake(&mut self, id: i64) {
        self.send(Packet::Connect(cocoon_tl::types::tcp::Connect { id }))
            .await;
        match self.recv().await {
            Some(Packet::Connected(c)) => assert_eq!(c.id, id),
            other => panic!("expected tcp.connected, got {other:?}"),
        }
    }
}

/// Test server behaviour, chosen by the query body:
/// `sleep:<ms>` answers after a delay, `error` answers error 603, `drop` drops the responder,
/// `hold` never answers (the responder is kept), anything else is echoed. Messages are echoed
/// back as messages.
pub(crate) async fn serve(
    handle: SessionHandle,
    mut incoming: mpsc::Receiver<Incoming>,
    held: Held,
) {
    while let Some(item) = incoming.recv().await {
        match item {
            Incoming::Query { data, responder } => {
                if let Some(ms) = data.strip_prefix(b"sleep:") {
                    let ms: u64 = std::str::from_utf8(ms).unwrap().parse().unwrap();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        let _ = responder.answer(data);
                    });
                } else if data == b"error" {
                    let _ = responder.error(603, "asked for an error");
                } else if data == b"drop" {
                    drop(responder);
                } else if data == b"hold" {
                    held.lock().unwrap().push(responder);
                } else {
                    let _ = responder.answer(data);
                }
            }
            Incoming::Message { data } => {
                let _ = handle.send_message(data).await;
            }
        }
    }
}

pub(crate) type Held = Arc<Mutex<Vec<Responder>>>;

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
    pub sessions: Arc<Mutex<Vec<SessionHandle>>>,
    pub held: Held,
}

impl TestServer {
    pub(crate) async fn start(config: Config) -> TestServer {
        Self::start_at("127.0.0.1:0".parse().unwrap(), config).await
    }

    pub(crate) async fn start_at(addr: SocketAddr, config: Config) -> TestServer {
        let listener = Listener::bind(addr, config).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions: Arc<Mutex<Vec<SessionHandle>>> = Arc::default();
        let held: Held = Arc::default();
        let (s, h) = (sessions.clone(), held.clone());
        let task = tokio::spawn(listener.run(move |handle, incoming, _peer| {
            s.lock().unwrap().push(handle.clone());
            tokio::spawn(serve(handle, incoming, h.clone()));
        }));
        TestServer {
            addr,
            task,
            sessions,
            held,
        }
    }

    /// Stops accepting and closes every session.
    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let sessions: Vec<SessionHandle> = self.sessions.lock().unwrap().drain(..).collect();
        for s in &sessions {
            s.close();
        }
        for s in &sessions {
            within(s.closed()).await;
        }
        self.held.lock().unwrap().clear();
    }
}
