//! `run` without the `cocoon` binary: a role that cannot start is reported with its exit
//! status and the end of its log, and a stop requested before the network is up ends the
//! run cleanly; either way `<dir>/pids` is removed.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use cocoon_localnet::{Settings, Stop, UpError, run};

/// Settings that skip the model store (an external backend) and run the roles as `exe`, with
/// the API on `port`: fixed like `cocoon up`'s default (below the ephemeral range, so no
/// outgoing connection takes it), and one per test, as each run checks its port is free by
/// binding it while the other test runs beside it.
fn settings(exe: &str, dir: &Path, port: u16) -> Settings {
    Settings {
        exe: PathBuf::from(exe),
        dir: Some(dir.to_owned()),
        port,
        workers: 1,
        model: Some(format!("Smol@v1:{}", "ab".repeat(32))),
        backend: Some("http://127.0.0.1:1".into()),
        backend_kind: "openai".into(),
        backend_model: None,
        embeddings: false,
        hosts: None,
    }
}

#[tokio::test]
async fn a_role_that_exits_is_reported_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    // `sh devnet ...` fails: there is no script named `devnet`.
    let end = run(settings("/bin/sh", dir.path(), 10010), Stop::new(), |_| {
        panic!("ready without a devnet")
    })
    .await;
    let Err(UpError::RoleExited {
        role, status, log, ..
    }) = end
    else {
        panic!("not a role exit: {end:?}");
    };
    assert_eq!(role, "devnet");
    assert!(status.starts_with("exit code "), "{status}");
    assert!(log.ends_with("logs/devnet.log"), "{log}");
    assert!(!dir.path().join("pids").exists());
}

#[tokio::test]
async fn a_stop_before_ready_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let stop = Stop::new();
    stop.request();
    let end = run(settings("/bin/sleep", dir.path(), 10011), stop, |_| {
        panic!("ready after a stop")
    })
    .await;
    assert!(end.is_ok(), "{end:?}");
    assert!(!dir.path().join("pids").exists());
}
