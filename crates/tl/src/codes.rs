//! The protocol's error codes (TON's), carried in `tcp.queryError` and used for local failures.

use std::fmt;

/// Well-known TON error codes.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Generic failure.
    Failure = 601,
    /// Generic error.
    Error = 602,
    /// Warning.
    Warning = 603,
    /// Protocol violation by the peer.
    ProtoViolation = 621,
    /// The connection/session is not (or no longer) ready.
    NotReady = 651,
    /// Operation timed out.
    Timeout = 652,
    /// Operation was cancelled.
    Cancelled = 653,
}

impl ErrorCode {
    /// All known codes.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::Failure,
        ErrorCode::Error,
        ErrorCode::Warning,
        ErrorCode::ProtoViolation,
        ErrorCode::NotReady,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
    ];

    /// The code for a numeric value, if it is a known one.
    pub fn from_i32(code: i32) -> Option<Self> {
        Some(match code {
            601 => ErrorCode::Failure,
            602 => ErrorCode::Error,
            603 => ErrorCode::Warning,
            621 => ErrorCode::ProtoViolation,
            651 => ErrorCode::NotReady,
            652 => ErrorCode::Timeout,
            653 => ErrorCode::Cancelled,
            _ => return None,
        })
    }

    /// Numeric value.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// Lower-case TON name (`"protoviolation"`, `"notready"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Failure => "failure",
            ErrorCode::Error => "error",
            ErrorCode::Warning => "warning",
            ErrorCode::ProtoViolation => "protoviolation",
            ErrorCode::NotReady => "notready",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
        }
    }

    /// HTTP status a proxy should answer with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Cancelled | ErrorCode::NotReady => 502,
            ErrorCode::Timeout => 504,
            ErrorCode::Error | ErrorCode::ProtoViolation | ErrorCode::Warning => 400,
            ErrorCode::Failure => 500,
        }
    }
}

/// HTTP status for an arbitrary numeric code (unknown codes map to 500).
pub fn http_status_for_code(code: i32) -> u16 {
    ErrorCode::from_i32(code).map_or(500, ErrorCode::http_status)
}

impl From<ErrorCode> for i32 {
    fn from(code: ErrorCode) -> i32 {
        code.as_i32()
    }
}

impl TryFrom<i32> for ErrorCode {
    type Error = i32;

    fn try_from(code: i32) -> Result<Self, i32> {
        ErrorCode::from_i32(code).ok_or(code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_i32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_i32(code.as_i32()), Some(code));
            assert_eq!(ErrorCode::try_from(i32::from(code)), Ok(code));
        }
        assert_eq!(ErrorCode::from_i32(600), None);
        assert_eq!(ErrorCode::try_from(0), Err(0));
    }

    #[test]
    fn codes_values_and_names() {
        assert_eq!(ErrorCode::Failure.as_i32(), 601);
        assert_eq!(ErrorCode::Error.as_i32(), 602);
        assert_eq!(ErrorCode::Warning.as_i32(), 603);
        assert_eq!(ErrorCode::ProtoViolation.as_i32(), 621);
        assert_eq!(ErrorCode::NotReady.as_i32(), 651);
        assert_eq!(ErrorCode::Timeout.as_i32(), 652);
        assert_eq!(ErrorCode::Cancelled.as_i32(), 653);
        assert_eq!(ErrorCode::ProtoViolation.name(), "protoviolation");
        assert_eq!(ErrorCode::NotReady.name(), "notready");
        assert_eq!(ErrorCode::Timeout.to_string(), "timeout (652)");
    }

    #[test]
    fn codes_http_status() {
        assert_eq!(ErrorCode::Cancelled.http_status(), 502);
        assert_eq!(ErrorCode::NotReady.http_status(), 502);
        assert_eq!(ErrorCode::Timeout.http_status(), 504);
        assert_eq!(ErrorCode::Error.http_status(), 400);
        assert_eq!(ErrorCode::ProtoViolation.http_status(), 400);
        assert_eq!(ErrorCode::Warning.http_status(), 400);
        assert_eq!(ErrorCode::Failure.http_status(), 500);
        assert_eq!(http_status_for_code(652), 504);
        assert_eq!(http_status_for_code(1), 500);
    }
}
