//! The HTTP clients of the upstream and of every judge and fuser endpoint: one per distinct way
//! of reaching an endpoint (its `Transport`), so endpoints that are reached alike share one
//! client and its connection pool, and one with its own CA, client certificate or proxy gets a
//! client of its own.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::tls::{self, TlsSetupError};
use super::HttpsClient;
use crate::config::{Transport, UpstreamConfig};

/// The clients built so far, with the pool settings of `[upstream]` that all of them share.
pub(crate) struct Clients {
    pool: UpstreamConfig,
    built: Vec<BuiltClient>,
}

struct BuiltClient {
    transport: Transport,
    client: HttpsClient,
    /// What it trusts and presents, and for which table it was first built.
    summary: String,
}

impl Clients {
    /// No client yet; each is built on first use, with `config`'s timeouts and pool settings.
    pub fn new(config: &UpstreamConfig) -> Clients {
        Clients {
            pool: config.clone(),
            built: Vec::new(),
        }
    }

    /// The client for endpoints reached as `transport` says, built (and its files read) the
    /// first time. `table` is the config table asking (`upstream`, `judges.rm`, ...), named by
    /// any error.
    pub fn client(
        &mut self,
        transport: &Transport,
        table: &str,
    ) -> Result<HttpsClient, TlsSetupError> {
        if let Some(built) = self.built.iter().find(|b| b.transport == *transport) {
            return Ok(built.client.clone());
        }
        let (tls, summary) = tls::client_config(transport, table)?;
        let client = build(&self.pool, tls);
        self.built.push(BuiltClient {
            transport: transport.clone(),
            client: client.clone(),
            summary: format!("{table}: {summary}"),
        });
        Ok(client)
    }

    /// One line per client: the table it was built for, what it trusts and presents.
    pub fn describe(&self) -> Vec<String> {
        self.built.iter().map(|b| b.summary.clone()).collect()
    }
}

/// A pooled HTTP(S) client with `tls`, offering h2 and http/1.1 over TLS.
fn build(pool: &UpstreamConfig, tls: rustls::ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(pool.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool.pool_idle_timeout)
        .pool_max_idle_per_host(pool.pool_max_idle_per_host)
        .build(https)
}
