//! Built-in demo upstream: a small in-process OpenAI-compatible HTTP/1.1 server.
//!
//! It lets `bon-proxy serve --demo` work without network or API key, and is the cheap,
//! predictable upstream of the benchmarks: hence no regex, no logging and few allocations per
//! request. Routes (also without `/v1`): `GET /v1/models`, `POST /v1/embeddings` and
//! `POST /v1/chat/completions` (plain or SSE, with `n` and `stream_options.include_usage`).
//! Anything else is a 404 and bad JSON a 400, both in OpenAI's error shape. Token counts are
//! approximate: a quarter of the text's bytes, at least 1.
//!
//! **Ordinary answers** come from small phrase banks, picked by a splitmix64 generator seeded
//! with [`DemoOptions::seed`], a hash of the prompt, a per-server request counter and the choice
//! index: they differ from call to call, yet a run is reproducible. Their shape varies on purpose
//! (one line, paragraph, bullet list, numbered list with heading and summary) so that a judge has
//! a real choice. With `tools`, a last user message mentioning "weather" gets a call to the first
//! tool; a `json_object` or `json_schema` response format gets a small JSON object.
//!
//! **Judge requests** are those whose messages contain `<candidate id="K">…</candidate>` blocks.
//! The rubric scores each candidate as `3 × structured lines + min(words, 120) / 20` (integer
//! division), where a structured line starts, after indentation, with `- `, `* `, `N. ` or `#`;
//! ties go to the candidate that comes first (the lower id). The reply depends on the prompt:
//! - with `<winner>` (pairwise): `The better answer is A… <winner>A</winner>` (`B`, or `tie` on
//!   equal scores);
//! - else with `<score>` (pointwise): `<score>X</score>` where `X = min(score, 10)`;
//! - else (listwise): a reason, `<best>K</best>` and `<ranking>K1,K2,…</ranking>`, best first.
//!
//! A block without its closing tag ends at the next block or at the end; blocks with an empty,
//! odd or repeated id are ignored; if none is left the request gets an ordinary answer.
//!
//! **Timing**: [`DemoOptions::latency`] is slept before a plain answer and before the first SSE
//! chunk; later chunks follow after `latency / 10`, capped at 20 ms (no gap at zero latency), so
//! streams trickle visibly without slowing benchmarks much.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinSet};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Bounds memory per request: the demo must survive a benchmark gone wrong.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
const MAX_EMBEDDING_INPUTS: usize = 2048;
const MAX_DIMENSIONS: u64 = 8192;
const MAX_CHUNK_GAP: Duration = Duration::from_millis(20);
const TOOL_ARGUMENTS: &str = r#"{"location":"Paris"}"#;

/// Options for the demo upstream.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Delay added before every answer (and before the first chunk of a stream), like a real model's latency.
    pub latency: Duration,
    /// Seed for the generated answers; equal seeds give equal sequences of answers.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            seed: 42,
        }
    }
}

struct State {
    options: DemoOptions,
    counter: AtomicU64,
}

/// Serves the demo upstream on `listener` until the task is dropped/aborted. Each connection on its own task, keep-alive on.
///
/// Accept errors (such as running out of file descriptors) are transient, so they are retried
/// after a short pause rather than returned. Connections belong to this future: dropping it
/// closes them too.
pub async fn serve(listener: TcpListener, options: DemoOptions) -> std::io::Result<()> {
    let state = Arc::new(State {
        options,
        counter: AtomicU64::new(0),
    });
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(%err, "demo upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        // SSE chunks are tiny; Nagle's algorithm would hold them back.
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&state), req));
            let mut builder = http1::Builder::new();
            builder.keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(%err, "demo upstream: connection ended with an error");
            }
        });
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let unversioned = path
        .strip_prefix("/v1")
        .filter(|rest| rest.starts_with('/'));
    let route = unversioned.unwrap_or(path);
    Ok(match (&parts.method, route) {
        (&Method::GET, "/models") => json_response(StatusCode::OK, &models()),
        (&Method::POST, "/embeddings" | "/chat/completions") => match read_json(body).await {
            Ok(request) if route == "/embeddings" => embeddings(&request),
            Ok(request) => chat(&state, &request).await,
            Err(response) => response,
        },
        (method, _) => {
            let message = format!("Unknown request URL: {method} {path}.");
            error_response(StatusCode::NOT_FOUND, &message, Some("not_found"))
        }
    })
}

