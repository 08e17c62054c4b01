//! A local clock far from the chain's, seen through the real root watcher reading a chain
//! whose block time the test sets: the proxy records `clock_drift` once (admin page,
//! `/metrics`), and `clock_agrees` when the clocks agree again; with the check off
//! (`clock_drift_max_seconds = 0`, as `cocoon up` runs) nothing is reported. The worker's
//! side is in `crates/worker/tests/clock_drift.rs`.

use std::time::Duration;

use cocoon_service::chain::{ChainTime, Polled, RootWatcher, WatchEvent, local_now};
use cocoon_testkit::prelude::*;
use cocoon_ton::Drift;
use cocoon_ton::chain::fake::FakeChain;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_clock_an_hour_behind_the_chain_is_reported_once_and_its_recovery_too() {
    let start = root(1, true, true);
    let net = start_proxy(start.clone()).await;
    let chain = FakeChain::default();
    chain.set_root(&start).unwrap();
    chain.set_utime(local_now() + 3_600);

    let time = ChainTime::new(120);
    net.proxy.follow_chain_time(time.clone());
    let root_name = addr(0x01).to_string();
    let mut to_proxy = cocoon_proxy::watch_events(&net.proxy, &root_name, &time);
    let mut w = RootWatcher::new(chain.clone(), addr(0x01), Duration::from_secs(1), 1)
        .with_time(time.clone());

    // Nothing read yet: the offset is unknown, nothing reported.
    assert_eq!(net.proxy.stats().clock_offset_secs, None);
    let http = cocoon_service::http::ClientBuilder::new().build().unwrap();
    assert!(
        !get_text(&http, &format!("{}/metrics", net.admin()))
            .await
            .contains("cocoon_proxy_clock_offset_seconds")
    );

    // The first read: the chain is an hour ahead.
    assert_eq!(w.poll_once(&mut []).await, Polled::Unchanged);
    let events = w.take_events();
    let [WatchEvent::Clock(Drift::Drifted { offset })] = events[..] else {
        panic!("{events:?}");
    };
    assert!((-3_601..=-3_599).contains(&offset), "{offset}");
    for e in events {
        to_proxy(e);
    }
    let s = net.proxy.stats();
    assert_eq!(s.event_counts.get("clock_drift"), Some(&1));
    assert_eq!((s.clock_offset_secs, s.clock_drifted), (Some(offset), true));
    let e = s.events.last().unwrap();
    assert_eq!((e.kind, e.subject.as_str()), ("clock_drift", "local clock"));
    assert!(e.detail.contains("s behind the chain's"), "{}", e.detail);
    let m = get_text(&http, &format!("{}/metrics", net.admin())).await;
    assert!(m.contains("cocoon_proxy_clock_drift 1"), "{m}");
    assert!(
        m.contains(&format!("cocoon_proxy_clock_offset_seconds {offset}")),
        "{m}"
    );
    assert!(
        m.contains("cocoon_proxy_operator_events_total{kind=\"clock_drift\"} 1"),
        "{m}"
    );
    let j = get_json(&http, &format!("{}/jsonstats", net.admin())).await;
    assert_eq!(
        (&j["clock_offset_secs"], &j["clock_drifted"]),
        (&serde_json::json!(offset), &serde_json::json!(true))
    );
    let page = get_text(&http, &format!("{}/stats", net.admin())).await;
    assert!(page.contains(&format!("{offset} (clock_drift)")), "{page}");

    // Still off: not reported again.
    assert_eq!(w.poll_once(&mut []).await, Polled::Unchanged);
    assert_eq!(w.take_events(), vec![]);

    // The clocks agree again (blocks 2 s old): once most of the last five reads say so
    // (two more reads), reported once; the gauge goes back to 0.
    chain.set_utime(local_now() - 2);
    w.poll_once(&mut []).await;
    w.poll_once(&mut []).await;
    assert_eq!(w.take_events(), vec![]);
    w.poll_once(&mut []).await;
    let events = w.take_events();
    assert!(
        matches!(
            events[..],
            [WatchEvent::Clock(Drift::Agrees { offset: 1..=3 })]
        ),
        "{events:?}"
    );
    for e in events {
        to_proxy(e);
    }
    let s = net.proxy.stats();
    assert_eq!(s.event_counts.get("clock_agrees"), Some(&1));
    assert_eq!(s.event_counts.get("clock_drift"), Some(&1));
    assert!(!s.clock_drifted);
    let m = get_text(&http, &format!("{}/metrics", net.admin())).await;
    assert!(m.contains("cocoon_proxy_clock_drift 0"), "{m}");
}

#[tokio::test]
async fn with_the_check_off_a_far_chain_clock_is_measured_but_not_reported() {
    let chain = FakeChain::default();
    chain.set_root(&root(1, true, true)).unwrap();
    // A devnet whose clock was never advanced, a day behind.
    chain.set_utime(local_now() - 86_400);
    let mut w =
        RootWatcher::new(chain, addr(0x01), Duration::from_secs(1), 1).with_time(ChainTime::new(0));
    w.poll_once(&mut []).await;
    assert_eq!(w.take_events(), vec![]);
    let off = w.time().offset().unwrap();
    assert!((86_399..=86_401).contains(&off), "{off}");
    assert!(!w.time().drifted());
}
