//! An upstream endpoint (the upstream, or a judge's or the fuser's own): URL mapping, auth,
//! header hygiene, timeouts and retries. Its pooled hyper client is one of `clients` (one per
//! way of reaching an endpoint); the roots its TLS trusts are in `tls`; whether its calls go
//! through an outbound HTTP proxy is decided in `route` and done by `connector`.
//!
//! Two kinds of call go through here. Passthrough hands over a streaming request and gets the
//! streaming response back as soon as its head arrives, so bodies are never buffered. Candidate
//! and judge calls are small JSON POSTs whose whole answer is needed; they get a deadline for
//! the complete body and are retried on transient failures.

mod chain;
mod clients;
mod connector;
mod route;
mod tls;

use std::sync::Arc;

use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::{Body, SharedJson};
use crate::config::UpstreamConfig;
use crate::error::ApiError;
use crate::redact::{redact_url, Redactor};

pub use clients::HttpsClient;
pub(crate) use clients::{ClientSetupError, Clients, RoutedClient};

/// An API key. Its `Debug` never shows the value, so it cannot reach a log line by accident.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads the key from the environment variable `name`; an empty value counts as unset.
    pub fn from_env(name: &str) -> Option<ApiKey> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| ApiKey(v.trim().to_string()))
    }

    pub fn new(value: impl Into<String>) -> ApiKey {
        ApiKey(value.into())
    }

    /// The key itself; only for teaching the [`Redactor`] what to hide.
    pub fn secret(&self) -> &str {
        &self.0
    }

    fn bearer(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey(***, {} chars)", self.0.len())
    }
}

/// Why an upstream call produced no HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamError {
    /// No complete answer within the deadline.
    Timeout(Duration),
    /// Could not connect, or the connection broke before the response head.
    Unreachable(String),
    /// The outbound proxy refused the call (407, or a refused CONNECT): asking again would
    /// only be refused again, and may lock the account out.
    ProxyRefused(String),
    /// The answer began but did not complete (or exceeded the size bound).
    Interrupted(String),
    /// The client's own request body failed while it was being sent on (too slow, too large).
    ClientBody(ApiError),
    /// `upstream.max_connections` calls were in flight for all of `max_connections_wait`.
    Overloaded { max: usize, waited: Duration },
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Timeout(d) => write!(f, "no answer within {d:?}"),
            UpstreamError::Unreachable(why) => write!(f, "unreachable: {why}"),
            UpstreamError::ProxyRefused(why) => write!(f, "refused by the proxy: {why}"),
            UpstreamError::Interrupted(why) => write!(f, "interrupted: {why}"),
            UpstreamError::ClientBody(error) => write!(f, "client body failed: {error}"),
            UpstreamError::Overloaded { max, waited } => {
                write!(f, "overloaded: {max} calls in flight for {waited:?}")
            }
        }
    }
}

impl UpstreamError {
    /// The error as the client hears it: 504 for a timeout, 502 otherwise.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            UpstreamError::Timeout(d) => ApiError::gateway_timeout(format!(
                "The upstream did not answer within {d:?} (upstream.timeout)."
            )),
            UpstreamError::Unreachable(why) | UpstreamError::ProxyRefused(why) => {
                ApiError::bad_gateway(
                    "upstream_unreachable",
                    format!("The upstream could not be reached: {why}."),
                )
            }
            UpstreamError::Interrupted(why) => ApiError::bad_gateway(
                "upstream_interrupted",
                format!("The upstream's answer broke off: {why}."),
            ),
            UpstreamError::ClientBody(error) => error.clone(),
            UpstreamError::Overloaded { max, waited } => ApiError::overloaded(format!(
                "{max} calls to the upstream were in flight for {waited:?} (upstream.max_connections, \
                 upstream.max_connections_wait); retry shortly."
            )),
        }
    }
}

impl UpstreamError {
    /// The `status` label of a call that got no answer.
    pub fn metric_label(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Overloaded { .. } => "overloaded",
            _ => "error",
        }
    }
}

