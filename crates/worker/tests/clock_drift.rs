//! A local clock far from the chain's, seen through the real root watcher reading a chain
//! whose block time the test sets: the worker records `clock_drift` once (admin page,
//! `/metrics`) and `clock_agrees` when the clocks agree again.

use std::time::Duration;

use cocoon_service::chain::{ChainTime, RootWatcher, local_now};
use cocoon_testkit::prelude::*;
use cocoon_ton::chain::fake::FakeChain;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_clock_ahead_of_the_chain_is_an_operator_event_on_the_admin_pages() {
    let (base, _eng, proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |c| {
        c.admin = Some(admin_config(None))
    })
    .await;
    let start = root(1, true, true);
    let chain = FakeChain::default();
    chain.set_root(&start).unwrap();
    // The chain's last block is ten minutes older than the local clock says.
    chain.set_utime(local_now() - 600);
    let time = ChainTime::new(120);
    w.follow_chain_time(time.clone());
    let mut on_event = cocoon_worker::watch_events(&w, &time);
    let mut watcher = RootWatcher::new(chain.clone(), addr(0x01), Duration::from_secs(1), 1)
        .with_time(time.clone());
    for _ in 0..2 {
        watcher.poll_once(&mut []).await;
        for e in watcher.take_events() {
            on_event(e);
        }
    }
    let s = w.stats();
    assert_eq!(
        s.event_counts.get("clock_drift"),
        Some(&1),
        "{:?}",
        s.events
    );
    let off = s.clock_offset_secs.unwrap();
    assert!((599..=601).contains(&off), "{off}");
    assert!(s.clock_drifted);
    assert!(
        s.events[0]
            .detail
            .contains(&format!("{off} s ahead of the chain's")),
        "{}",
        s.events[0].detail
    );
    let http = cocoon_service::http::ClientBuilder::new().build().unwrap();
    let admin = format!("http://{}", w.admin_addr().unwrap());
    let m = get_text(&http, &format!("{admin}/metrics")).await;
    assert!(m.contains("cocoon_worker_clock_drift 1"), "{m}");
    assert!(
        m.contains(&format!("cocoon_worker_clock_offset_seconds {off}")),
        "{m}"
    );
    assert!(
        m.contains("cocoon_worker_operator_events_total{kind=\"clock_drift\"} 1"),
        "{m}"
    );
    let page = get_text(&http, &format!("{admin}/stats")).await;
    assert!(page.contains(&format!("{off} (clock_drift)")), "{page}");

    // NTP fixed the clock: once most of the last five reads agree (the third), reported.
    chain.set_utime(local_now());
    for _ in 0..3 {
        watcher.poll_once(&mut []).await;
        for e in watcher.take_events() {
            on_event(e);
        }
    }
    let s = w.stats();
    assert_eq!(s.event_counts.get("clock_agrees"), Some(&1));
    assert!(!s.clock_drifted);
    let m = get_text(&http, &format!("{admin}/metrics")).await;
    assert!(m.contains("cocoon_worker_clock_drift 0"), "{m}");
}
