#![forbid(unsafe_code)]
//! Session layer: the `tcp.*` packet protocol over a framed byte stream.
//!
//! * [`session`]: sans-I/O state machine ([`Session`]): framing, `tcp.connect` opening, pings,
//!   idle timeout, queries with per-query timeouts.
//! * [`driver`]: runs a session over any `AsyncRead + AsyncWrite` stream with bounded buffers
//!   ([`spawn_session`], [`SessionHandle`], [`Incoming`]).
//! * [`tcp`]: connect/accept helpers ([`connect_tcp`], [`Listener`], [`accept_loop`]).
//! * [`reconnect`]: [`Reconnector`] keeping one outbound session alive with backoff.
//!
//! Logging goes through `tracing` and never includes payload contents (only sizes and ids).

pub mod driver;
pub mod reconnect;
pub mod session;
pub mod tcp;

pub use cocoon_tl::codes::ErrorCode;
pub use driver::{
    Config, Incoming, MAX_DATA_LEN, QueryError, Responder, SessionHandle, SessionState,
    spawn_session,
};
pub use reconnect::{Backoff, BackoffConfig, ReconnectState, Reconnector};
pub use session::{
    CloseReason, Event, QueryId, Role, SendError, Session, SessionConfig, SessionStats,
};
pub use tcp::{ConnectError, Listener, accept_loop, accept_stream, connect_stream, connect_tcp};
