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

#[cfg(test)]
mod tests {
    use super::*;

    // The waiters fail, not hang, when what they wait for never comes (the paused clock
    // jumps over the limit at once).

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out waiting for: a condition that never holds")]
    async fn eventually_fails_when_the_condition_never_holds() {
        eventually("a condition that never holds", || false).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out waiting for: a future that never ends")]
    async fn within_fails_when_the_future_never_ends() {
        within("a future that never ends", std::future::pending::<()>()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_once_the_condition_holds() {
        let start = tokio::time::Instant::now();
        let mut polls = 0;
        eventually("the third poll", || {
            polls += 1;
            polls == 3
        })
        .await;
        assert_eq!(polls, 3);
        assert_eq!(start.elapsed(), Duration::from_millis(40));
        assert_eq!(within("a ready future", async { 7 }).await, 7);
    }
}
