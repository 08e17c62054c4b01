//! The embedded engine on the real default model (SmolLM2-135M-Instruct Q4_1).
//!
//! The model comes from the project's own store: `scripts/test` runs
//! `cocoon model pull smollm2-135m` (cached between runs) and exports `COCOON_TEST_MODEL`.
//! Outside CI, without the model, the tests say so and return; under `CI` they fail.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_engine::{BodyEvent, Engine, EngineError, EngineRequest};
use cocoon_llama::{LlamaConfig, LlamaEngine};
use cocoon_openai::{Endpoint, Usage, UsageTracker};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COCOON_TEST_MODEL") {
        return Some(PathBuf::from(p));
    }
    let dir = std::env::var_os("COCOON_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/cocoon/models"))
        })?;
    let p = dir.join("blobs").join(format!("{SHA}.gguf"));
    p.is_file().then_some(p)
}

fn engine() -> Option<&'static LlamaEngine> {
    static ENGINE: OnceLock<Option<LlamaEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let Some(path) = model_path() else {
                assert!(
                    std::env::var_os("CI").is_none()
                        && std::env::var_os("COCOON_REQUIRE_PREREQS").is_none(),
                    "CI: the default model is missing; scripts/test pulls it with `cocoon model pull smollm2-135m`"
                );
                eprintln!("skipping: default model not pulled (cocoon model pull smollm2-135m)");
                return None;
            };
            let mut cfg = LlamaConfig::new(path, "SmolLM2-135M-Instruct");
            cfg.slots = 4;
            cfg.ctx_per_slot = 1024;
            Some(LlamaEngine::load(cfg).expect("load the default model"))
        })
        .as_ref()
}

