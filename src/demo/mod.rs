//! Built-in demo upstream: a small in-process OpenAI-compatible server, over HTTP/1.1 or
//! HTTP/2 without TLS (h2c with prior knowledge, as a proxy with `upstream.http2_only` speaks).
//!
//! It lets `bon-proxy serve --demo` work without network or API key, and is the cheap,
//! predictable upstream of the benchmarks: hence no regex, no logging and few allocations per
//! request. Routes (also without `/v1`): `GET /v1/models`, `POST /v1/embeddings`,
//! `POST /v1/chat/completions` (plain or SSE, with `n` and `stream_options.include_usage`), and
//! for `reward_model` judges `POST /rerank` (TEI's or Cohere's shape) and `POST /pooling`
//! (vLLM's), scored by the judge rubric below (see `rerank.rs`).
//! Anything else is a 404 and bad JSON a 400, both in OpenAI's error shape. Token counts are
//! approximate: a quarter of the text's bytes, at least 1.
//!
//! **Ordinary answers** come from small phrase banks, picked by a splitmix64 generator seeded
//! with [`DemoOptions::seed`], a hash of the prompt, a per-server request counter and the choice
//! index: they differ from call to call, yet a run is reproducible. Their shape varies on purpose
//! (one line, paragraph, bullet list, numbered list with heading and summary) so that a judge has
//! a real choice. With `tools`, a last user message mentioning "weather" gets a call to the first
//! tool, its arguments naming the place the question asks about (see `tools.rs`); a `json_object` or `json_schema` response format gets a small JSON object. A question
//! holding `a op b` (whole numbers; `+`, `-`, `*`, `x`, `×`) gets a numeric answer instead: right
//! three times in five, in one of four spellings (`1,000`, `Final answer: 1000`, `\boxed{}`,
//! bold), so `consensus` has answers to agree on. With `"logprobs": true`, plain (not streamed)
//! answers carry `logprobs.content`: one token per word, log-probabilities drawn around a
//! per-answer confidence from the seed and the text, so `logprob` has something to compare.
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

mod chat;
mod completions;
mod embeddings;
mod generate;
mod judge;
mod rerank;
mod responses;
mod sse;
mod tools;
mod wire;

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::{net::TcpListener, task::JoinSet};

pub use chat::DemoOptions;
use chat::{chat, State};
use embeddings::{embeddings, models};
use wire::*;

/// Streams one HTTP/2 connection may carry at once. hyper's default (200) would queue a
/// benchmark's thousands of held streams or a best-of-16 fan-out at scale behind each other;
/// the demo answers them all at once, as it does over one HTTP/1.1 connection each.
const MAX_CONCURRENT_STREAMS: u32 = 1 << 16;

