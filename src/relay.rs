//! Relaying a fuser's SSE stream to a streaming client as it is written.
//!
//! Chunks pass through as they come, except for usage. The fuser is always asked for a final
//! usage chunk (`stream_options.include_usage`) so that its tokens can be counted. A client
//! that asked for usage gets that chunk with usage summed over the candidates and the fuser; a
//! client that did not gets no usage at all, as from any OpenAI stream. A stream that breaks
//! off, stalls past the fuser's deadline or sends an oversized event ends with an SSE `error`
//! event, so the client is never left with a silently truncated answer.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::openai::Usage;
use crate::sse;

/// Largest SSE event accepted from the fuser; one event is one small chunk in practice.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The events of `body` for the client; `prior` is the usage of the candidates. The stream
/// must end by `deadline` (the earlier of the request's and the fuser's).
pub fn relay(
    body: Incoming,
    prior: Usage,
    include_usage: bool,
    deadline: Instant,
) -> BoxStream<'static, Bytes> {
    let state = Relay {
        body,
        decoder: sse::Decoder::default(),
        prior,
        include_usage,
        saw_usage: false,
        deadline,
        finished: false,
    };
    stream::unfold(state, |mut relay| async move {
        let events = relay.next_events().await?;
        Some((stream::iter(events), relay))
    })
    .flatten()
    .boxed()
}

struct Relay {
    body: Incoming,
    /// The fuser's stream, cut into events.
    decoder: sse::Decoder,
    prior: Usage,
    include_usage: bool,
    /// The fuser sent its usage.
    saw_usage: bool,
    deadline: Instant,
    finished: bool,
}

impl Relay {
    /// The next events for the client; `None` once the stream is over.
    async fn next_events(&mut self) -> Option<Vec<Bytes>> {
        if self.finished {
            return None;
        }
        loop {
            if let Some(event) = self.decoder.next_event() {
                let out = self.forward(&event);
                if !out.is_empty() {
                    return Some(out);
                }
                continue;
            }
            if self.decoder.pending_len() > MAX_EVENT_BYTES {
                return Some(self.fail("the fuser sent an SSE event over 1 MiB"));
            }
            let frame = tokio::time::timeout_at(self.deadline, self.body.frame()).await;
            match frame {
                Err(_) => {
                    let why = "the fuser did not finish in time (fuser.timeout or \
                               server.request_timeout)";
                    return Some(self.fail(why));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Ok(Some(Err(e))) => {
                    return Some(self.fail(&format!("the fuser's stream broke: {e}")))
                }
                Ok(None) => return self.end(),
            }
        }
    }

    /// What the client gets for one fuser event.
    fn forward(&mut self, event: &[u8]) -> Vec<Bytes> {
        if event.iter().all(u8::is_ascii_whitespace) {
            return Vec::new();
        }
        let Some(data) = sse::event_data(event) else {
            // The fuser's own comments and keep-alives: keep the client's connection busy too.
            return vec![Bytes::from_static(sse::KEEPALIVE)];
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.finished = true;
            let mut out = self.missing_usage();
            out.push(Bytes::from_static(sse::DONE));
            return out;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            return vec![Bytes::from(format!("data: {data}\n\n"))];
        };
        self.with_honest_usage(&mut chunk)
            .map(|chunk| vec![Bytes::from(format!("data: {chunk}\n\n"))])
            .unwrap_or_default()
    }

    /// The chunk with usage summed (client asked for it), or without usage (it did not);
    /// `None` for a usage-only chunk the client does not get.
    fn with_honest_usage(&mut self, chunk: &mut Value) -> Option<Value> {
        let usage = chunk.get("usage").filter(|u| !u.is_null()).cloned();
        let Some(usage) = usage else {
            // `"usage": null` belongs to streams that asked for usage; others carry none.
            if !self.include_usage {
                if let Some(object) = chunk.as_object_mut() {
                    object.remove("usage");
                }
            }
            return Some(chunk.take());
        };
        self.saw_usage = true;
        if self.include_usage {
            let fuser: Usage = serde_json::from_value(usage).unwrap_or_default();
            let mut total = self.prior.clone();
            total.add(&fuser);
            chunk["usage"] = serde_json::to_value(total).unwrap_or(Value::Null);
            return Some(chunk.take());
        }
        let has_choices = chunk["choices"].as_array().is_some_and(|c| !c.is_empty());
        if let Some(object) = chunk.as_object_mut() {
            object.remove("usage");
        }
        has_choices.then(|| chunk.take())
    }

    /// The stream ended: whatever whole event is left; without the fuser's `[DONE]` the
    /// answer may be cut short, which the client must be told.
    fn end(&mut self) -> Option<Vec<Bytes>> {
        self.decoder.finish();
        let mut out = Vec::new();
        while let Some(event) = self.decoder.next_event() {
            out.extend(self.forward(&event));
        }
        if !self.finished {
            out.extend(self.fail("the fuser's stream ended without [DONE]"));
        }
        self.finished = true;
        Some(out)
    }

    /// A usage chunk with the candidates' tokens, for a client that asked for usage when the
    /// fuser sent none: the candidates were paid for either way.
    fn missing_usage(&self) -> Vec<Bytes> {
        if !self.include_usage || self.saw_usage {
            return Vec::new();
        }
        let chunk = serde_json::json!({
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": self.prior,
        });
        vec![Bytes::from(format!("data: {chunk}\n\n"))]
    }

    fn fail(&mut self, why: &str) -> Vec<Bytes> {
        self.finished = true;
        tracing::warn!(%why, "fused stream cut short");
        sse::error_events(&ApiError::bad_gateway("fuser_failed", why.to_string()))
    }
}
