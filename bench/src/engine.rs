//! `cocoon-bench engine`: the embedded engine (`cocoon-llama`) against llama.cpp itself.
//!
//! Same GGUF (the default model from the model store), same prompt shape as the team's
//! inference notes (not in the repo): a chat-templated "Summarize …" prompt of about 407 tokens
//! (`bench/engine/summarize.txt`), then 128 generated tokens, greedy, 2 threads.
//!
//! The embedded engine is driven through its public `Engine` trait, as the worker drives it:
//! a streamed chat completion. Prompt speed is prompt tokens ÷ (submit → first streamed token)
//! and so includes rendering the template, tokenizing and sampling the first token; generation
//! speed is (completion tokens − 1) ÷ (first token → end). The engine has no "ignore EOS"
//! switch, so the run checks that every answer really is 128 tokens long (greedy decoding of
//! this prompt does not stop early) and refuses to report figures otherwise.
//!
//! The reference is `llama-bench` (`-p 407 -n 0` and `-p 0 -n 128 -d 407`) and, for 8 requests,
//! `llama-batched-bench` (`-npp 407 -ntg 128 -npl 8`), both built from the `llama-cpp-python`
//! 0.3.36 sdist by `bench/engine/build-reference.sh`. Rounds alternate engine and reference so
//! background load hits both alike; figures are medians over all runs of all rounds.
//!
//! Peak memory: VmHWM of this process for the engine (reset through `/proc/self/clear_refs`
//! before each engine is loaded), and the largest VmHWM seen while polling each reference
//! process.

use cocoon_engine::{BodyEvent, Engine, EngineRequest};
use cocoon_llama::{LlamaConfig, LlamaEngine};
use cocoon_openai::Endpoint;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROMPT: &str = include_str!("../engine/summarize.txt");
const GEN_TOKENS: u32 = 128;
const REF_PROMPT_TOKENS: usize = 407;

struct Opts {
    model: Option<PathBuf>,
    reference: PathBuf,
    threads: u32,
    rounds: usize,
    runs: usize,
    conc_runs: usize,
    concurrency: u32,
    check: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: cocoon-bench engine [--model GGUF] [--reference DIR] [--threads N] [--rounds N]\n\
         \x20                          [--runs N] [--conc-runs N] [--concurrency N] [--check]\n\
         \x20 --model        GGUF file (default: smollm2-135m from the model store)\n\
         \x20 --reference    directory with llama-bench / llama-batched-bench\n\
         \x20                (default: target/bench-engine/build/bin)\n\
         \x20 --threads      CPU threads for both engines (default 2)\n\
         \x20 --rounds       alternating engine/reference rounds (default 2)\n\
         \x20 --runs         single-request runs per round (default 5)\n\
         \x20 --conc-runs    concurrent runs per round (default 3)\n\
         \x20 --concurrency  requests at once in the concurrent case (default 8)\n\
         \x20 --check        only print the prompt size and the greedy answer"
    );
    std::process::exit(64)
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        model: None,
        reference: PathBuf::from("target/bench-engine/build/bin"),
        threads: 2,
        rounds: 2,
        runs: 5,
        conc_runs: 3,
        concurrency: 8,
        check: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage());
        let num = |s: String| s.parse::<usize>().ok().filter(|n| *n > 0);
        match a.as_str() {
            "--model" => o.model = Some(val().into()),
            "--reference" => o.reference = val().into(),
            "--threads" => o.threads = num(val()).unwrap_or_else(|| usage()) as u32,
            "--rounds" => o.rounds = num(val()).unwrap_or_else(|| usage()),
            "--runs" => o.runs = num(val()).unwrap_or_else(|| usage()),
            "--conc-runs" => o.conc_runs = num(val()).unwrap_or_else(|| usage()),
            "--concurrency" => o.concurrency = num(val()).unwrap_or_else(|| usage()) as u32,
            "--check" => o.check = true,
            _ => usage(),
        }
    }
    o
}

/// The model store's directory, resolved as `cocoon model` does.
fn store_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COCOON_MODELS_DIR") {
        return d.into();
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cocoon/models")
}

