//! The binary's `tracing` subscriber: logs on stderr, and, with `[telemetry] otlp_endpoint`
//! (feature `otlp`), every span exported over OTLP/HTTP (protobuf) by a batch processor on a
//! thread of its own, under `service.name` = `telemetry.service_name`. The GenAI spans keep
//! their names and `gen_ai.*` attributes: `invoke_workflow` > `invoke_agent` > `chat` /
//! `execute_tool`.

use impresario::runtime::redact::RedactingWriter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config;

/// Flushes and stops the export at exit (drop it, or call [`Export::shutdown`]).
pub struct Export {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Export {
    /// Sends what is buffered and stops the exporter.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("impresario: the last spans could not be exported: {e}");
            }
        }
    }
}

/// Installs the subscriber: logs at `level` on stderr, spans (info and above) to the OTLP
/// endpoint if one is configured.
pub fn init(level: LevelFilter, telemetry: &config::Telemetry) -> Result<Export, String> {
    let logs = tracing_subscriber::fmt::layer()
        // One redaction layer: no credential the process holds reaches a log line.
        .with_writer(|| RedactingWriter(std::io::stderr()))
        .with_filter(level);
    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = match telemetry.otlp_endpoint.trim() {
            "" => (None, None),
            endpoint => {
                let provider = otlp::provider(endpoint, &telemetry.service_name)?;
                (Some(otlp::layer(&provider)), Some(provider))
            }
        };
        tracing_subscriber::registry().with(logs).with(layer).init();
        Ok(Export { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        if !telemetry.otlp_endpoint.trim().is_empty() {
            return Err("telemetry.otlp_endpoint is set, but this binary was built without the `otlp` feature; rebuild with it or unset the key".into());
        }
        tracing_subscriber::registry().with(logs).init();
        Ok(Export {})
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    /// A tracer provider batching spans to `endpoint` (an OTLP/HTTP traces URL).
    pub fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build())
    }

    /// The layer that turns `tracing` spans (info and above) into OpenTelemetry spans.
    pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("impresario"))
            .with_filter(LevelFilter::INFO)
    }
}
