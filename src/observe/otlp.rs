//! Optional OTLP export of the broker's tracing spans (cargo feature `otlp`, switched on by
//! `observe.otlp_endpoint`).
//!
//! The broker's `publish`, `route`, `append`, `deliver` and `ack` spans (DEBUG, see
//! `protocol::amqp::channel` and the Kafka produce/fetch handlers) become OpenTelemetry spans
//! through `tracing-opentelemetry`, batched on the SDK's own thread and sent as OTLP/HTTP
//! protobuf to the collector. A message's W3C `traceparent` (and `tracestate`) makes its
//! AMQP `publish` and `deliver` spans children of the producer's span, so one trace follows an
//! event from its producer through the broker to every consumer.
//!
//! Without the feature every function here is a cheap no-op and [`layer`] refuses, so callers
//! need no `cfg` of their own.

use tracing_subscriber::{Layer, Registry};

/// A boxed layer over the registry the log setup builds.
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The OTLP/HTTP URL for `endpoint`: a bare `http://host:4318` (no path) gets the standard
/// traces path `/v1/traces`; a URL with a path is used as given.
pub fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim();
    let after_scheme = e.split_once("://").map_or(e, |(_, rest)| rest);
    match after_scheme.find('/') {
        None => format!("{e}/v1/traces"),
        Some(i) if &after_scheme[i..] == "/" => format!("{}v1/traces", e),
        Some(_) => e.to_string(),
    }
}

#[cfg(feature = "otlp")]
mod imp {
    use std::sync::OnceLock;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;

    use super::BoxedLayer;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    pub fn layer(endpoint: &str) -> Result<BoxedLayer, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(super::traces_url(endpoint))
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("ferry")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("ferry");
        if PROVIDER.set(provider).is_err() {
            return Err("OTLP export is already set up".into());
        }
        Ok(tracing_opentelemetry::layer().with_tracer(tracer).boxed())
    }

    pub fn set_remote_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
        if PROVIDER.get().is_none() {
            return;
        }
        let mut carrier = std::collections::HashMap::with_capacity(2);
        carrier.insert("traceparent".to_string(), traceparent.to_string());
        if let Some(s) = tracestate {
            carrier.insert("tracestate".to_string(), s.to_string());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        // Fails only when the span is disabled or the layer is absent: nothing to link then.
        let _ = span.set_parent(cx);
    }

    pub fn shutdown() {
        if let Some(p) = PROVIDER.get() {
            if let Err(e) = p.shutdown() {
                eprintln!("ferry: flushing OTLP spans failed: {e}");
            }
        }
    }
}

/// The `tracing` layer exporting spans to `endpoint`; an error (to report, not to fail on) if
/// the exporter cannot be built or the binary lacks the `otlp` feature.
pub fn layer(endpoint: &str) -> Result<BoxedLayer, String> {
    #[cfg(feature = "otlp")]
    {
        imp::layer(endpoint)
    }
    #[cfg(not(feature = "otlp"))]
    {
        Err(format!(
            "observe.otlp_endpoint = {endpoint:?} is set, but this ferry was built without the \
             `otlp` feature; spans are not exported"
        ))
    }
}

/// Makes `span` a child of the remote span a message's `traceparent` names (OTLP export only).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    #[cfg(feature = "otlp")]
    imp::set_remote_parent(span, traceparent, tracestate);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, traceparent, tracestate);
}

/// Flushes spans still batched; call once at exit.
pub fn shutdown() {
    #[cfg(feature = "otlp")]
    imp::shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_endpoints_get_the_traces_path() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_string()
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/custom"), "http://c:4318/custom");
    }
}
