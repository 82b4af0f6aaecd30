//! The upstream client's connector: opens each connection the way the endpoint's [`Route`]
//! says (straight, through a CONNECT tunnel, or to a forward proxy), and [`advice`], which turns
//! a proxy's refusal into a sentence naming the setting to change.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::chain;
use super::route::Route;
use crate::allocator::Counted;

type BoxError = Box<dyn StdError + Send + Sync>;

/// hyper-util's CONNECT error. Its module is private, so the type is named through the
/// connector that returns it; that is enough to downcast to it and match its variants.
type TunnelError = <Tunnel<HttpConnector> as Service<Uri>>::Error;

/// The upstream client's connector: opens each connection the way its [`Route`] says. For
/// https, hyper-rustls wraps it and runs TLS over what it returns (inside the tunnel). Public
/// because the public `HttpsClient` type names it.
#[derive(Clone)]
pub struct RoutedConnector {
    http: HttpConnector,
    route: Route,
    /// How long a proxy may take to open a tunnel, its TCP connect included
    /// (`upstream.connect_timeout`): the connector's own timeout covers only the TCP part.
    tunnel_timeout: Duration,
}

impl RoutedConnector {
    pub(crate) fn new(
        http: HttpConnector,
        route: Route,
        tunnel_timeout: Duration,
    ) -> RoutedConnector {
        RoutedConnector {
            http,
            route,
            tunnel_timeout,
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<RoutedStream, BoxError>> + Send>>;

impl Service<Uri> for RoutedConnector {
    type Response = RoutedStream;
    // Boxed, not wrapped: hyper-util's `TunnelError` stays in the cause chain for `advice`.
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, destination: Uri) -> Connecting {
        match &self.route {
            Route::Direct => {
                let connecting = self.http.call(destination);
                Box::pin(async move { Ok(RoutedStream::new(connecting.await?, false)) })
            }
            Route::Tunnel { proxy, auth } => {
                let mut tunnel = Tunnel::new(proxy.clone(), self.http.clone());
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let connecting = tunnel.call(destination);
                let limit = self.tunnel_timeout;
                Box::pin(async move {
                    match tokio::time::timeout(limit, connecting).await {
                        Ok(stream) => Ok(RoutedStream::new(stream?, false)),
                        Err(_) => Err(Box::new(TunnelTimedOut(limit)) as BoxError),
                    }
                })
            }
            Route::Forward { proxy, .. } => {
                let connecting = self.http.call(proxy.clone());
                Box::pin(async move {
                    let stream = connecting
                        .await
                        .map_err(|e| ProxyUnreachable(Box::new(e)))?;
                    Ok(RoutedStream::new(stream, true))
                })
            }
        }
    }
}

/// A proxy that did not open the tunnel in time: it accepted the TCP connection and then kept
/// the CONNECT waiting.
#[derive(Debug)]
struct TunnelTimedOut(Duration);

impl std::fmt::Display for TunnelTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the proxy did not open a tunnel within {:?}", self.0)
    }
}

impl StdError for TunnelTimedOut {}

/// A forward proxy that could not be connected to (a tunnel's says so in its `TunnelError`).
#[derive(Debug)]
struct ProxyUnreachable(BoxError);

impl std::fmt::Display for ProxyUnreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot connect to the proxy")
    }
}

impl StdError for ProxyUnreachable {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// A connection opened by [`RoutedConnector`]: a TCP stream to the endpoint, to a tunnel
/// through the proxy, or to a forward proxy (then marked proxied, so the client writes
/// request targets in absolute form).
pub struct RoutedStream {
    io: TokioIo<TcpStream>,
    forwarded: bool,
    /// Counted while open: the pool lets thousands go at once after a fan-out, and what
    /// their connections held is worth giving back then.
    _open: Counted,
}

impl RoutedStream {
    fn new(io: TokioIo<TcpStream>, forwarded: bool) -> RoutedStream {
        RoutedStream {
            io,
            forwarded,
            _open: crate::allocator::connection_open(),
        }
    }
}

impl Connection for RoutedStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forwarded)
    }
}

