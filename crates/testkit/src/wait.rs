//! Waiting in tests: conditions polled until they hold, futures bounded by a deadline.

use std::future::Future;
use std::time::Duration;

use crate::fixtures::LIMIT;

/// Polls `f` until it holds (or panics after [`LIMIT`]).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + LIMIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `f`'s output, or a panic naming `what` after [`LIMIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}
