//! Server-sent events as the demo streams them: framing, pacing, and words in pieces.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use super::wire::*;

/// Longest pause between the chunks of a stream.
pub(super) const MAX_CHUNK_GAP: Duration = Duration::from_millis(20);

/// Splits `text` before every `words`-th word, keeping whitespace, so pieces concatenate back.
pub(super) fn word_pieces(text: &str, words: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut seen, mut in_space) = (0, 0, true);
    for (at, ch) in text.char_indices() {
        let space = ch.is_whitespace();
        if in_space && !space {
            if seen > 0 && seen % words == 0 {
                pieces.push(&text[start..at]);
                start = at;
            }
            seen += 1;
        }
        in_space = space;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

pub(super) fn sse(value: &Value) -> Bytes {
    let mut line = b"data: ".to_vec();
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, value);
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

pub(super) fn sse_response(frames: Vec<Bytes>, latency: Duration) -> Response<Body> {
    let gap = chunk_gap(latency);
    let state = (frames.into_iter(), latency);
    let events = futures_util::stream::unfold(state, move |(mut frames, delay)| async move {
        let frame = frames.next()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, Infallible>(Frame::data(frame)), (frames, gap)))
    });
    let body = StreamBody::new(events).boxed_unsync();
    let mut response = response(StatusCode::OK, "text/event-stream", body);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A tenth of the latency, capped so long answers do not dominate benchmark time.
pub(super) fn chunk_gap(latency: Duration) -> Duration {
    (latency / 10).min(MAX_CHUNK_GAP)
}
