//! The client side: a test client speaking TL over RA-TLS to a real proxy, and fixtures of
//! the gateway (`cocoon-client`) in front of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cocoon_client::{Client, ClientConfig, ClientHandle, Timings};
use cocoon_net::{Incoming, SessionHandle};
use cocoon_tl::functions::client as fclient;
use cocoon_tl::types::{client as tclient, http as thttp, proxy as tproxy};
use cocoon_tl::{TlWrite, enums};
use cocoon_ton::StdAddr;
use cocoon_ton::root::RootConfig;
use tokio::sync::mpsc;

use crate::decode::{CHAT, FromProxy, chat_body, from_proxy, http_request, tokens5};
use crate::fixtures::{LIMIT, SECRET, addr};
use crate::identity::connector;
use crate::proxy::Net;

/// A client session with a proxy, after `client.connectToProxy`.
pub struct TestClient {
    pub handle: SessionHandle,
    pub incoming: mpsc::Receiver<Incoming>,
    pub connected: tclient::ConnectedToProxy,
    /// Workers' certificates the proxy sent (protocol 3), set aside by [`TestClient::next`].
    pub evidence: Vec<tclient::WorkerEvidence>,
    /// Answer receipts the proxy sent (protocol 3), set aside by [`TestClient::next`].
    pub receipts: Vec<tclient::AnswerReceipt>,
}

/// `client.connectToProxy` for a test client owned by `owner` (protocol 1 to 3).
pub fn connect_query(owner: &StdAddr) -> fclient::ConnectToProxy {
    connect_query_up_to(owner, 3)
}

/// `client.connectToProxy` for a test client owned by `owner` speaking protocol 1 to `max`
/// (2: as COCOON's client).
pub fn connect_query_up_to(owner: &StdAddr, max: i32) -> fclient::ConnectToProxy {
    fclient::ConnectToProxy {
        params: tclient::Params {
            client_owner_address: owner.to_string(),
            is_test: Some(true),
            min_proto_version: Some(1),
            max_proto_version: Some(max),
        },
        min_config_version: 0,
    }
}

/// `client.runQueryEx` of the chat request `body` (coefficient up to 4.0).
pub fn run_query(request_id: [u8; 32], body: &[u8], max_tokens: i32, timeout: f64) -> Vec<u8> {
    fclient::RunQueryEx {
        model_name: "Smol".into(),
        query: http_request(CHAT, body),
        max_coefficient: 4000,
        max_tokens,
        timeout,
        request_id,
        min_config_version: 0,
        enable_debug: None,
    }
    .to_bytes()
}

impl TestClient {
    /// Connects and sends `client.connectToProxy`.
    pub async fn connect(net: &Net, owner: &StdAddr) -> TestClient {
        Self::connect_to(&net.proxy.client_addr().to_string(), owner).await
    }

    /// Connects to the proxy's client port at `addr`.
    pub async fn connect_to(addr: &str, owner: &StdAddr) -> TestClient {
        Self::connect_up_to(addr, owner, 3).await
    }

    /// Connects to `addr` speaking protocol 1 to `max`.
    pub async fn connect_up_to(addr: &str, owner: &StdAddr, max: i32) -> TestClient {
        let (handle, incoming, _peer) = connector().connect(addr).await.unwrap();
        let connected: tclient::ConnectedToProxy = handle
            .query_tl(&connect_query_up_to(owner, max), LIMIT)
            .await
            .unwrap();
        TestClient {
            handle,
            incoming,
            connected,
            evidence: Vec::new(),
            receipts: Vec::new(),
        }
    }

    /// Connects speaking protocol 1 to 2, as COCOON's client does, and authorises.
    pub async fn authorized_as_cocoon(net: &Net, owner: &StdAddr) -> TestClient {
        let c = Self::connect_up_to(&net.proxy.client_addr().to_string(), owner, 2).await;
        match c.authorize_short().await {
            enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(_) => c,
            other => panic!("authorisation failed: {other:?}"),
        }
    }

    /// Connects and authorises with the short (secret) path.
    pub async fn authorized(net: &Net, owner: &StdAddr) -> TestClient {
        Self::authorized_at(&net.proxy.client_addr().to_string(), owner)
            .await
            .0
    }

    /// Connects to `addr` and authorises; returns the client and the success answer.
    pub async fn authorized_at(
        addr: &str,
        owner: &StdAddr,
    ) -> (TestClient, tclient::AuthorizationWithProxySuccess) {
        let c = Self::connect_to(addr, owner).await;
        match c.authorize_short().await {
            enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(ok) => (c, ok),
            other => panic!("authorisation failed: {other:?}"),
        }
    }

    /// `client.authorizeWithProxyShort` with [`SECRET`]: the proxy's answer.
    pub async fn authorize_short(&self) -> enums::client::AuthorizationWithProxy {
        self.authorize_with(SECRET).await
    }

    /// `client.authorizeWithProxyShort` with `secret`: the proxy's answer.
    pub async fn authorize_with(&self, secret: &[u8]) -> enums::client::AuthorizationWithProxy {
        let q = fclient::AuthorizeWithProxyShort {
            data: secret.to_vec(),
        };
        self.handle.query_tl(&q, LIMIT).await.unwrap()
    }

    /// Runs the fake engine's `mode`, streamed, as request `[id; 32]`.
    pub async fn run(&self, id: u8, mode: &str, max_tokens: i32, timeout: f64) {
        self.run_id([id; 32], mode, max_tokens, timeout).await;
    }

