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
//! Run: `cargo bench --bench memory`

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use common::{median, quantile, row};
use impresario_agents::memory::rank::tokenize;
use impresario_agents::memory::{LongTermMemory, MemoryRecord, Outcome};
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
