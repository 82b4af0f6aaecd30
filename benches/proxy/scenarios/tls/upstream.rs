//! The `tls` scenario's own upstream, in the bench process: a throwaway CA and a server
//! certificate for `127.0.0.1` (rcgen), and one hyper server per variant (plaintext HTTP/1.1,
//! TLS offering only http/1.1, TLS offering only h2) answering `POST …/chat/completions` at
//! once with a fixed small completion, or, for a judge call, a fixed `<best>1</best>` verdict
//! the listwise judge reads, as the demo's judge answers do.
//!
//! Each server counts TCP connections accepted, TLS handshakes completed (and how many of them
//! resumed a session), requests by HTTP version, and the connections that carried at least one
//! request since [`Upstream::new_phase`]: with a pool warm from earlier phases, the connections
//! a phase *used* say more than those it opened.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::HandshakeKind;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_rustls::TlsAcceptor;

/// How a variant's server speaks.
#[derive(Clone, Copy, PartialEq)]
pub enum Wire {
    Plain,
    /// TLS offering only http/1.1 in ALPN.
    TlsHttp1,
    /// TLS offering only h2 in ALPN.
    TlsH2,
    /// The same server, and a proxy with `upstream.http2_only`: its pool knows before the
    /// first call that one connection carries them all.
    TlsH2Only,
}

impl Wire {
    pub fn label(self) -> &'static str {
        match self {
            Wire::Plain => "plaintext http/1.1",
            Wire::TlsHttp1 => "TLS, ALPN http/1.1",
            Wire::TlsH2 => "TLS, ALPN h2",
            Wire::TlsH2Only => "TLS, h2, http2_only",
        }
    }
}

/// What one server saw.
#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub handshakes: AtomicU64,
    pub resumed: AtomicU64,
    pub http1_requests: AtomicU64,
    pub http2_requests: AtomicU64,
    /// Bumped by [`Upstream::new_phase`]; each connection remembers the last phase it served.
    phase: AtomicU64,
    used_in_phase: AtomicU64,
}

/// A snapshot of [`Counters`], subtractable.
#[derive(Clone, Copy, Default)]
pub struct Seen {
    pub connections: u64,
    pub handshakes: u64,
    pub resumed: u64,
    pub http1_requests: u64,
    pub http2_requests: u64,
}

impl Seen {
    pub fn requests(&self) -> u64 {
        self.http1_requests + self.http2_requests
    }

    pub fn since(&self, before: &Seen) -> Seen {
        Seen {
            connections: self.connections - before.connections,
            handshakes: self.handshakes - before.handshakes,
            resumed: self.resumed - before.resumed,
            http1_requests: self.http1_requests - before.http1_requests,
            http2_requests: self.http2_requests - before.http2_requests,
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "tcp_connections": self.connections, "tls_handshakes": self.handshakes,
            "tls_resumed": self.resumed, "http1_requests": self.http1_requests,
            "http2_requests": self.http2_requests,
        })
    }
}

