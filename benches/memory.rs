//! Long-term memory recall latency with BM25, against a baseline measured in the same run.
//!
//! A synthetic corpus of 1,000 and 10,000 records: goal, text and why of about 45 words drawn
//! from a Zipf-distributed vocabulary of 5,000 words (a few very common words, a long tail),
//! with a deterministic generator. 100 queries of 3 to 5 words from the same distribution.
//! **Ours:** `LongTermMemory::recall(query, 5)`: tokenize the query, walk its terms' postings,
//! score, select and sort the top 5, clone those 5 records. **Baseline:** a linear scan over
//! the records pre-tokenized (outside the timing) that counts, per record, the tokens that are
//! query words, then keeps the 5 best counts: the least a "search everything" memory does.
//! Samples of the two alternate, so drift hits both; 21 samples of 100 queries each, median
//! (and p90) of the per-query mean.
//!
//! **Stored recall** (second table): recall from long-term memory in a SQLite file
//! (`MemoryDb`, as the service keeps it) among records of about 20 KB (goals like the RSS
//! benchmark's: a few words repeated with a counter), the query being another such goal (as a
//! run recalls with its goal), k = 3. Measured with 100 records of the tenant (the baseline),
//! 1,000, 5,000 and 10,000 of the tenant, and 100 of the tenant beside 5,000 of another tenant. **Before:** the
//! previous design measured in the same run (the record's whole text in FTS5, the tenant
//! filtered after the match, BM25 over every match), rebuilt here with rusqlite: 100 and 5,000
//! records. Samples of 4 recalls, 11 samples, median per recall.
//!
//! Run: `cargo bench --bench memory`

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use common::{median, quantile, row};
use impresario_agents::memory::rank::tokenize;
use std::sync::Arc;

use impresario_agents::memory::{
    query_terms, LongTermMemory, LongTermStore, MemoryDb, MemoryRecord, Outcome, Retention,
};
use impresario_runtime::RunId;

const VOCABULARY: usize = 5_000;
const QUERIES: usize = 100;
const SAMPLES: usize = 21;
const K: usize = 5;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Draws word ranks with probability proportional to 1 / (rank + 1).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|i| {
                total += 1.0 / (i as f64 + 1.0);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn draw(&self, rng: &mut Rng) -> usize {
        let total = *self.cumulative.last().unwrap();
        let x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cumulative.partition_point(|&c| c < x)
    }
}

/// A pronounceable word for each rank: "bakelo", "tiru", ...
fn word(rank: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ba", "ke", "lo", "ti", "ru", "sa", "me", "no", "pi", "da", "fu", "go", "he", "ji", "ka",
        "zu",
    ];
    let mut n = rank + 16;
    let mut w = String::new();
    while n > 0 {
        w.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    w
}

