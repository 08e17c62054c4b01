//! Response types for engines that produce OpenAI answers themselves (the embedded engine), and
//! the SSE framing they are sent in.

use crate::usage::Usage;
use serde::{Deserialize, Serialize};

/// A chat message in an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The generated text; `null` when the message only calls tools.
    pub content: Option<String>,
    /// The tools the message calls, when it calls any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One tool call of a whole chat answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_…`).
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function called.
    pub function: FunctionCall,
}

/// The function a [`ToolCall`] calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, JSON text.
    pub arguments: String,
}

/// One choice of a non-streamed chat completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Choice index.
    pub index: u32,
    /// The message.
    pub message: AssistantMessage,
    /// `stop`, `length`, …
    pub finish_reason: Option<String>,
}

/// `object: "chat.completion"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// Response id.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices.
    pub choices: Vec<ChatChoice>,
    /// Token usage.
    pub usage: Usage,
}

/// The delta of a streamed chat chunk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Set on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chat chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Choice index.
    pub index: u32,
    /// New content.
    pub delta: Delta,
    /// Set on the last content chunk.
    pub finish_reason: Option<String>,
}

/// `object: "chat.completion.chunk"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// Response id (the same for every chunk).
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// `null` except in the final chunk when `include_usage` is set.
    pub usage: Option<Usage>,
}

/// One choice of a (legacy) completion or completion chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Choice index.
    pub index: u32,
    /// Generated text (the delta, when streamed).
    pub text: String,
    /// `stop`, `length`, …
    pub finish_reason: Option<String>,
}

/// `object: "text_completion"` (also used for its stream chunks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Response id.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Choices.
    pub choices: Vec<CompletionChoice>,
    /// Usage (final chunk or whole answer).
    pub usage: Option<Usage>,
}

/// An entry of `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Model id.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds (0 when unknown).
    pub created: u64,
    /// Owner label.
    pub owned_by: String,
}

/// One SSE event carrying `value` as JSON: `data: {…}\n\n`.
pub fn sse_event<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend(serde_json::to_vec(value).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    out
}

/// The OpenAI end-of-stream event.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageTracker;

    #[test]
    fn chunk_stream_is_counted_by_the_tracker() {
        let mut body = Vec::new();
        let mk = |choices, usage| ChatCompletionChunk {
            id: "c1".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            choices,
            usage,
        };
        body.extend(sse_event(&mk(
            vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some("assistant".into()),
                    content: Some("Hi".into()),
                },
                finish_reason: None,
            }],
            None,
        )));
        body.extend(sse_event(&mk(vec![], Some(Usage::new(4, 1)))));
        body.extend_from_slice(SSE_DONE);
        let mut t = UsageTracker::new();
        t.push(&body);
        assert_eq!(t.usage(), Some(Usage::new(4, 1)));
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("\"usage\":null"),
            "OpenAI sends usage:null before the last chunk"
        );
    }
}
