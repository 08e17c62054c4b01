//! The `Engine` trait: what the worker needs from anything that produces tokens.
//!
//! An engine takes a validated OpenAI request and answers with an HTTP status, a content type
//! and a body delivered as a channel of [`BodyEvent`]s: the body bytes exactly as the engine
//! produced them, then either [`BodyEvent::End`] with the final usage or [`BodyEvent::Failed`]
//! with the usage counted so far (so that a failure mid-stream bills what was delivered, once).
//! Dropping the receiver cancels the request: the engine notices the closed channel and stops
//! generating (the embedded engine frees its sequence; HTTP engines close the connection).

use cocoon_openai::{Endpoint, Usage};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::sync::mpsc;

/// A request for an engine. The body has passed [`cocoon_openai::validate_request`].
#[derive(Clone, Debug)]
pub struct EngineRequest {
    /// Chat or text completion.
    pub endpoint: Endpoint,
    /// The validated body (model name as the network knows it).
    pub body: Map<String, Value>,
    /// Whether the answer is streamed.
    pub stream: bool,
    /// Time the engine may take for the whole answer.
    pub timeout: Duration,
}

/// One piece of an answer body.
#[derive(Clone, Debug, PartialEq)]
pub enum BodyEvent {
    /// Body bytes, unchanged.
    Data(Vec<u8>),
    /// The body ended normally.
    End {
        /// Final usage.
        usage: Usage,
        /// Whether the usage was counted by us (the engine did not report it).
        counted_locally: bool,
    },
    /// The body broke off.
    Failed {
        /// What happened.
        error: EngineError,
        /// Usage delivered before the failure.
        usage: Usage,
    },
}

/// The head of an answer plus its body channel.
#[derive(Debug)]
pub struct EngineResponse {
    /// HTTP status from the engine.
    pub status: u16,
    /// `Content-Type` (`text/event-stream` for streams).
    pub content_type: String,
    /// The body.
    pub body: mpsc::Receiver<BodyEvent>,
}

/// Engine failures. Messages never contain prompt or completion text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine could not be reached.
    #[error("engine unreachable: {0}")]
    Unreachable(String),
    /// The engine did not answer in time.
    #[error("engine timed out after {0:?}")]
    Timeout(Duration),
    /// The engine answered with an error status before any body was relayed.
    #[error("engine answered HTTP {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Short reason taken from the engine's error body.
        message: String,
    },
    /// The engine broke the protocol (bad JSON, oversized event, connection dropped).
    #[error("engine protocol error: {0}")]
    Protocol(String),
    /// The engine is overloaded (all sequences busy).
    #[error("engine busy: {0}")]
    Busy(String),
    /// The request asked for something this engine cannot do.
    #[error("unsupported request: {0}")]
    Unsupported(String),
    /// The engine refuses the request as it was asked (the caller's fault: a parameter it
    /// does not support, a prompt over its context): an HTTP 400 for the app, with OpenAI's
    /// `param` and `code`.
    #[error("invalid request: {}", .0.message)]
    Invalid(cocoon_openai::ApiError),
}

impl EngineError {
    /// [`EngineError::Invalid`] about `param`, with OpenAI's `code`.
    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        EngineError::Invalid(cocoon_openai::ApiError::invalid(param, code, message))
    }
}

/// Engine health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Whether requests can be sent now.
    pub up: bool,
    /// Why not, when down.
    pub reason: Option<String>,
}

/// What an engine serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// Model name as the network knows it (OpenAI `model`).
    pub name: String,
    /// Engine kind (`llama.cpp (embedded)`, `vllm`, …).
    pub engine: String,
    /// Context length in tokens, when known.
    pub context_length: Option<u32>,
    /// Requests the engine runs at once.
    pub max_concurrency: u32,
    /// What it supports, where known (`/v1/models` shows it).
    pub capabilities: cocoon_openai::Capabilities,
}

/// Counts tokens the way the served model does. Used when an engine omits usage.
pub trait Tokenizer: Send + Sync {
    /// Number of tokens `text` encodes to (no special tokens added).
    fn count(&self, text: &str) -> Result<u64, String>;
}

/// Something that answers OpenAI requests.
pub trait Engine: Send + Sync {
    /// Starts a request. Resolves when the head of the answer is known.
    fn submit(&self, req: EngineRequest) -> BoxFuture<'_, Result<EngineResponse, EngineError>>;
    /// Probes the engine.
    fn health(&self) -> BoxFuture<'_, Health>;
    /// Static facts about the served model.
    fn model_info(&self) -> ModelInfo;
}