/// The `status` label of a JSON call: the HTTP status, or `timeout` / `error`.
pub fn call_status(result: &Result<JsonReply, UpstreamError>) -> String {
    match result {
        Ok(reply) => reply.status.as_str().to_string(),
        Err(error) => error.metric_label().to_string(),
    }
}

/// The start of an upstream body, for error messages: enough to see what went wrong.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A complete upstream answer to a JSON call.
#[derive(Debug, Clone)]
pub struct JsonReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One upstream endpoint: where to send, which key to use, how patient to be.
#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    /// The config table of this endpoint's keys, named in the advice of its 502s.
    table: Arc<str>,
    base: BaseUrl,
    key: Option<ApiKey>,
    forward_client_auth: bool,
    timeout: Duration,
    max_retries: u32,
    /// Hides every configured key in upstream error text before anyone copies it.
    redactor: Redactor,
    /// Places for calls in flight (`upstream.max_connections`), shared by every clone.
    places: Option<Arc<Semaphore>>,
    max_connections: usize,
    place_wait: Duration,
    /// Added to every request when the route is a forward proxy that wants credentials.
    proxy_authorization: Option<HeaderValue>,
    /// The route is a forward proxy: a 407 is the proxy's answer, not the upstream's.
    forward_proxy: bool,
    /// Calls go out as h2c (`http2_only` to an `http://` endpoint), which an HTTP/1.1 server
    /// answers by closing the connection: nothing in the error says why.
    h2c: bool,
}

/// A call's place under `upstream.max_connections`, held until its answer has been read (a
/// forwarded answer: until its body has been sent on); nothing when there is no bound.
pub struct CallPlace {
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base.redacted)
            .field("key", &self.key)
            .finish()
    }
}

/// The client of the OTLP exporter for its collector at `endpoint`: `[upstream]`'s CA file and
/// roots, no client certificate, and the environment's proxy only. A collector is usually
/// beside the proxy, not behind the egress proxy an upstream may need; `NO_PROXY` and the
/// loopback rule apply as for any endpoint.
pub(crate) fn collector_client(
    config: &UpstreamConfig,
    endpoint: &str,
) -> Result<RoutedClient, ClientSetupError> {
    let mut transport = crate::config::TransportKeys::default().over(&config.transport());
    transport.proxy_url.clear();
    Clients::new(config).client(&transport, "upstream", endpoint)
}

impl Upstream {
    /// The endpoint at `base_url`, reached through `routed`, whose keys live in the config
    /// table `table` (`upstream`, `judges.rm`, `fuser`): the table its 502s name.
    pub(crate) fn new(
        routed: RoutedClient,
        table: &str,
        base_url: &str,
        key: Option<ApiKey>,
        config: &UpstreamConfig,
        redactor: Redactor,
    ) -> Result<Upstream, String> {
        let base = BaseUrl::parse(base_url)?;
        Ok(Upstream {
            h2c: routed.http2_only && base.scheme == http::uri::Scheme::HTTP,
            client: routed.client,
            proxy_authorization: routed.route.proxy_authorization().cloned(),
            forward_proxy: routed.route.is_forward(),
            table: table.into(),
            base,
            key,
            forward_client_auth: config.forward_client_auth,
            timeout: config.timeout,
            max_retries: config.max_retries,
            redactor,
            places: (config.max_connections > 0)
                .then(|| Arc::new(Semaphore::new(config.max_connections))),
            max_connections: config.max_connections,
            place_wait: config.max_connections_wait,
        })
    }

    /// A place for one call, waiting at most `upstream.max_connections_wait` for it: past the
    /// bound calls wait briefly, never in an unbounded queue.
    async fn place(&self) -> Result<CallPlace, UpstreamError> {
        let Some(places) = &self.places else {
            return Ok(CallPlace { _permit: None });
        };
        let waiting = places.clone().acquire_owned();
        match tokio::time::timeout(self.place_wait, waiting).await {
            Ok(Ok(permit)) => Ok(CallPlace {
                _permit: Some(permit),
            }),
            _ => Err(UpstreamError::Overloaded {
                max: self.max_connections,
                waited: self.place_wait,
            }),
        }
    }

