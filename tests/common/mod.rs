//! Shared test harness: starts the real proxy server in-process on a loopback port, pointed at
//! a mock upstream, and sends it raw HTTP requests.
#![allow(dead_code)]

pub mod connect_proxy;
pub mod llmock;
pub mod metrics;
pub mod mock;
pub mod python;
pub mod redis_server;
pub mod served;
pub mod tls_upstream;
pub mod ui;

use std::net::SocketAddr;

use bon_proxy::upstream::ApiKey;
use bon_proxy::{Config, Secrets, Server};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use mock::MockUpstream;

/// The upstream key the tests configure; it must never come back to a client.
pub const UPSTREAM_KEY: &str = "sk-test-UPSTREAM-SECRET-0123456789";

/// A running proxy; stopped when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Proxy {
    /// Another handle on the same running proxy, for a spawned task; it does not stop it.
    pub fn handle(&self) -> Proxy {
        Proxy {
            addr: self.addr,
            stop: None,
        }
    }

    /// A handle on a proxy running elsewhere (a process the test started), not stopped by it.
    pub fn at(addr: SocketAddr) -> Proxy {
        Proxy { addr, stop: None }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A loopback port nothing listens on right now (the OS's pick, released at once), for a server
/// the test starts as a process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A config that sends every upstream call to `mock`, with short test timings.
pub fn config_for(mock: &MockUpstream) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.upstream.base_url = mock.base_url();
    config.upstream.max_retries = 0;
    config
}

pub async fn start_proxy(config: Config) -> Proxy {
    let secrets = Secrets {
        upstream_key: Some(ApiKey::new(UPSTREAM_KEY)),
        ..Default::default()
    };
    start_proxy_with(config, secrets).await
}

pub async fn start_proxy_with(config: Config, secrets: Secrets) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let server = Server::with_listener(listener, config, secrets).expect("build proxy");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Proxy {
        addr,
        stop: Some(stop),
    }
}

/// A complete HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a 200, showing the body when it is not.
    pub fn expect_ok(&self) {
        assert_eq!(
            self.status.as_u16(),
            200,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
    }

    /// Asserts an OpenAI-shaped error with `status`, returning the error object.
    pub fn expect_error(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        let error = body["error"].clone();
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(error["type"].is_string(), "{body}");
        assert!(error.get("param").is_some(), "{body}");
        assert!(error.get("code").is_some(), "{body}");
        error
    }

    /// The JSON events of an SSE body, `[DONE]` left out.
    pub fn sse_chunks(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter(|event| *event != "[DONE]")
            .map(|event| serde_json::from_str(event).expect("each SSE event is JSON"))
            .collect()
    }

    /// The text of an SSE chat stream: every chunk's `delta.content`, joined.
    pub fn streamed_content(&self) -> String {
        self.sse_chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    pub fn content(&self) -> String {
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(request: Request<Full<Bytes>>) -> Answer {
    let response = client()
        .request(request)
        .await
        .expect("request to the proxy");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POSTs `body` to the proxy's chat completions with `headers`.
pub async fn post_chat(proxy: &Proxy, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    post_to(proxy, "/v1/chat/completions", headers, body).await
}

/// POSTs a JSON `body` to `path` on the proxy with `headers`.
pub async fn post_to(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(proxy.url(path))
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(Full::new(body.into())).expect("request")).await
}

/// A chat request asking for an SSE stream.
pub fn streaming_chat_body(question: &str) -> String {
    serde_json::json!({
        "model": "gpt-test",
        "stream": true,
        "messages": [{"role": "user", "content": question}],
    })
    .to_string()
}

pub fn chat_body(question: &str) -> String {
    serde_json::json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": question}],
    })
    .to_string()
}
