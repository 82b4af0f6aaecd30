//! A TLS upstream on loopback, for the tests of the upstream's TLS keys: a throwaway CA and a
//! server certificate for `127.0.0.1` and `localhost` made with rcgen ([`TestCa`]), client
//! certificates the same CA issues for mutual TLS, and a hyper server behind tokio-rustls
//! ([`TlsUpstream`]) that offers exactly one ALPN protocol, may require a client certificate,
//! and answers every request with the mock's [`default_handler`] (so a judge call gets
//! `<best>1</best>`), or a stream of SSE chunks when the request asks for one.
//!
//! The mock itself is HTTP/1.1 only, and an h2 front would have to translate frames, so this
//! server is its own: it records the HTTP version of each request (which protocol the proxy's
//! client ended up speaking) and counts completed TLS handshakes. Dropping it stops it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::mock::{default_handler, Call, Reply, ReplyBody};

/// Whether a test server certificate is valid today, expired years ago, or valid only from a
/// date decades ahead.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
    NotYetValid,
}

/// A CA made for one test, and a server certificate it signed (by default for `127.0.0.1` and
/// `localhost`).
pub struct TestCa {
    /// The CA certificate, PEM: what `upstream.ca_file` points at.
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

/// A client certificate and its key, PEM: what `upstream.client_cert_file` and
/// `upstream.client_key_file` point at.
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Whether the server asks for a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// A certificate the test CA issued is required; the handshake fails without one.
    Required,
}

impl TestCa {
    pub fn new() -> TestCa {
        TestCa::issuing(&["127.0.0.1", "localhost"], Validity::Current)
    }

    /// A CA whose server certificate names `names` and is valid as `validity` says: for the
    /// tests of what the proxy says about a certificate it refuses.
    pub fn issuing(names: &[&str], validity: Validity) -> TestCa {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bon-proxy test CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut server_params = rcgen::CertificateParams::new(names).expect("server params");
        match validity {
            Validity::Current => {}
            Validity::Expired => {
                server_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                server_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            Validity::NotYetValid => {
                server_params.not_before = rcgen::date_time_ymd(2090, 1, 1);
                server_params.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }
        }
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            issuer,
            server_chain: vec![server_cert.der().clone()],
            server_key: server_key.serialize_der(),
        }
    }

    /// A client certificate for `name`, issued by this CA.
    pub fn client_identity(&self, name: &str) -> ClientIdentity {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        ClientIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls server config presenting the server certificate and offering only `alpn`.
    pub fn server_config(&self, alpn: Alpn) -> rustls::ServerConfig {
        self.server_config_with(alpn, ClientAuth::None)
    }

    /// [`TestCa::server_config`], asking for a client certificate as `auth` says.
    pub fn server_config_with(&self, alpn: Alpn, auth: ClientAuth) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(self.ca_der.clone()).expect("CA as a root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![alpn.id().to_vec()];
        config
    }
}

/// The one protocol the server offers in ALPN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Alpn {
    Http1,
    H2,
}

impl Alpn {
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::Http1 => b"http/1.1",
            Alpn::H2 => b"h2",
        }
    }

    /// The version a request arrives with over it.
    pub fn version(self) -> Version {
        match self {
            Alpn::Http1 => Version::HTTP_11,
            Alpn::H2 => Version::HTTP_2,
        }
    }
}

/// What the server saw, shared with its connection tasks.
#[derive(Default)]
struct Seen {
    versions: Mutex<Vec<Version>>,
    calls: Mutex<Vec<Call>>,
    handshakes: AtomicUsize,
    connections: AtomicUsize,
}

/// The running server; stopped when dropped.
pub struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    accept: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TlsUpstream {
    pub async fn start(ca: &TestCa, alpn: Alpn) -> TlsUpstream {
        TlsUpstream::start_with(ca, alpn, ClientAuth::None).await
    }

    /// [`TlsUpstream::start`], asking for a client certificate as `auth` says.
    pub async fn start_with(ca: &TestCa, alpn: Alpn, auth: ClientAuth) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("TLS upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("TLS upstream: local_addr");
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config_with(alpn, auth)));
        let seen = Arc::new(Seen::default());
        let accept = tokio::spawn(accept_loop(listener, acceptor, seen.clone()));
        TlsUpstream { addr, seen, accept }
    }

    /// `https://127.0.0.1:PORT/v1`: the certificate names the address.
    pub fn base_url(&self) -> String {
        format!("https://{}/v1", self.addr)
    }

    /// Its port, for a base URL that names it by another host name.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The HTTP version of every request so far, in arrival order.
    pub fn versions(&self) -> Vec<Version> {
        self.seen
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every request so far, as the mock records them.
    pub fn calls(&self) -> Vec<Call> {
        self.seen
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that completed.
    pub fn handshakes(&self) -> usize {
        self.seen.handshakes.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, seen: Arc<Seen>) {
    // Owned by this task: aborting it drops the set, which aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        seen.connections.fetch_add(1, Ordering::SeqCst);
        let (acceptor, seen) = (acceptor.clone(), seen.clone());
        conns.spawn(async move {
            // A client that does not trust the certificate aborts here.
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            seen.handshakes.fetch_add(1, Ordering::SeqCst);
            let svc = service_fn(move |req| answer(seen.clone(), req));
            // The connection speaks whatever ALPN settled on; auto reads its preface.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// A request asking for an SSE stream (`"stream": true`).
fn wants_stream(call: &Call) -> bool {
    call.json
        .as_ref()
        .is_some_and(|json| json["stream"] == serde_json::Value::Bool(true))
}

async fn answer(
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let call = {
        let mut calls = seen.calls.lock().unwrap_or_else(|e| e.into_inner());
        seen.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(parts.version);
        let mut call = Call::received(calls.len(), parts, body, started);
        call.finished = Some(Instant::now());
        calls.push(call.clone());
        call
    };
    let reply = if wants_stream(&call) {
        let text = format!("candidate answer {}", call.seq);
        Reply::stream_completion(&[text.as_str()], Duration::ZERO)
    } else {
        default_handler(&call)
    };
    // One body: whether it comes in one write or several is the mock's business, not TLS's.
    let body = match reply.body {
        ReplyBody::Bytes(bytes) => bytes,
        ReplyBody::Chunks(chunks) => chunks.into_iter().flat_map(|(_, c)| c).collect(),
        ReplyBody::Hangup => Bytes::new(),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = reply.status;
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}
