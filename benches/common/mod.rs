//! Shared helpers for the benchmark binaries: repeated samples, medians, ratios.
//!
//! The machine is small and noisy, so every benchmark takes several samples of the same
//! measurement and reports the median, and compares against a baseline measured in the same run.
#![allow(dead_code)] // each bench binary uses a different subset

use std::time::{Duration, Instant};

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
