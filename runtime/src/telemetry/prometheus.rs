//! The Prometheus exporter: one call installs the recorder (with every description and bucket
//! set of the catalog, and Prometheus' recommended naming) and returns a handle whose
//! [`render`](MetricsHandle::render) a service mounts on its own HTTP server; or the exporter
//! serves `/metrics` on a listener of its own. Upkeep (draining histogram samples) runs in the
//! background either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::metrics::Metrics;
use super::names;

/// The content type of [`MetricsHandle::render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// Another global `metrics` recorder was installed first.
    #[error("a global metrics recorder is already installed; install the Prometheus exporter once, at startup, before anything records metrics")]
    AlreadyInstalled,
    /// The listener could not be bound, or its thread could not start.
    #[error("cannot start the Prometheus exporter: {0}")]
    Start(String),
}

/// Configures the Prometheus exporter: `Prometheus::new().install()`.
#[derive(Debug, Clone)]
pub struct Prometheus {
    listen: Option<SocketAddr>,
    upkeep_interval: Duration,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus::new()
    }
}

impl Prometheus {
    /// No listener of its own (mount [`MetricsHandle::render`] on your server); upkeep every 5 s.
    pub fn new() -> Self {
        Prometheus {
            listen: None,
            upkeep_interval: Duration::from_secs(5),
        }
    }

    /// Also serves the exposition on `addr` (any path), from a thread of its own.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// How often histogram samples are drained into their buckets (a scrape drains them too).
    pub fn upkeep_interval(mut self, every: Duration) -> Self {
        self.upkeep_interval = every;
        self
    }

    fn builder(&self) -> PrometheusBuilder {
        let mut builder = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .upkeep_timeout(self.upkeep_interval);
        for def in names::ALL.iter().filter(|d| !d.buckets.is_empty()) {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(def.name.to_owned()), def.buckets)
                .expect("catalog histograms have buckets");
        }
        builder
    }

    /// Installs the recorder as the process's global `metrics` recorder, starts upkeep (and the
    /// listener, if configured), and returns the handle. Call it once, before starting the
    /// runtime; use [`Metrics::global`] (the default) everywhere.
    pub fn install(self) -> Result<MetricsHandle, ExporterError> {
        let (recorder, handle) = match self.listen {
            Some(addr) => self.start_listener(addr)?,
            None => {
                let recorder = self.builder().build_recorder();
                let handle = recorder.handle();
                spawn_upkeep(handle.clone(), self.upkeep_interval)?;
                (recorder, handle)
            }
        };
        names::describe(&recorder);
        metrics::set_global_recorder(recorder).map_err(|_| ExporterError::AlreadyInstalled)?;
        Metrics::global().register_known();
        Ok(MetricsHandle { inner: handle })
    }

    /// A recorder that is *not* installed globally, and its handle: pass the [`Metrics`] to the
    /// runtime, clients and halts whose metrics it should hold. For tests (no fight over the
    /// global recorder) and for several runtimes exporting separately. No listener and no
    /// background upkeep: [`MetricsHandle::render`] drains what was recorded.
    pub fn build(self) -> (Metrics, MetricsHandle) {
        let recorder = self.builder().build_recorder();
        let handle = MetricsHandle {
            inner: recorder.handle(),
        };
        (Metrics::to(Arc::new(recorder)), handle)
    }

    /// Builds the recorder with its listener and upkeep on a thread of its own.
    fn start_listener(
        &self,
        addr: SocketAddr,
    ) -> Result<
        (
            metrics_exporter_prometheus::PrometheusRecorder,
            PrometheusHandle,
        ),
        ExporterError,
    > {
        let start = |e: &dyn std::fmt::Display| ExporterError::Start(e.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| start(&e))?;
        let (recorder, exporter) = {
            let _entered = runtime.enter();
            self.builder()
                .with_http_listener(addr)
                .build()
                .map_err(|e| start(&e))?
        };
        let handle = recorder.handle();
        std::thread::Builder::new()
            .name("impresario-metrics".into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(exporter) {
                    tracing::error!(error = ?e, "the Prometheus listener stopped");
                }
            })
            .map_err(|e| start(&e))?;
        Ok((recorder, handle))
    }
}

/// Drains histogram samples every `every`, for as long as the process runs (the global
/// recorder lives as long).
fn spawn_upkeep(handle: PrometheusHandle, every: Duration) -> Result<(), ExporterError> {
    std::thread::Builder::new()
        .name("impresario-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            handle.run_upkeep();
        })
        .map(drop)
        .map_err(|e| ExporterError::Start(e.to_string()))
}

/// A handle to the exporter's recorder. Cheap to clone, `Send + Sync`.
#[derive(Clone, Debug)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
}

impl MetricsHandle {
    /// The Prometheus text exposition of every metric recorded so far; serve it with
    /// [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        self.inner.render()
    }
}
