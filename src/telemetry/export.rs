//! Getting spans to the collector: the OTLP exporter's HTTP client, and the count of spans
//! that never got there.
//!
//! The SDK's batch processor exports from a thread of its own, outside the async runtime.
//! Rather than bring a second HTTP stack (and a second TLS provider) into the binary, the
//! exporter's calls are handed to the proxy's runtime and its pooled hyper client, the one the
//! upstream calls use: exports then share its TLS settings and never block a request.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use http::header::{HeaderValue, PROXY_AUTHORIZATION};

use crate::upstream::{HttpsClient, RoutedClient};

/// Spans exported in batches that failed (a collector down, slow or refusing).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A collector's answer is a small protobuf; anything bigger is not one.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Spans that could not be exported since the process started.
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The exporter's HTTP client: the proxy's hyper client, driven on the proxy's runtime.
pub(super) struct RuntimeClient {
    client: HttpsClient,
    /// A forward proxy's credentials (an `http://` collector behind a proxy that wants them).
    proxy_authorization: Option<HeaderValue>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl RuntimeClient {
    pub fn new(routed: RoutedClient, runtime: tokio::runtime::Handle, timeout: Duration) -> Self {
        RuntimeClient {
            proxy_authorization: routed.route.proxy_authorization().cloned(),
            client: routed.client,
            runtime,
            timeout,
        }
    }
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let proxy_authorization = self.proxy_authorization.clone();
        let exchange = async move {
            let mut request = request.map(crate::body::full);
            if let Some(value) = proxy_authorization {
                request.headers_mut().insert(PROXY_AUTHORIZATION, value);
            }
            let response = tokio::time::timeout(timeout, client.request(request))
                .await
                .map_err(|_| format!("the collector did not answer within {timeout:?}"))??;
            let (head, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(head, body))
        };
        // A JoinHandle can be awaited from the exporter's own thread: the runtime's workers
        // do the I/O and wake it.
        self.runtime.spawn(exchange).await?
    }
}

/// The OTLP exporter, counting the spans of every batch it could not deliver.
#[derive(Debug)]
pub(super) struct Counting<E>(pub E);

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.0.export(batch).await;
        if result.is_err() {
            DROPPED.fetch_add(spans, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}