/// One running server.
pub struct Upstream {
    pub wire: Wire,
    pub addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Upstream {
    /// What the proxy's `upstream.base_url` is: the certificate names `127.0.0.1`.
    pub fn base_url(&self) -> String {
        let scheme = if self.wire == Wire::Plain {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v1", self.addr)
    }

    pub fn seen(&self) -> Seen {
        let c = &self.counters;
        Seen {
            connections: c.connections.load(Ordering::Relaxed),
            handshakes: c.handshakes.load(Ordering::Relaxed),
            resumed: c.resumed.load(Ordering::Relaxed),
            http1_requests: c.http1_requests.load(Ordering::Relaxed),
            http2_requests: c.http2_requests.load(Ordering::Relaxed),
        }
    }

    /// Starts counting the connections that carry requests from now on.
    pub fn new_phase(&self) {
        self.counters.phase.fetch_add(1, Ordering::Relaxed);
        self.counters.used_in_phase.store(0, Ordering::Relaxed);
    }

    /// Connections that carried at least one request since [`Upstream::new_phase`].
    pub fn used_in_phase(&self) -> u64 {
        self.counters.used_in_phase.load(Ordering::Relaxed)
    }
}

/// The three servers, on a runtime of their own that stops (with every connection) on drop;
/// the CA's PEM is in a temp dir removed with them.
pub struct Upstreams {
    pub variants: Vec<Upstream>,
    ca_dir: tempfile::TempDir,
    // Declared last: dropped after the servers' handles, taking their tasks down.
    _runtime: Runtime,
}

impl Upstreams {
    pub fn start() -> Upstreams {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tls-upstream")
            .enable_all()
            .build()
            .expect("cannot start the TLS upstream's runtime");
        let ca_dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let certs = Certificates::new(&ca_dir.path().join("bench-ca.pem"));
        let variants = [Wire::Plain, Wire::TlsHttp1, Wire::TlsH2, Wire::TlsH2Only]
            .into_iter()
            .map(|wire| {
                let acceptor = match wire {
                    Wire::Plain => None,
                    Wire::TlsHttp1 => Some(certs.acceptor(b"http/1.1")),
                    Wire::TlsH2 | Wire::TlsH2Only => Some(certs.acceptor(b"h2")),
                };
                let listener = runtime
                    .block_on(TcpListener::bind("127.0.0.1:0"))
                    .expect("cannot bind the TLS upstream");
                let addr = listener
                    .local_addr()
                    .expect("a bound listener has an address");
                let counters = Arc::new(Counters::default());
                runtime.spawn(accept_loop(listener, acceptor, counters.clone()));
                Upstream {
                    wire,
                    addr,
                    counters,
                }
            })
            .collect();
        Upstreams {
            variants,
            ca_dir,
            _runtime: runtime,
        }
    }

    /// The CA's PEM, for `upstream.ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_dir.path().join("bench-ca.pem")
    }
}

/// The throwaway CA (its PEM written out) and the server certificate it signed.
struct Certificates {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: Vec<u8>,
}

impl Certificates {
    fn new(ca_pem: &Path) -> Certificates {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "bon-proxy bench CA");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
        std::fs::write(ca_pem, ca_cert.pem())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", ca_pem.display()));
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let server =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let cert = server
            .signed_by(&key, &issuer)
            .expect("the server certificate");
        Certificates {
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    /// rustls's defaults (ring; TLS 1.3 and 1.2; a session cache, so a reconnecting client
    /// may resume), offering only `alpn`.
    fn acceptor(&self, alpn: &[u8]) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .expect("the server certificate and key");
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, counters: Arc<Counters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, tls.clone(), counters.clone()));
    }
}

/// One connection: the handshake (when TLS), then HTTP/1.1 or h2 as ALPN settled.
async fn serve(stream: TcpStream, tls: Option<TlsAcceptor>, counters: Arc<Counters>) {
    // The last phase this connection served a request in (none yet).
    let last_phase = Arc::new(AtomicU64::new(u64::MAX));
    let counting = counters.clone();
    let service = service_fn(move |request| answer(counting.clone(), last_phase.clone(), request));
    let Some(acceptor) = tls else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
        return;
    };
    let Ok(stream) = acceptor.accept(stream).await else {
        return;
    };
    let session = stream.get_ref().1;
    counters.handshakes.fetch_add(1, Ordering::Relaxed);
    if session.handshake_kind() == Some(HandshakeKind::Resumed) {
        counters.resumed.fetch_add(1, Ordering::Relaxed);
    }
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
    };
}

/// Counts the request (and its connection, once per phase), then answers: a candidate call
/// gets [`COMPLETION`], a judge call (its prompt shows candidates) [`VERDICT`], anything else
/// 404.
async fn answer(
    counters: Arc<Counters>,
    last_phase: Arc<AtomicU64>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let phase = counters.phase.load(Ordering::Relaxed);
    if last_phase.swap(phase, Ordering::Relaxed) != phase {
        counters.used_in_phase.fetch_add(1, Ordering::Relaxed);
    }
    match request.version() {
        Version::HTTP_2 => &counters.http2_requests,
        _ => &counters.http1_requests,
    }
    .fetch_add(1, Ordering::Relaxed);
    let is_chat = request.uri().path().ends_with("/chat/completions");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, text) = if !is_chat {
        (StatusCode::NOT_FOUND, NOT_FOUND)
    } else if memchr::memmem::find(&body, b"<candidate id=").is_some() {
        (StatusCode::OK, VERDICT)
    } else {
        (StatusCode::OK, COMPLETION)
    };
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

const NOT_FOUND: &str =
    r#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}"#;

/// The answer to every candidate call: a small, complete chat completion.
const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"demo","choices":[{"index":0,"message":{"role":"assistant","content":"A balanced diet gives the body what it needs to work well.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":12,"total_tokens":24}}"#;

/// The answer to every judge call: the listwise judge reads `<best>ID</best>`.
const VERDICT: &str = r#"{"id":"chatcmpl-bench-judge","object":"chat.completion","created":1700000000,"model":"demo","choices":[{"index":0,"message":{"role":"assistant","content":"<best>1</best>","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":5,"total_tokens":105}}"#;
