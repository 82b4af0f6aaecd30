//! Logs and traces, set up once at start: log lines to stderr (text or JSON, `[log]`), and,
//! with `[telemetry] otlp_endpoint`, OpenTelemetry traces exported over OTLP/HTTP.
//!
//! One `tracing` subscriber carries both: a formatting layer for logs, and an OpenTelemetry
//! layer that sees only the proxy's spans (`spans`). Log lines are written by a thread of
//! their own through a bounded buffer (lines are dropped, never waited for, when stderr
//! cannot keep up); spans are batched and exported by the SDK's own thread (`export`).
//! Neither can slow or fail a request.

mod access;
mod export;
mod spans;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer, Registry};

use crate::config::{Config, LogConfig, LogFormat};

pub use access::{AccessNote, RequestEnd};
pub use export::dropped_spans;
pub use spans::{
    call_span, content_wanted, inject, record_call, record_content, record_mode, record_response,
    record_retries, request_span,
};

/// Spans are made only when traces are exported.
static TRACING_ON: AtomicBool = AtomicBool::new(false);
static INCLUDE_CONTENT: AtomicBool = AtomicBool::new(false);

/// How long one export may take before its batch counts as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn tracing_on() -> bool {
    TRACING_ON.load(Ordering::Relaxed)
}

fn include_content() -> bool {
    INCLUDE_CONTENT.load(Ordering::Relaxed)
}

/// Whether requests should carry an access note (the access log is on).
pub fn access_log_on() -> bool {
    access::enabled()
}

/// Set up logs or traces could not be.
#[derive(Debug)]
pub struct TelemetryError(String);

impl std::fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TelemetryError {}

/// Keeps logs and traces flowing; [`Telemetry::shutdown`] flushes both.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    _log_writer: WorkerGuard,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by the export timeout), then stops. Call it
    /// with the runtime still running: the exports go through it.
    pub fn shutdown(self) {
        if let Some(provider) = &self.provider {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "some spans could not be exported at shutdown");
            }
        }
    }
}

/// Logs and, when configured, traces, for `serve`. Must run inside the runtime that will
/// serve requests: span exports use it.
pub fn start(config: &Config) -> Result<Telemetry, TelemetryError> {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stderr());
    let logs = log_layer(&config.log, writer);
    let (traces, provider) = if config.telemetry.enabled() {
        let provider = tracer_provider(config)?;
        let tracer = provider.tracer("bon-proxy");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target(spans::SPANS, tracing::Level::TRACE));
        (Some(layer), Some(provider))
    } else {
        (None, None)
    };
    Registry::default()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError(format!("cannot set up logging: {e}")))?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        INCLUDE_CONTENT.store(config.telemetry.include_content, Ordering::Relaxed);
        TRACING_ON.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry {
        provider,
        _log_writer: guard,
    })
}

/// Text logs to stderr for the commands other than `serve`.
pub fn start_plain_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `RUST_LOG`, else INFO.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

fn log_layer<W>(config: &LogConfig, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // The proxy's spans are for traces only: as log lines they would be noise.
    let mut filter = env_filter().add_directive(off(spans::SPANS));
    if !config.access {
        filter = filter.add_directive(off(access::ACCESS));
    }
    match config.format {
        LogFormat::Text => fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    }
}

fn off(target: &str) -> tracing_subscriber::filter::Directive {
    // A target name and `=off` always parse.
    format!("{target}=off")
        .parse()
        .unwrap_or_else(|_| tracing_subscriber::filter::LevelFilter::OFF.into())
}

fn tracer_provider(config: &Config) -> Result<SdkTracerProvider, TelemetryError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        TelemetryError(format!(
            "`telemetry.otlp_endpoint`: cannot set up {what}: {e}"
        ))
    };
    let telemetry = &config.telemetry;
    let client = crate::upstream::collector_client(&config.upstream, &telemetry.otlp_endpoint)
        .map_err(|e| fail("its client", &e))?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| fail("exports", &e))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(telemetry.traces_url())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(export::RuntimeClient::new(client, runtime, EXPORT_TIMEOUT))
        .build()
        .map_err(|e| fail("the exporter", &e))?;
    let attributes = telemetry
        .resource_attributes
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()));
    let resource = Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .with_attributes(attributes)
        .build();
    let sampler =
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(telemetry.sample_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(export::Counting(exporter)).build())
        .with_sampler(sampler)
        .with_resource(resource)
        .build())
}