fn chat(content: &str, extra: Value) -> EngineRequest {
    let mut body = json!({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 24,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let stream = body["stream"] == Value::Bool(true);
    EngineRequest {
        endpoint: Endpoint::ChatCompletions,
        body: body.as_object().unwrap().clone(),
        stream,
        timeout: Duration::from_secs(120),
    }
}

struct Answer {
    body: Vec<u8>,
    usage: Usage,
    text: String,
}

async fn run(e: &LlamaEngine, req: EngineRequest) -> Answer {
    let resp = e.submit(req).await.expect("submit");
    let mut rx = resp.body;
    let mut body = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            BodyEvent::Data(d) => body.extend(d),
            BodyEvent::End {
                usage,
                counted_locally,
            } => {
                assert!(!counted_locally);
                let mut t = UsageTracker::new().collecting_text();
                t.push(&body);
                assert_eq!(
                    t.usage(),
                    Some(usage),
                    "usage in the body equals the end event's"
                );
                let text = t.text().unwrap_or_default().to_owned();
                return Answer { body, usage, text };
            }
            BodyEvent::Failed { error, .. } => panic!("engine failed: {error}"),
        }
    }
    panic!("no end event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_real_prompts_with_exact_prompt_counts() {
    let Some(e) = engine() else { return };
    let q = run(
        e,
        chat(
            "What is the capital of France? Answer in one sentence.",
            json!({}),
        ),
    )
    .await;
    assert!(q.text.contains("Paris"), "{:?}", q.text);
    let body: Value = serde_json::from_slice(&q.body).unwrap();
    assert_eq!(body["object"], "chat.completion");

    for prompt in [
        "Translate to French: Good morning, how are you?",
        "Summarize in one sentence: The Eiffel Tower was built for the 1889 World's Fair in Paris. It was the tallest structure in the world for 41 years.",
    ] {
        let req = chat(prompt, json!({}));
        let rendered = e
            .render_prompt(Endpoint::ChatCompletions, &req.body)
            .unwrap();
        assert!(
            rendered.contains("You are a helpful AI assistant named SmolLM"),
            "default system prompt is kept"
        );
        let a = run(e, req).await;
        assert_eq!(a.usage.prompt_tokens, e.prompt_tokens(&rendered) as u64);
        assert!(a.usage.completion_tokens > 0 && a.usage.completion_tokens <= 24);
        assert!(!a.text.trim().is_empty());
    }
    // The translate prompt is 42 tokens with the template's default system prompt (llama-server
    // --jinja gives the same count; llama.cpp's built-in matcher gives 21).
    let req = chat("Translate to French: Good morning, how are you?", json!({}));
    let rendered = e
        .render_prompt(Endpoint::ChatCompletions, &req.body)
        .unwrap();
    assert_eq!(e.prompt_tokens(&rendered), 42, "{rendered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_non_streaming_agree_for_the_same_seed() {
    let Some(e) = engine() else { return };
    let extra = json!({"temperature": 0.8, "top_p": 0.9, "seed": 42});
    let whole = run(e, chat("Write a haiku about the sea.", extra.clone())).await;
    let mut s = extra.clone();
    s["stream"] = json!(true);
    let streamed = run(e, chat("Write a haiku about the sea.", s)).await;
    assert_eq!(streamed.usage, whole.usage);
    assert_eq!(streamed.text, whole.text);
    let again = run(e, chat("Write a haiku about the sea.", extra)).await;
    assert_eq!(again.text, whole.text, "seeded sampling is reproducible");
    let text = String::from_utf8(streamed.body).unwrap();
    assert!(text.starts_with("data: ") && text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_without_crosstalk() {
    let Some(e) = engine() else { return };
    let prompts = [
        "What is the capital of France?",
        "List three colors.",
        "What is 2 + 2?",
        "Name a large animal.",
        "Say hello in Spanish.",
        "What is the opposite of hot?",
    ];
    let mut sequential = Vec::new();
    for p in prompts {
        sequential.push(run(e, chat(p, json!({}))).await.text);
    }
    let futs = prompts.iter().map(|p| run(e, chat(p, json!({}))));
    let together: Vec<String> = futures::future::join_all(futs)
        .await
        .into_iter()
        .map(|a| a.text)
        .collect();
    assert_eq!(
        together, sequential,
        "greedy answers must not depend on batching"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_limits_and_cancellation() {
    let Some(e) = engine() else { return };
    let a = run(
        e,
        chat(
            "What is the capital of France? Answer in one sentence.",
            json!({"stop": ["Paris"]}),
        ),
    )
    .await;
    assert!(!a.text.contains("Paris"), "{:?}", a.text);
    let body: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    let a = run(e, chat("Count from 1 to 100.", json!({"max_tokens": 5}))).await;
    assert_eq!(a.usage.completion_tokens, 5);
    let body: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // Cancel a long stream after its first chunk; the engine keeps serving.
    let resp = e
        .submit(chat(
            "Write a long story.",
            json!({"stream": true, "max_tokens": 500}),
        ))
        .await
        .unwrap();
    let mut rx = resp.body;
    assert!(matches!(rx.recv().await, Some(BodyEvent::Data(_))));
    drop(rx);
    let a = run(e, chat("What is 2 + 2?", json!({}))).await;
    assert!(a.usage.completion_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_errors() {
    let Some(e) = engine() else { return };
    let invalid = |err: EngineError| match err {
        EngineError::Invalid(a) => a,
        other => panic!("not an invalid request: {other:?}"),
    };
    // Prompt + max_tokens over the context: OpenAI's error, with the counts.
    let a = invalid(
        e.submit(chat("x", json!({"max_tokens": 5000})))
            .await
            .unwrap_err(),
    );
    assert_eq!(a.param.as_deref(), Some("messages"));
    assert_eq!(a.code, Some("context_length_exceeded"));
    assert!(
        a.message.starts_with(
            "This model's maximum context length is 1024 tokens. However, you requested 50"
        ),
        "{a}"
    );
    assert!(
        a.message
            .contains("in the messages, 5000 in the completion"),
        "{a}"
    );
    let long = "word ".repeat(3000);
    let a = invalid(
        e.submit(chat(&long, json!({"max_tokens": 1})))
            .await
            .unwrap_err(),
    );
    assert_eq!(a.code, Some("context_length_exceeded"));
    assert!(a.message.contains(", 1 in the completion"), "{a}");
    // Parameters the embedded engine does not take name the parameter.
    for (field, v) in [("best_of", json!(2))] {
        let a = invalid(e.submit(chat("x", json!({field: v}))).await.unwrap_err());
        assert_eq!(a.param.as_deref(), Some(field), "{a}");
        assert_eq!(a.code, Some("unsupported_parameter"), "{a}");
    }
    // The model takes text only: an image or audio part is refused, not dropped.
    for part in [
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
        json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
    ] {
        let mut req = chat("x", json!({}));
        req.body["messages"] = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]},
        ]);
        let a = invalid(e.submit(req).await.unwrap_err());
        assert_eq!(a.param.as_deref(), Some("messages[1].content[1]"), "{a}");
        assert_eq!(a.code, Some("unsupported_value"), "{a}");
        assert!(a.message.contains("text only"), "{a}");
    }
    // The legacy endpoint names its prompt.
    let mut req = chat("x", json!({}));
    req.endpoint = Endpoint::Completions;
    req.body = json!({"model": "SmolLM2-135M-Instruct", "prompt": "Once", "max_tokens": 1024})
        .as_object()
        .unwrap()
        .clone();
    let a = invalid(e.submit(req).await.unwrap_err());
    assert_eq!(a.param.as_deref(), Some("prompt"));
    assert_eq!(a.code, Some("context_length_exceeded"));
    assert!(
        a.message.contains("in the prompt, 1024 in the completion"),
        "{a}"
    );
    let mut req = chat("x", json!({}));
    req.body["messages"] =
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}]);
    assert!(run(e, req).await.usage.completion_tokens > 0);

    let mut req = chat("x", json!({}));
    req.endpoint = Endpoint::Completions;
    req.body = json!({"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
        .as_object()
        .unwrap()
        .clone();
    let a = run(e, req).await;
    assert_eq!(a.usage.completion_tokens, 4);
    let body: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body["object"], "text_completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_and_penalties_change_the_answer_deterministically() {
    let Some(e) = engine() else { return };
    let q = "What is the capital of France? Answer in one sentence.";
    let plain = run(e, chat(q, json!({}))).await;
    let first = e.token_ids(&plain.text)[0];
    // Banning the greedy first token changes the first token, the same way every time,
    // streamed or whole.
    let ban = json!({"logit_bias": {first.to_string(): -100}});
    let banned = run(e, chat(q, ban.clone())).await;
    assert_ne!(e.token_ids(&banned.text)[0], first, "{:?}", banned.text);
    let mut s = ban.clone();
    s["stream"] = json!(true);
    let streamed = run(e, chat(q, s)).await;
    assert_eq!(streamed.text, banned.text);
    assert_eq!(streamed.usage, banned.usage);
    // 100 makes the biased token the only candidate.
    let paris = e.token_ids(" Paris");
    assert_eq!(paris.len(), 1, "{paris:?}");
    let only = run(
        e,
        chat(
            q,
            json!({"logit_bias": {paris[0].to_string(): 100}, "max_tokens": 4, "temperature": 0.9, "seed": 7}),
        ),
    )
    .await;
    assert_eq!(only.text, " Paris".repeat(4));
    assert_eq!(only.usage.completion_tokens, 4);
    // A token outside the vocabulary names the parameter.
    let a = match e
        .submit(chat(q, json!({"logit_bias": {"4000000": 5}})))
        .await
    {
        Err(EngineError::Invalid(a)) => a,
        other => panic!("not refused: {:?}", other.err()),
    };
    assert_eq!(a.param.as_deref(), Some("logit_bias"));
    assert_eq!(a.code, Some("invalid_value"));

    // Penalties: a counting answer repeats ", " and digits; penalising repeats changes it,
    // deterministically for a seed.
    let count = "Count from 1 to 30, separated by commas.";
    let base = run(e, chat(count, json!({"max_tokens": 40}))).await;
    for p in [
        json!({"frequency_penalty": 2.0}),
        json!({"presence_penalty": 2.0}),
    ] {
        let mut x = p.clone();
        x["max_tokens"] = json!(40);
        let a = run(e, chat(count, x.clone())).await;
        assert_ne!(a.text, base.text, "{p}");
        x["temperature"] = json!(0.7);
        x["seed"] = json!(11);
        let b = run(e, chat(count, x.clone())).await;
        let c = run(e, chat(count, x)).await;
        assert_eq!(b.text, c.text, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_format_constrains_the_answer_to_json_and_the_schema() {
    let Some(e) = engine() else { return };
    let q = "Describe a cat as JSON: its name, its age, whether it lives indoors, its colors.";
    let body_of = |a: &Answer| -> Value {
        let text = a.text.trim();
        serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: {text:?}"))
    };
    let finish = |a: &Answer| -> Value {
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        v["choices"][0]["finish_reason"].clone()
    };
    // The small model rambles inside free-form JSON; a short, directive question ends.
    let a = run(
        e,
        chat(
            "What is the capital of France? Reply as JSON with the key \"capital\".",
            json!({"response_format": {"type": "json_object"}, "max_tokens": 200}),
        ),
    )
    .await;
    assert!(body_of(&a).is_object(), "{:?}", a.text);
    assert_eq!(finish(&a), "stop");

    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "indoor": {"type": "boolean"},
        "colors": {"type": "array", "items": {"type": "string", "enum": ["black", "white", "orange"]},
            "minItems": 1, "maxItems": 3},
        "owner": {"type": ["string", "null"]},
    }, "required": ["name", "age", "indoor", "colors", "owner"], "additionalProperties": false});
    let rf = json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "cat", "strict": true, "schema": schema}}, "max_tokens": 200});
    let whole = run(e, chat(q, rf.clone())).await;
    let v = body_of(&whole);
    assert_eq!(finish(&whole), "stop", "{:?}", whole.text);
    let o = v.as_object().unwrap();
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    let mut want = vec!["name", "age", "indoor", "colors", "owner"];
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want, "{v}");
    assert!(v["name"].is_string(), "{v}");
    assert!(v["age"].is_i64() || v["age"].is_u64(), "{v}");
    assert!(v["indoor"].is_boolean(), "{v}");
    assert!(v["owner"].is_string() || v["owner"].is_null(), "{v}");
    let colors = v["colors"].as_array().unwrap();
    assert!((1..=3).contains(&colors.len()), "{v}");
    assert!(v["name"].as_str().unwrap().chars().count() <= 20, "{v}");
    for c in colors {
        assert!(
            ["black", "white", "orange"].contains(&c.as_str().unwrap()),
            "{v}"
        );
    }
    let mut s = rf.clone();
    s["stream"] = json!(true);
    let streamed = run(e, chat(q, s)).await;
    assert_eq!(streamed.text, whole.text);
    assert_eq!(streamed.usage, whole.usage);

    // logit_bias cannot leave the grammar without a token: ban (up to 300) tokens that
    // start an object; the answer still is one (a ban yields where nothing else is allowed).
    let opening: Vec<u32> = (0..60_000)
        .filter(|&id| {
            e.token_bytes(id)
                .is_some_and(|b| b.trim_ascii_start().starts_with(b"{"))
        })
        .take(300)
        .collect();
    assert!(!opening.is_empty());
    let bias: serde_json::Map<String, Value> = opening
        .iter()
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    let a = run(
        e,
        chat(
            "What is the capital of France? Reply as JSON with the key \"capital\".",
            json!({"response_format": {"type": "json_object"}, "max_tokens": 200, "logit_bias": bias}),
        ),
    )
    .await;
    assert!(a.text.trim_start().starts_with('{'), "{:?}", a.text);

    // Schema features that are not converted are refused by name, before any work.
    let a = match e
        .submit(chat(
            q,
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "string", "pattern": "^a+$"}}}}),
        ))
        .await
    {
        Err(EngineError::Invalid(a)) => a,
        other => panic!("not refused: {:?}", other.err()),
    };
    assert_eq!(a.param.as_deref(), Some("response_format"));
    assert_eq!(a.code, Some("unsupported_value"));
    assert!(a.message.contains("\"pattern\""), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_share_the_prompt_and_count_it_once() {
    let Some(e) = engine() else { return };
    let q = "Write a haiku about the sea.";
    let one = run(e, chat(q, json!({"max_tokens": 12}))).await;
    let extra = json!({"n": 3, "temperature": 0.9, "seed": 5, "max_tokens": 12});
    let whole = run(e, chat(q, extra.clone())).await;
    let v: Value = serde_json::from_slice(&whole.body).unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let texts: Vec<String> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i);
            assert!(c["finish_reason"].is_string(), "{c}");
            c["message"]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(texts.iter().all(|t| !t.is_empty()), "{texts:?}");
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "each choice samples its own tokens: {texts:?}"
    );
    // The prompt once, every choice's tokens.
    assert_eq!(whole.usage.prompt_tokens, one.usage.prompt_tokens);
    let counted: u64 = texts.iter().map(|t| e.token_ids(t).len() as u64).sum();
    assert!(whole.usage.completion_tokens >= 3, "{:?}", whole.usage);
    assert!(whole.usage.completion_tokens <= 36, "{:?}", whole.usage);
    assert!(
        counted.abs_diff(whole.usage.completion_tokens) <= 6,
        "{counted} {:?}",
        whole.usage
    );

    // Streamed: chunks per index that reassemble into the same choices (same seed).
    let mut s = extra.clone();
    s["stream"] = json!(true);
    let streamed = run(e, chat(q, s)).await;
    assert_eq!(streamed.usage, whole.usage);
    let body = String::from_utf8(streamed.body).unwrap();
    let mut parts = vec![String::new(); 3];
    let mut finished = [false; 3];
    for line in body.split("\n\n").filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        for c in chunk["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(t) = c["delta"]["content"].as_str() {
                parts[i].push_str(t);
            }
            if c["finish_reason"].is_string() {
                finished[i] = true;
            }
        }
    }
    assert_eq!(parts, texts);
    assert_eq!(finished, [true; 3]);

    // Greedy choices are all the single answer; more choices than slots is a 400 naming n.
    let g = run(e, chat(q, json!({"n": 2, "max_tokens": 12}))).await;
    let v: Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], one.text.as_str());
    assert_eq!(v["choices"][1]["message"]["content"], one.text.as_str());
    assert_eq!(g.usage.completion_tokens, 2 * one.usage.completion_tokens);
    let a = match e.submit(chat(q, json!({"n": 5}))).await {
        Err(EngineError::Invalid(a)) => a,
        other => panic!("not refused: {:?}", other.err()),
    };
    assert_eq!(a.param.as_deref(), Some("n"));
    assert_eq!(a.code, Some("invalid_value"));
    // Other requests keep being served while an n request waits for slots.
    let futs = (0..3).map(|_| run(e, chat(q, json!({"n": 3, "max_tokens": 6}))));
    for a in futures::future::join_all(futs).await {
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    }
}