/// Serves the demo upstream on `listener` until the task is dropped/aborted. Each connection on
/// its own task, keep-alive on.
///
/// Accept errors (such as running out of file descriptors) are transient, so they are retried
/// after a short pause rather than returned. Connections belong to this future: dropping it
/// closes them too (an HTTP/2 stream's handler runs on a task of its own, and finishes its
/// sleep before it finds its connection gone).
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
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().keep_alive(true);
            builder
                .http2()
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
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
        (&Method::POST, "/embeddings" | "/chat/completions" | "/rerank" | "/pooling") => {
            match read_json(body).await {
                Ok(request) => match route {
                    "/embeddings" => embeddings(&request),
                    "/rerank" => rerank::rerank(&request),
                    "/pooling" => rerank::pooling(&request),
                    _ => chat(&state, &request).await,
                },
                Err(response) => response,
            }
        }
        (&Method::POST, "/responses" | "/completions") => match read_json(body).await {
            Ok(request) if route == "/responses" => responses::responses(&state, &request).await,
            Ok(request) => completions::completions(&state, &request).await,
            Err(response) => response,
        },
        (method, _) => {
            let message = format!("Unknown request URL: {method} {path}.");
            error_response(StatusCode::NOT_FOUND, &message, Some("not_found"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::chat::*;
    use super::generate::*;
    use super::judge::*;
    use super::sse::*;
    use super::*;
    use bytes::Bytes;
    use http::{header, HeaderValue};
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1::{handshake, SendRequest};
    use serde_json::{json, Value};

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
        assert_eq!(
            between(&reply, "<score>", "</score>"),
            "5.0",
            "10 x 6 / (6 + 6)"
        );
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
        let messages = json!([{"role": "user", "content": "What's the WEATHER like in Tokyo?"}]);
        let mut request = json!({"model": "demo", "tools": tools, "messages": messages});
        let mut response = client.post("/v1/chat/completions", request.clone()).await;
        let choice = response["choices"][0].take();
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let function = &choice["message"]["tool_calls"][0]["function"];
        assert_eq!(function["name"], "lookup");
        assert_eq!(function["arguments"], r#"{"location":"Tokyo"}"#);
        request["stream"] = json!(true);
        let (_, _, body) = client
            .send(Method::POST, "/chat/completions", request)
            .await;
        let chunks = sse_chunks(&body);
        let arguments = chunks.iter().filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        });
        assert_eq!(arguments.collect::<String>(), r#"{"location":"Tokyo"}"#);
        let last = &chunks[chunks.len() - 1];
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        let format = json!({"type": "json_object"});
        let request = json!({"model": "demo", "response_format": format, "messages": messages});
        let response = client.post("/v1/chat/completions", request).await;
        let answer: Value = serde_json::from_str(&content(&response)).unwrap();
        assert!(answer["answer"].is_string() && answer["confidence"].is_f64());
    }

    #[tokio::test]
    async fn math_questions_get_numbers_that_agree_and_logprobs_come_when_asked() {
        use crate::judge::consensus::extract;
        let mut client = Client::start(Duration::ZERO).await;
        let messages = json!([{"role": "user", "content": "What is 25 × 40?"}]);
        let request = json!({"model": "demo", "n": 5, "messages": messages, "logprobs": true});
        let response = client.post("/v1/chat/completions", request).await;
        let choices = response["choices"].as_array().unwrap();
        let keys: Vec<String> = choices
            .iter()
            .map(|c| extract(c["message"]["content"].as_str().unwrap(), false).key)
            .collect();
        assert!(
            keys.iter().filter(|k| *k == "1000").count() >= 2,
            "{keys:?}"
        );
        for choice in choices {
            let tokens = choice["logprobs"]["content"].as_array().unwrap();
            let text: String = tokens
                .iter()
                .map(|t| t["token"].as_str().unwrap())
                .collect();
            assert_eq!(text, choice["message"]["content"].as_str().unwrap());
            assert!(tokens.iter().all(|t| t["logprob"].as_f64().unwrap() <= 0.0));
        }
        assert_eq!(
            token_logprobs("same text", 7),
            token_logprobs("same text", 7)
        );
        assert_ne!(
            token_logprobs("same text", 7),
            token_logprobs("same text", 8)
        );
        let plain = json!({"model": "demo", "messages": messages});
        let response = client.post("/v1/chat/completions", plain).await;
        assert!(response["choices"][0]["logprobs"].is_null());
        assert!(arithmetic("no numbers, or 12 alone").is_none());
        assert!(arithmetic("2024-05-01 minus 3").is_some_and(|s| s.result == 2019));
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
    async fn reward_model_formats_score_by_the_rubric() {
        let mut client = Client::start(Duration::ZERO).await;
        let texts = json!([SHORT, LIST]);
        let tei = json!({"query": "user: plan?", "texts": texts, "raw_scores": true});
        let ranks = client.post("/rerank", tei).await;
        assert_eq!(ranks[0]["index"], 1, "{ranks}");
        assert_eq!(ranks[0]["score"], 2.0, "12 points: 12 / 3 - 2");
        assert_eq!(ranks[1]["index"], 0);
        let normalised = json!({"query": "q", "texts": texts});
        let ranks = client.post("/v1/rerank", normalised).await;
        assert!(ranks[0]["score"].as_f64().unwrap() < 1.0);
        let documents = json!([{"text": SHORT}, LIST]);
        let cohere = json!({"model": "rr", "query": "q", "documents": documents});
        let answer = client.post("/v1/rerank", cohere).await;
        assert_eq!(answer["results"][0]["index"], 1, "{answer}");
        let relevance = answer["results"][0]["relevance_score"].as_f64().unwrap();
        assert!((relevance - rerank::logistic(2.0)).abs() < 1e-12);
        let messages = json!([{"role": "user", "content": "plan?"},
            {"role": "assistant", "content": LIST}]);
        let pooled = client
            .post("/pooling", json!({"model": "rm", "messages": messages}))
            .await;
        assert_eq!(pooled["data"][0]["data"], json!([2.0]), "{pooled}");
        assert_eq!(pooled["model"], "rm");
        assert!(pooled["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        for (uri, body) in [
            ("/rerank", json!({"query": "q"})),
            ("/rerank", json!({"query": "q", "texts": []})),
            ("/pooling", json!({"model": "rm"})),
        ] {
            let (status, _, _) = client.send(Method::POST, uri, body).await;
            assert_eq!(status, 400, "{uri}");
        }
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