    /// The error of a call that got no answer: refused by the proxy, or unreachable.
    fn unreachable(&self, error: &hyper_util::client::legacy::Error) -> UpstreamError {
        let mut text = describe(error, &self.table);
        if self.h2c && !error.is_connect() {
            text.push_str(&format!(
                ". The upstream closed the connection before answering: if it does not speak \
                 HTTP/2 without TLS (h2c), remove `{}.http2_only`",
                self.table
            ));
        }
        if connector::is_refusal(error) {
            UpstreamError::ProxyRefused(text)
        } else {
            UpstreamError::Unreachable(text)
        }
    }

    /// A 407 through a forward proxy is the proxy asking for credentials: a 502 saying where
    /// they go, not an answer of the upstream's to pass on.
    fn check_proxy_answer(&self, status: StatusCode) -> Result<(), UpstreamError> {
        if self.forward_proxy && status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            let advice = connector::forward_proxy_wants_credentials(&self.table);
            return Err(UpstreamError::ProxyRefused(format!(
                "the outbound proxy answered 407 Proxy Authentication Required. {advice}"
            )));
        }
        Ok(())
    }

    /// True when there is a secret that upstream text could leak.
    pub fn has_secrets(&self) -> bool {
        self.redactor.is_active()
    }

    /// Upstream text with every configured key hidden, for messages, debug objects and logs.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text).into_owned()
    }

    pub fn redact_bytes(&self, bytes: Bytes) -> Bytes {
        self.redactor.redact_bytes(bytes)
    }

    /// The base URL with any password hidden, for logs and error messages.
    pub fn redacted_base_url(&self) -> &str {
        &self.base.redacted
    }

    /// Sends a streaming request and returns as soon as the response head arrives.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        client_headers: &HeaderMap,
        body: Body,
    ) -> Result<(Response<Incoming>, CallPlace), UpstreamError> {
        let place = self.place().await?;
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = self.base.join(path_and_query)?;
        *request.headers_mut() = self.outgoing_headers(client_headers);
        let sent = self.client.request(request);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(response)) => {
                self.check_proxy_answer(response.status())?;
                Ok((response, place))
            }
            Ok(Err(e)) => Err(client_body_error(&e).unwrap_or_else(|| self.unreachable(&e))),
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        }
    }

    /// POSTs a JSON body and reads the whole answer, within `deadline` in all, retrying
    /// connection errors, 429 and 5xx answers up to `upstream.max_retries` times.
    pub async fn post_json(
        &self,
        path: &str,
        client_headers: &HeaderMap,
        json: SharedJson,
        deadline: Duration,
    ) -> Result<JsonReply, UpstreamError> {
        let now = Instant::now();
        let give_up_at = now.checked_add(deadline).unwrap_or(now + MAX_DEADLINE);
        let mut attempt = 0;
        loop {
            let remaining = give_up_at.saturating_duration_since(Instant::now());
            let outcome = tokio::time::timeout(
                remaining,
                self.post_json_once(path, client_headers, json.clone()),
            )
            .await
            .unwrap_or(Err(UpstreamError::Timeout(deadline)));
            let retryable = match &outcome {
                Ok(reply) => is_retryable_status(reply.status),
                Err(UpstreamError::Unreachable(_)) => true,
                Err(UpstreamError::ProxyRefused(_)) => false,
                // The upstream may have done (and billed) the work: do not ask twice.
                Err(UpstreamError::Interrupted(_)) | Err(UpstreamError::Timeout(_)) => false,
                Err(UpstreamError::ClientBody(_)) => false,
                // It already waited its turn: asking again would only queue longer.
                Err(UpstreamError::Overloaded { .. }) => false,
            };
            // Full jitter: N candidates rate-limited together must not retry in lockstep.
            let ceiling = 100u64 << attempt.min(6);
            let mut backoff = Duration::from_millis(rand::random_range(ceiling / 2..=ceiling));
            if let Ok(reply) = &outcome {
                backoff = backoff.max(retry_after(&reply.headers).unwrap_or_default());
            }
            let too_late = backoff >= give_up_at.saturating_duration_since(Instant::now());
            if !retryable || attempt >= self.max_retries || too_late {
                crate::telemetry::record_retries(attempt);
                return outcome;
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
        }
    }

    async fn post_json_once(
        &self,
        path: &str,
        client_headers: &HeaderMap,
        json: SharedJson,
    ) -> Result<JsonReply, UpstreamError> {
        // Held until the whole answer is read.
        let _place = self.place().await?;
        let mut request = Request::new(json.into_body());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.base.join(path)?;
        let mut headers = self.outgoing_headers(client_headers);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The proxy must read this body, so it must not arrive compressed.
        headers.remove(header::ACCEPT_ENCODING);
        headers.remove(header::CONTENT_LENGTH);
        *request.headers_mut() = headers;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.check_proxy_answer(response.status())?;
        let (parts, incoming) = response.into_parts();
        let body = Limited::new(incoming, MAX_JSON_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| UpstreamError::Interrupted(format!("answer cut short: {e}")))?
            .to_bytes();
        // Error answers are what gets quoted in messages, debug objects and logs.
        let body = if parts.status.is_success() {
            body
        } else {
            self.redactor.redact_bytes(body)
        };
        Ok(JsonReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The client's end-to-end headers, minus what must not travel on, plus auth.
    fn outgoing_headers(&self, client_headers: &HeaderMap) -> HeaderMap {
        let mut headers = end_to_end_headers(client_headers);
        headers.remove(header::HOST);
        let keep_client_auth =
            self.forward_client_auth && headers.contains_key(header::AUTHORIZATION);
        if !keep_client_auth {
            headers.remove(header::AUTHORIZATION);
            if let Some(value) = self.key.as_ref().and_then(ApiKey::bearer) {
                headers.insert(header::AUTHORIZATION, value);
                // An error answer that quotes the proxy's key must arrive readable, so the key
                // can be hidden before the client sees it (see `redact`).
                headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
            }
        }
        // The client's own was dropped above, as hop-by-hop: this one is for our proxy.
        if let Some(value) = &self.proxy_authorization {
            headers.insert(header::PROXY_AUTHORIZATION, value.clone());
        }
        // With tracing on, the upstream's spans join the trace: the current span (this
        // call's) becomes the parent in `traceparent`.
        crate::telemetry::inject(&mut headers);
        headers
    }
}

/// Largest candidate or judge answer read into memory: far above any real completion, low
/// enough that a misbehaving upstream cannot exhaust memory.
const MAX_JSON_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Bound for deadlines too large to add to `Instant::now()`.
const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a rate-limited upstream asks to wait: `retry-after-ms` first, as OpenAI and the
/// official SDKs read it (it is the precise one: `Retry-After` holds whole seconds, so a
/// 200 ms wait arrives there as 1 s), else `Retry-After` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    let seconds = number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number(header::RETRY_AFTER.as_str()))?;
    Some(Duration::from_secs_f64(seconds.min(600.0)))
}

fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || matches!(status.as_u16(), 500 | 502 | 503 | 504 | 529)
}