/// The `logprobs` objects of an answer's first choice: one for a whole answer, one per
/// chunk that has one for a stream.
fn logprob_objects(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).unwrap();
    let values: Vec<Value> = if text.starts_with("data: ") {
        text.split("\n\n")
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| *l != "[DONE]")
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        vec![serde_json::from_str(text).unwrap()]
    };
    values
        .iter()
        .filter_map(|v| v["choices"].get(0).map(|c| c["logprobs"].clone()))
        .filter(|l| !l.is_null())
        .collect()
}

/// Checks one list of alternatives: sorted, each ≤ 0, probabilities summing to at most 1.
fn check_top(top: &[f64], k: usize) {
    assert_eq!(top.len(), k, "{top:?}");
    assert!(top.windows(2).all(|w| w[0] >= w[1]), "sorted: {top:?}");
    assert!(top.iter().all(|&l| l <= 0.0), "{top:?}");
    let mass: f64 = top.iter().map(|l| l.exp()).sum();
    assert!(mass <= 1.0 + 1e-4, "{top:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_chat_and_legacy_streamed_and_whole() {
    let Some(e) = engine() else { return };
    let q = "What is the capital of France? Answer in one sentence.";
    let extra = json!({"logprobs": true, "top_logprobs": 5});
    let whole = run(e, chat(q, extra.clone())).await;
    let objs = logprob_objects(&whole.body);
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["refusal"], Value::Null);
    let content = objs[0]["content"].as_array().unwrap().clone();
    assert_eq!(content.len() as u64, whole.usage.completion_tokens);
    let mut joined = String::new();
    for c in &content {
        let lp = c["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top: Vec<f64> = c["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        check_top(&top, 5);
        // Greedy: the chosen token is the likeliest one.
        assert_eq!(c["top_logprobs"][0]["token"], c["token"]);
        assert!((top[0] - lp).abs() < 1e-6);
        let bytes: Vec<u8> = c["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, c["token"].as_str().unwrap().as_bytes());
        joined.push_str(c["token"].as_str().unwrap());
    }
    assert_eq!(joined, whole.text);

    // Streamed: the same entries, spread over the chunks that carry their tokens.
    let mut s = extra.clone();
    s["stream"] = json!(true);
    let streamed = run(e, chat(q, s)).await;
    assert_eq!(streamed.text, whole.text);
    let chunks = logprob_objects(&streamed.body);
    assert!(chunks.len() > 1);
    let streamed_content: Vec<Value> = chunks
        .iter()
        .flat_map(|c| c["content"].as_array().unwrap().clone())
        .collect();
    assert_eq!(streamed_content, content);

    // The distribution is the one after logit_bias: a banned token is never an alternative.
    let first = content[0]["token"].as_str().unwrap();
    let id = e.token_ids(first)[0];
    let mut b = extra.clone();
    b["logit_bias"] = json!({id.to_string(): -100});
    let banned = run(e, chat(q, b)).await;
    let c0 = &logprob_objects(&banned.body)[0]["content"][0];
    assert_ne!(c0["token"].as_str().unwrap(), first);
    assert!(
        c0["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["token"] != first),
        "{c0}"
    );

    // Without logprobs, none.
    let plain = run(e, chat(q, json!({}))).await;
    assert!(logprob_objects(&plain.body).is_empty());

    // Legacy completions: tokens, token_logprobs, top_logprobs (maps), text_offset.
    for stream in [false, true] {
        let mut req = chat("x", json!({}));
        req.endpoint = Endpoint::Completions;
        req.stream = stream;
        req.body = json!({"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is",
            "max_tokens": 6, "temperature": 0, "logprobs": 3, "stream": stream})
        .as_object()
        .unwrap()
        .clone();
        let a = run(e, req).await;
        let objs = logprob_objects(&a.body);
        let tokens: Vec<String> = objs
            .iter()
            .flat_map(|o| o["tokens"].as_array().unwrap().clone())
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        let lps: Vec<f64> = objs
            .iter()
            .flat_map(|o| o["token_logprobs"].as_array().unwrap().clone())
            .map(|t| t.as_f64().unwrap())
            .collect();
        let offsets: Vec<u64> = objs
            .iter()
            .flat_map(|o| o["text_offset"].as_array().unwrap().clone())
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(tokens.len() as u64, a.usage.completion_tokens);
        assert_eq!(tokens.concat(), a.text);
        assert_eq!(lps.len(), tokens.len());
        assert!(lps.iter().all(|&l| l <= 0.0));
        assert_eq!(offsets[0], 0);
        for (i, t) in tokens.iter().enumerate().skip(1) {
            assert_eq!(
                offsets[i],
                offsets[i - 1] + tokens[i - 1].chars().count() as u64,
                "{t:?}"
            );
        }
        for o in &objs {
            for m in o["top_logprobs"].as_array().unwrap() {
                let mut top: Vec<f64> = m
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                top.sort_by(|a, b| b.total_cmp(a));
                assert!(!top.is_empty() && top.len() <= 3);
                check_top(&top, top.len());
            }
        }
    }
}

/// A model file that is not the pinned one is refused before llama.cpp reads it; the pinned
/// file loads.
#[test]
fn a_model_file_with_another_hash_is_refused() {
    let Some(path) = model_path() else {
        assert!(
            std::env::var_os("CI").is_none()
                && std::env::var_os("COCOON_REQUIRE_PREREQS").is_none(),
            "CI: default model missing"
        );
        return;
    };
    let mut cfg = LlamaConfig::new(&path, "SmolLM2-135M-Instruct");
    cfg.slots = 1;
    cfg.ctx_per_slot = 64;
    cfg.expected_sha256 = Some("00".repeat(32));
    let err = LlamaEngine::load(cfg.clone()).err().expect("refused");
    assert!(
        matches!(err, cocoon_llama::LoadError::ModelHash { ref actual, .. } if actual == SHA),
        "{err}"
    );
    cfg.expected_sha256 = Some(SHA.to_uppercase());
    LlamaEngine::load(cfg).expect("the pinned file loads");
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"]}}},
    ])
}

/// The tool calls of choice 0 of an answer, whole or streamed (assembled from the deltas as
/// SDK users do), with its finish reason.
fn calls_of(a: &Answer) -> (Vec<(String, String, String)>, Value, Value) {
    let text = String::from_utf8(a.body.clone()).unwrap();
    if !text.starts_with("data: ") {
        let v: Value = serde_json::from_str(&text).unwrap();
        let c = &v["choices"][0];
        let calls = c["message"]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                assert_eq!(t["type"], "function");
                (
                    t["id"].as_str().unwrap().to_owned(),
                    t["function"]["name"].as_str().unwrap().to_owned(),
                    t["function"]["arguments"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        return (
            calls,
            c["finish_reason"].clone(),
            c["message"]["content"].clone(),
        );
    }
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = Value::Null;
    let mut content: Option<String> = None;
    for e in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if e == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(e).unwrap();
        let Some(c) = v["choices"].get(0) else {
            continue;
        };
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
        if let Some(t) = c["delta"]["content"].as_str() {
            content.get_or_insert_default().push_str(t);
        }
        for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = t["index"].as_u64().unwrap() as usize;
            if let Some(id) = t["id"].as_str() {
                assert_eq!(i, calls.len(), "a call's first delta has the next index");
                assert_eq!(t["type"], "function");
                assert_eq!(
                    t["function"]["arguments"], "",
                    "the first delta has empty arguments"
                );
                calls.push((
                    id.to_owned(),
                    t["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            } else {
                assert!(
                    t.get("type").is_none() && t["function"].get("name").is_none(),
                    "{t}"
                );
                calls[i]
                    .2
                    .push_str(t["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    let content = content
        .filter(|c| !c.is_empty())
        .map_or(Value::Null, Value::String);
    (calls, finish, content)
}

/// Checks a call against `weather_tools`: a listed function, arguments that are JSON with
/// the schema's keys and types.
fn check_call((id, name, args): &(String, String, String)) {
    assert!(id.starts_with("call_") && id.len() > 10, "{id}");
    let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{e}: {args:?}"));
    let o = v.as_object().unwrap();
    assert!(o["city"].is_string(), "{v}");
    match name.as_str() {
        "get_weather" => {
            assert!(
                ["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap()),
                "{v}"
            );
            assert_eq!(o.len(), 2, "{v}");
        }
        "get_time" => assert_eq!(o.len(), 1, "{v}"),
        other => panic!("not a listed function: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_give_calls_that_match_the_schema_streamed_and_whole() {
    let Some(e) = engine() else { return };
    // Long-running under a loaded machine (every test shares the engine's slots).
    let tchat = |q: &str, extra: Value| EngineRequest {
        timeout: Duration::from_secs(900),
        ..chat(q, extra)
    };
    let q = "What is the weather in Paris and what time is it in Tokyo?";
    let req = json!({"tools": weather_tools(), "tool_choice": "required", "max_tokens": 80});
    let whole = run(e, tchat(q, req.clone())).await;
    let (calls, finish, content) = calls_of(&whole);
    assert!(calls.len() > 1, "{}", String::from_utf8_lossy(&whole.body));
    // Parallel calls: the small model keeps calling until the limit cuts the last call.
    let complete = if finish == "length" {
        &calls[..calls.len() - 1]
    } else {
        assert_eq!(finish, "tool_calls");
        &calls[..]
    };
    assert!(!complete.is_empty());
    complete.iter().for_each(check_call);
    assert_eq!(content, Value::Null);
    // The prompt counted is the prompt with the functions listed.
    let rendered = e
        .render_prompt(Endpoint::ChatCompletions, &tchat(q, req.clone()).body)
        .unwrap();
    assert!(rendered.contains("\"name\":\"get_weather\""), "{rendered}");
    assert_eq!(whole.usage.prompt_tokens, e.prompt_tokens(&rendered) as u64);
    let mut s = req.clone();
    s["stream"] = json!(true);
    let streamed = run(e, tchat(q, s)).await;
    let (scalls, sfinish, _) = calls_of(&streamed);
    assert_eq!(sfinish, finish);
    let strip = |c: &[(String, String, String)]| -> Vec<(String, String)> {
        c.iter().map(|(_, n, a)| (n.clone(), a.clone())).collect()
    };
    assert_eq!(
        strip(&scalls),
        strip(&calls),
        "the same greedy answer either way"
    );
    assert_eq!(streamed.usage, whole.usage);

    // A named function, one call only.
    let named = json!({"tools": weather_tools(), "max_tokens": 120, "parallel_tool_calls": false,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    for stream in [false, true] {
        let mut r = named.clone();
        r["stream"] = json!(stream);
        let a = run(e, tchat(q, r)).await;
        let (calls, finish, _) = calls_of(&a);
        assert_eq!(calls.len(), 1, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(calls[0].1, "get_time");
        check_call(&calls[0]);
        assert_eq!(finish, "tool_calls");
    }
    let mut r = req.clone();
    r["parallel_tool_calls"] = json!(false);
    let (calls, _, _) = calls_of(&run(e, tchat(q, r)).await);
    assert_eq!(calls.len(), 1);
    check_call(&calls[0]);

    // n > 1: every choice calls.
    let mut r = req.clone();
    r["n"] = json!(2);
    r["parallel_tool_calls"] = json!(false);
    r["temperature"] = json!(0.8);
    r["seed"] = json!(7);
    let a = run(e, tchat(q, r)).await;
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    for i in 0..2 {
        let c = &v["choices"][i];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        assert_eq!(
            c["message"]["tool_calls"].as_array().unwrap().len(),
            1,
            "{v}"
        );
    }

    // The second turn: the call and its result in the conversation, a text answer.
    let mut second = tchat(q, json!({"tools": weather_tools(), "max_tokens": 40}));
    second.body["messages"] = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]);
    for choice in [json!("none"), json!("auto")] {
        let mut r = second.clone();
        r.body.insert("tool_choice".into(), choice.clone());
        let a = run(e, r).await;
        let (calls, finish, content) = calls_of(&a);
        assert!(
            calls.is_empty(),
            "{choice}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(
            content.as_str().is_some_and(|t| !t.trim().is_empty()),
            "{choice}: {content}"
        );
        assert_ne!(finish, "tool_calls");
    }

    // Bad tools are the caller's 400, naming the parameter, before any work.
    for (tools, choice, param) in [
        (
            json!([{"type": "function", "function": {"description": "no name"}}]),
            json!("auto"),
            "tools[0].function.name",
        ),
        (
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"x": {"type": "string", "format": "date"}}}}}]),
            json!("required"),
            "tools[0].function.parameters",
        ),
        (
            weather_tools(),
            json!({"type": "function", "function": {"name": "get_stock"}}),
            "tool_choice",
        ),
    ] {
        let err = e
            .submit(tchat(q, json!({"tools": tools, "tool_choice": choice})))
            .await
            .err()
            .unwrap_or_else(|| panic!("{param}: not refused"));
        let EngineError::Invalid(a) = err else {
            panic!("{param}: {err:?}")
        };
        assert_eq!(a.param.as_deref(), Some(param), "{a}");
    }
}
