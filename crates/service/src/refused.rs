//! A setting that cannot work, named by its key: the error every settings check returns (the
//! command line turns it into exit code 64 with one line saying which key and where its value
//! came from).

use std::fmt::Display;

/// A setting's key and why its value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingError {
    /// The setting's key, as the role's defaults file names it.
    pub key: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl SettingError {
    /// `key` is refused because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl Display) -> Self {
        SettingError {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}
