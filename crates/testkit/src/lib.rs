//! Fixtures for Cocoon's integration tests (`tests/*.rs` of the role crates; never their unit
//! tests): a fake OpenAI engine, sim identities, real proxies and workers on loopback, a TL
//! test client, a fake proxy for workers, devnet parties, an HTTPS fake with a private CA,
//! waiting and answer decoding, and the checks of a role's settings against its defaults.
#![forbid(unsafe_code)]
// Test fixtures, not an API: missing docs are allowed, and a failed unwrap fails the test
// that called it.
#![allow(missing_docs, clippy::unwrap_used)]

pub mod client;
pub mod decode;
pub mod devnet;
pub mod engine;
pub mod engine_server;
pub mod fake_proxy;
pub mod fixtures;
pub mod handmade;
pub mod http;
pub mod identity;
pub mod proxy;
pub mod settings;
pub mod tls;
pub mod wait;
pub mod worker;

/// Everything a role test usually needs, for `use cocoon_testkit::prelude::*`.
pub mod prelude {
    pub use crate::client::{Collected, TestClient};
    pub use crate::decode::{
        CHAT, FromProxy, FromWorker, chat_body, chat_with, final_tokens, from_proxy, from_worker,
        header, http_request, tokens5,
    };
    pub use crate::engine::{EngineState, Words, engine, fake_engine, transcript};
    pub use crate::fake_proxy::{
        Behavior, HandshakeEvent, ProxyConn, TestProxy, sign_payment, worker_rig,
    };
    pub use crate::fixtures::{
        LIMIT, MODEL, POW, PROXY_SEED, SECRET, TOKEN, addr, params, prices, root,
    };
    pub use crate::http::{get_json, get_text, post_status};
    pub use crate::identity::{connector, sim_identity, sim_verifier};
    pub use crate::proxy::{
        Net, ledger_meter, start_err, start_proxy, start_proxy_result, start_proxy_with,
    };
    pub use crate::wait::eventually;
    pub use crate::worker::{
        RecordingSink, TestWorker, admin_config, proxy_with_worker, start_worker, start_worker_at,
        start_worker_with, worker_config,
    };
}
