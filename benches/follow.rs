//! Following a long run: what one poll of the journal costs a replica streaming `/events` of a
//! run another replica drives (`src/service/sse.rs::follow`, every 200 ms per client), once the
//! client has the run's first events. The baseline reads the whole run and drops what was sent
//! (how `follow` polled before `Journal::read_after`); against it, `read_after` the last event
//! sent. Each with nothing new (the usual poll) and with the last batch new, for a run of
//! 2,000 events (in batches of 1 to 4, as runs journal them) and of 200, on SQLite and on
//! PostgreSQL (a throwaway local server, `impresario_pg::test_cluster`), in the same run.
//!
//! Run: `cargo bench --bench follow` (BENCHMARKS.md, "Following a run").

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use common::{fmt, median, per_iter, row, step_event};
use impresario_pg::test_cluster::TestCluster;
use impresario_pg::PgJournal;
use impresario_runtime::journal::{Journal, RunEvent, Seq, SqliteJournal};
use impresario_runtime::RunId;
use serde_json::json;

/// Samples of each measurement, taken in interleaved rounds.
const SAMPLES: usize = 7;
/// The run lengths followed.
const LENGTHS: [Seq; 2] = [200, 2_000];
/// Events of the last batch: what a poll finds new when something happened.
const LAST_BATCH: Seq = 4;

/// Journals a run of `events` events in batches of 1, 2, 3 and 4 in turn, the last one of
/// [`LAST_BATCH`].
fn long_run(rt: &tokio::runtime::Runtime, journal: &dyn Journal, run: &RunId, events: Seq) {
    rt.block_on(async {
        let submitted = RunEvent::RunSubmitted {
            tenant: "bench".into(),
            goal: "follow a long run".into(),
            request: json!({}),
        };
        journal.append(run, submitted).await.unwrap();
        let (mut next, last_batch) = (2, events - LAST_BATCH + 1);
        for size in (1..=4).cycle() {
            let end = (next + size).min(last_batch);
            let batch: Vec<RunEvent> = (next..end).map(step_event).collect();
            if !batch.is_empty() {
                journal.append_batch(run, batch).await.unwrap();
            }
            next = end;
            if next == last_batch {
                break;
            }
        }
        let last: Vec<RunEvent> = (last_batch..=events).map(step_event).collect();
        journal.append_batch(run, last).await.unwrap();
    });
    assert_eq!(journal.read(run).unwrap().len() as Seq, events);
}

/// One poll as `follow` did it before `read_after`: the whole run, what was sent dropped.
fn whole_read(journal: &dyn Journal, run: &RunId, after: Seq) -> usize {
    let entries = journal.read(run).unwrap();
    entries.into_iter().filter(|e| e.seq > after).count()
}

/// One poll with `read_after`.
fn read_after(journal: &dyn Journal, run: &RunId, after: Seq) -> usize {
    journal.read_after(run, after).unwrap().len()
}

/// A poll: the journal, the run, the last event sent.
type Poll = fn(&dyn Journal, &RunId, Seq) -> usize;

/// One measured configuration and its samples (mean time per poll).
struct Measure {
    name: String,
    journal: Arc<dyn Journal>,
    run: RunId,
    /// The run's events.
    events: Seq,
    /// The last event sent to the follower.
    after: Seq,
    poll: Poll,
    iters: u32,
    samples: Vec<Duration>,
}

impl Measure {
    /// Checks the poll finds the events after `after`, then times it.
    fn sample(&mut self) {
        let (journal, run, after, poll) = (&*self.journal, &self.run, self.after, self.poll);
        let new = (self.events - after) as usize;
        assert_eq!(poll(journal, run, after), new, "{}", self.name);
        let d = per_iter(self.iters, || {
            black_box(poll(journal, run, after));
        });
        self.samples.push(d);
    }

    fn median(&mut self) -> Duration {
        self.samples.sort();
        median(&self.samples)
    }
}

/// The four polls of a run of `events` in `journal`: whole read and `read_after`, with nothing
/// new and with the last batch new.
fn measures(backend: &str, journal: &Arc<dyn Journal>, run: &RunId, events: Seq) -> Vec<Measure> {
    let mut out = Vec::new();
    for (new, after) in [(0, events), (LAST_BATCH, events - LAST_BATCH)] {
        for (how, poll, iters) in [
            ("whole read", whole_read as Poll, 10),
            ("read_after", read_after as Poll, 200),
        ] {
            out.push(Measure {
                name: format!("{backend}, {events} events, {new} new: {how}"),
                journal: journal.clone(),
                run: run.clone(),
                events,
                after,
                poll,
                iters,
                samples: Vec::new(),
            });
        }
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("impresario-follow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pg = TestCluster::start();
    let sqlite: Arc<dyn Journal> = Arc::new(SqliteJournal::open(dir.join("follow.db")).unwrap());
    let url = pg.create_database("follow_bench");
    let postgres: Arc<dyn Journal> = Arc::new(PgJournal::connect(&url).unwrap());
    let mut all = Vec::new();
    for (backend, journal) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
        for events in LENGTHS {
            let run = RunId::new(format!("followed-{events}"));
            long_run(&rt, journal.as_ref(), &run, events);
            all.extend(measures(backend, journal, &run, events));
        }
    }
    for _ in 0..SAMPLES {
        for m in &mut all {
            m.sample();
        }
    }
    println!("# One poll of a followed run, mean of a sample, median of {SAMPLES} samples");
    println!("# (baseline: the whole read just above)");
    for pair in all.chunks_mut(2) {
        let baseline = pair[0].median();
        row(&pair[0].name, baseline, None);
        let after = pair[1].median();
        let ratio = after.as_secs_f64() / baseline.as_secs_f64();
        println!(
            "{:<58} {:>12}   {ratio:.4}x baseline ({:.0}x faster)",
            pair[1].name,
            fmt(after),
            1.0 / ratio
        );
    }
    drop((sqlite, postgres));
    let _ = std::fs::remove_dir_all(&dir);
}