    /// [`TestClient::run`] with a whole request id.
    pub async fn run_id(&self, request_id: [u8; 32], mode: &str, max_tokens: i32, timeout: f64) {
        let q = run_query(request_id, &chat_body(mode, true), max_tokens, timeout);
        self.handle.send_message(q).await.unwrap();
    }

    /// `client.cancelQuery` for request `[id; 32]`.
    pub async fn cancel(&self, id: u8) {
        let m = tclient::CancelQuery {
            request_id: [id; 32],
            reason: "test".into(),
        };
        self.handle.send_message(m.to_bytes()).await.unwrap();
    }

    /// The next message from the proxy.
    pub async fn next(&mut self) -> FromProxy {
        loop {
            let m = tokio::time::timeout(LIMIT, self.incoming.recv())
                .await
                .expect("message in time")
                .expect("session open");
            if let Incoming::Message { data } = m {
                match from_proxy(&data) {
                    FromProxy::Evidence(e) => self.evidence.push(e),
                    FromProxy::Receipt(r) => self.receipts.push(r),
                    other => return other,
                }
            }
        }
    }

    /// Reads one request's answer to its end: (head, body bytes, final message).
    pub async fn collect(&mut self) -> Collected {
        let mut c = Collected::default();
        while !c.add(self.next().await) {}
        c
    }
}

/// What one request received.
#[derive(Debug, Default)]
pub struct Collected {
    pub status: Option<i32>,
    pub headers: Vec<thttp::Header>,
    pub body: Vec<u8>,
    pub tokens: Option<[i64; 5]>,
    pub error: Option<(i32, String)>,
    pub payments: Vec<tproxy::ClientRequestPayment>,
}

impl Collected {
    /// Adds a message of this request; true when it was the request's last answer.
    pub fn add(&mut self, m: FromProxy) -> bool {
        match m {
            FromProxy::Head(h, r) => {
                self.status = Some(r.status_code);
                self.headers = r.headers;
                self.body.extend_from_slice(&r.payload);
                self.end(h.final_info.map(|f| f.tokens_used))
            }
            FromProxy::Part(p) => {
                self.body.extend_from_slice(&p.answer);
                self.end(p.final_info.map(|f| f.tokens_used))
            }
            FromProxy::Error(e) => {
                self.tokens = e.final_info.as_ref().map(|f| tokens5(&f.tokens_used));
                self.error = Some((e.error_code, e.error));
                true
            }
            FromProxy::Payment(p) => {
                self.payments.push(p);
                false
            }
            FromProxy::Evidence(_) | FromProxy::Receipt(_) => false,
        }
    }

    fn end(&mut self, used: Option<cocoon_tl::types::TokensUsed>) -> bool {
        let Some(t) = used else { return false };
        self.tokens = Some(tokens5(&t));
        true
    }

    /// Whether the request ended (and got its payment message when `payments`).
    pub fn done(&self, payments: bool) -> bool {
        (self.tokens.is_some() || self.error.is_some()) && (!payments || !self.payments.is_empty())
    }
}

impl FromProxy {
    /// The first byte of the request id the message is about.
    pub fn request_byte(&self) -> u8 {
        match self {
            FromProxy::Head(h, _) => h.request_id[0],
            FromProxy::Part(p) => p.request_id[0],
            FromProxy::Error(e) => e.request_id[0],
            FromProxy::Payment(p) => p.request_id[0],
            FromProxy::Evidence(e) => e.worker_key[0],
            FromProxy::Receipt(r) => r.request_id[0],
        }
    }
}

/// Reads messages until every request in `ids` ended (and got its payment message when
/// `payments`); returns what each request received.
pub async fn collect(c: &mut TestClient, ids: &[u8], payments: bool) -> HashMap<u8, Collected> {
    let mut out: HashMap<u8, Collected> = ids.iter().map(|i| (*i, Collected::default())).collect();
    while !out.values().all(|c| c.done(payments)) {
        let m = c.next().await;
        out.get_mut(&m.request_byte())
            .expect("known request")
            .add(m);
    }
    out
}

// ---------------------------------------------------------------- the gateway

/// A gateway for `proxies` under `root`: API on loopback, owner `addr(0x42)` with [`SECRET`],
/// two connections a proxy, sim attestation, fast connects, payment checks and redials.
pub fn gateway_config(proxies: Vec<String>, root: RootConfig) -> ClientConfig {
    let mut timings = Timings {
        connect_timeout: Duration::from_secs(5),
        payment_status_interval: Duration::from_millis(200),
        ..Timings::default()
    };
    timings.backoff.base = Duration::from_millis(50);
    timings.backoff.max = Duration::from_millis(300);
    ClientConfig {
        api_listen: Some("127.0.0.1:0".parse().unwrap()),
        proxies,
        is_test: true,
        timings,
        ..ClientConfig::new(root, addr(0x42), SECRET.to_vec(), connector())
    }
}

/// Starts a gateway and waits until `ready` proxies are; returns it and its API's base URL.
pub async fn start_gateway(cfg: ClientConfig, ready: usize) -> (ClientHandle, String) {
    let c = Client::start(cfg).await.unwrap();
    let end = Instant::now() + LIMIT;
    while c.ready_proxies() < ready {
        assert!(Instant::now() < end, "proxies not ready: {:?}", c.proxies());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let base = format!("http://{}", c.api_addr().unwrap());
    (c, base)
}
