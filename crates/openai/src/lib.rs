//! OpenAI-compatible API surface shared by Cocoon's client, proxy and worker.
//!
//! Everything here is pure: no sockets, no clocks, no allocation that is not bounded by the
//! input. The worker uses it to validate requests before they reach an engine and to count the
//! tokens of a response whatever shape it arrives in (plain JSON or Server-Sent Events); the
//! client uses it to read the body extensions and to produce OpenAI-style error bodies; the
//! proxy and the ledger use the price arithmetic.
//!
//! - [`validate`]: the field allowlist for `/v1/chat/completions` and `/v1/completions`, with
//!   typed checks, duplicate-key rejection and the `stream_options.include_usage` rewrite.
//! - [`limit`]: the completion-token limit a request carries from the client's reservation to
//!   the engine (written into the body, read back by the worker).
//! - [`sse`]: an incremental Server-Sent Events parser that gives the same events for any
//!   chunking of the byte stream.
//! - [`usage`]: OpenAI usage objects, a tracker that finds usage in JSON or SSE bodies (so
//!   streamed answers are billed too), and the price formula in integer arithmetic.
//! - [`capabilities`]: what a served model supports, as `/v1/models` shows it.
//! - [`responses`]: OpenAI's Responses API (stateless) mapped onto chat completions and back,
//!   whole and streamed.
//! - [`error`]: OpenAI error bodies with the HTTP status each kind maps to.
//! - [`types`]: response and chunk types for engines that produce answers themselves.
#![forbid(unsafe_code)]

pub mod capabilities;
pub mod cost;
pub mod error;
pub mod limit;
pub mod responses;
pub mod sse;
pub mod types;
pub mod usage;
pub mod validate;

pub use capabilities::Capabilities;
pub use cost::{CostInjector, cost_fields};
pub use error::{ApiError, ErrorKind};
pub use limit::{CompletionLimit, cap_completion_tokens, completion_limit};
pub use usage::{Multipliers, PriceTable, TokenCategories, Usage, UsageTracker};
pub use validate::{CocoonExtensions, Endpoint, ValidatedRequest, prompt_text, validate_request};
