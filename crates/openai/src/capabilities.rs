//! What a served model supports, as `/v1/models` shows it (`capabilities`).
//!
//! Each capability is yes, no or unknown (`null`): the embedded engine knows what it does;
//! an HTTP engine in front of someone else's server does not. The worker announces its
//! engine's in `worker.modelInfo` and the proxy answers a client's `client.getModelInfo` with
//! what every enabled worker of a model has in common (version 3, see docs/protocol.md), as
//! two bit sets: the capabilities known, and of those the ones supported.

use serde::Serialize;
use serde_json::{Map, Value};

/// The capabilities, in their bit order.
pub const NAMES: [&str; 7] = [
    "chat",
    "completions",
    "embeddings",
    "tools",
    "json_schema",
    "vision",
    "logprobs",
];

/// What a model supports; `None` where that is not known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `POST /v1/chat/completions`.
    pub chat: Option<bool>,
    /// `POST /v1/completions`.
    pub completions: Option<bool>,
    /// `POST /v1/embeddings`.
    pub embeddings: Option<bool>,
    /// `tools` / `tool_choice`.
    pub tools: Option<bool>,
    /// `response_format` `json_object` and `json_schema`.
    pub json_schema: Option<bool>,
    /// Image parts in messages.
    pub vision: Option<bool>,
    /// `logprobs` / `top_logprobs`.
    pub logprobs: Option<bool>,
}

impl Capabilities {
    fn fields(&self) -> [Option<bool>; 7] {
        [
            self.chat,
            self.completions,
            self.embeddings,
            self.tools,
            self.json_schema,
            self.vision,
            self.logprobs,
        ]
    }

    fn from_fields(f: [Option<bool>; 7]) -> Capabilities {
        let [
            chat,
            completions,
            embeddings,
            tools,
            json_schema,
            vision,
            logprobs,
        ] = f;
        Capabilities {
            chat,
            completions,
            embeddings,
            tools,
            json_schema,
            vision,
            logprobs,
        }
    }

    /// `(known, supported)` bit sets (bit `i` is [`NAMES`]`[i]`), as the wire carries them.
    pub fn to_bits(&self) -> (i32, i32) {
        let mut known = 0;
        let mut supported = 0;
        for (i, f) in self.fields().into_iter().enumerate() {
            if let Some(s) = f {
                known |= 1 << i;
                if s {
                    supported |= 1 << i;
                }
            }
        }
        (known, supported)
    }

    /// Reads the wire's bit sets; bits beyond [`NAMES`] (a newer peer's) are ignored.
    pub fn from_bits(known: i32, supported: i32) -> Capabilities {
        let mut f = [None; 7];
        for (i, v) in f.iter_mut().enumerate() {
            if known & (1 << i) != 0 {
                *v = Some(supported & (1 << i) != 0);
            }
        }
        Capabilities::from_fields(f)
    }

    /// What a request may count on when either of two servers may serve it: no where either
    /// says no, yes where both say yes, unknown otherwise.
    pub fn common(self, other: Capabilities) -> Capabilities {
        let (a, b) = (self.fields(), other.fields());
        let mut f = [None; 7];
        for i in 0..f.len() {
            f[i] = match (a[i], b[i]) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
        }
        Capabilities::from_fields(f)
    }

    /// The `/v1/models` object: every name, `true`, `false` or `null`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (name, f) in NAMES.iter().zip(self.fields()) {
            m.insert((*name).into(), f.map_or(Value::Null, Value::Bool));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn embedded() -> Capabilities {
        Capabilities {
            chat: Some(true),
            completions: Some(true),
            embeddings: Some(false),
            tools: Some(false),
            json_schema: Some(false),
            vision: Some(false),
            logprobs: Some(false),
        }
    }

    #[test]
    fn bits_round_trip_and_unknown_is_null() {
        for c in [Capabilities::default(), embedded()] {
            let (k, s) = c.to_bits();
            assert_eq!(Capabilities::from_bits(k, s), c);
        }
        assert_eq!(embedded().to_bits(), (0b111_1111, 0b11));
        // Bits of capabilities we do not know of are ignored; supported without known is
        // unknown.
        assert_eq!(
            Capabilities::from_bits(-1 << 7 | 1, 0b10),
            Capabilities {
                chat: Some(false),
                ..Capabilities::default()
            }
        );
        assert_eq!(
            embedded().to_json(),
            json!({"chat": true, "completions": true, "embeddings": false, "tools": false,
                   "json_schema": false, "vision": false, "logprobs": false})
        );
        assert_eq!(Capabilities::default().to_json()["tools"], Value::Null);
    }

    #[test]
    fn workers_in_common_no_wins_yes_needs_all() {
        let http = Capabilities {
            chat: Some(true),
            ..Capabilities::default()
        };
        let both = embedded().common(http);
        assert_eq!(both.chat, Some(true));
        assert_eq!(both.completions, None);
        assert_eq!(both.tools, Some(false));
        assert_eq!(embedded().common(embedded()), embedded());
        assert_eq!(http.common(embedded()), both);
    }
}