async fn read_json(body: Incoming) -> Result<Value, Response<Body>> {
    let Ok(collected) = Limited::new(body, MAX_BODY_BYTES).collect().await else {
        return Err(bad_request("Could not read the request body."));
    };
    match serde_json::from_slice::<Value>(&collected.to_bytes()) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(bad_request(
            "Could not parse the request body as a JSON object.",
        )),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let value = HeaderValue::from_static(content_type);
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    response(status, "application/json", Full::from(bytes).boxed_unsync())
}

fn error_response(status: StatusCode, message: &str, code: Option<&str>) -> Response<Body> {
    let error = json!({"error": {
        "message": message, "type": "invalid_request_error", "param": null, "code": code}});
    json_response(status, &error)
}

fn bad_request(message: &str) -> Response<Body> {
    error_response(StatusCode::BAD_REQUEST, message, None)
}

/// Looks up a string by JSON pointer; keeps the request parsing on one line per field.
fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer)?.as_str()
}

fn models() -> Value {
    let model = |id| {
        json!({"id": id, "object": "model", "created": 1_700_000_000_u64,
        "owned_by": "bon-proxy-demo"})
    };
    json!({"object": "list", "data": [model("demo"), model("demo-judge")]})
}

fn embeddings(request: &Value) -> Response<Body> {
    let dimensions = match request.get("dimensions").filter(|d| !d.is_null()) {
        None => 16,
        Some(value) => match value.as_u64() {
            Some(d @ 1..=MAX_DIMENSIONS) => d as usize,
            _ => return bad_request("'dimensions' must be an integer between 1 and 8192."),
        },
    };
    let inputs = embedding_inputs(request.get("input"));
    if !(1..=MAX_EMBEDDING_INPUTS).contains(&inputs.len()) {
        return bad_request("'input' must be a string or an array of 1 to 2048 inputs.");
    }
    let item = |(index, text): (usize, &String)| {
        json!({"object": "embedding", "index": index,
        "embedding": embedding(text, dimensions)})
    };
    let data: Vec<Value> = inputs.iter().enumerate().map(item).collect();
    let tokens: u64 = inputs.iter().map(|text| approx_tokens(text)).sum();
    let model = str_at(request, "/model").unwrap_or("demo");
    let body = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    json_response(StatusCode::OK, &body)
}

/// The texts to embed; anything that is not a string is embedded by its JSON text.
fn embedding_inputs(input: Option<&Value>) -> Vec<String> {
    let text = |item: &Value| match item {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match input {
        Some(Value::Array(items)) if items.is_empty() => Vec::new(),
        // A flat array of numbers is one pre-tokenised input, not many inputs.
        Some(Value::Array(items)) if !items.iter().all(Value::is_number) => {
            items.iter().map(text).collect()
        }
        Some(one @ (Value::String(_) | Value::Array(_))) => vec![text(one)],
        _ => Vec::new(),
    }
}

fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut rng = Rng(fnv1a(text.as_bytes()));
    let mut vector: Vec<f32> = (0..dimensions).map(|_| rng.signed_unit()).collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// What the generators need from a chat request.
struct Chat<'a> {
    model: &'a str,
    n: usize,
    stream: bool,
    include_usage: bool,
    /// All message text, one message per line: the judge looks for candidates anywhere in it.
    prompt: String,
    last_user: std::ops::Range<usize>,
    last_is_user: bool,
    tool_name: Option<&'a str>,
    json_mode: bool,
}

