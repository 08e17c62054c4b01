//! The background loop both collateral fetchers run ([`crate::CollateralFetcher`],
//! [`crate::KdsFetcher`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::pccs::Clock;

/// Runs `pass(fetcher, now)` every `interval`, and at once when `wake(fetcher)` is notified
/// (a lookup found something missing or due). Abort the handle to stop.
pub(crate) fn spawn<T, P, F>(
    fetcher: &Arc<T>,
    wake: fn(&T) -> &Notify,
    clock: Clock,
    interval: Duration,
    pass: P,
) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    P: Fn(Arc<T>, u64) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let fetcher = Arc::clone(fetcher);
    tokio::spawn(async move {
        loop {
            pass(Arc::clone(&fetcher), clock()).await;
            let _ = tokio::time::timeout(interval, wake(&fetcher).notified()).await;
        }
    })
}
