//! Server-Sent Events framing shared by every stream the proxy writes: `data:` events, the
//! `[DONE]` line, comments and keep-alives, error events, and text cut into delta-sized
//! pieces. What goes into the events is each API's own (`openai::chat_events`,
//! `openai::responses`, `openai::completions`). The one stream the proxy reads (the fuser's,
//! relayed) is cut into events by [`Decoder`].

use bytes::Bytes;
use serde_json::{json, Value};

/// Roughly how many characters go in one content delta; real models send a token or a few.
const PIECE_CHARS: usize = 24;

/// The comment line sent while the answer is being prepared, so idle timeouts do not fire.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// An error after the stream has begun: OpenAI's error object as an event, then `[DONE]`.
pub fn error_events(error: &crate::error::ApiError) -> Vec<Bytes> {
    error_object_events(&error.to_object())
}

/// Like [`error_events`], for an error object that came from the upstream.
pub fn error_object_events(error: &Value) -> Vec<Bytes> {
    vec![event(&json!({ "error": error })), Bytes::from_static(DONE)]
}

/// An SSE comment line; clients ignore it, proxies and load balancers see traffic.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace('\n', " ")))
}

pub fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Splits text into pieces of about [`PIECE_CHARS`] characters, cutting after whitespace where
/// possible; concatenated, the pieces are exactly the input.
pub fn split_text(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    for (at, c) in text.char_indices() {
        chars += 1;
        let end = at + c.len_utf8();
        if (chars >= PIECE_CHARS && c.is_whitespace()) || chars >= PIECE_CHARS * 2 {
            pieces.push(&text[start..end]);
            start = end;
            chars = 0;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Cuts an SSE stream into events, whatever frames it arrives in: line ends are made `\n`
/// (SSE allows `\r\n` and `\r` too, and a `\r\n` may be split across frames), and an event
/// is what comes before a blank line.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes read but not yet a whole event, line ends made `\n`.
    pending: Vec<u8>,
    /// How far `pending` has been searched for an event's end.
    scanned: usize,
    /// The last byte read was a `\r`.
    after_cr: bool,
}

impl Decoder {
    /// Adds the next bytes of the stream.
    pub fn push(&mut self, data: &[u8]) {
        for &byte in data {
            match byte {
                b'\n' if self.after_cr => {}
                b'\r' => self.pending.push(b'\n'),
                other => self.pending.push(other),
            }
            self.after_cr = byte == b'\r';
        }
    }

    /// The next whole event, without its blank-line terminator.
    pub fn next_event(&mut self) -> Option<Vec<u8>> {
        let from = self.scanned.saturating_sub(1);
        let Some(found) = self.pending[from..].windows(2).position(|w| w == b"\n\n") else {
            self.scanned = self.pending.len();
            return None;
        };
        let at = from + found;
        let event = self.pending[..at].to_vec();
        self.pending.drain(..at + 2);
        self.scanned = 0;
        Some(event)
    }

    /// The stream ended: what is held counts as a last event ([`Decoder::next_event`]).
    pub fn finish(&mut self) {
        self.push(b"\n\n");
    }

    /// How many bytes are held that are not yet a whole event.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// The data of one event: its `data:` lines (one space after the colon dropped) joined by
/// `\n`; `None` for an event of comments and other fields only.
pub fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_character() {
        let text = "héllo wörld ".repeat(20) + &"x".repeat(100);
        assert_eq!(split_text(&text).concat(), text);
        assert!(split_text("").is_empty());
    }

    #[test]
    fn events_are_cut_whatever_the_frames_and_line_ends() {
        let stream = b"data: a\r\n\r\n: note\r\rdata: b\ndata: c\n\ndata: d";
        for split in 0..stream.len() {
            let mut decoder = Decoder::default();
            let mut events = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                decoder.push(part);
                events.extend(std::iter::from_fn(|| decoder.next_event()));
            }
            decoder.finish();
            events.extend(std::iter::from_fn(|| decoder.next_event()));
            let data: Vec<Option<String>> = events.iter().map(|e| event_data(e)).collect();
            let expected = [Some("a"), None, Some("b\nc"), Some("d")].map(|d| d.map(String::from));
            assert_eq!(data, expected, "split at {split}");
        }
    }
}
