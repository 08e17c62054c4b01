//! Incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules).
//!
//! Engines stream OpenAI answers as SSE: `data: {json}` lines, a blank line ends an event, and
//! `data: [DONE]` ends the stream. Network reads split that stream anywhere — inside a line,
//! inside a multi-byte character, between the `\r` and `\n` of a line ending — so the parser keeps
//! the unfinished line and produces exactly the same events whatever the chunking. Memory is
//! bounded: a line longer than the configured limit is an error, not an allocation.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any (OpenAI streams do not set it).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen, if any.
    pub id: Option<String>,
    /// A `retry:` value in milliseconds, if this event carried one.
    pub retry: Option<u64>,
}

impl Event {
    /// True for OpenAI's end-of-stream marker `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// The stream broke a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A single line exceeded the limit.
    #[error("SSE line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A single event's data exceeded the limit.
    #[error("SSE event longer than {limit} bytes")]
    EventTooLong {
        /// The limit in bytes.
        limit: usize,
    },
}

/// Default bound on one line and on one event's data: 4 MiB.
pub const DEFAULT_LIMIT: usize = 4 << 20;

/// The parser. Feed it bytes with [`SseParser::push`].
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    first_line: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    last_id: Option<String>,
    retry: Option<u64>,
    limit: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with [`DEFAULT_LIMIT`].
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_LIMIT)
    }

    /// A parser whose lines and events may not exceed `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            data: String::new(),
            has_data: false,
            event: None,
            last_id: None,
            retry: None,
            limit,
        }
    }

    /// Feeds `bytes`; returns the events completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.extend_line(&rest[..i])?;
                    if rest[i] == b'\r' {
                        self.after_cr = true;
                    }
                    rest = &rest[i + 1..];
                    if let Some(ev) = self.end_line()? {
                        out.push(ev);
                    }
                }
                None => {
                    self.extend_line(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(out)
    }

    /// True when no partial line or event is buffered (a clean end of stream).
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && !self.has_data
    }

    fn extend_line(&mut self, part: &[u8]) -> Result<(), SseError> {
        if self.line.len() + part.len() > self.limit {
            return Err(SseError::LineTooLong { limit: self.limit });
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self) -> Result<Option<Event>, SseError> {
        let mut raw = std::mem::take(&mut self.line);
        if self.first_line {
            self.first_line = false;
            if raw.starts_with(&[0xEF, 0xBB, 0xBF]) {
                raw.drain(..3);
            }
        }
        if raw.is_empty() {
            return Ok(self.dispatch());
        }
        if raw[0] == b':' {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(&raw);
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(SseError::EventTooLong { limit: self.limit });
                }
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = self.event.take();
        let retry = self.retry.take();
        if !self.has_data {
            self.data.clear();
            return None;
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(Event {
            event,
            data,
            id: self.last_id.clone(),
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(input: &[u8]) -> Vec<Event> {
        let mut p = SseParser::new();
        p.push(input).unwrap()
    }

    #[test]
    fn openai_stream() {
        let s = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n: keep-alive\n\ndata: [DONE]\n\n";
        let ev = all(s);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert!(ev[2].is_done());
    }

    #[test]
    fn fields_line_endings_and_bom() {
        let s = "\u{feff}event: x\r\nid: 7\rretry: 150\ndata:a\ndata:  b\r\n\r\ndata\n\n";
        let ev = all(s.as_bytes());
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event.as_deref(), Some("x"));
        assert_eq!(ev[0].id.as_deref(), Some("7"));
        assert_eq!(ev[0].retry, Some(150));
        assert_eq!(ev[0].data, "a\n b");
        assert_eq!(ev[1].data, "");
        assert_eq!(ev[1].id.as_deref(), Some("7"), "last event id persists");
        assert_eq!(ev[1].event, None, "event type resets after dispatch");
    }

    #[test]
    fn no_data_no_event_and_partial_tail_is_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: ping\n\n").unwrap().is_empty());
        assert!(p.push(b"data: half").unwrap().is_empty());
        assert!(!p.is_idle());
        let ev = p.push(b"\n\n").unwrap();
        assert_eq!(ev[0].data, "half");
        assert!(p.is_idle());
    }

    #[test]
    fn limits_bound_memory() {
        let mut p = SseParser::with_limit(16);
        assert_eq!(
            p.push(&[b'x'; 17]),
            Err(SseError::LineTooLong { limit: 16 })
        );
        let mut p = SseParser::with_limit(16);
        p.push(b"data: 0123456789\n").unwrap();
        assert_eq!(
            p.push(b"data: 0123456789\n"),
            Err(SseError::EventTooLong { limit: 16 })
        );
    }

    #[test]
    fn split_utf8_and_crlf() {
        let s = "data: héllo\r\n\r\n".as_bytes();
        let mut p = SseParser::new();
        let mut ev = Vec::new();
        for b in s {
            ev.extend(p.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "héllo");
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            events in proptest::collection::vec("[a-z{}\":é ]{0,20}", 0..8),
            eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            cuts in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let mut s = String::new();
            for e in &events {
                s.push_str("data: ");
                s.push_str(e);
                s.push_str(eol);
                s.push_str(": comment");
                s.push_str(eol);
                s.push_str(eol);
            }
            let bytes = s.as_bytes();
            let whole = all(bytes);
            prop_assert_eq!(whole.len(), events.len());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort();
            let mut p = SseParser::new();
            let mut got = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                got.extend(p.push(&bytes[start..c]).unwrap());
                start = c;
            }
            prop_assert_eq!(got, whole);
        }
    }
}