fn parse_chat(request: &Value) -> Option<Chat<'_>> {
    let messages = request.get("messages")?.as_array()?;
    let mut prompt = String::new();
    let (mut last_user, mut last_is_user) = (0..0, false);
    for message in messages {
        let start = prompt.len();
        append_text(message.get("content"), &mut prompt);
        last_is_user = str_at(message, "/role") == Some("user");
        if last_is_user {
            last_user = start..prompt.len();
        }
        prompt.push('\n');
    }
    let first_tool = request.pointer("/tools/0");
    let flag = |pointer| request.pointer(pointer).and_then(Value::as_bool) == Some(true);
    let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
    let format = str_at(request, "/response_format/type");
    Some(Chat {
        model: str_at(request, "/model").unwrap_or("demo"),
        n: n.clamp(1, 128) as usize,
        stream: flag("/stream"),
        include_usage: flag("/stream_options/include_usage"),
        prompt,
        last_user,
        last_is_user,
        tool_name: first_tool.map(|tool| str_at(tool, "/function/name").unwrap_or("get_weather")),
        json_mode: matches!(format, Some("json_object" | "json_schema")),
    })
}

/// Appends the text of a message's content, a plain string or an array of parts.
fn append_text(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(text)) => out.push_str(text),
        Some(Value::Array(parts)) => {
            for text in parts.iter().filter_map(|part| str_at(part, "/text")) {
                out.push_str(text);
                out.push('\n');
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum Answer {
    Text(String),
    ToolCall { id: String, name: String },
}

impl Answer {
    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "stop",
            Answer::ToolCall { .. } => "tool_calls",
        }
    }

    fn tokens(&self) -> u64 {
        match self {
            Answer::Text(text) => approx_tokens(text),
            Answer::ToolCall { name, .. } => approx_tokens(name) + approx_tokens(TOOL_ARGUMENTS),
        }
    }
}