fn sentence(words: &[String], zipf: &Zipf, rng: &mut Rng, len: u64) -> String {
    let n = len + rng.below(len / 2 + 1);
    (0..n)
        .map(|_| words[zipf.draw(rng)].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn corpus(n: usize, words: &[String], zipf: &Zipf, rng: &mut Rng) -> Vec<MemoryRecord> {
    (0..n)
        .map(|i| MemoryRecord {
            run: RunId::new(format!("run-{i}")),
            goal: sentence(words, zipf, rng, 8),
            text: sentence(words, zipf, rng, 20),
            outcome: [Outcome::Succeeded, Outcome::Failed, Outcome::Halted][i % 3],
            why: sentence(words, zipf, rng, 8),
            tags: vec![words[zipf.draw(rng)].clone()],
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64),
        })
        .collect()
}

/// The baseline: count the record tokens that are query words, keep the `K` best. The query's
/// few words are compared directly (faster than hashing every record token).
fn linear_scan(records: &[Vec<String>], query: &str) -> Vec<(usize, usize)> {
    let words: Vec<String> = tokenize(query).collect();
    let mut best: Vec<(usize, usize)> = records
        .iter()
        .enumerate()
        .map(|(i, tokens)| (i, tokens.iter().filter(|t| words.contains(*t)).count()))
        .filter(|&(_, n)| n > 0)
        .collect();
    best.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    best.truncate(K);
    best
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    in_process_recall(&rt);
    stored_recall(&rt);
}

/// Recall from the in-process memory against a linear scan, 1,000 and 10,000 records.
fn in_process_recall(rt: &tokio::runtime::Runtime) {
    let words: Vec<String> = (0..VOCABULARY).map(word).collect();
    let zipf = Zipf::new(VOCABULARY);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let queries: Vec<String> = (0..QUERIES)
        .map(|_| sentence(&words, &zipf, &mut rng, 3))
        .collect();

    println!("# Long-term memory recall (k = {K}), {QUERIES} queries a sample, median (p90) of {SAMPLES} samples");
    for n in [1_000, 10_000] {
        let records = corpus(n, &words, &zipf, &mut rng);
        let tokenized: Vec<Vec<String>> = records
            .iter()
            .map(|r| tokenize(&r.search_text()).collect())
            .collect();
        let memory = LongTermMemory::new();
        let start = Instant::now();
        rt.block_on(async {
            for r in records {
                memory.remember(r).await.unwrap();
            }
        });
        let per_record = start.elapsed() / n as u32;

        let (mut ours, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            let start = Instant::now();
            for q in &queries {
                black_box(linear_scan(&tokenized, q));
            }
            baseline.push(start.elapsed() / QUERIES as u32);
            let start = Instant::now();
            rt.block_on(async {
                for q in &queries {
                    black_box(memory.recall(q, K).await.unwrap());
                }
            });
            ours.push(start.elapsed() / QUERIES as u32);
        }
        ours.sort();
        baseline.sort();
        let (b, o) = (median(&baseline), median(&ours));
        row(
            &format!("baseline: linear scan counting matching tokens, {n} records"),
            b,
            None,
        );
        row(&format!("BM25 recall, {n} records"), o, Some(b));
        println!(
            "{:<58} {:>12} / {}",
            "  p90 (baseline / BM25)",
            common::fmt(quantile(&baseline, 0.9)),
            common::fmt(quantile(&ours, 0.9))
        );
        row(
            &format!("remember (index one record), {n} records"),
            per_record,
            None,
        );
    }
}

/// Recalls a stored recall's sample makes.
const STORED_QUERIES: usize = 4;
/// Samples of the stored recall.
const STORED_SAMPLES: usize = 11;

/// A goal of about 20 KB, different for each `n` (as `benches/rss.rs` submits).
fn big_goal(n: usize) -> String {
    let mut goal = format!("Task {n}: summarize what changed. ");
    while goal.len() < 20_000 {
        goal.push_str(&format!(
            "Detail {} of task {n} about the release notes. ",
            goal.len()
        ));
    }
    goal
}

fn big_record(n: usize) -> MemoryRecord {
    MemoryRecord {
        run: RunId::new(format!("run-{n}")),
        goal: big_goal(n),
        text: "answered from the notes".into(),
        outcome: Outcome::Succeeded,
        why: "the goal was reached".into(),
        tags: Vec::new(),
        at: SystemTime::now(),
    }
}

/// A fresh memory file under the temporary folder; `tenants` lists (tenant, records).
fn stored(rt: &tokio::runtime::Runtime, name: &str, tenants: &[(&str, usize)]) -> LongTermMemory {
    let path = stored_path(name);
    let db: Arc<dyn LongTermStore> = Arc::new(MemoryDb::open(&path, Retention::default()).unwrap());
    let mut n = 0;
    rt.block_on(async {
        for (tenant, records) in tenants {
            let memory = LongTermMemory::stored(db.clone(), *tenant);
            for _ in 0..*records {
                memory.remember(big_record(n)).await.unwrap();
                n += 1;
            }
        }
    });
    LongTermMemory::stored(db, "acme")
}

fn stored_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("impresario-bench-{name}-{}", std::process::id()))
}

