//! A TLS upstream on loopback, for the tests of `upstream.ca_file`: a throwaway CA and a server
//! certificate for `127.0.0.1` and `localhost` made with rcgen ([`TestCa`]), and a hyper server
//! behind tokio-rustls ([`TlsUpstream`]) that offers exactly one ALPN protocol and answers
//! every request with the mock's [`default_handler`] (so a judge call gets `<best>1</best>`).
//!
//! The mock itself is HTTP/1.1 only, and an h2 front would have to translate frames, so this
//! server is its own: it records the HTTP version of each request (which protocol the proxy's
//! client ended up speaking) and counts completed TLS handshakes. Dropping it stops it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

use super::mock::{default_handler, Call, ReplyBody};

/// Whether a test server certificate is valid today or expired years ago.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
}

/// A CA made for one test, and a server certificate it signed (by default for `127.0.0.1` and
/// `localhost`).
pub struct TestCa {
    /// The CA certificate, PEM: what `upstream.ca_file` points at.
    pub ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
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
        if validity == Validity::Expired {
            server_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            server_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            server_chain: vec![server_cert.der().clone()],
            server_key: server_key.serialize_der(),
        }
    }

    /// A rustls server config presenting the server certificate and offering only `alpn`.
    pub fn server_config(&self, alpn: Alpn) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("TLS upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("TLS upstream: local_addr");
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config(alpn)));
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
    let reply = default_handler(&call);
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
