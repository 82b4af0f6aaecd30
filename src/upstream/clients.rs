//! The HTTP clients of the upstream and of every judge and fuser endpoint: one per distinct way
//! of reaching an endpoint (its `Transport` and the `Route` its base URL takes), so endpoints
//! reached alike share one client and its connection pool, and one with its own CA, client
//! certificate or proxy gets a client of its own.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::connector::RoutedConnector;
use super::route::{Route, RouteError};
use super::tls::{self, TlsSetupError};
use crate::body::Body;
use crate::config::{Transport, UpstreamConfig};

/// A pooled HTTP(S) client, over a routed connector.
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<RoutedConnector>, Body>;

/// The clients built so far, with the pool settings of `[upstream]` that all of them share.
pub(crate) struct Clients {
    pool: UpstreamConfig,
    built: Vec<Built>,
}

/// A client, and the route its connections take.
#[derive(Clone)]
pub(crate) struct RoutedClient {
    pub client: HttpsClient,
    pub route: Route,
    /// It speaks only HTTP/2 (`http2_only`): to an `http://` endpoint, h2c.
    pub http2_only: bool,
}

struct Built {
    transport: Transport,
    routed: RoutedClient,
    /// The table it was first built for, what it trusts and presents, and its route.
    summary: String,
}

/// Why an endpoint's client could not be built: a TLS file, or its proxy setting.
#[derive(Debug)]
pub(crate) enum ClientSetupError {
    Tls(TlsSetupError),
    Route(RouteError),
}

impl std::fmt::Display for ClientSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientSetupError::Tls(error) => error.fmt(f),
            ClientSetupError::Route(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for ClientSetupError {}

impl Clients {
    /// No client yet; each is built on first use, with `config`'s timeouts and pool settings.
    pub(crate) fn new(config: &UpstreamConfig) -> Clients {
        Clients {
            pool: config.clone(),
            built: Vec::new(),
        }
    }

    /// The client for the endpoint at `base_url`, reached as `transport` says, built (and its
    /// files read) the first time. `table` is the config table asking (`upstream`,
    /// `judges.rm`, ...), named by any error.
    pub(crate) fn client(
        &mut self,
        transport: &Transport,
        table: &str,
        base_url: &str,
    ) -> Result<RoutedClient, ClientSetupError> {
        let route = Route::for_endpoint(base_url, &transport.proxy_url, table)
            .map_err(ClientSetupError::Route)?;
        let same = |b: &&Built| b.transport == *transport && b.routed.route == route;
        if let Some(built) = self.built.iter().find(same) {
            return Ok(built.routed.clone());
        }
        let (tls, trust) = tls::client_config(transport, table).map_err(ClientSetupError::Tls)?;
        let routed = RoutedClient {
            client: build(&self.pool, tls, route.clone(), transport.http2_only),
            route,
            http2_only: transport.http2_only,
        };
        self.built.push(Built {
            transport: transport.clone(),
            summary: format!("{table}: {trust}; {}", routed.route.describe()),
            routed: routed.clone(),
        });
        Ok(routed)
    }

    /// One line per client: the table it was built for, what it trusts and presents, its route.
    pub(crate) fn describe(&self) -> Vec<String> {
        self.built.iter().map(|b| b.summary.clone()).collect()
    }
}

/// A pooled HTTP(S) client with `tls`, opening connections the way `route` says (over a
/// tunnel, TLS runs inside it). It offers h2 and http/1.1 over TLS, or with `http2_only` h2
/// alone: then the pool knows before connecting that one connection carries every call, and
/// calls racing on a cold pool wait for it instead of each opening one.
fn build(
    pool: &UpstreamConfig,
    tls: rustls::ClientConfig,
    route: Route,
    http2_only: bool,
) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(pool.connect_timeout));
    let connector = RoutedConnector::new(http, route, pool.connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http2_only {
        builder.enable_http2().wrap_connector(connector)
    } else {
        builder
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector)
    };
    // The timer is what makes the pool close connections idle past `pool_idle_timeout`:
    // without one, hyper-util checks the timeout only when a call looks for a connection, and
    // the thousands a fan-out opened would stay open (and hold their memory) until the
    // upstream closed them.
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(pool.pool_idle_timeout)
        .pool_max_idle_per_host(pool.pool_max_idle_per_host)
        .http2_only(http2_only)
        .build(https)
}