async fn chat(state: &State, request: &Value) -> Response<Body> {
    let Some(chat) = parse_chat(request) else {
        return bad_request("'messages' must be an array of messages.");
    };
    let call = state.counter.fetch_add(1, Ordering::Relaxed);
    let answers = answers(state, &chat, call);
    let head = json!({"id": format!("chatcmpl-demo-{call:x}"), "object": "chat.completion",
        "created": unix_now(), "model": chat.model, "system_fingerprint": "fp_demo"});
    let prompt_tokens = approx_tokens(&chat.prompt);
    let completion_tokens: u64 = answers.iter().map(Answer::tokens).sum();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    let latency = state.options.latency;
    if chat.stream {
        let usage = chat.include_usage.then_some(usage);
        return sse_response(stream_frames(head, &answers, usage), latency);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    json_response(StatusCode::OK, &completion(head, &answers, usage))
}

fn answers(state: &State, chat: &Chat<'_>, call: u64) -> Vec<Answer> {
    if let Some(verdict) = judge_reply(&chat.prompt) {
        return vec![Answer::Text(verdict); chat.n];
    }
    let question = chat.prompt.get(chat.last_user.clone()).unwrap_or("");
    let asks_weather = chat.last_is_user && contains_ignore_case(question, b"weather");
    let tool = chat.tool_name.filter(|_| asks_weather);
    let topic = topic(question);
    let base = state.options.seed ^ fnv1a(chat.prompt.as_bytes()) ^ call.wrapping_mul(GOLDEN);
    let answer = |index: u64| {
        let mut rng = Rng(base ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        match tool {
            // Unique without touching the counter, because `n` is at most 128.
            Some(name) => Answer::ToolCall {
                id: format!("call_demo_{}", call.wrapping_mul(128).wrapping_add(index)),
                name: name.to_owned(),
            },
            None if chat.json_mode => Answer::Text(json_answer(&mut rng, &topic)),
            None => Answer::Text(generate(&mut rng, &topic)),
        }
    };
    (0..chat.n as u64).map(answer).collect()
}

fn completion(mut head: Value, answers: &[Answer], usage: Value) -> Value {
    let choice = |(index, answer): (usize, &Answer)| {
        let message = match answer {
            Answer::Text(text) => json!({"role": "assistant", "content": text, "refusal": null}),
            Answer::ToolCall { id, name } => json!({"role": "assistant", "content": null,
                "tool_calls": [{"id": id, "type": "function",
                    "function": {"name": name, "arguments": TOOL_ARGUMENTS}}],
                "refusal": null}),
        };
        json!({"index": index, "message": message, "logprobs": null,
            "finish_reason": answer.finish_reason()})
    };
    head["choices"] = answers.iter().enumerate().map(choice).collect();
    head["usage"] = usage;
    head
}

/// All SSE events of a streamed completion, choice after choice, ending with `[DONE]`.
fn stream_frames(mut head: Value, answers: &[Answer], usage: Option<Value>) -> Vec<Bytes> {
    head["object"] = json!("chat.completion.chunk");
    let chunk = |index: usize, delta: Value, reason: Option<&str>| {
        let mut chunk = head.clone();
        chunk["choices"] = json!([{"index": index, "delta": delta, "logprobs": null,
            "finish_reason": reason}]);
        if usage.is_some() {
            chunk["usage"] = Value::Null;
        }
        sse(&chunk)
    };
    let mut frames = Vec::new();
    for (index, answer) in answers.iter().enumerate() {
        for delta in deltas(answer) {
            frames.push(chunk(index, delta, None));
        }
        frames.push(chunk(index, json!({}), Some(answer.finish_reason())));
    }
    if let Some(usage) = &usage {
        head["choices"] = json!([]);
        head["usage"] = usage.clone();
        frames.push(sse(&head));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

fn deltas(answer: &Answer) -> Vec<Value> {
    let mut deltas = Vec::new();
    match answer {
        Answer::Text(text) => {
            deltas.push(json!({"role": "assistant", "content": ""}));
            for piece in word_pieces(text, 2) {
                deltas.push(json!({"content": piece}));
            }
        }
        Answer::ToolCall { id, name } => {
            let call = json!({"index": 0, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}});
            deltas.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            // Real models stream the arguments in pieces too; clients must concatenate them.
            let (head, tail) = TOOL_ARGUMENTS.split_at(9);
            for piece in [head, tail] {
                let call = json!({"index": 0, "function": {"arguments": piece}});
                deltas.push(json!({"tool_calls": [call]}));
            }
        }
    }
    deltas
}

/// Splits `text` before every `words`-th word, keeping whitespace, so pieces concatenate back.
fn word_pieces(text: &str, words: usize) -> Vec<&str> {
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

fn sse(value: &Value) -> Bytes {
    let mut line = b"data: ".to_vec();
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, value);
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

fn sse_response(frames: Vec<Bytes>, latency: Duration) -> Response<Body> {
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
fn chunk_gap(latency: Duration) -> Duration {
    (latency / 10).min(MAX_CHUNK_GAP)
}

/// `(id, text)` of every well-formed candidate block, in prompt order.
fn parse_candidates(text: &str) -> Vec<(&str, &str)> {
    const OPEN: &str = "<candidate id=\"";
    const CLOSE: &str = "</candidate>";
    let mut candidates: Vec<(&str, &str)> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        rest = &rest[start + OPEN.len()..];
        let Some(quote) = rest.find('"') else { break };
        let id = &rest[..quote];
        let Some(body) = rest[quote + 1..].trim_start().strip_prefix('>') else {
            continue;
        };
        let plain = id.len() <= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if id.is_empty() || !plain || candidates.iter().any(|&(seen, _)| seen == id) {
            continue;
        }
        let find = |tag| body.find(tag).unwrap_or(body.len());
        let end = find(CLOSE).min(find(OPEN));
        candidates.push((id, body[..end].trim()));
        rest = &body[end..];
    }
    candidates
}

/// The rubric described in the module documentation.
fn rubric(text: &str) -> usize {
    let structured = text.lines().filter(|line| is_structured(line.trim_start()));
    3 * structured.count() + text.split_whitespace().count().min(120) / 20
}

fn is_structured(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") || line.starts_with('#') {
        return true;
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line.as_bytes()[digits..].starts_with(b". ")
}

fn judge_reply(prompt: &str) -> Option<String> {
    let scored = |(id, text)| (id, rubric(text));
    let mut ranked: Vec<(&str, usize)> = parse_candidates(prompt).into_iter().map(scored).collect();
    // Stable sort: equal scores keep prompt order, so the lower id wins ties.
    ranked.sort_by_key(|&(_, score)| std::cmp::Reverse(score));
    let &(best, best_score) = ranked.first()?;
    if prompt.contains("<winner>") {
        if ranked.get(1).is_some_and(|&(_, score)| score == best_score) {
            return Some("Both answers are equally good. <winner>tie</winner>".into());
        }
        let reason = format!("The better answer is {best}: it is more structured and complete.");
        return Some(format!("{reason} <winner>{best}</winner>"));
    }
    if prompt.contains("<score>") {
        let score = best_score.min(10);
        return Some(format!(
            "Rated on structure and length. <score>{score}</score>"
        ));
    }
    let ranking: Vec<&str> = ranked.iter().map(|&(id, _)| id).collect();
    let ranking = ranking.join(",");
    let reason = format!("Candidate {best} is the most structured and complete answer.");
    Some(format!(
        "{reason} <best>{best}</best>\n<ranking>{ranking}</ranking>"
    ))
}

const LEADS: [(&str, &str); 4] = [
    ("When it comes to \"", "\", a few things matter most."),
    ("Regarding \"", "\", here is what I would keep in mind."),
    ("There is no one answer to \"", "\", but some points help."),
    ("For \"", "\", the practical view works best."),
];

const POINTS: [&str; 8] = [
    "start from the simplest option that could work",
    "measure before and after every change",
    "write down the assumptions you are making",
    "check the official documentation for edge cases",
    "prefer small, reversible steps",
    "try the idea on a small example first",
    "watch out for hidden dependencies",
    "revisit the decision once you have real data",
];

const CLOSERS: [&str; 3] = [
    "In summary, small careful steps win.",
    "Overall, the details depend on your situation.",
    "That should cover the essentials.",
];

/// One answer in one of four shapes, so that answers differ in structure as well as wording.
fn generate(rng: &mut Rng, topic: &str) -> String {
    let mut out = String::with_capacity(400);
    let (before, after) = LEADS[rng.below(LEADS.len())];
    let closer = CLOSERS[rng.below(CLOSERS.len())];
    let mut point = rng.points();
    match rng.below(4) {
        0 => {
            let _ = write!(out, "Short answer on \"{topic}\": {}.", point());
        }
        1 => {
            let _ = write!(out, "{before}{topic}{after}");
            for _ in 0..2 + rng.below(3) {
                out.push(' ');
                push_sentence(&mut out, point());
            }
            let _ = write!(out, " {closer}");
        }
        2 => {
            let _ = write!(out, "{before}{topic}{after}");
            for _ in 0..2 + rng.below(4) {
                out.push_str("\n- ");
                push_sentence(&mut out, point());
            }
        }
        _ => {
            let _ = writeln!(out, "## {topic}: a quick guide\n");
            for step in 1..=3 + rng.below(3) {
                let _ = write!(out, "{step}. ");
                push_sentence(&mut out, point());
                out.push('\n');
            }
            let _ = write!(out, "\n{closer}");
        }
    }
    out
}

fn json_answer(rng: &mut Rng, topic: &str) -> String {
    let answer = format!("For {topic}, {}.", rng.points()());
    let confidence = (50 + rng.below(46)) as f64 / 100.0;
    json!({"answer": answer, "confidence": confidence}).to_string()
}

/// Capitalises the first letter and adds a full stop; the bank phrases are lowercase ASCII.
fn push_sentence(out: &mut String, phrase: &str) {
    let mut chars = phrase.chars();
    out.extend(chars.next().map(|first| first.to_ascii_uppercase()));
    out.push_str(chars.as_str());
    out.push('.');
}

/// The first words of the question, so the answer visibly refers to it.
fn topic(question: &str) -> String {
    let words: Vec<&str> = question.split_whitespace().take(8).collect();
    let mut topic = words.join(" ");
    let cut = topic
        .char_indices()
        .nth(80)
        .map_or(topic.len(), |(at, _)| at);
    let punctuation = |c: char| c.is_ascii_punctuation();
    topic.truncate(topic[..cut].trim_end_matches(punctuation).len());
    if topic.is_empty() {
        return "your question".to_owned();
    }
    topic
}

fn contains_ignore_case(haystack: &str, needle: &[u8]) -> bool {
    let mut windows = haystack.as_bytes().windows(needle.len());
    windows.any(|window| window.eq_ignore_ascii_case(needle))
}

fn approx_tokens(text: &str) -> u64 {
    text.len().div_ceil(4).max(1) as u64
}

fn unix_now() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map_or(0, |elapsed| elapsed.as_secs())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let step = |hash: u64, &byte: &u8| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01B3);
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, step)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: tiny, fast and good enough to vary demo answers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn signed_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Yields bank points without repeats: an odd step visits all 8 points before any repeats.
    fn points(&mut self) -> impl FnMut() -> &'static str {
        let (mut at, step) = (self.below(POINTS.len()), 2 * self.below(4) + 1);
        move || {
            at = (at + step) % POINTS.len();
            POINTS[at]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::client::conn::http1::{handshake, SendRequest};

    /// Status, content type and body of a response.
    type Reply = (u16, HeaderValue, String);

    /// One keep-alive connection to a freshly started demo server.
    struct Client(SendRequest<Full<Bytes>>);

    impl Client {
        async fn start(latency: Duration) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, DemoOptions { latency, seed: 7 }));
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, connection) = handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(connection);
            Self(sender)
        }

        /// Returns the status, the content type and the body.
        async fn send(&mut self, method: Method, uri: &str, body: impl ToString) -> Reply {
            let request = Request::builder().method(method).uri(uri);
            let body = Full::from(body.to_string());
            let request = request.header(header::HOST, "demo").body(body).unwrap();
            // A kept-alive connection is only ready again once the last response is finished.
            self.0.ready().await.unwrap();
            let response = self.0.send_request(request).await.unwrap();
            let kind = response.headers()[header::CONTENT_TYPE].clone();
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, kind, String::from_utf8(bytes.to_vec()).unwrap())
        }

        async fn post(&mut self, uri: &str, body: Value) -> Value {
            let (status, _, body) = self.send(Method::POST, uri, body).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str(&body).unwrap()
        }

        async fn ask(&mut self, prompt: &str) -> String {
            let messages = json!([{"role": "user", "content": prompt}]);
            let request = json!({"model": "demo", "messages": messages});
            content(&self.post("/v1/chat/completions", request).await)
        }
    }

    fn content(response: &Value) -> String {
        let content = &response["choices"][0]["message"]["content"];
        content.as_str().unwrap().to_owned()
    }

    /// The JSON chunks of an SSE body, after checking that it ends with `[DONE]`.
    fn sse_chunks(body: &str) -> Vec<Value> {
        let mut events: Vec<&str> = body.split_terminator("\n\n").collect();
        assert_eq!(events.pop(), Some("data: [DONE]"));
        let data = events.iter().map(|e| e.strip_prefix("data: ").unwrap());
        data.map(|e| serde_json::from_str(e).unwrap()).collect()
    }

    fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
        let start = text.find(open).unwrap() + open.len();
        &text[start..start + text[start..].find(close).unwrap()]
    }

    const SHORT: &str = "Just use a cache.";
    const LIST: &str = "## Plan\n1. Measure the hot path.\n2. Add a cache.\n- Verify the results.";

    #[tokio::test]
    async fn answers_differ_and_look_like_openai() {
        let mut client = Client::start(Duration::ZERO).await;
        let question = json!([{"type": "text", "text": "How do I speed up my build?"}]);
        let request = json!({"model": "m1", "n": 3, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]});
        let first = client.post("/v1/chat/completions", request.clone()).await;
        let second = client.post("/chat/completions", request).await;
        assert_eq!(first["object"], "chat.completion");
        assert_eq!(first["model"], "m1");
        assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-demo-"));
        assert_ne!(first["id"], second["id"]);
        for index in 0..3 {
            assert_eq!(first["choices"][index]["index"], index);
            assert_eq!(first["choices"][index]["finish_reason"], "stop");
        }
        assert!(first["choices"][3].is_null());
        assert_ne!(content(&first), content(&second));
        assert!(content(&first).contains("speed up my build"));
        let usage = &first["usage"];
        let [prompt, completion] = ["prompt_tokens", "completion_tokens"].map(|k| &usage[k]);
        let sum = prompt.as_u64().unwrap() + completion.as_u64().unwrap();
        assert_eq!(usage["total_tokens"], sum);
    }

    #[tokio::test]
    async fn judge_picks_the_most_structured_candidate() {
        let mut client = Client::start(Duration::ZERO).await;
        let prose = "A longer paragraph of prose without any structure at all.";
        let mut prompt = "Pick one.\n".to_owned();
        for (id, text) in [(1, SHORT), (2, LIST), (3, prose)] {
            prompt += &format!("<candidate id=\"{id}\">\n{text}\n</candidate>\n");
        }
        let reply = client.ask(&(prompt + "Reply <best>K</best>.")).await;
        assert_eq!(between(&reply, "<best>", "</best>"), "2");
        assert_eq!(between(&reply, "<ranking>", "</ranking>"), "2,1,3");
    }

    #[tokio::test]
    async fn pairwise_and_pointwise_verdicts_parse() {
        let mut client = Client::start(Duration::ZERO).await;
        let pair = |a: &str, b: &str| {
            let blocks = format!("<candidate id=\"A\">{a}</candidate><candidate id=\"B\">{b}");
            format!("{blocks}</candidate> Reply <winner>A, B or tie</winner>")
        };
        let reply = client.ask(&pair(SHORT, LIST)).await;
        assert_eq!(between(&reply, "<winner>", "</winner>"), "B");
        let reply = client.ask(&pair(SHORT, SHORT)).await;
        assert_eq!(between(&reply, "<winner>", "</winner>"), "tie");
        let pointwise = "<candidate id=\"1\">\n- a\n- b\nReply <score>N</score>";
        let reply = client.ask(pointwise).await;
        assert_eq!(between(&reply, "<score>", "</score>"), "6");
    }

    #[test]
    fn candidate_parsing_is_robust() {
        let text = "<candidate id=\"\">x</candidate><candidate id=\"1\" >one<candidate id=\"2\">\
                    two</candidate><candidate id=\"1\">dup</candidate><candidate id=\"3";
        assert_eq!(parse_candidates(text), [("1", "one"), ("2", "two")]);
        assert!(judge_reply("no candidates here").is_none());
        assert_eq!(rubric(LIST), 12);
        assert_eq!(word_pieces(" a b  c\nd ", 2).concat(), " a b  c\nd ");
        assert_eq!(chunk_gap(Duration::ZERO), Duration::ZERO);
        assert_eq!(chunk_gap(Duration::from_secs(1)), MAX_CHUNK_GAP);
    }

    #[tokio::test]
    async fn stream_sends_role_content_finish_usage_and_done() {
        let mut client = Client::start(Duration::from_millis(30)).await;
        let request = json!({"model": "demo", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Explain caching"}]});
        let started = std::time::Instant::now();
        let (status, kind, body) = client
            .send(Method::POST, "/v1/chat/completions", request)
            .await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!((status, kind.to_str().unwrap()), (200, "text/event-stream"));
        let chunks = sse_chunks(&body);
        let (usage_chunk, chunks) = chunks.split_last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert!(usage_chunk["usage"]["total_tokens"].as_u64().unwrap() > 0);
        let first = json!({"role": "assistant", "content": ""});
        assert_eq!(chunks[0]["choices"][0]["delta"], first);
        let (finish, contents) = chunks[1..].split_last().unwrap();
        assert!(contents.len() >= 3);
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        for chunk in chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], usage_chunk["id"]);
            assert_eq!(chunk.get("usage"), Some(&Value::Null));
        }
        let text = contents
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].clone());
        let text = text.map(|content| content.as_str().unwrap().to_owned());
        assert!(text.collect::<String>().contains("Explain caching"));
    }

    #[tokio::test]
    async fn tools_and_json_mode() {
        let mut client = Client::start(Duration::ZERO).await;
        let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]);
        let messages = json!([{"role": "user", "content": "What's the WEATHER like?"}]);
        let mut request = json!({"model": "demo", "tools": tools, "messages": messages});
        let mut response = client.post("/v1/chat/completions", request.clone()).await;
        let choice = response["choices"][0].take();
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let function = &choice["message"]["tool_calls"][0]["function"];
        assert_eq!(function["name"], "lookup");
        assert_eq!(function["arguments"], TOOL_ARGUMENTS);
        request["stream"] = json!(true);
        let (_, _, body) = client
            .send(Method::POST, "/chat/completions", request)
            .await;
        let chunks = sse_chunks(&body);
        let arguments = chunks.iter().filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        });
        assert_eq!(arguments.collect::<String>(), TOOL_ARGUMENTS);
        let last = &chunks[chunks.len() - 1];
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        let format = json!({"type": "json_object"});
        let request = json!({"model": "demo", "response_format": format, "messages": messages});
        let response = client.post("/v1/chat/completions", request).await;
        let answer: Value = serde_json::from_str(&content(&response)).unwrap();
        assert!(answer["answer"].is_string() && answer["confidence"].is_f64());
    }

    #[tokio::test]
    async fn models_and_embeddings() {
        let mut client = Client::start(Duration::ZERO).await;
        let (status, _, body) = client.send(Method::GET, "/models", "").await;
        let models: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200);
        assert_eq!(models["data"][1]["id"], "demo-judge");
        let request = json!({"model": "e", "input": ["hello", "world"], "dimensions": 8});
        let many = client.post("/v1/embeddings", request).await;
        let tokens = json!({"input": [1, 2, 3]});
        let one = client.post("/embeddings", tokens).await;
        let vector = many["data"][0]["embedding"].as_array().unwrap();
        assert_eq!(vector.len(), 8);
        let norm: f64 = vector.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-3);
        assert_ne!(many["data"][0]["embedding"], many["data"][1]["embedding"]);
        assert_eq!(one["data"][0]["embedding"].as_array().unwrap().len(), 16);
        assert!(one["data"][1].is_null());
        assert!(many["usage"]["prompt_tokens"].as_u64().unwrap() >= 2);
    }

    #[tokio::test]
    async fn errors_use_the_openai_shape() {
        let mut client = Client::start(Duration::ZERO).await;
        let (status, kind, body) = client.send(Method::GET, "/v1/nope", "").await;
        assert_eq!((status, kind.to_str().unwrap()), (404, "application/json"));
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "not_found");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        let chat = "/v1/chat/completions";
        for (uri, body) in [(chat, "{not json"), (chat, "{}"), ("/v1/embeddings", "[]")] {
            let (status, _, body) = client.send(Method::POST, uri, body).await;
            let error: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(status, 400);
            assert!(error["error"]["message"].is_string() && error["error"]["param"].is_null());
        }
    }
}
