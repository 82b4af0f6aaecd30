//! Server-Sent Events framing shared by every stream the proxy writes: `data:` events, the
//! `[DONE]` line, comments and keep-alives, error events, and text cut into delta-sized
//! pieces. What goes into the events is each API's own (`openai::chat_events`,
//! `openai::responses`, `openai::completions`).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_character() {
        let text = "héllo wörld ".repeat(20) + &"x".repeat(100);
        assert_eq!(split_text(&text).concat(), text);
        assert!(split_text("").is_empty());
    }
}
