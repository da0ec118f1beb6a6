//! Shared helpers for the benchmark binaries: repeated samples, medians, ratios.
//!
//! The machine is small and noisy, so every benchmark takes several samples of the same
//! measurement and reports the median, and compares against a baseline measured in the same run.
#![allow(dead_code)] // each bench binary uses a different subset

use std::time::{Duration, Instant};

pub mod runs;

/// Runs `f` `samples` times and returns the per-sample durations, sorted ascending.
pub fn sample(samples: usize, mut f: impl FnMut() -> Duration) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..samples).map(|_| f()).collect();
    out.sort();
    out
}

/// The value at quantile `q` (0.0..=1.0) of an ascending slice.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    assert!(!sorted.is_empty(), "quantile of an empty sample");
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx]
}

/// The median of an ascending slice.
pub fn median<T: Copy>(sorted: &[T]) -> T {
    quantile(sorted, 0.5)
}

/// A typical step event of a run, about 300 bytes of JSON: what the journal benchmarks append.
pub fn step_event<N: TryInto<u32>>(i: N) -> impresario_runtime::journal::RunEvent {
    impresario_runtime::journal::RunEvent::StepStarted {
        step: i.try_into().unwrap_or(u32::MAX),
        kind: "tool".into(),
        detail: serde_json::json!({
            "tool": "search",
            "arguments": {"query": "quarterly revenue of the three largest customers", "limit": 10},
            "why": "the plan's second step needs the figures before it can compare them",
        }),
    }
}

/// Times `iters` calls of `f` and returns the mean time per call for that sample.
pub fn per_iter(iters: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

/// Formats a duration in the most readable unit.
pub fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// Prints one result row: name, median, and the ratio to a baseline median when given.
pub fn row(name: &str, median: Duration, baseline: Option<Duration>) {
    match baseline {
        Some(b) => println!(
            "{name:<58} {:>12}   {:.2}x baseline",
            fmt(median),
            median.as_secs_f64() / b.as_secs_f64()
        ),
        None => println!("{name:<58} {:>12}", fmt(median)),
    }
}

/// A single-threaded actix arbiter in a plain actix System of its own (outside any Impresario
/// runtime), for raw actix baselines. Stop the System and join the thread when done.
pub fn raw_actix_arbiter() -> (
    actix::ArbiterHandle,
    std::thread::JoinHandle<()>,
    actix::System,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runner = actix::System::new();
        let system = actix::System::current();
        tx.send((system.arbiter().clone(), system)).unwrap();
        runner.run().unwrap();
    });
    let (arbiter, system) = rx.recv().unwrap();
    (arbiter, thread, system)
}

/// A loopback HTTP/1.1 server on a thread of its own (its own current-thread tokio runtime):
/// every accepted connection (`TCP_NODELAY`) is handed to `serve` on a task. Returns its address.
pub fn loopback_server<F>(
    serve: impl Fn(tokio::net::TcpStream) -> F + Send + 'static,
) -> std::net::SocketAddr
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                conn.set_nodelay(true).unwrap();
                tokio::spawn(serve(conn));
            }
        });
    });
    rx.recv().unwrap()
}

/// Reads one request from a keep-alive connection (`buf` keeps what arrived beyond it): its
/// head, lowercased, or `None` when the connection is over.
pub async fn read_request(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + length);
    Some(head)
}