fn default_model() -> Result<PathBuf, String> {
    let store = cocoon_engine::store::ModelStore::open(store_dir()).map_err(|e| e.to_string())?;
    let rec = store
        .get(cocoon_engine::store::SMOLLM2_135M.alias)
        .map_err(|e| format!("{e} (run `cocoon model pull smollm2-135m` or pass --model)"))?;
    Ok(store.path_of(&rec))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// VmHWM of a process in KiB.
fn vm_hwm(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn reset_hwm() {
    // "5" resets the peak RSS to the current RSS (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn request(stream: bool) -> EngineRequest {
    let body = json!({
        "model": "bench",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": GEN_TOKENS,
        "temperature": 0.0,
        "stream": stream,
    });
    let Value::Object(body) = body else {
        unreachable!()
    };
    EngineRequest {
        endpoint: Endpoint::ChatCompletions,
        body,
        stream,
        timeout: Duration::from_secs(600),
    }
}

/// One streamed answer, timed.
struct Timed {
    prompt_tokens: u64,
    completion_tokens: u64,
    first: Duration,
    end: Duration,
    /// Arrival of every streamed token chunk (all Data events but the closing one).
    token_times: Vec<Duration>,
}

/// Submits the bench request (streamed or not); the answer's body events.
async fn answer(
    engine: &LlamaEngine,
    stream: bool,
) -> Result<tokio::sync::mpsc::Receiver<BodyEvent>, String> {
    let resp = engine
        .submit(request(stream))
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp.body)
}

async fn one(engine: &LlamaEngine, t0: Instant) -> Result<Timed, String> {
    let mut rx = answer(engine, true).await?;
    let mut data_times = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            BodyEvent::Data(_) => data_times.push(t0.elapsed()),
            BodyEvent::End { usage, .. } => {
                let end = t0.elapsed();
                // The last Data event is the finish chunk (usage, [DONE]).
                data_times.pop();
                let first = *data_times.first().ok_or("no token was streamed")?;
                return Ok(Timed {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    first,
                    end,
                    token_times: data_times,
                });
            }
            BodyEvent::Failed { error, .. } => return Err(error.to_string()),
        }
    }
    Err("the answer ended without End".into())
}

fn check_len(t: &Timed) -> Result<(), String> {
    if t.completion_tokens != u64::from(GEN_TOKENS) {
        return Err(format!(
            "the answer stopped after {} tokens (EOS before {GEN_TOKENS}); the figures would not be comparable",
            t.completion_tokens
        ));
    }
    Ok(())
}

/// [`load`] with the peak RSS reset first, so that it then measures this engine.
fn load_measured(model: &Path, slots: u32, threads: u32) -> Result<LlamaEngine, String> {
    reset_hwm();
    load(model, slots, threads)
}

fn load(model: &Path, slots: u32, threads: u32) -> Result<LlamaEngine, String> {
    let mut cfg = LlamaConfig::new(model, "bench");
    cfg.slots = slots;
    cfg.ctx_per_slot = 1024;
    cfg.batch_tokens = 512;
    cfg.threads = threads;
    LlamaEngine::load(cfg).map_err(|e| e.to_string())
}

#[derive(Default)]
struct Figures {
    pp: Vec<f64>,
    tg: Vec<f64>,
    total: Vec<f64>,
    rss_kib: u64,
}

fn engine_single(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    model: &Path,
    f: &mut Figures,
) -> Result<(), String> {
    let engine = load_measured(model, 1, o.threads)?;
    rt.block_on(async {
        let warm = one(&engine, Instant::now()).await?;
        check_len(&warm)?;
        for _ in 0..o.runs {
            let t = one(&engine, Instant::now()).await?;
            check_len(&t)?;
            let pp = t.prompt_tokens as f64 / t.first.as_secs_f64();
            let tg = (t.completion_tokens - 1) as f64 / (t.end - t.first).as_secs_f64();
            f.pp.push(pp);
            f.tg.push(tg);
        }
        Ok::<_, String>(())
    })?;
    f.rss_kib = f.rss_kib.max(vm_hwm("self").unwrap_or(0));
    drop(engine);
    Ok(())
}

