//! The real `cocoon worker` process: layered configuration with clear errors (exit 64), and
//! a worker with the embedded engine and the default model that follows a root contract on
//! the real `cocoon devnet` process: it dials the proxies the root registers, picks up a new
//! one at run time, reports the model whitelist, and stops cleanly on SIGTERM.

mod common;
use common::{
    Killed, cocoon_env, get_json, have_test_model, own_root, root_op, sigterm, start_devnet,
    stop_devnet, wait_for, worker_process,
};

const OWNER: &str = "0:4444444444444444444444444444444444444444444444444444444444444444";

fn worker_cmd(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    cocoon_env(&[&["worker"], args].concat(), envs)
}

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    let tmp = tempfile::tempdir().unwrap();
    /// Arguments, environment, the start of the expected error line.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--proxy", "127.0.0.1:1"],
            vec![],
            "error: config: worker.owner_address (from default): required",
        ),
        (
            vec!["--owner", OWNER],
            vec![],
            "error: config: worker.proxies (from default): no proxy to connect to",
        ),
        (
            vec!["--owner", OWNER, "--proxy", "127.0.0.1:1"],
            vec![("COCOON_WORKER_COEFFICIENT", "cheap")],
            "error: config: worker.coefficient (from COCOON_WORKER_COEFFICIENT): expected an integer, got \"cheap\"",
        ),
        (
            vec![
                "--owner",
                OWNER,
                "--proxy",
                "127.0.0.1:1",
                "--set",
                "colour=red",
            ],
            vec![],
            "error: config: worker.colour (from --set): unknown key",
        ),
        (
            vec!["--owner", "nowhere", "--proxy", "127.0.0.1:1"],
            vec![],
            "error: config: worker.owner_address (from --owner): ",
        ),
        (
            vec!["--owner", OWNER, "--proxy", "h:1", "--backend", "ftp://x"],
            vec![],
            "error: config: worker.backend_url (from --backend): expected an http",
        ),
        (
            vec!["--owner", OWNER, "--proxy", "127.0.0.1:1"],
            vec![("COCOON_WORKER_CHECK_PROXY_HASHES", "false")],
            "error: config: worker.check_proxy_hashes (from COCOON_WORKER_CHECK_PROXY_HASHES): may be turned off on test networks only",
        ),
    ];
    for (args, envs, want) in cases {
        let (rc, out, err) = worker_cmd(&args, &envs);
        assert_eq!(rc, 64, "{args:?}: {err}{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    // A file with an unknown key names the file.
    let f = tmp.path().join("w.toml");
    std::fs::write(&f, "[worker]\nowner = \"x\"\n").unwrap();
    let (rc, _, err) = worker_cmd(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(rc, 64);
    assert!(
        err.starts_with(&format!(
            "error: config: worker.owner (from {}): unknown key",
            f.display()
        )),
        "{err}"
    );
    // The effective configuration shows where each value came from.
    std::fs::write(
        &f,
        "[worker]\ncoefficient = 1200\nproxies = [\"10.0.0.1:5000\"]\n",
    )
    .unwrap();
    let (rc, out, err) = worker_cmd(
        &[
            "--config",
            f.to_str().unwrap(),
            "--owner",
            OWNER,
            "--print-config",
        ],
        &[("COCOON_WORKER_MAX_ACTIVE_REQUESTS", "3")],
    );
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains(&format!("coefficient = 1200  # {}", f.display())),
        "{out}"
    );
    assert!(
        out.contains("max_active_requests = 3  # COCOON_WORKER_MAX_ACTIVE_REQUESTS"),
        "{out}"
    );
    assert!(
        out.contains(&format!("owner_address = \"{OWNER}\"  # --owner")),
        "{out}"
    );
    assert!(out.contains("slots = 4  # default"), "{out}");
    let (rc, out, _) = worker_cmd(&["--print-defaults"], &[]);
    assert_eq!(rc, 0);
    assert!(out.starts_with("# `cocoon worker` defaults."), "{out}");
}

#[test]
fn worker_process_follows_the_root_on_devnet() {
    // The default model must be in the default model store (scripts/test pulls it and
    // exports its path).
    if !have_test_model() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (devnet, url, _lines, rx) = start_devnet(&tmp.path().join("devnet"));
    let mut devnet = Killed::new(devnet);

    // A root owned by a fresh wallet: one registered proxy, bound by the test but never
    // answering (nobody else can take the port while the listener lives).
    let (key_s, _raw, root) = own_root(tmp.path(), &url, "7", 5_000_000_000);
    let owner = |op: &[&str]| root_op(op, &key_s, &url, &root);
    let silent = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (l1, l2) = (silent(), silent());
    let p1 = l1.local_addr().unwrap().to_string();
    owner(&["add-proxy", &format!("{p1} 127.0.0.1:0")]);

    // The worker: embedded engine with the default model from the model store, sim TEE.
    let state = tmp.path().join("worker");
    let (mut child, bound) = worker_process(&root, &url, "1", &state);
    // Started without OMP_WAIT_POLICY or GOMP_SPINCOUNT, the worker started itself again in
    // place with llama.cpp's OpenMP threads spinning only briefly (cocoon_llama::openmp).
    let pid = child.0.as_ref().unwrap().id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(
        environ.contains(&&b"GOMP_SPINCOUNT=3000"[..]),
        "the worker's environment has GOMP_SPINCOUNT=3000"
    );
    assert!(
        !environ.iter().any(|v| v.starts_with(b"OMP_WAIT_POLICY=")),
        "and no OMP_WAIT_POLICY"
    );
    let stats_url = format!("http://{}/jsonstats", bound.get("admin_listen"));
    let stats = || get_json(&stats_url);
    wait_for("the worker's admin server", || stats().is_some());
    let s = stats().unwrap();
    let model_id = s["model"].as_str().unwrap().to_owned();
    assert!(model_id.starts_with("SmolLM2-135M-Instruct"), "{s}");
    assert!(
        s["uplink_ok"].as_bool().unwrap(),
        "embedded engine is up: {s}"
    );
    // The registered proxy (its worker half) is dialled; the model is not whitelisted yet.
    wait_for("the root's proxy dialled", || {
        let s = stats().unwrap();
        s["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["address"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            == [p1.clone()]
    });
    assert!(stats().unwrap()["model_not_listed"].as_bool().unwrap());

    // The owner whitelists the model and registers a second proxy: both reach the worker
    // through its polling.
    owner(&["add-model", &model_id]);
    let p2 = l2.local_addr().unwrap().to_string();
    owner(&["add-proxy", &p2]);
    wait_for("whitelist and second proxy applied", || {
        let s = stats().unwrap();
        let n = s["proxies"].as_array().unwrap().len();
        !s["model_not_listed"].as_bool().unwrap() && n == 2
    });
    let s = stats().unwrap();
    assert!(s["enabled"].as_bool().unwrap(), "{s}");
    assert!(s["root_version"].as_u64().unwrap() >= 3, "{s}");

    // SIGTERM: a clean stop.
    let status = sigterm(child.take());
    assert!(status.success(), "worker exit status {status}");
    stop_devnet(devnet.take(), rx);
}

/// A host that boots the approved image but hands the worker another configuration (here:
/// another inference backend) is refused before the worker does anything; the measured
/// configuration itself passes.
#[test]
fn a_configuration_other_than_the_measured_one_is_refused() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let regs = tmp.path().join("registers");
    let regs = regs.to_str().unwrap();
    let config = |backend: &str| {
        format!(
            "[worker]\nowner_address = \"{OWNER}\"\nproxies = [\"127.0.0.1:1\"]\n\
             backend_url = \"{backend}\"\nis_test = true\ntee = \"sim\"\nstate_dir = \"{}\"\n",
            tmp.path().join("state").display()
        )
    };
    let measured = tmp.path().join("measured.toml");
    std::fs::write(&measured, config("http://127.0.0.1:8000")).unwrap();
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, config("http://10.9.9.9:8000")).unwrap();
    let env = [("COCOON_SIM_REGISTERS", regs)];

    // Before the boot step measured anything, a sim machine is a development machine.
    let (rc, out, err) = cocoon_env(
        &[
            "image",
            "measure-config",
            measured.to_str().unwrap(),
            "--tee",
            "sim",
        ],
        &env,
    );
    assert_eq!(rc, 0, "{err}");
    let rtmr3 = out.strip_prefix("rtmr3 ").unwrap().trim().to_owned();
    assert_eq!(rtmr3.len(), 96, "{out}");

    let (rc, out, err) = worker_cmd(&["--config", other.to_str().unwrap()], &env);
    assert_eq!(rc, 64, "{err}{out}");
    assert!(
        err.contains("not the one this TEE measured at boot"),
        "{err}"
    );
    assert!(err.contains(&rtmr3), "the register is named: {err}");

    // The measured file passes the check (the worker then goes on to dial its proxy).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(["worker", "--config", measured.to_str().unwrap()])
        .envs(env)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let passed = stderr
        .lines()
        .map_while(Result::ok)
        .take(50)
        .any(|l| l.contains("the configuration is the one this TEE measured at boot"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(passed, "the measured configuration was not accepted");
}
