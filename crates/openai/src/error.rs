//! OpenAI-style error bodies.
//!
//! Every error a Cocoon component returns over HTTP has the shape OpenAI SDKs parse:
//! `{"error":{"message":…,"type":…,"param":…,"code":…}}`, with an HTTP status chosen by the
//! [`ErrorKind`]. Messages name the offending field but never echo prompt text.

use serde_json::{Value, json};

/// What went wrong, which fixes the HTTP status and the OpenAI `type` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request body or path is malformed or uses an unsupported field.
    InvalidRequest,
    /// 401: missing or unknown API key.
    Authentication,
    /// 402: the payment channel or the key's spending limit cannot cover the request.
    InsufficientFunds,
    /// 404: unknown model or path.
    NotFound,
    /// 413: the body is larger than allowed.
    PayloadTooLarge,
    /// 429: no worker or proxy has free capacity within the request's limits.
    NoCapacity,
    /// 500: a bug or an unexpected local failure.
    Internal,
    /// 502: the upstream (proxy, worker or engine) failed.
    Upstream,
    /// 503: this component is not ready (starting, disabled, no proxy connected).
    Unavailable,
    /// 504: the upstream did not answer before the deadline.
    Timeout,
}

impl ErrorKind {
    /// The HTTP status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::InsufficientFunds => 402,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::NoCapacity => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Upstream => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// The OpenAI `error.type` string.
    pub fn type_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::InsufficientFunds => "insufficient_funds",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::NoCapacity => "rate_limit_error",
            ErrorKind::Internal => "server_error",
            ErrorKind::Upstream | ErrorKind::Unavailable | ErrorKind::Timeout => "upstream_error",
        }
    }
}

/// An error ready to be sent to an OpenAI client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Kind (status and type).
    pub kind: ErrorKind,
    /// Human-readable message. Never contains prompt or completion text.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A machine-readable code, e.g. `unknown_field`.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 error about `param`.
    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: Some(param.into()),
            code: Some(code),
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind.type_str(),
                "param": self.param,
                "code": self.code,
            }
        })
    }

    /// The JSON body as bytes.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_json()).unwrap_or_default()
    }

    /// An invalid request as COCOON error text travels (`queryAnswerErrorEx.error`): the
    /// message, then `(param: P; code: C)` for what is known, so that a client reading it
    /// back ([`ApiError::from_wire`]) gives the app the same `param` and `code`.
    pub fn to_wire(&self) -> String {
        let mut tags = Vec::new();
        if let Some(p) = &self.param {
            tags.push(format!("param: {p}"));
        }
        if let Some(c) = self.code {
            tags.push(format!("code: {c}"));
        }
        if tags.is_empty() {
            self.message.clone()
        } else {
            format!("{} ({})", self.message, tags.join("; "))
        }
    }

    /// Reads an invalid request back from [`ApiError::to_wire`]'s text (after its
    /// `invalid request: ` prefix): a 400 with the message, the `param` (a field path, at
    /// most 200 characters) and the `code` when it is one of [`KNOWN_CODES`]. Text without
    /// the tags is the message as it is.
    pub fn from_wire(text: &str) -> ApiError {
        let mut e = ApiError::new(ErrorKind::InvalidRequest, text);
        let Some(inner) = text.strip_suffix(')') else {
            return e;
        };
        let Some(open) = inner.rfind(" (") else {
            return e;
        };
        let (mut param, mut code) = (None, None);
        for tag in inner[open + 2..].split("; ") {
            if let Some(p) = tag.strip_prefix("param: ") {
                param = Some(p);
            } else if let Some(c) = tag.strip_prefix("code: ") {
                code = Some(c);
            } else {
                return e; // parentheses of the message itself
            }
        }
        let path_char = |c: char| c.is_ascii_alphanumeric() || "_.[]-".contains(c);
        e.message = inner[..open].to_owned();
        e.param = param
            .filter(|p| !p.is_empty() && p.len() <= 200 && p.chars().all(path_char))
            .map(str::to_owned);
        e.code = code.and_then(|c| KNOWN_CODES.iter().copied().find(|k| *k == c));
        e
    }
}

/// The `error.code` values Cocoon gives apps for invalid requests; a code read from a peer
/// outside this list is dropped (it never reaches the app as free text).
pub const KNOWN_CODES: &[&str] = &[
    "context_length_exceeded",
    "unsupported_parameter",
    "unsupported_value",
    "invalid_value",
    "invalid_type",
    "missing_field",
    "unknown_field",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid(
            "temperature",
            "invalid_type",
            "temperature must be a number",
        );
        assert_eq!(e.status(), 400);
        let v = e.to_json();
        assert_eq!(v["error"]["param"], "temperature");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_type");
        let e = ApiError::new(ErrorKind::InsufficientFunds, "balance too low");
        assert_eq!(e.status(), 402);
        assert_eq!(e.to_json()["error"]["param"], Value::Null);
    }

    #[test]
    fn invalid_requests_travel_as_text_and_come_back_with_param_and_code() {
        let e = ApiError::invalid(
            "messages[0].content",
            "invalid_type",
            "messages[0].content must be a string or an array of parts",
        );
        let text = e.to_wire();
        assert_eq!(
            text,
            "messages[0].content must be a string or an array of parts \
             (param: messages[0].content; code: invalid_type)"
        );
        assert_eq!(ApiError::from_wire(&text), e);
        let p = ApiError {
            code: None,
            ..e.clone()
        };
        assert_eq!(ApiError::from_wire(&p.to_wire()), p);
        let c = ApiError {
            param: None,
            code: Some("context_length_exceeded"),
            ..e.clone()
        };
        assert_eq!(ApiError::from_wire(&c.to_wire()), c);
        // Text without tags, parentheses of the message, unknown codes, odd params.
        for plain in ["no room (max_tokens)", "x (a: b)", "plain", "a ()", ")"] {
            let r = ApiError::from_wire(plain);
            assert_eq!((r.message.as_str(), r.param, r.code), (plain, None, None));
        }
        let r = ApiError::from_wire("m (param: a b; code: made_up)");
        assert_eq!(r.status(), 400);
        assert_eq!((r.message.as_str(), r.param, r.code), ("m", None, None));
    }

    #[test]
    fn statuses_are_distinct_per_kind() {
        let kinds = [
            ErrorKind::InvalidRequest,
            ErrorKind::Authentication,
            ErrorKind::InsufficientFunds,
            ErrorKind::NotFound,
            ErrorKind::PayloadTooLarge,
            ErrorKind::NoCapacity,
            ErrorKind::Internal,
            ErrorKind::Upstream,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
        ];
        let mut s: Vec<u16> = kinds.iter().map(|k| k.status()).collect();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), kinds.len());
    }
}