/// A request that failed because the client's own body did (too slow, too large), rather
/// than an upstream fault.
fn client_body_error(err: &hyper_util::client::legacy::Error) -> Option<UpstreamError> {
    crate::intake::client_fault(err).map(UpstreamError::ClientBody)
}

/// A hyper-util client error with its cause chain, which holds the useful part
/// ("connection refused", "dns error"), and what to change when a setting can fix it;
/// `table` is the endpoint's config table.
fn describe(err: &hyper_util::client::legacy::Error, table: &str) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(advice) = tls::advice(err, table) {
        text.push_str(". ");
        text.push_str(&advice);
    }
    if let Some(advice) = connector::advice(err, table) {
        text.push_str(". ");
        text.push_str(&advice);
    }
    text
}

/// Headers defined as hop-by-hop (RFC 9110 §7.6.1), which a proxy must not forward.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Copies `headers` without hop-by-hop headers (including those the `Connection` header
/// names) and without the proxy's own `x-best-of-n*` controls.
pub fn end_to_end_headers(headers: &HeaderMap) -> HeaderMap {
    copy_end_to_end(headers, &named_by_connection(headers))
}

/// Drops hop-by-hop headers from an upstream response before it goes to the client.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named_by_connection = named_by_connection(headers);
    // Most answers have none: then the map is left as it is rather than rebuilt.
    if headers
        .keys()
        .all(|name| is_end_to_end(name, &named_by_connection))
    {
        return;
    }
    *headers = copy_end_to_end(headers, &named_by_connection);
}

