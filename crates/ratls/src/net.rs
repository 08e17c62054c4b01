//! The connection pipeline: TCP → proof-of-work → RA-TLS → `tcp.*` session
//! ([`cocoon_net`]). Every phase has its own timeout; the peer's [`VerifiedPeer`] comes
//! with each session.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::{Fault, VerifiedPeer};
use cocoon_net::{CloseReason, ConnectError, Incoming, SessionHandle};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{CertResolver, client_config, server_config};
use crate::pow::{self, PowError};
use crate::sign::SessionKey;
use crate::verifier::{RatlsVerifier, VerifyError};

/// Name sent as SNI and ignored by the verifier (every RA-TLS certificate says localhost).
const SERVER_NAME: &str = "localhost";

/// Which phase of the pipeline failed or timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the TCP connection.
    TcpConnect,
    /// The proof-of-work exchange.
    Pow,
    /// The TLS handshake.
    Tls,
    /// Opening the framed session.
    Session,
}

/// Per-phase time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Opening the TCP connection.
    pub tcp_connect: Duration,
    /// Covers sending/solving/checking the challenge.
    pub pow: Duration,
    /// The TLS handshake.
    pub tls: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_connect: Duration::from_secs(10),
            pow: Duration::from_secs(30),
            tls: Duration::from_secs(10),
        }
    }
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RatlsError {
    /// A phase took longer than its limit.
    #[error("{0:?} timed out")]
    Timeout(Phase),
    /// A socket error.
    #[error("tcp: {0}")]
    Io(#[from] io::Error),
    /// The proof of work failed.
    #[error("proof of work: {0}")]
    Pow(#[from] PowError),
    /// The TLS handshake failed; [`RatlsError::verify_error`] tells whether our verifier
    /// rejected the peer's certificate, and why.
    #[error("tls handshake: {0}")]
    Tls(#[source] io::Error),
    /// The peer sent no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate was refused.
    #[error("peer certificate: {0}")]
    Verify(#[from] VerifyError),
    /// The session over TLS could not be opened.
    #[error("session: {0}")]
    Session(#[from] ConnectError),
    /// The TLS configuration could not be built.
    #[error("configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl RatlsError {
    /// The verifier's reason when the peer's certificate was rejected on this side.
    pub fn verify_error(&self) -> Option<&VerifyError> {
        match self {
            RatlsError::Verify(v) => Some(v),
            RatlsError::Tls(e) => VerifyError::find(e),
            _ => None,
        }
    }

    /// Whose fault the failure is. The peer's: its certificate or attestation refused for a
    /// reason of its own (see [`VerifyError::fault`]), no certificate, a failed
    /// proof-of-work exchange ([`PowError::fault`]), TLS messages that break the protocol, a
    /// protocol violation while the session opens. Ours ([`Fault::Local`], reported and
    /// retried): our configuration, local attestation faults (collateral, CRLs), transport
    /// errors, timeouts, and the peer closing or refusing the connection.
    pub fn fault(&self) -> Fault {
        if let Some(v) = self.verify_error() {
            return v.fault();
        }
        match self {
            RatlsError::NoPeerCertificate => Fault::Peer,
            RatlsError::Pow(e) => e.fault(),
            RatlsError::Tls(e) => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or(Fault::Local, tls_fault),
            RatlsError::Session(ConnectError::Closed(CloseReason::ProtocolError(_))) => Fault::Peer,
            // Checked above: a refused certificate or evidence is as VerifyError::fault says.
            RatlsError::Verify(e) => e.fault(),
            RatlsError::Timeout(_)
            | RatlsError::Io(_)
            | RatlsError::Session(_)
            | RatlsError::Config(_) => Fault::Local,
        }
    }
}

/// Whose fault a TLS handshake error is: messages that break TLS and certificates refused
/// are the peer's; alerts it sent (it refused us), our own configuration and the rest are
/// ours.
fn tls_fault(e: &rustls::Error) -> Fault {
    use rustls::Error as E;
    match e {
        E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::InvalidMessage(_)
        | E::NoCertificatesPresented
        | E::DecryptError
        | E::PeerIncompatible(_)
        | E::PeerMisbehaved(_)
        | E::PeerSentOversizedRecord
        | E::InvalidCertificate(_) => Fault::Peer,
        _ => Fault::Local,
    }
}

fn pow_error(e: PowError) -> RatlsError {
    match e {
        PowError::Timeout => RatlsError::Timeout(Phase::Pow),
        e => RatlsError::Pow(e),
    }
}

fn peer_of(
    verifier: &RatlsVerifier,
    conn: &rustls::CommonState,
) -> Result<VerifiedPeer, RatlsError> {
    let certs = conn
        .peer_certificates()
        .ok_or(RatlsError::NoPeerCertificate)?;
    let (ee, rest) = certs.split_first().ok_or(RatlsError::NoPeerCertificate)?;
    Ok(verifier.verify_cert(ee, rest)?)
}

/// The peer's end-entity certificate on an established connection.
fn peer_certificate(conn: &rustls::CommonState) -> Result<CertificateDer<'static>, RatlsError> {
    conn.peer_certificates()
        .and_then(<[CertificateDer<'_>]>::first)
        .map(|c| c.clone().into_owned())
        .ok_or(RatlsError::NoPeerCertificate)
}

/// The key this side presented in a handshake: the resolver's certificate before and after
/// it, which must be the same one (a refresh in between, hourly at most, fails the
/// connection, and the caller dials again).
fn own_key(
    certs: Option<&Arc<CertResolver>>,
    before: Option<Arc<rustls::sign::CertifiedKey>>,
) -> Result<SessionKey, RatlsError> {
    let (Some(certs), Some(before)) = (certs, before) else {
        return Err(RatlsError::Config(rustls::Error::General(
            "no certificate resolver to sign with".into(),
        )));
    };
    if !Arc::ptr_eq(&before, &certs.current()) {
        return Err(RatlsError::Config(rustls::Error::General(
            "the certificate was refreshed during the handshake; dial again".into(),
        )));
    }
    Ok(SessionKey::new(before)?)
}

/// A session with what both sides presented on it (see [`RatlsConnector::connect_keyed`]).
pub struct Keyed {
    /// The session.
    pub handle: SessionHandle,
    /// Queries and messages from the peer.
    pub incoming: mpsc::Receiver<Incoming>,
    /// What the peer's attestation established.
    pub peer: VerifiedPeer,
    /// The peer's certificate (its evidence, for whoever must check it again).
    pub peer_certificate: CertificateDer<'static>,
    /// The certificate and key this side presented: what it signs receipts with.
    pub own_key: SessionKey,
}

async fn timed<T, E>(
    phase: Phase,
    limit: Duration,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, RatlsError>
where
    RatlsError: From<E>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(RatlsError::from),
        Err(_) => Err(RatlsError::Timeout(phase)),
    }
}

/// `verifier()` and `verdict_deadline(peer)`, alike on both sides.
macro_rules! verifier_accessors {
    ($side:literal) => {
        /// The verifier that checks the peer's certificate.
        pub fn verifier(&self) -> &Arc<RatlsVerifier> {
            &self.verifier
        }

        #[doc = concat!("When a session with `peer` (as this ", $side, " verified it) must end: see")]
        /// [`verdict_deadline`].
        pub fn verdict_deadline(&self, peer: &VerifiedPeer) -> tokio::time::Instant {
            verdict_deadline(&self.verifier, peer)
        }
    };
}

/// The connecting side.
#[derive(Clone)]
pub struct RatlsConnector {
    tls: TlsConnector,
    verifier: Arc<RatlsVerifier>,
    /// The certificates presented (`None` with a caller-built configuration).
    certs: Option<Arc<CertResolver>>,
    /// Highest PoW difficulty we agree to solve (usually [`pow::CLIENT_MAX_DIFFICULTY`]).
    pub pow_max_difficulty: u32,
    /// Per-phase time limits.
    pub timeouts: Timeouts,
    /// Settings of the framed session.
    pub net: cocoon_net::Config,
}

impl RatlsConnector {
    /// A connector presenting `certs` and checking the peer with `verifier`.
    pub fn new(
        certs: Arc<CertResolver>,
        verifier: Arc<RatlsVerifier>,
        pow_max_difficulty: u32,
        net: cocoon_net::Config,
    ) -> Result<Self, rustls::Error> {
        let cfg = client_config(Arc::clone(&certs), Arc::clone(&verifier))?;
        let mut c = Self::from_client_config(Arc::new(cfg), verifier, pow_max_difficulty, net);
        c.certs = Some(certs);
        Ok(c)
    }

    /// With a caller-built rustls config (its verifier should be `verifier`).
    pub fn from_client_config(
        cfg: Arc<rustls::ClientConfig>,
        verifier: Arc<RatlsVerifier>,
        pow_max_difficulty: u32,
        net: cocoon_net::Config,
    ) -> Self {
        RatlsConnector {
            tls: TlsConnector::from(cfg),
            verifier,
            certs: None,
            pow_max_difficulty,
            timeouts: Timeouts::default(),
            net,
        }
    }

    verifier_accessors!("connector");

    /// TCP → PoW → TLS; returns the TLS stream and the server's verified facts.
    pub async fn connect_tls(
        &self,
        addr: impl ToSocketAddrs,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, VerifiedPeer), RatlsError> {
        let mut tcp = timed(
            Phase::TcpConnect,
            self.timeouts.tcp_connect,
            TcpStream::connect(addr),
        )
        .await?;
        if self.net.tcp_nodelay {
            tcp.set_nodelay(true)?;
        }
        // client_handshake applies its own timeout (reported as PowError::Timeout).
        pow::client_handshake(&mut tcp, self.pow_max_difficulty, self.timeouts.pow)
            .await
            .map_err(pow_error)?;
        self.tls_over(tcp).await
    }

    async fn tls_over<S>(
        &self,
        stream: S,
    ) -> Result<(tokio_rustls::client::TlsStream<S>, VerifiedPeer), RatlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| RatlsError::Config(rustls::Error::General(format!("server name: {e}"))))?;
        let tls = timed(Phase::Tls, self.timeouts.tls, async {
            self.tls
                .connect(name, stream)
                .await
                .map_err(RatlsError::Tls)
        })
        .await?;
        let peer = peer_of(&self.verifier, tls.get_ref().1)?;
        Ok((tls, peer))
    }

    /// TCP → PoW → TLS → `tcp.connect` session.
    pub async fn connect(
        &self,
        addr: impl ToSocketAddrs,
    ) -> Result<(SessionHandle, mpsc::Receiver<Incoming>, VerifiedPeer), RatlsError> {
        let (tls, peer) = self.connect_tls(addr).await?;
        let (handle, incoming) = cocoon_net::connect_stream(tls, &self.net)
            .await
            .map_err(|e| match e {
                ConnectError::Timeout => RatlsError::Timeout(Phase::Session),
                e => RatlsError::Session(e),
            })?;
        Ok((handle, incoming, peer))
    }

    /// [`Self::connect`], also returning the peer's certificate and the key this side
    /// presented (a connector built by [`Self::new`] only).
    pub async fn connect_keyed(&self, addr: impl ToSocketAddrs) -> Result<Keyed, RatlsError> {
        let before = self.certs.as_ref().map(|c| c.current());
        let (tls, peer) = self.connect_tls(addr).await?;
        let own_key = own_key(self.certs.as_ref(), before)?;
        let peer_certificate = peer_certificate(tls.get_ref().1)?;
        let (handle, incoming) = cocoon_net::connect_stream(tls, &self.net)
            .await
            .map_err(|e| match e {
                ConnectError::Timeout => RatlsError::Timeout(Phase::Session),
                e => RatlsError::Session(e),
            })?;
        Ok(Keyed {
            handle,
            incoming,
            peer,
            peer_certificate,
            own_key,
        })
    }
}

/// One-shot convenience: [`RatlsConnector::new`] + [`RatlsConnector::connect`].
pub async fn connect(
    addr: impl ToSocketAddrs,
    certs: Arc<CertResolver>,
    verifier: Arc<RatlsVerifier>,
    pow_max_difficulty: u32,
    net: cocoon_net::Config,
) -> Result<(SessionHandle, mpsc::Receiver<Incoming>, VerifiedPeer), RatlsError> {
    RatlsConnector::new(certs, verifier, pow_max_difficulty, net)?
        .connect(addr)
        .await
}

/// The moment a session admitted under `peer` must end, on tokio's clock: the peer's
/// `valid_until` judged by `verifier`'s clock (the one that made the verdict), capped by its
/// policy's `max_validity_secs` ([`crate::verifier::verdict_remaining`]). Seconds are whole,
/// so the deadline may fall up to a second after `valid_until`. Sessions select on
/// `tokio::time::sleep_until(deadline)` and close when it fires; the dialer then redials,
/// which verifies the peer's evidence again.
pub fn verdict_deadline(verifier: &RatlsVerifier, peer: &VerifiedPeer) -> tokio::time::Instant {
    tokio::time::Instant::now() + verifier.verdict_remaining(peer)
}

/// Called with a peer's address and the verifier's reason when the certificate verifier
/// refuses it (see [`RatlsAcceptor::spawn_listener_with`]).
pub type RefusalHook = Arc<dyn Fn(SocketAddr, &VerifyError) + Send + Sync>;

/// A session accepted by [`RatlsAcceptor::spawn_listener`].
pub struct Accepted {
    /// The session.
    pub handle: SessionHandle,
    /// Queries and messages from the peer.
    pub incoming: mpsc::Receiver<Incoming>,
    /// What the peer's attestation established.
    pub peer: VerifiedPeer,
    /// The peer's address.
    pub addr: SocketAddr,
    /// When the session must end because `peer`'s verdict expires ([`verdict_deadline`]).
    pub verdict_deadline: tokio::time::Instant,
    /// The peer's certificate.
    pub peer_certificate: CertificateDer<'static>,
    /// The certificate and key this side presented (what it signs receipts with).
    pub own_key: SessionKey,
}

/// The accepting side.
#[derive(Clone)]
pub struct RatlsAcceptor {
    tls: TlsAcceptor,
    verifier: Arc<RatlsVerifier>,
    certs: Arc<CertResolver>,
    /// PoW difficulty demanded from clients (usually [`pow::DEFAULT_DIFFICULTY`]).
    pub pow_difficulty: u32,
    /// Per-phase time limits.
    pub timeouts: Timeouts,
    /// Settings of the framed session.
    pub net: cocoon_net::Config,
}

impl RatlsAcceptor {
    /// An acceptor presenting `certs` and checking the peer with `verifier`.
    pub fn new(
        certs: Arc<CertResolver>,
        verifier: Arc<RatlsVerifier>,
        pow_difficulty: u32,
        net: cocoon_net::Config,
    ) -> Result<Self, rustls::Error> {
        let cfg = server_config(Arc::clone(&certs), Arc::clone(&verifier))?;
        Ok(RatlsAcceptor {
            tls: TlsAcceptor::from(Arc::new(cfg)),
            verifier,
            certs,
            pow_difficulty,
            timeouts: Timeouts::default(),
            net,
        })
    }

    verifier_accessors!("acceptor");

    /// PoW → TLS on an accepted TCP stream.
    pub async fn accept_tls(
        &self,
        mut tcp: TcpStream,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, VerifiedPeer), RatlsError> {
        if self.net.tcp_nodelay {
            let _ = tcp.set_nodelay(true);
        }
        pow::server_handshake(&mut tcp, self.pow_difficulty, self.timeouts.pow)
            .await
            .map_err(pow_error)?;
        let tls = timed(Phase::Tls, self.timeouts.tls, async {
            self.tls.accept(tcp).await.map_err(RatlsError::Tls)
        })
        .await?;
        let peer = peer_of(&self.verifier, tls.get_ref().1)?;
        Ok((tls, peer))
    }

    /// PoW → TLS → acceptor session (ready once the peer's `tcp.connect` arrives).
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(SessionHandle, mpsc::Receiver<Incoming>, VerifiedPeer), RatlsError> {
        let (tls, peer) = self.accept_tls(tcp).await?;
        let (handle, incoming) = cocoon_net::accept_stream(tls, &self.net);
        Ok((handle, incoming, peer))
    }

    /// [`Self::accept`], also returning the peer's certificate and the key this side
    /// presented.
    async fn accept_keyed(
        &self,
        tcp: TcpStream,
    ) -> Result<
        (
            SessionHandle,
            mpsc::Receiver<Incoming>,
            VerifiedPeer,
            CertificateDer<'static>,
            SessionKey,
        ),
        RatlsError,
    > {
        let before = self.certs.current();
        let (tls, peer) = self.accept_tls(tcp).await?;
        let own = own_key(Some(&self.certs), Some(before))?;
        let cert = peer_certificate(tls.get_ref().1)?;
        let (handle, incoming) = cocoon_net::accept_stream(tls, &self.net);
        Ok((handle, incoming, peer, cert, own))
    }

    /// Accept forever on `listener`, running at most `max_handshakes` handshakes at once;
    /// established sessions are sent on the returned channel (failures are logged).
    /// Abort the handle to stop.
    pub fn spawn_listener(
        self,
        listener: TcpListener,
        max_handshakes: usize,
    ) -> (JoinHandle<()>, mpsc::Receiver<Accepted>) {
        self.spawn_listener_with(listener, max_handshakes, None)
    }

    /// [`Self::spawn_listener`], calling `on_refused` with the peer's address and the
    /// verifier's reason each time the certificate verifier refuses a peer (a handshake that
    /// fails for any other reason, a scan or a timeout, is only logged).
    pub fn spawn_listener_with(
        self,
        listener: TcpListener,
        max_handshakes: usize,
        on_refused: Option<RefusalHook>,
    ) -> (JoinHandle<()>, mpsc::Receiver<Accepted>) {
        let (tx, rx) = mpsc::channel(max_handshakes.max(1));
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(max_handshakes.max(1)));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let (tcp, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let this = Arc::clone(&this);
                let sink = tx.clone();
                let on_refused = on_refused.clone();
                tokio::spawn(async move {
                    let res = this.accept_keyed(tcp).await;
                    drop(permit);
                    match res {
                        Ok((handle, incoming, peer, peer_certificate, own_key)) => {
                            let verdict_deadline = this.verdict_deadline(&peer);
                            let _ = sink
                                .send(Accepted {
                                    handle,
                                    incoming,
                                    peer,
                                    addr,
                                    verdict_deadline,
                                    peer_certificate,
                                    own_key,
                                })
                                .await;
                        }
                        Err(e) => {
                            tracing::debug!(%addr, error = %e, "ra-tls accept failed");
                            if let (Some(hook), Some(reason)) = (&on_refused, e.verify_error()) {
                                hook(addr, reason);
                            }
                        }
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        (task, rx)
    }
}