impl Read for RoutedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for RoutedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// What a user can do about the proxy failure in `error`'s chain, said after the error's own
/// words in the 502; `key_prefix` is the config table of the endpoint's `proxy_url`.
pub(super) fn advice(error: &(dyn StdError + 'static), key_prefix: &str) -> Option<String> {
    // Which of the settings applied is not known here; all of them are named.
    let key = format!(
        "`{key_prefix}.proxy_url` (without it, the HTTPS_PROXY, HTTP_PROXY or ALL_PROXY variable)"
    );
    if let Some(tunnel) = chain::find::<TunnelError>(error) {
        return tunnel_advice(tunnel, &key);
    }
    if chain::find::<TunnelTimedOut>(error).is_some() {
        return Some(format!(
            "The proxy accepted the connection but did not answer the CONNECT: check that {key} \
             names an HTTP proxy that allows this host; `upstream.connect_timeout` bounds the \
             wait"
        ));
    }
    chain::find::<ProxyUnreachable>(error)?;
    Some(format!(
        "The proxy itself cannot be reached: check the address in {key}"
    ))
}

/// True when `error`'s chain holds a proxy's refusal of the tunnel (407 or another status):
/// a call it would refuse again.
pub(super) fn is_refusal(error: &(dyn StdError + 'static)) -> bool {
    matches!(
        chain::find::<TunnelError>(error),
        Some(TunnelError::ProxyAuthRequired | TunnelError::TunnelUnsuccessful)
    )
}

/// The 502 message for a proxy that answered 407, a tunnel's or a forward proxy's; `key` is
/// the endpoint's `proxy_url` key, quoted.
fn credentials_wanted(key: &str) -> String {
    format!(
        "The proxy wants credentials it was not given or did not accept (407): put them in \
         {key} as `http://user:password@host:port`"
    )
}

/// What a client is told when the forward proxy of a plain-http endpoint (whose keys live in
/// `table`) answers 407: that answer is the proxy's, not the upstream's, so it is not passed on.
pub(super) fn forward_proxy_wants_credentials(table: &str) -> String {
    credentials_wanted(&format!(
        "`{table}.proxy_url` (without it, the HTTP_PROXY or ALL_PROXY variable)"
    ))
}

fn tunnel_advice(error: &TunnelError, key: &str) -> Option<String> {
    let text = match error {
        TunnelError::ProxyAuthRequired => credentials_wanted(key),
        TunnelError::TunnelUnsuccessful => format!(
            "The proxy refused to open a tunnel (CONNECT) to the upstream; its policy may not \
             allow this host or port: check {key}, or add the upstream's host to NO_PROXY if it \
             is reachable without the proxy"
        ),
        TunnelError::ConnectFailed(_) => {
            format!("The proxy itself cannot be reached: check the address in {key}")
        }
        TunnelError::TunnelUnexpectedEof
        | TunnelError::ProxyHeadersTooLong
        | TunnelError::Io(_) => format!(
            "The proxy did not answer the CONNECT as an HTTP proxy does: check that {key} names \
             an HTTP proxy that allows CONNECT"
        ),
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_the_setting_for_each_refusal() {
        let key = "upstream";
        let refused: BoxError = Box::new(TunnelError::TunnelUnsuccessful);
        let text = advice(&*refused, key).unwrap();
        assert!(
            text.contains("refused") && text.contains("`upstream.proxy_url`"),
            "{text}"
        );
        assert!(text.contains("NO_PROXY"), "{text}");
        let auth = TunnelError::ProxyAuthRequired;
        // As hyper-rustls and the client pass it on: inside an io::Error, then a source.
        let wrapped = io::Error::other(io::Error::other(auth));
        let text = advice(&wrapped, key).unwrap();
        assert!(
            text.contains("credentials") && text.contains("proxy_url"),
            "{text}"
        );
        let unreachable = TunnelError::ConnectFailed("refused".into());
        assert!(advice(&unreachable, "fuser")
            .unwrap()
            .contains("`fuser.proxy_url`"));
        let silent = TunnelTimedOut(Duration::from_secs(10));
        let text = advice(&silent, key).unwrap();
        assert!(text.contains("did not answer the CONNECT"), "{text}");
        let forward = ProxyUnreachable("refused".into());
        assert!(advice(&forward, key).unwrap().contains("cannot be reached"));
        assert!(advice(&io::Error::other("dns error"), key).is_none());
    }
}