/// The headers of `headers` that [`is_end_to_end`] keeps.
fn copy_end_to_end(headers: &HeaderMap, named_by_connection: &[String]) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_end_to_end(name, named_by_connection) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The header names a `Connection` header lists, lowercased.
fn named_by_connection(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

fn is_end_to_end(name: &HeaderName, named_by_connection: &[String]) -> bool {
    let name = name.as_str();
    !(HOP_BY_HOP.contains(&name)
        || name.starts_with("x-best-of-n")
        || named_by_connection.iter().any(|n| n == name))
}

/// The parsed `upstream.base_url`.
#[derive(Clone, Debug)]
struct BaseUrl {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Path prefix without a trailing slash, e.g. `/v1`.
    prefix: String,
    redacted: String,
}

impl BaseUrl {
    fn parse(url: &str) -> Result<BaseUrl, String> {
        let bad = || format!("`{}` is not a usable base URL", redact_url(url));
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let parts = uri.into_parts();
        Ok(BaseUrl {
            scheme: parts.scheme.ok_or_else(bad)?,
            authority: parts.authority.ok_or_else(bad)?,
            prefix: parts
                .path_and_query
                .map(|p| p.path().trim_end_matches('/').to_string())
                .unwrap_or_default(),
            redacted: redact_url(url),
        })
    }

    /// Maps a client path onto the base URL: `/v1/x?q` and `/x?q` both become `{prefix}/x?q`,
    /// so SDKs configured with or without `/v1` in their base URL both work.
    fn join(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let rest = match path_and_query.strip_prefix("/v1") {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
            _ => path_and_query,
        };
        let path = format!("{}{}", self.prefix, rest);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(if path.is_empty() { "/" } else { &path })
            .build()
            .map_err(|e| UpstreamError::Unreachable(format!("cannot build upstream URL: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_maps_v1_paths_onto_the_base_prefix() {
        let base = BaseUrl::parse("https://api.example.com/openai/v1/").unwrap();
        let join = |p: &str| base.join(p).unwrap().to_string();
        assert_eq!(
            join("/v1/models"),
            "https://api.example.com/openai/v1/models"
        );
        assert_eq!(
            join("/models?x=1"),
            "https://api.example.com/openai/v1/models?x=1"
        );
        assert_eq!(join("/v1?x=1"), "https://api.example.com/openai/v1?x=1");
        assert_eq!(join("/v10/a"), "https://api.example.com/openai/v1/v10/a");
    }

    #[test]
    fn hop_by_hop_and_control_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-best-of-n", HeaderValue::from_static("3"));
        headers.insert("openai-organization", HeaderValue::from_static("org"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let out = end_to_end_headers(&headers);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("openai-organization"));
    }

    #[test]
    fn retry_after_ms_is_read_before_whole_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("1"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(1)));
        headers.insert("retry-after-ms", HeaderValue::from_static("200"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(200)));
        headers.insert("retry-after-ms", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(1)));
        headers.remove("retry-after");
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn api_key_debug_is_masked() {
        let key = ApiKey::new("sk-very-secret");
        assert!(!format!("{key:?}").contains("secret"));
    }
}
