//! A small HTTP proxy on loopback, for the tests of outbound proxying (issue 17): what an
//! egress proxy does to the proxy's upstream calls.
//!
//! `CONNECT host:port` opens a tunnel (answered `200 Connection Established`, then bytes are
//! copied both ways); any other request is a forward-proxy request in absolute form, sent on
//! in origin form without the `Proxy-Authorization` header. Host names are looked up only in
//! the map the test gives (`upstream.test` → 127.0.0.1): the proxy binary cannot resolve
//! them, so a call that reached such a host went through here. [`Mode`] says whether the
//! proxy lets requests through, refuses them (403) or wants credentials (407 without them).
//! It records what it saw for the assertions. Dropping it stops it, tunnels included.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::prelude::{Engine as _, BASE64_STANDARD};
use bytes::Bytes;
use http::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How the proxy treats requests.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Lets every request through.
    Accept,
    /// Answers every request 403, as a proxy whose policy forbids the destination.
    Refuse,
    /// Answers 407 unless `Proxy-Authorization` is `Basic base64(user:password)`.
    RequireAuth { user: String, password: String },
}

impl Mode {
    pub fn require_auth(user: &str, password: &str) -> Mode {
        Mode::RequireAuth {
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// `Basic base64(user:password)`, the header value a client sends for these credentials.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        BASE64_STANDARD.encode(format!("{user}:{password}"))
    )
}

/// What the proxy saw.
#[derive(Default)]
struct Seen {
    /// `host:port` of each CONNECT.
    connects: Mutex<Vec<String>>,
    /// The request line of each forwarded request, as received (absolute form).
    forwarded: Mutex<Vec<String>>,
    /// Each request's `Proxy-Authorization` (CONNECT or forwarded), in arrival order.
    authorizations: Mutex<Vec<Option<String>>>,
}

struct Shared {
    mode: Mode,
    hosts: HashMap<String, IpAddr>,
    seen: Seen,
    /// Tunnels and forwarded connections, which outlive the request that opened them.
    tasks: Mutex<JoinSet<()>>,
}

/// Locks ignoring poisoning, so one panicking test thread does not cascade.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Where `uri`'s host is, from the test's map only.
    fn resolve(&self, uri: &Uri, default_port: u16) -> Option<SocketAddr> {
        let ip = self.hosts.get(&uri.host()?.to_ascii_lowercase())?;
        Some(SocketAddr::new(*ip, uri.port_u16().unwrap_or(default_port)))
    }

    /// The answer that stops `authorization`'s request here, if any.
    fn refusal(&self, authorization: Option<&str>) -> Option<Response<ProxyBody>> {
        match &self.mode {
            Mode::Accept => None,
            Mode::Refuse => Some(text(StatusCode::FORBIDDEN, "destination not allowed")),
            Mode::RequireAuth { user, password } => {
                if authorization == Some(basic(user, password).as_str()) {
                    return None;
                }
                let mut response = text(
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    "credentials wanted",
                );
                response.headers_mut().insert(
                    PROXY_AUTHENTICATE,
                    http::HeaderValue::from_static("Basic realm=\"test\""),
                );
                Some(response)
            }
        }
    }
}

/// The running proxy; stopped when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
        lock(&self.shared.tasks).abort_all();
    }
}

impl ConnectProxy {
    /// Starts on `127.0.0.1:0`, resolving only the names of `hosts`.
    pub async fn start(mode: Mode, hosts: &[(&str, IpAddr)]) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("test proxy: local_addr");
        let shared = Arc::new(Shared {
            mode,
            hosts: hosts
                .iter()
                .map(|(name, ip)| (name.to_ascii_lowercase(), *ip))
                .collect(),
            seen: Seen::default(),
            tasks: Mutex::new(JoinSet::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        ConnectProxy {
            addr,
            shared,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:password@127.0.0.1:PORT`.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.addr)
    }

    /// `host:port` of every CONNECT so far.
    pub fn connects(&self) -> Vec<String> {
        lock(&self.shared.seen.connects).clone()
    }

    /// The request line of every forwarded request so far, as it arrived.
    pub fn forwarded(&self) -> Vec<String> {
        lock(&self.shared.seen.forwarded).clone()
    }

    /// Every request's `Proxy-Authorization`, CONNECT or forwarded.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        lock(&self.shared.seen.authorizations).clone()
    }

    /// Requests of any kind so far.
    pub fn requests(&self) -> usize {
        self.authorizations().len()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned by this task: aborting it drops the set, which aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        let shared = shared.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let authorization = req
        .headers()
        .get(PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    lock(&shared.seen.authorizations).push(authorization.clone());
    let connect = req.method() == Method::CONNECT;
    if connect {
        let target = req.uri().authority().map(|a| a.to_string());
        lock(&shared.seen.connects).push(target.unwrap_or_default());
    } else {
        let line = format!("{} {} {:?}", req.method(), req.uri(), req.version());
        lock(&shared.seen.forwarded).push(line);
    }
    if let Some(refusal) = shared.refusal(authorization.as_deref()) {
        return Ok(refusal);
    }
    let Some(target) = shared.resolve(req.uri(), if connect { 443 } else { 80 }) else {
        return Ok(text(StatusCode::BAD_GATEWAY, "cannot resolve the host"));
    };
    Ok(if connect {
        tunnel(&shared, req, target).await
    } else {
        forward(&shared, req, target).await
    })
}

/// Connects to `target`, answers 200 and, once hyper hands over the connection, copies bytes
/// both ways until either side closes.
async fn tunnel(
    shared: &Shared,
    req: Request<Incoming>,
    target: SocketAddr,
) -> Response<ProxyBody> {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return text(StatusCode::BAD_GATEWAY, "cannot connect to the host");
    };
    shared.spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    let mut response = text(StatusCode::OK, "");
    response
        .extensions_mut()
        .insert(ReasonPhrase::from_static(b"Connection Established"));
    response
}

/// Sends `req` on to `target` in origin form, without the proxy's own header, and relays the
/// answer as it streams.
async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
    target: SocketAddr,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(PROXY_AUTHORIZATION);
    let origin_form = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = origin_form
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let Ok(stream) = TcpStream::connect(target).await else {
        return text(StatusCode::BAD_GATEWAY, "cannot connect to the host");
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return text(StatusCode::BAD_GATEWAY, "no HTTP from the host");
    };
    shared.spawn(async move {
        let _ = conn.await;
    });
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => text(StatusCode::BAD_GATEWAY, "the host did not answer"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
