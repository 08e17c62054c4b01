//! The Responses API mapped onto chat completions (`cocoon_openai::responses`): the request
//! translation `to_chat`, the whole-answer mapping `from_chat`, and the stream event builder
//! `StreamMapper` fed an arbitrary chat completion stream.
//!
//! Input: a flags byte. Bit 0 clear: the rest is a Responses request body (JSON; anything else
//! is skipped) for `to_chat`, and a whole chat completion for `from_chat` and
//! `StreamMapper::push_whole`. Bit 0 set: bits 1-2 pick the mapper's text limit (1 MiB, 16 B,
//! 256 B, 4 KiB), then `n:u8` and `n % 16` chunk-size bytes (used in a cycle; size = byte + 1;
//! none: one chunk), then the chat stream's bytes (SSE), pushed in those chunks.
//!
//! Checked: no panic; an accepted request maps to a chat body that is an object with
//! `messages`, streamed exactly when the request asked; a refusal is a 400; every event the mapper writes is `event: NAME` and one `data:` line
//! of JSON whose `type` is NAME, with `sequence_number`s counting up by one from 0; after
//! `finish` the mapper has ended and says nothing more; the events do not depend on the
//! chunking.
#![no_main]

use cocoon_openai::responses::{Echo, Ids, StreamMapper, from_chat, to_chat};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const LIMITS: [usize; 4] = [1 << 20, 16, 256, 4096];

fn ids() -> Ids {
    Ids {
        id: "0123abcd".into(),
        created_at: 1_700_000_000,
    }
}

/// Checks the events' form and numbering (`next`: the next sequence number).
fn check_events(text: &str, next: &mut u64) {
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut lines = block.lines();
        let name = lines
            .next()
            .and_then(|l| l.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("an event without its name: {block:?}"));
        let data = lines
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("an event without data: {block:?}"));
        assert!(lines.next().is_none(), "more than one data line: {block:?}");
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert_eq!(v["type"], name, "{block}");
        assert_eq!(v["sequence_number"], *next, "{block}");
        *next += 1;
    }
}

fn stream(limit: usize, pieces: &[&[u8]]) -> String {
    let mut m = StreamMapper::new(ids(), Echo::default(), Value::from("m"), limit);
    let mut out = m.start();
    for p in pieces {
        out.push_str(&m.push(p));
    }
    out.push_str(&m.finish());
    assert!(m.ended());
    assert_eq!(m.finish(), "", "more after the end");
    assert_eq!(m.push(b"data: {}\n\n"), "", "more after the end");
    let mut n = 0;
    check_events(&out, &mut n);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        let Ok(v) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        match to_chat(&v) {
            Ok(req) => {
                assert!(req.body.is_object() && req.body["messages"].is_array(), "{}", req.body);
                assert_eq!(req.body["stream"] == true, req.stream, "{}", req.body);
            }
            Err(e) => assert_eq!(e.status(), 400, "{e:?}"),
        }
        if let Ok(r) = from_chat(&v, &Echo::default(), &ids()) {
            assert!(r.is_object());
        }
        let mut m = StreamMapper::new(ids(), Echo::default(), Value::from("m"), 4096);
        let mut out = m.start();
        out.push_str(&m.push_whole(&v));
        out.push_str(&m.finish());
        let mut n = 0;
        check_events(&out, &mut n);
        return;
    }
    let limit = LIMITS[usize::from((flags >> 1) & 3)];
    let (sizes, body) = match rest.split_first() {
        Some((&n, r)) if r.len() >= usize::from(n % 16) => {
            let (s, t) = r.split_at(usize::from(n % 16));
            (s.to_vec(), t)
        }
        _ => (Vec::new(), rest),
    };
    let mut pieces: Vec<&[u8]> = Vec::new();
    let (mut at, mut i) = (0usize, 0usize);
    while at < body.len() {
        let n = if sizes.is_empty() {
            body.len()
        } else {
            usize::from(sizes[i % sizes.len()]) + 1
        };
        i += 1;
        let end = (at + n).min(body.len());
        pieces.push(&body[at..end]);
        at = end;
    }
    let whole = stream(limit, &[body]);
    let chunked = stream(limit, &pieces);
    assert_eq!(whole, chunked, "the chunking changed the events");
});
