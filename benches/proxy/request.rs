//! What is sent: a `Target` (one kind of request, or the rounds of direct calls a client doing
//! best-of-N itself would make), and `exchange`, which sends it and reads the whole answer,
//! checking the header or stream end the target expects.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::fleet::Service;
use crate::load::HttpClient;
use crate::QUESTION;

/// One kind of request, sent again and again.
pub struct Target {
    pub label: String,
    uri: Uri,
    pub body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// A response header every 2xx answer must carry; counted as a failed check otherwise.
    pub expect: Option<(HeaderName, HeaderValue)>,
    /// SSE: the body must end with `data: [DONE]`.
    stream: bool,
    /// Direct fan-out: one "request" is rounds of concurrent calls, one round after the other,
    /// each call with its own path (under the service's `/v1`) and body, as a client doing
    /// best-of-N itself would make them. Empty: one call with `body`.
    pub rounds: Vec<Vec<(&'static str, Bytes)>>,
}

impl Target {
    pub fn chat(label: &str, service: &Service, stream: bool) -> Arc<Target> {
        Arc::new(Target::new(label, service, stream))
    }

    pub fn new(label: &str, service: &Service, stream: bool) -> Target {
        let mut body = chat_request(QUESTION);
        if stream {
            body["stream"] = json!(true);
        }
        Target {
            label: label.to_string(),
            uri: format!("http://{}/v1/chat/completions", service.addr)
                .parse()
                .expect("a loopback URL parses"),
            body: Bytes::from(body.to_string()),
            headers: Vec::new(),
            expect: None,
            stream,
            rounds: Vec::new(),
        }
    }

    /// The calls best-of-N makes, made directly: round k sends every body of `rounds[k]` at
    /// once.
    pub fn fan_out(
        label: &str,
        service: &Service,
        rounds: Vec<Vec<(&'static str, Bytes)>>,
    ) -> Arc<Target> {
        let mut target = Target::new(label, service, false);
        target.rounds = rounds;
        Arc::new(target)
    }

    /// Best-of-N through a proxy; `store` false adds `Cache-Control: no-store`.
    pub fn best_of(label: &str, proxy: &Service, n: u32, store: bool) -> Target {
        let mut target = Target::new(label, proxy, false);
        let n = HeaderValue::from(n);
        let name = HeaderName::from_static("x-best-of-n");
        target.headers.push((name.clone(), n.clone()));
        if !store {
            let value = HeaderValue::from_static("no-store");
            target.headers.push((header::CACHE_CONTROL, value));
        }
        target.expect = Some((name, n));
        target
    }

    /// Names the judge with `x-best-of-n-judge`.
    pub fn judged_by(self, judge: &'static str) -> Target {
        self.with_header("x-best-of-n-judge", judge)
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Target {
        let name = HeaderName::from_static(name);
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// Requires `name: value` on every 2xx answer instead of the default check.
    pub fn expecting(mut self, name: &'static str, value: &'static str) -> Target {
        let name = HeaderName::from_static(name);
        self.expect = Some((name, HeaderValue::from_static(value)));
        self
    }

    pub fn shared(self) -> Arc<Target> {
        Arc::new(self)
    }

    pub fn request(&self) -> Request<Full<Bytes>> {
        self.request_with(self.body.clone())
    }

    fn request_with(&self, body: Bytes) -> Request<Full<Bytes>> {
        self.request_to(None, body)
    }

    /// A request to `path` under the service's `/v1` (the target's own URI when `None`).
    fn request_to(&self, path: Option<&str>, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = match path.and_then(|p| self.uri.authority().map(|a| (p, a))) {
            Some((path, authority)) => format!("http://{authority}/v1{path}")
                .parse()
                .unwrap_or_else(|_| self.uri.clone()),
            None => self.uri.clone(),
        };
        let headers = request.headers_mut();
        let json = HeaderValue::from_static("application/json");
        headers.insert(header::CONTENT_TYPE, json);
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        request
    }
}

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    Done {
        status: StatusCode,
        first_byte: Instant,
        checked: bool,
        headers: http::HeaderMap,
    },
    Error(String),
}

/// Sends one request (or its rounds of direct calls) and reads the whole body.
pub async fn exchange(client: &HttpClient, target: &Target) -> Outcome {
    if target.rounds.is_empty() {
        return exchange_one(client, target, target.request()).await;
    }
    let mut last = Outcome::Error("no rounds".into());
    for round in &target.rounds {
        let calls = round.iter().map(|(path, body)| {
            exchange_one(client, target, target.request_to(Some(path), body.clone()))
        });
        for outcome in futures_util::future::join_all(calls).await {
            match outcome {
                Outcome::Done { status, .. } if status.is_success() => last = outcome,
                failed => return failed,
            }
        }
    }
    last
}

/// Sends one request and reads the whole body, noting when its first byte came.
async fn exchange_one(
    client: &HttpClient,
    target: &Target,
    request: Request<Full<Bytes>>,
) -> Outcome {
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => return Outcome::Error(error_chain(&e)),
    };
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    let mut checked = match &target.expect {
        Some((name, value)) => parts.headers.get(name) == Some(value),
        None => true,
    };
    let mut first_byte = None;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Outcome::Error(format!("body: {}", error_chain(&e))),
        };
        if let Ok(data) = frame.into_data() {
            first_byte.get_or_insert_with(Instant::now);
            keep_tail(&mut tail, &data);
        }
    }
    if target.stream && status.is_success() {
        checked &= tail.ends_with(b"data: [DONE]\n\n");
    }
    Outcome::Done {
        status,
        first_byte: first_byte.unwrap_or_else(Instant::now),
        checked,
        headers: parts.headers,
    }
}

/// Keeps the last 32 bytes of a body, enough to see how it ends.
fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    tail.extend_from_slice(data);
    if tail.len() > 32 {
        tail.drain(..tail.len() - 32);
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The chat completion every scenario sends, asking `question`.
pub fn chat_request(question: &str) -> Value {
    json!({"model": "demo", "messages": [{"role": "user", "content": question}]})
}
