//! The exporter's own listener: installed globally (so this binary holds one test), it serves
//! the exposition over HTTP with every description of the catalog.

use std::time::Duration;

use impresario_runtime::telemetry::{Metrics, Prometheus};
use impresario_runtime::RunOutcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_what_the_global_recorder_holds() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let handle = Prometheus::new()
        .listen(addr)
        .upkeep_interval(Duration::from_millis(50))
        .install()
        .unwrap();
    assert!(
        Prometheus::new().install().is_err(),
        "a second global install is refused"
    );
    let metrics = Metrics::global();
    metrics.run_started();
    metrics.run_finished(RunOutcome::Succeeded, Duration::from_secs(3));

    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("# TYPE impresario_runs_started_total counter"),
        "{body}"
    );
    assert!(body.contains("impresario_runs_started_total 1\n"), "{body}");
    assert!(
        body.contains("# HELP impresario_run_duration_seconds Time from the start of a run"),
        "{body}"
    );
    assert!(
        body.contains("impresario_run_duration_seconds_count{outcome=\"succeeded\"} 1\n"),
        "{body}"
    );
    // The same exposition through the handle (families come in no particular order).
    let lines = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(lines(&handle.render()), lines(&body));
}