fn engine_concurrent(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    model: &Path,
    f: &mut Figures,
) -> Result<(), String> {
    let n = o.concurrency;
    let engine = load_measured(model, n, o.threads)?;
    rt.block_on(async {
        for run in 0..=o.conc_runs {
            let t0 = Instant::now();
            let all = futures_join(&engine, t0, n as usize).await?;
            for t in &all {
                check_len(t)?;
            }
            if run == 0 {
                continue; // warm-up
            }
            let last_first = all.iter().map(|t| t.first).max().unwrap_or_default();
            let last_end = all.iter().map(|t| t.end).max().unwrap_or_default();
            let prompt: u64 = all.iter().map(|t| t.prompt_tokens).sum();
            let completion: u64 = all.iter().map(|t| t.completion_tokens).sum();
            // Tokens streamed once every request had its first token: the generation phase.
            let after: usize = all
                .iter()
                .map(|t| t.token_times.iter().filter(|&&x| x > last_first).count())
                .sum();
            f.pp.push(prompt as f64 / last_first.as_secs_f64());
            f.tg.push(after as f64 / (last_end - last_first).as_secs_f64());
            f.total
                .push((prompt + completion) as f64 / last_end.as_secs_f64());
        }
        Ok::<_, String>(())
    })?;
    f.rss_kib = f.rss_kib.max(vm_hwm("self").unwrap_or(0));
    drop(engine);
    Ok(())
}

/// Submits `n` requests at once and waits for all of them.
async fn futures_join(engine: &LlamaEngine, t0: Instant, n: usize) -> Result<Vec<Timed>, String> {
    futures::future::join_all((0..n).map(|_| one(engine, t0)))
        .await
        .into_iter()
        .collect()
}

/// Runs a reference tool; returns its stdout and the largest VmHWM seen while it ran (KiB).
fn run_tool(exe: &Path, args: &[String]) -> Result<(String, u64), String> {
    let err_path = std::env::temp_dir().join("cocoon-bench-engine-ref.stderr");
    let err = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
    let out_path = std::env::temp_dir().join("cocoon-bench-engine-ref.stdout");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(args)
        // llama.cpp with its own defaults: not the spin count the embedded engine's re-exec
        // set in this process (`cocoon_llama::openmp`), nor a wait setting given for it.
        .env_remove(cocoon_llama::openmp::WAIT_POLICY_VAR)
        .env_remove(cocoon_llama::openmp::SPIN_COUNT_VAR)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let pid = child.id().to_string();
    let mut hwm = 0;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        hwm = hwm.max(vm_hwm(&pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let tail = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: String = tail.lines().rev().take(8).collect::<Vec<_>>().join(" | ");
        return Err(format!(
            "{} {}: {status}: {tail}",
            exe.display(),
            args.join(" ")
        ));
    }
    let stdout = std::fs::read_to_string(&out_path).map_err(|e| e.to_string())?;
    Ok((stdout, hwm))
}

/// `llama-bench -o json`: every sample of the one test it ran, in tokens/s, and its build.
fn llama_bench(
    exe: &Path,
    model: &Path,
    threads: u32,
    runs: usize,
    test: &[&str],
) -> Result<(Vec<f64>, String, u64), String> {
    let mut args: Vec<String> = vec!["-m".into(), model.display().to_string()];
    args.extend(test.iter().map(|s| s.to_string()));
    args.extend([
        "-t".into(),
        threads.to_string(),
        "-r".into(),
        runs.to_string(),
        "-o".into(),
        "json".into(),
    ]);
    let (out, hwm) = run_tool(exe, &args)?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("llama-bench output: {e}"))?;
    let rec = v
        .as_array()
        .and_then(|a| a.first())
        .ok_or("llama-bench printed no result")?;
    let samples = rec["samples_ts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
        .filter(|a| !a.is_empty())
        .or_else(|| rec["avg_ts"].as_f64().map(|x| vec![x]))
        .ok_or("llama-bench printed no tokens/s")?;
    let build = format!(
        "{} (build {})",
        rec["build_commit"].as_str().unwrap_or("?"),
        rec["build_number"].as_i64().unwrap_or(0)
    );
    Ok((samples, build, hwm))
}

/// One `llama-batched-bench` run: (S_PP, S_TG, S) in tokens/s.
fn batched_bench(
    exe: &Path,
    model: &Path,
    threads: u32,
    n: u32,
) -> Result<([f64; 3], u64), String> {
    let ctx = n * 1024;
    let args: Vec<String> = [
        "-m",
        &model.display().to_string(),
        "-c",
        &ctx.to_string(),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        &REF_PROMPT_TOKENS.to_string(),
        "-ntg",
        &GEN_TOKENS.to_string(),
        "-npl",
        &n.to_string(),
        "-t",
        &threads.to_string(),
        "-tb",
        &threads.to_string(),
        "--output-format",
        "jsonl",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, hwm) = run_tool(exe, &args)?;
    for line in out.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("llama-batched-bench output: {e}"))?;
        if v["pl"].as_u64() == Some(u64::from(n)) {
            let g = |k: &str| v[k].as_f64().ok_or(format!("llama-batched-bench: no {k}"));
            return Ok(([g("speed_pp")?, g("speed_tg")?, g("speed")?], hwm));
        }
    }
    Err("llama-batched-bench printed no result".into())
}

