//! Structured logs through `tracing` (human-readable text by default, JSON on request), and
//! traces through OpenTelemetry when an OTLP endpoint is configured.
//!
//! Traces are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! names a collector; the exporter speaks OTLP over gRPC and reads the other standard
//! `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_*_HEADERS`, `OTEL_SDK_DISABLED`). `tracing` spans become OpenTelemetry
//! spans; W3C `traceparent` travels in gRPC metadata and in Kafka record headers
//! ([`inject`], [`extract`]), so one document is one trace across gateway and worker.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber once; later calls (tests start many servers) do nothing.
/// `service` names the process in traces unless `OTEL_SERVICE_NAME` does.
pub fn init(log: &LogConfig, service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Json => Box::new(fmt.json().flatten_event(true).with_filter(filter)),
        LogFormat::Text => Box::new(fmt.with_filter(filter)),
    };
    // Spans go to the collector at INFO whatever the log filter says: quiet logs must not
    // mean no traces.
    let traces = tracer_provider(service).map(|provider| {
        let tracer = provider.tracer("sluice");
        let _ = PROVIDER.set(provider);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(traces)
        .try_init();
}

/// Sends the spans not yet exported (at the end of `main`).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.shutdown() {
            eprintln!("traces not all exported: {error}");
        }
    }
}

/// The OTLP exporter, when the environment asks for one.
fn tracer_provider(service: &str) -> Option<SdkTracerProvider> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    if off || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("traces off: the OTLP exporter cannot be built: {error}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service.to_owned());
    }
    // The batch processor on the tokio runtime: the tonic exporter needs it.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build(),
    )
}

/// The W3C trace context of `span`, written into a carrier through `set(name, value)`
/// (`traceparent`, and `tracestate` when there is one). Nothing when traces are off.
pub fn inject(span: &tracing::Span, mut set: impl FnMut(&str, String)) {
    struct Carrier<'a>(&'a mut dyn FnMut(&str, String));
    impl Injector for Carrier<'_> {
        fn set(&mut self, key: &str, value: String) {
            (self.0)(key, value)
        }
    }
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut Carrier(&mut set));
}

/// Makes `span` a child of the trace context a carrier holds (`get(name)` reads it), if any.
pub fn extract(span: &tracing::Span, get: impl Fn(&str) -> Option<String>) {
    struct Carrier(Vec<Option<String>>);
    impl Extractor for Carrier {
        fn get(&self, key: &str) -> Option<&str> {
            let index = match key {
                "traceparent" => 0,
                "tracestate" => 1,
                _ => return None,
            };
            self.0[index].as_deref()
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let values = vec![get("traceparent"), get("tracestate")];
    if values[0].is_none() {
        return;
    }
    let carrier = Carrier(values);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// Shows an error with its causes, outermost first: `ingestion failed: vector store: connection
/// refused`. Error types keep their cause as [`source`](std::error::Error::source) rather than
/// in their own message, so logs and client-facing reasons print errors through this:
/// `tracing::warn!(error = %Chain(&error), "…")`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("indexing failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_shows_every_cause() {
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            Chain(&error).to_string(),
            "indexing failed: connection refused"
        );
    }
}
