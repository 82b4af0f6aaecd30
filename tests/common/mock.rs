//! Programmable mock OpenAI upstream for bon-proxy integration tests: an HTTP/1.1 server
//! on `127.0.0.1:0` that records every request as a [`Call`] and answers it with the
//! [`Reply`] of a replaceable handler (delayed head, delayed chunks / SSE, or hangup).
//!
//! `Call::aborted` is set when the client goes away before the whole response (including
//! every delayed chunk) was handed to the connection: hyper drops the in-flight service
//! future or response body on EOF/error of a busy connection, and a guard's `Drop` marks the
//! call. A client half-close counts as an abort. Dropping the `MockUpstream` aborts the
//! accept task, which owns (and so aborts) every connection task.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

type Handler = Arc<dyn Fn(&Call) -> Reply + Send + Sync>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Shared {
    calls: Mutex<Vec<Call>>,
    handler: Mutex<Handler>,
    /// Connections open now: accepted and not yet closed by either side.
    open: AtomicUsize,
    /// Connections accepted since the start.
    accepted: AtomicUsize,
}

/// Locks ignoring poisoning, so one panicking test thread does not cascade.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running mock server; stopped when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl MockUpstream {
    /// Starts with the default handler (see [`default_handler`]).
    pub async fn start() -> MockUpstream {
        Self::with_handler(default_handler).await
    }

    /// Starts with a custom handler.
    pub async fn with_handler(h: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock upstream: local_addr");
        let shared = Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            handler: Mutex::new(Arc::new(h)),
            open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        MockUpstream {
            addr,
            shared,
            accept,
        }
    }

    /// Replaces the handler at run time (requests already being answered are unaffected).
    pub fn set_handler(&self, h: impl Fn(&Call) -> Reply + Send + Sync + 'static) {
        *lock(&self.shared.handler) = Arc::new(h);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// e.g. `"http://127.0.0.1:PORT/v1"`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// TCP connections open now; the mock itself never closes an idle one.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// TCP connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Snapshot of every request received so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// Polls until at least `n` calls have arrived and all of them are finished (completed
    /// or aborted), then returns the snapshot. Panics on timeout.
    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            let unfinished: Vec<_> = calls.iter().filter(|c| c.finished.is_none()).collect();
            if calls.len() >= n && unfinished.is_empty() {
                return calls;
            }
            if Instant::now() >= deadline {
                let unfinished: Vec<_> = unfinished
                    .iter()
                    .map(|c| (c.seq, &c.path_and_query))
                    .collect();
                panic!(
                    "mock upstream: wanted {n} finished calls within {timeout:?}, got {} calls; \
                     unfinished (seq, path): {unfinished:?}",
                    calls.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned by this task: aborting the task drops the set, which aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while conns.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        shared.open.fetch_add(1, Ordering::SeqCst);
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        conns.spawn(async move {
            let counted = shared.clone();
            let svc = service_fn(move |req| handle(shared.clone(), req));
            // Errors here are client disconnects or deliberate hangups.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            counted.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Marks its call finished on drop; `aborted` unless `completed` was set first.
struct CallGuard {
    shared: Arc<Shared>,
    seq: usize,
    completed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut calls = lock(&self.shared.calls);
        if let Some(c) = calls.get_mut(self.seq) {
            if c.finished.is_none() {
                c.finished = Some(Instant::now());
                c.aborted = !self.completed;
            }
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ReplyStream>, BoxError> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let (body, body_ok) = match body.collect().await {
        Ok(c) => (c.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    let call = {
        let mut calls = lock(&shared.calls);
        let call = Call::received(calls.len(), parts, body, started);
        calls.push(call.clone());
        call
    };
    let mut guard = CallGuard {
        shared: shared.clone(),
        seq: call.seq,
        completed: false,
    };
    if !body_ok {
        return Err("mock upstream: request body failed".into()); // guard marks it aborted
    }
    let handler = lock(&shared.handler).clone();
    let reply = catch_unwind(AssertUnwindSafe(|| handler(&call)))
        .unwrap_or_else(|_| Reply::error(500, "mock handler panicked", "mock_handler_panic"));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let (chunks, exact): (VecDeque<_>, _) = match reply.body {
        ReplyBody::Hangup => {
            // Returning an error makes hyper close the connection without a response.
            guard.completed = true;
            return Err("mock upstream: deliberate hangup".into());
        }
        ReplyBody::Bytes(b) if b.is_empty() => (VecDeque::new(), Some(0)),
        ReplyBody::Bytes(b) => {
            let len = b.len() as u64;
            (VecDeque::from([(Duration::ZERO, b)]), Some(len))
        }
        ReplyBody::Chunks(c) => (c.into(), None),
    };
    guard.completed = chunks.is_empty();
    let mut resp = Response::new(ReplyStream {
        chunks,
        sleep: None,
        exact,
        guard,
    });
    *resp.status_mut() = reply.status;
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp.headers_mut().append(k, v);
        }
    }
    Ok(resp)
}

/// Response body: hands out chunks after their delays; owns the call's guard, so a body
/// dropped before its last chunk was handed out marks the call aborted.
struct ReplyStream {
    chunks: VecDeque<(Duration, Bytes)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    exact: Option<u64>,
    guard: CallGuard,
}

impl Body for ReplyStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(&(delay, _)) = this.chunks.front() else {
            this.guard.completed = true;
            return Poll::Ready(None);
        };
        if !delay.is_zero() {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let Some((_, chunk)) = this.chunks.pop_front() else {
            return Poll::Ready(None);
        };
        // hyper may drop a fixed-length body right after its last chunk without polling again.
        this.guard.completed = this.chunks.is_empty();
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// One request received by the mock.
#[derive(Clone, Debug)]
pub struct Call {
    /// 0-based arrival order (assigned once the request body has been read).
    pub seq: usize,
    pub method: Method,
    /// e.g. `"/v1/chat/completions?x=1"`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// Full request body as received.
    pub body: Bytes,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// When the request head arrived.
    pub started: Instant,
    /// When the response was fully handed to the connection, or the connection died.
    pub finished: Option<Instant>,
    /// The client went away before the full response (incl. delayed chunks) was sent.
    pub aborted: bool,
}

impl Call {
    /// The `seq`-th request, its head and whole body as received; not yet finished.
    pub fn received(
        seq: usize,
        parts: http::request::Parts,
        body: Bytes,
        started: Instant,
    ) -> Call {
        let path_and_query = match parts.uri.path_and_query() {
            Some(pq) => pq.as_str().to_string(),
            None => parts.uri.to_string(),
        };
        Call {
            seq,
            method: parts.method,
            path_and_query,
            headers: parts.headers,
            json: serde_json::from_slice(&body).ok(),
            body,
            started,
            finished: None,
            aborted: false,
        }
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("")
    }

    /// True when any message's text contains `<candidate id="`.
    pub fn is_judge(&self) -> bool {
        self.message_texts()
            .iter()
            .any(|t| t.contains("<candidate id=\""))
    }

    /// Concatenated text of all messages (string contents and text parts), one per line.
    pub fn prompt_text(&self) -> String {
        self.message_texts().join("\n")
    }

    /// `(id, text)` of each `<candidate id="K">\n...\n</candidate>` block, in order.
    pub fn judge_candidates(&self) -> Vec<(String, String)> {
        const OPEN: &str = "<candidate id=\"";
        const CLOSE: &str = "</candidate>";
        let mut out = Vec::new();
        for text in self.message_texts() {
            let mut rest = text.as_str();
            while let Some(i) = rest.find(OPEN) {
                rest = &rest[i + OPEN.len()..];
                let Some(q) = rest.find("\">") else { break };
                let id = rest[..q].to_string();
                rest = &rest[q + 2..];
                let Some(end) = rest.find(CLOSE) else { break };
                let inner = &rest[..end];
                let inner = inner.strip_prefix('\n').unwrap_or(inner);
                let inner = inner.strip_suffix('\n').unwrap_or(inner);
                out.push((id, inner.to_string()));
                rest = &rest[end + CLOSE.len()..];
            }
        }
        out
    }

    fn message_texts(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(json) = &self.json else { return out };
        if let Some(msgs) = json.get("messages").and_then(Value::as_array) {
            for content in msgs.iter().filter_map(|m| m.get("content")) {
                match content {
                    Value::String(s) => out.push(s.clone()),
                    Value::Array(parts) => out.extend(
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .map(str::to_string),
                    ),
                    _ => {}
                }
            }
        }
        out
    }
}

/// What the handler answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    /// Waited before the response head is sent.
    pub delay: Duration,
    pub body: ReplyBody,
}

#[derive(Clone, Debug)]
pub enum ReplyBody {
    /// Sent at once, with a content-length.
    Bytes(Bytes),
    /// Sent chunk by chunk (chunked encoding), each after its delay.
    Chunks(Vec<(Duration, Bytes)>),
    /// Accept the request then close the connection without answering. Not an abort.
    Hangup,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Reply {
    /// `status` with a JSON body and `content-type: application/json`.
    pub fn json(status: u16, v: Value) -> Reply {
        let status = StatusCode::from_u16(status).expect("valid HTTP status");
        let body = ReplyBody::Bytes(v.to_string().into());
        Reply::new(status, "application/json", body)
    }

    fn new(status: StatusCode, content_type: &str, body: ReplyBody) -> Reply {
        let headers = vec![("content-type".to_string(), content_type.to_string())];
        Reply {
            status,
            headers,
            delay: Duration::ZERO,
            body,
        }
    }

    /// 200 with a realistic `chat.completion` whose message content is `content`.
    pub fn completion(content: &str) -> Reply {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Reply::json(
            200,
            json!({
                "id": format!("chatcmpl-mock-{id}"),
                "object": "chat.completion",
                "created": unix_now(),
                "model": "mock-model",
                "system_fingerprint": "fp_mock",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            }),
        )
    }

    /// A completion whose content is `<best>K</best>` plus `<ranking>a,b,c</ranking>`
    /// when `ranking` is non-empty.
    pub fn judge_best(best: &str, ranking: &[&str]) -> Reply {
        let mut content = format!("<best>{best}</best>");
        if !ranking.is_empty() {
            content.push_str(&format!("<ranking>{}</ranking>", ranking.join(",")));
        }
        Reply::completion(&content)
    }

    /// OpenAI-shaped error body.
    pub fn error(status: u16, message: &str, code: &str) -> Reply {
        let error = json!({
            "message": message, "type": "invalid_request_error", "param": null, "code": code
        });
        Reply::json(status, json!({ "error": error }))
    }

    /// `text/event-stream`: `data: {json}\n\n` per event, each after `gap`, then
    /// `data: [DONE]\n\n` (also after `gap`).
    pub fn sse(events: Vec<Value>, gap: Duration) -> Reply {
        let mut chunks: Vec<_> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        chunks.push("data: [DONE]\n\n".to_string());
        let chunks = chunks.into_iter().map(|c| (gap, Bytes::from(c))).collect();
        let body = ReplyBody::Chunks(chunks);
        Reply::new(StatusCode::OK, "text/event-stream", body)
            .with_header("cache-control", "no-cache")
    }

    /// A streamed chat completion: a role chunk, one `chat.completion.chunk` per piece of
    /// `parts`, a final chunk with `finish_reason: "stop"`, then `[DONE]`.
    pub fn stream_completion(parts: &[&str], gap: Duration) -> Reply {
        let id = format!("chatcmpl-mock-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let created = unix_now();
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": "mock-model", "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            })
        };
        let role = json!({"role": "assistant", "content": ""});
        let mut events = vec![chunk(role, Value::Null)];
        for p in parts {
            events.push(chunk(json!({ "content": p }), Value::Null));
        }
        events.push(chunk(json!({}), json!("stop")));
        Reply::sse(events, gap)
    }

    /// A reply that hangs up without answering.
    pub fn hangup() -> Reply {
        Reply::new(StatusCode::OK, "text/plain", ReplyBody::Hangup)
    }

    /// Waits `d` before sending the response head.
    pub fn with_delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    /// Sets a header, replacing any existing one of the same name (case-insensitive).
    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

/// Judge calls get `judge_best("1", &[])`; other `POST .../chat/completions` get
/// `completion("candidate answer {seq}")`; `GET /v1/models` a models list; the rest 404.
pub fn default_handler(call: &Call) -> Reply {
    if call.method == Method::POST && call.path().ends_with("/chat/completions") {
        if call.is_judge() {
            return Reply::judge_best("1", &[]);
        }
        return Reply::completion(&format!("candidate answer {}", call.seq));
    }
    if call.method == Method::GET && call.path() == "/v1/models" {
        return Reply::json(
            200,
            json!({"object": "list", "data": [
                {"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}
            ]}),
        );
    }
    let msg = format!(
        "mock upstream: no route for {} {}",
        call.method,
        call.path()
    );
    Reply::error(404, &msg, "not_found")
}

/// Judge calls pick candidate 1; every generation answers differently ("answer number
/// {seq}"), so a served answer shows which computation made it.
pub fn numbered(call: &Call) -> Reply {
    if call.is_judge() {
        Reply::judge_best("1", &[])
    } else {
        Reply::completion(&format!("answer number {}", call.seq))
    }
}

impl MockUpstream {
    /// Calls that generated candidates (not judge calls).
    pub fn generations(&self) -> usize {
        self.calls().iter().filter(|c| !c.is_judge()).count()
    }

    /// Judge calls.
    pub fn judgements(&self) -> usize {
        self.calls().iter().filter(|c| c.is_judge()).count()
    }
}