/// The previous design: whole texts in FTS5, the tenant filtered after the match.
fn whole_text(records: usize) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE memory (id INTEGER PRIMARY KEY, tenant TEXT, at_ms INTEGER, record TEXT);
         CREATE VIRTUAL TABLE memory_text USING fts5 (text, tokenize = 'unicode61');",
    )
    .unwrap();
    for n in 0..records {
        let record = big_record(n);
        let json = serde_json::to_string(&record).unwrap();
        conn.execute(
            "INSERT INTO memory (tenant, at_ms, record) VALUES ('acme', ?1, ?2)",
            rusqlite::params![n as i64, json],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO memory_text (rowid, text) VALUES (last_insert_rowid(), ?1)",
            [record.search_text()],
        )
        .unwrap();
    }
    conn
}

fn whole_text_recall(conn: &rusqlite::Connection, query: &str) -> Vec<String> {
    let terms: Vec<String> = query_terms(query)
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect();
    let mut statement = conn
        .prepare_cached(
            "SELECT m.record FROM memory_text JOIN memory m ON m.id = memory_text.rowid
             WHERE memory_text MATCH ?1 AND m.tenant = 'acme'
             ORDER BY bm25(memory_text), m.at_ms DESC, m.id DESC LIMIT 3",
        )
        .unwrap();
    statement
        .query_map([terms.join(" OR ")], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The median time of one recall by `recall`, over the queries.
fn median_recall(queries: &[String], mut recall: impl FnMut(&str)) -> Duration {
    let mut samples: Vec<Duration> = (0..STORED_SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for q in queries {
                recall(q);
            }
            start.elapsed() / queries.len() as u32
        })
        .collect();
    samples.sort();
    median(&samples)
}

/// Recall from the SQLite file among 20 KB records: 100 vs 5,000, and the previous design.
fn stored_recall(rt: &tokio::runtime::Runtime) {
    let queries: Vec<String> = (0..STORED_QUERIES)
        .map(|i| big_goal(1_000_000 + i))
        .collect();
    println!("# Stored recall (SQLite file, records of 20 KB, k = 3), median of {STORED_SAMPLES} samples of {STORED_QUERIES} recalls");
    let recall_in = |memory: LongTermMemory| {
        median_recall(&queries, |q| {
            black_box(rt.block_on(memory.recall(q, 3)).unwrap());
        })
    };
    let base = recall_in(stored(rt, "100", &[("acme", 100)]));
    row("baseline: recall, tenant of 100 records", base, None);
    for n in [1_000, 5_000, 10_000] {
        let many = recall_in(stored(rt, &n.to_string(), &[("acme", n)]));
        row(&format!("recall, tenant of {n} records"), many, Some(base));
    }
    let crowded = recall_in(stored(rt, "crowded", &[("other", 5_000), ("acme", 100)]));
    row(
        "recall, 100 records beside 5,000 of another tenant",
        crowded,
        Some(base),
    );
    let before = |records: usize| {
        let conn = whole_text(records);
        median_recall(&queries, |q| {
            black_box(whole_text_recall(&conn, q));
        })
    };
    let before_base = before(100);
    row(
        "before: whole texts in FTS5, 100 records",
        before_base,
        Some(base),
    );
    let before_many = before(5_000);
    row(
        "before: whole texts in FTS5, 5,000 records",
        before_many,
        Some(base),
    );
    println!(
        "{:<58} {:>12.2}x",
        "  before: 5,000 / 100 records",
        before_many.as_secs_f64() / before_base.as_secs_f64()
    );
    for name in ["100", "1000", "5000", "10000", "crowded"] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", stored_path(name).display()));
        }
    }
}