fn pct(ours: f64, theirs: f64) -> String {
    if ours.is_finite() && theirs.is_finite() && theirs > 0.0 {
        format!("{:6.1} %", 100.0 * ours / theirs)
    } else {
        "     —".into()
    }
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:10.1}")
    } else {
        format!("{:>10}", "—")
    }
}

/// Entry point of `cocoon-bench engine`.
pub(crate) fn run(args: &[String]) {
    let o = parse(args);
    let model = match o.model.clone().map(Ok).unwrap_or_else(default_model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("engine: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let fail = |e: String| -> ! {
        eprintln!("engine: {e}");
        std::process::exit(1)
    };

    // The prompt as the engine feeds it, and a look at the greedy answer.
    let probe = load(&model, 1, o.threads).unwrap_or_else(|e| fail(e));
    let body = request(false).body;
    let rendered = probe
        .render_prompt(Endpoint::ChatCompletions, &body)
        .unwrap_or_else(|e| fail(e.to_string()));
    let prompt_tokens = probe.prompt_tokens(&rendered);
    println!(
        "engine: {} | prompt {prompt_tokens} tokens (chat template; llama.cpp reference -p {REF_PROMPT_TOKENS}) | {GEN_TOKENS} generated, greedy | {} threads",
        model.display(),
        o.threads
    );
    if o.check {
        let answer = rt.block_on(async {
            let mut rx = answer(&probe, false).await?;
            let mut bytes = Vec::new();
            while let Some(ev) = rx.recv().await {
                match ev {
                    BodyEvent::Data(b) => bytes.extend(b),
                    BodyEvent::End { usage, .. } => return Ok((bytes, usage)),
                    BodyEvent::Failed { error, .. } => return Err(error.to_string()),
                }
            }
            Err("no End".to_string())
        });
        let (bytes, usage) = answer.unwrap_or_else(|e| fail(e));
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        println!("rendered prompt:\n{rendered}");
        println!(
            "answer ({} prompt + {} completion tokens, finish_reason {}):\n{}",
            usage.prompt_tokens,
            usage.completion_tokens,
            v["choices"][0]["finish_reason"],
            v["choices"][0]["message"]["content"].as_str().unwrap_or("")
        );
        return;
    }
    drop(probe);

    let bench = o.reference.join("llama-bench");
    let batched = o.reference.join("llama-batched-bench");
    let have_bench = bench.is_file();
    let have_batched = batched.is_file();
    if !have_bench {
        println!(
            "reference: {} not found; run bench/engine/build-reference.sh (engine figures only)",
            bench.display()
        );
    }
    let n = o.concurrency;
    let (mut e1, mut en, mut r1, mut rn) = (
        Figures::default(),
        Figures::default(),
        Figures::default(),
        Figures::default(),
    );
    let mut build = String::from("?");
    let load_start = loadavg();
    for round in 1..=o.rounds {
        println!("round {round}/{} (load average {})", o.rounds, loadavg());
        let (pp0, tg0) = (e1.pp.len(), e1.tg.len());
        engine_single(&rt, &o, &model, &mut e1).unwrap_or_else(|e| fail(e));
        println!(
            "  embedded, 1 request:      prompt {} tok/s, generation {} tok/s (median of {})",
            num(median(e1.pp[pp0..].to_vec())),
            num(median(e1.tg[tg0..].to_vec())),
            o.runs
        );
        if have_bench {
            let pp_args = ["-p", "407", "-n", "0"];
            let tg_args = ["-p", "0", "-n", "128", "-d", "407"];
            let (pp, b, h1) = llama_bench(&bench, &model, o.threads, o.runs, &pp_args)
                .unwrap_or_else(|e| fail(e));
            let (tg, _, h2) = llama_bench(&bench, &model, o.threads, o.runs, &tg_args)
                .unwrap_or_else(|e| fail(e));
            build = b;
            println!(
                "  llama-bench:              prompt {} tok/s, generation {} tok/s (median of {})",
                num(median(pp.clone())),
                num(median(tg.clone())),
                o.runs
            );
            r1.pp.extend(pp);
            r1.tg.extend(tg);
            r1.rss_kib = r1.rss_kib.max(h1).max(h2);
        }
        let (pp0, tg0, t0) = (en.pp.len(), en.tg.len(), en.total.len());
        engine_concurrent(&rt, &o, &model, &mut en).unwrap_or_else(|e| fail(e));
        println!(
            "  embedded, {n} requests:     prompt {} tok/s, generation {} tok/s, total {} tok/s (all requests; median of {})",
            num(median(en.pp[pp0..].to_vec())),
            num(median(en.tg[tg0..].to_vec())),
            num(median(en.total[t0..].to_vec())),
            o.conc_runs
        );
        if have_batched {
            let (pp0, tg0, t0) = (rn.pp.len(), rn.tg.len(), rn.total.len());
            for _ in 0..o.conc_runs {
                let ([pp, tg, total], h) =
                    batched_bench(&batched, &model, o.threads, n).unwrap_or_else(|e| fail(e));
                rn.pp.push(pp);
                rn.tg.push(tg);
                rn.total.push(total);
                rn.rss_kib = rn.rss_kib.max(h);
            }
            println!(
                "  llama-batched-bench:      prompt {} tok/s, generation {} tok/s, total {} tok/s (all requests; median of {})",
                num(median(rn.pp[pp0..].to_vec())),
                num(median(rn.tg[tg0..].to_vec())),
                num(median(rn.total[t0..].to_vec())),
                o.conc_runs
            );
        }
    }
    let m = |v: &Vec<f64>| median(v.clone());
    println!(
        "summary: medians of all rounds; load average {load_start} at the start, {} at the end",
        loadavg()
    );
    if have_bench {
        println!("reference: llama.cpp {build}, {}", o.reference.display());
    }
    println!(
        "  {:<40}{:>10}{:>11}{:>9}",
        "", "embedded", "llama.cpp", "ratio"
    );
    let rows: [(String, f64, f64); 5] = [
        ("1 request, prompt tok/s".into(), m(&e1.pp), m(&r1.pp)),
        ("1 request, generation tok/s".into(), m(&e1.tg), m(&r1.tg)),
        (
            format!("{n} requests, prompt tok/s (all)"),
            m(&en.pp),
            m(&rn.pp),
        ),
        (
            format!("{n} requests, generation tok/s (all)"),
            m(&en.tg),
            m(&rn.tg),
        ),
        (
            format!("{n} requests, total tok/s (all)"),
            m(&en.total),
            m(&rn.total),
        ),
    ];
    for (name, ours, theirs) in rows {
        println!(
            "  {name:<40}{} {}  {}",
            num(ours),
            num(theirs),
            pct(ours, theirs)
        );
    }
    let rss = |k: u64| if k > 0 { mib(k) } else { f64::NAN };
    println!(
        "  {:<40}{} {}",
        "peak RSS, 1 request (MiB)",
        num(rss(e1.rss_kib)),
        num(rss(r1.rss_kib))
    );
    println!(
        "  {:<40}{} {}",
        format!("peak RSS, {n} requests (MiB)"),
        num(rss(en.rss_kib)),
        num(rss(rn.rss_kib))
    );
    let (ours, theirs) = (m(&e1.tg), m(&r1.tg));
    if theirs.is_finite() {
        let ratio = 100.0 * ours / theirs;
        println!(
            "goal: 1-request generation within 5 % of llama.cpp: {} ({ratio:.1} %)",
            if ratio >= 95.0 { "met" } else { "NOT met" }
        );
    } else {
        println!("goal: 1-request generation within 5 % of llama.cpp: not measured (no reference)");
    }
}
