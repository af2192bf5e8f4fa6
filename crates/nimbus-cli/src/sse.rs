//! A small incremental parser for `text/event-stream` (the subset of the HTML spec's algorithm
//! that matters to a client): `data:` lines joined with newlines, `event:` and `id:` fields,
//! comments (`:` lines, used as heartbeats) ignored, events dispatched on a blank line.
//! Lines may end in LF, CRLF or CR, and chunks may split lines anywhere, even inside UTF-8.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` unless the stream named it with `event:`.
    pub event: String,
    pub data: String,
    /// The last `id:` seen on the stream so far, if any.
    pub id: Option<String>,
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line being received.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    last_id: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feed bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&String::from_utf8_lossy(&line)) {
                        events.push(ev);
                    }
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {} // `retry` and unknown fields: nothing a log tail needs
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event: event.filter(|e| !e.is_empty()).unwrap_or_else(|| "message".to_string()),
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new().push(input)
    }

    fn msg(data: &str) -> SseEvent {
        SseEvent { event: "message".into(), data: data.into(), id: None }
    }

    #[test]
    fn simple_events() {
        assert_eq!(all(b"data: {\"a\":1}\n\ndata: two\n\n"), vec![msg("{\"a\":1}"), msg("two")]);
    }

    #[test]
    fn comments_and_heartbeats_are_ignored() {
        assert_eq!(all(b": heartbeat\n\n:\n\ndata: x\n\n: ping\n\n"), vec![msg("x")]);
    }

    #[test]
    fn multi_line_data_and_fields() {
        let evs = all(b"event: record\nid: 42\ndata: a\ndata:b\ndata\nretry: 1000\n\n");
        assert_eq!(
            evs,
            vec![SseEvent { event: "record".into(), data: "a\nb\n".into(), id: Some("42".into()) }]
        );
    }

    #[test]
    fn incomplete_event_waits_for_blank_line() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: x\n").is_empty());
        assert_eq!(p.push(b"\n"), vec![msg("x")]);
    }

    #[test]
    fn line_endings() {
        assert_eq!(
            all(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"),
            vec![msg("a"), msg("b"), msg("c")]
        );
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let input =
            "data: {\"msg\":\"héllo\"}\r\n\r\n: hb\r\n\r\nid: 7\r\ndata: two\r\n\r\n".as_bytes();
        let want = all(input);
        assert_eq!(want.len(), 2);
        for size in 1..input.len() {
            let mut p = SseParser::new();
            let mut got = Vec::new();
            for chunk in input.chunks(size) {
                got.extend(p.push(chunk));
            }
            assert_eq!(got, want, "chunk size {size}");
        }
    }

    #[test]
    fn empty_data_line_is_an_event_but_no_data_is_not() {
        assert_eq!(all(b"data:\n\n"), vec![msg("")]);
        assert_eq!(all(b"event: x\n\n"), vec![]);
    }
}
