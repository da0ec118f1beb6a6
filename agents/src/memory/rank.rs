//! Okapi BM25 over an inverted index: the default ranking of long-term memory, with no
//! external service.
//!
//! Text is split by [`tokenize`] into lowercase runs of letters and digits. A document's score
//! for a query is, over the query's distinct terms `t`,
//!
//! ```text
//! idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))
//! idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))
//! ```
//!
//! with `k1 = 1.2`, `b = 0.75`, `tf` the term's count in the document, `len` the document's
//! length in tokens, `N` the number of documents and `n(t)` how many contain `t`. The `1 +`
//! inside the logarithm (as in Lucene) keeps the idf positive for terms most documents contain,
//! so a matching document never scores below a document that does not match.
//!
//! [`Bm25Index::top`] finds the best `k` documents without scoring every match when it can: it
//! walks the matching documents newest first and stops once no older one can rank among the
//! `k` found (each term's posting list keeps a bound on what it adds to any score), so a
//! memory of many similar records is recalled in about `k` steps instead of one per record.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// Term frequency saturation.
pub const K1: f64 = 1.2;
/// Length normalization.
pub const B: f64 = 0.75;

/// Splits `text` into lowercase tokens: maximal runs of alphanumeric characters.
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// The documents containing one term (ascending) with the term's count in each, and what
/// bounds the term's part of any of their scores.
#[derive(Debug, Default)]
struct Postings {
    docs: Vec<(u32, u32)>,
    /// The largest count of the term in one document.
    max_tf: u32,
    /// The length of the shortest document containing it.
    min_length: u32,
}

/// One term of a query, as [`Bm25Index::top`] walks it.
#[derive(Debug, Clone, Copy)]
struct Term<'a> {
    idf: f64,
    /// Its posting list.
    docs: &'a [(u32, u32)],
    /// The most it adds to any score of `docs`.
    bound: f64,
}

/// What one term adds to a document's score (`idf` of the term, its count `tf` in a document
/// of `length` tokens). Increasing in `tf`, decreasing in `length`: with the largest count and
/// the shortest length of a posting list it bounds every document of the list.
fn part(idf: f64, tf: u32, length: u32, avg_length: f64) -> f64 {
    let tf = f64::from(tf);
    let norm = K1 * (1.0 - B + B * f64::from(length) / avg_length.max(f64::MIN_POSITIVE));
    idf * tf * (K1 + 1.0) / (tf + norm)
}

/// An inverted index of documents numbered `0, 1, 2, ...` in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct Bm25Index {
    /// For each term, the documents containing it.
    postings: HashMap<String, Postings>,
    /// Length in tokens of each document.
    lengths: Vec<u32>,
    /// Sum of `lengths`.
    total_length: u64,
}

impl Bm25Index {
    /// Indexes `text` as the next document and returns its number.
    pub(crate) fn add(&mut self, text: &str) -> u32 {
        let doc = u32::try_from(self.lengths.len()).expect("fewer than 2^32 documents");
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut length = 0u32;
        for token in tokenize(text) {
            *counts.entry(token).or_default() += 1;
            length = length.saturating_add(1);
        }
        for (term, tf) in counts {
            let postings = self.postings.entry(term).or_default();
            if postings.docs.is_empty() {
                postings.min_length = length;
            }
            postings.docs.push((doc, tf));
            postings.max_tf = postings.max_tf.max(tf);
            postings.min_length = postings.min_length.min(length);
        }
        self.lengths.push(length);
        self.total_length += u64::from(length);
        doc
    }

    /// The query's distinct terms that some document contains, in term order, each with its
    /// idf, its posting list and the bound of its part of a score.
    fn terms(&self, query: &str, avg_length: f64) -> Vec<Term<'_>> {
        let n = self.lengths.len() as f64;
        let mut terms: Vec<String> = tokenize(query).collect();
        terms.sort_unstable();
        terms.dedup();
        terms
            .iter()
            .filter_map(|term| self.postings.get(term))
            .map(|p| {
                let containing = p.docs.len() as f64;
                let idf = (1.0 + (n - containing + 0.5) / (containing + 0.5)).ln();
                let bound = part(idf, p.max_tf, p.min_length, avg_length);
                Term {
                    idf,
                    docs: &p.docs,
                    bound,
                }
            })
            .collect()
    }

    /// The `k` documents best for `query` under `order` (best first: higher score first, then
    /// as `order` says on equal scores), with their scores (all `> 0`); only documents
    /// matching at least one term. Walks the matches newest first, scoring each (its terms
    /// summed in term order, as the bound is), and stops when no older document can enter:
    /// none can score above the `k`-th found, and `tie(newest, kth)` says none numbered
    /// `newest` or less would rank before `kth` at an equal score.
    pub(crate) fn top(
        &self,
        query: &str,
        k: usize,
        order: impl Fn(&(u32, f64), &(u32, f64)) -> Ordering,
        tie: impl Fn(u32, &(u32, f64)) -> bool,
    ) -> Vec<(u32, f64)> {
        self.walk(query, k, order, tie).0
    }

    /// [`Bm25Index::top`], and how many documents it scored.
    fn walk(
        &self,
        query: &str,
        k: usize,
        order: impl Fn(&(u32, f64), &(u32, f64)) -> Ordering,
        tie: impl Fn(u32, &(u32, f64)) -> bool,
    ) -> (Vec<(u32, f64)>, usize) {
        let n = self.lengths.len();
        let k = k.min(n);
        if k == 0 {
            return (Vec::new(), 0);
        }
        let avg_length = self.total_length as f64 / n as f64;
        let terms = self.terms(query, avg_length);
        // Each term's cursor: how many of its postings are left (walked from the end).
        let mut left: Vec<usize> = terms.iter().map(|t| t.docs.len()).collect();
        let mut next: BinaryHeap<(u32, Reverse<usize>)> = (0..terms.len())
            .filter_map(|t| terms[t].docs.last().map(|&(doc, _)| (doc, Reverse(t))))
            .collect();
        let mut parts = vec![0.0f64; terms.len()];
        let mut best: Vec<(u32, f64)> = Vec::with_capacity(2 * k);
        // The k-th best so far (stale between selections: never better, so safe to stop on).
        let mut kth: Option<(u32, f64)> = None;
        let mut scored = 0;
        while let Some(&(doc, _)) = next.peek() {
            if let Some(kth) = &kth {
                let bound = bound(&terms, &left);
                if bound < kth.1 || (bound == kth.1 && !tie(doc, kth)) {
                    break;
                }
            }
            parts.iter_mut().for_each(|p| *p = 0.0);
            while let Some(&(d, Reverse(t))) = next.peek() {
                if d != doc {
                    break;
                }
                next.pop();
                left[t] -= 1;
                let Term { idf, docs, .. } = terms[t];
                parts[t] = part(idf, docs[left[t]].1, self.lengths[doc as usize], avg_length);
                if let Some(&(older, _)) = left[t].checked_sub(1).map(|i| &docs[i]) {
                    next.push((older, Reverse(t)));
                }
            }
            // In term order from 0.0, like the bound: a score never exceeds its bound.
            best.push((doc, parts.iter().fold(0.0, |sum, p| sum + p)));
            scored += 1;
            if best.len() == k || best.len() == 2 * k {
                kth = Some(keep_best(&mut best, k, &order));
            }
        }
        (best_first(best, k, order), scored)
    }
}

/// The `k` best of `found` under `order`, best first.
pub(crate) fn best_first(
    mut found: Vec<(u32, f64)>,
    k: usize,
    order: impl Fn(&(u32, f64), &(u32, f64)) -> Ordering,
) -> Vec<(u32, f64)> {
    if found.len() > k {
        keep_best(&mut found, k, &order);
    }
    found.sort_unstable_by(order);
    found
}

/// Keeps the `k` best of `found` (`0 < k <= found.len()`, left in no particular order) under
/// `order`; the `k`-th.
fn keep_best(
    found: &mut Vec<(u32, f64)>,
    k: usize,
    order: impl Fn(&(u32, f64), &(u32, f64)) -> Ordering,
) -> (u32, f64) {
    found.select_nth_unstable_by(k - 1, order);
    found.truncate(k);
    found[k - 1]
}

/// The most a document not walked yet can score: the sum of the bounds of the terms with
/// postings left (in term order, as scores are summed).
fn bound(terms: &[Term<'_>], left: &[usize]) -> f64 {
    terms
        .iter()
        .zip(left)
        .fold(0.0, |sum, (t, &l)| sum + if l > 0 { t.bound } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Bm25Index {
        let mut index = Bm25Index::default();
        for text in [
            "deploy the web service to production",
            "The database migration FAILED.",
            "rollback the production deploy after failed migration",
        ] {
            index.add(text);
        }
        index
    }

    /// Every matching document's score, by scoring every posting (what `top` must agree
    /// with), in document order.
    fn score(index: &Bm25Index, query: &str) -> Vec<(u32, f64)> {
        let n = index.lengths.len();
        let avg_length = index.total_length as f64 / n.max(1) as f64;
        let mut scores = vec![0.0f64; n];
        for Term { idf, docs, .. } in index.terms(query, avg_length) {
            for &(doc, tf) in docs {
                scores[doc as usize] += part(idf, tf, index.lengths[doc as usize], avg_length);
            }
        }
        (0..n as u32)
            .map(|doc| (doc, scores[doc as usize]))
            .filter(|&(_, s)| s > 0.0)
            .collect()
    }

    /// Higher score first, then the later document.
    fn later_first(a: &(u32, f64), b: &(u32, f64)) -> Ordering {
        b.1.total_cmp(&a.1).then(b.0.cmp(&a.0))
    }

    /// Higher score first, then the earlier document.
    fn earlier_first(a: &(u32, f64), b: &(u32, f64)) -> Ordering {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    }

    /// Every match, through `top`.
    fn all(index: &Bm25Index, query: &str) -> Vec<(u32, f64)> {
        index.top(query, usize::MAX, earlier_first, |_, _| true)
    }

    fn sorted(mut scores: Vec<(u32, f64)>) -> Vec<(u32, f64)> {
        scores.sort_by_key(|&(doc, _)| doc);
        scores
    }

    /// A corpus of `n` texts from a small vocabulary (a fixed pseudo-random sequence), so
    /// scores tie and differ in every way.
    fn random_corpus(n: usize, seed: u64) -> Bm25Index {
        const WORDS: [&str; 12] = [
            "deploy",
            "web",
            "service",
            "production",
            "database",
            "migration",
            "failed",
            "rollback",
            "cache",
            "queue",
            "the",
            "retry",
        ];
        let mut state = seed;
        let mut next = move |bound: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % bound
        };
        let mut index = Bm25Index::default();
        for _ in 0..n {
            let length = 1 + next(8);
            let words: Vec<&str> = (0..length).map(|_| WORDS[next(12) as usize]).collect();
            index.add(&words.join(" "));
        }
        index
    }

    #[test]
    fn top_is_the_head_of_every_score_sorted() {
        let queries = [
            "deploy",
            "failed migration",
            "the cache queue retry",
            "web web",
            "x",
        ];
        for seed in 0..20 {
            let index = random_corpus(200, seed);
            for query in queries {
                for k in [1, 3, 10, 500] {
                    // An older document never wins a tie, or always may.
                    for (order, tie) in [
                        (later_first as fn(&_, &_) -> Ordering, false),
                        (earlier_first, true),
                    ] {
                        let mut every = score(&index, query);
                        every.sort_by(order);
                        every.truncate(k);
                        let top = index.top(query, k, order, |_, _| tie);
                        assert_eq!(top, every, "seed {seed}, {query:?}, k {k}, tie {tie}");
                    }
                }
            }
        }
    }

    #[test]
    fn many_equal_documents_are_walked_in_about_k_steps() {
        let mut index = Bm25Index::default();
        for _ in 0..10_000 {
            index.add("bench goal: answered done");
        }
        index.add("something else entirely");
        let (top, scored) = index.walk("bench goal", 3, later_first, |_, _| false);
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [9_999, 9_998, 9_997]
        );
        assert_eq!(scored, 3, "stops once no older document can rank higher");
        // An older document may win a tie: documents of equal score cannot be skipped.
        let (top, scored) = index.walk("bench goal", 3, earlier_first, |_, _| true);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(scored, 10_000);
    }

    #[test]
    fn a_better_old_document_is_found_past_many_new_ones() {
        let mut index = Bm25Index::default();
        index.add("failed migration failed migration");
        for _ in 0..1_000 {
            index.add("a long text that mentions a migration once among many other words");
        }
        let (top, scored) = index.walk("failed migration", 2, later_first, |_, _| false);
        assert_eq!(top[0].0, 0, "{top:?}");
        assert_eq!(top[1].0, 1_000);
        assert_eq!(
            scored, 1_001,
            "the bound of `failed` keeps the walk going to it"
        );
    }

    #[test]
    fn tokens_are_lowercase_alphanumeric_runs() {
        let tokens: Vec<String> = tokenize("Deploy v2.1 -- to prod_EU, ÉTÉ!").collect();
        assert_eq!(tokens, ["deploy", "v2", "1", "to", "prod", "eu", "été"]);
    }

    #[test]
    fn scores_match_a_hand_computation() {
        // N = 3 documents of 6, 4 and 7 tokens: avg_len = 17/3.
        // "failed" and "migration" are each in 2 documents: idf = ln(1 + 1.5/2.5) = ln 1.6.
        // Document 1 (4 tokens, tf 1): norm = 1.2 * (0.25 + 0.75 * 4 / (17/3)) = 1.2 * 0.779412
        //   term = ln 1.6 * 2.2 / (1 + 0.935294) = 0.470004 * 1.136778 = 0.534290; two terms.
        // Document 2 (7 tokens): norm = 1.2 * (0.25 + 0.75 * 21/17) = 1.411765
        //   term = 0.470004 * 2.2 / 2.411765 = 0.428735; two terms.
        let scores = sorted(all(&corpus(), "failed migration failed"));
        assert_eq!(scores.len(), 2, "document 0 matches no term: {scores:?}");
        assert_eq!(scores[0].0, 1);
        assert!(
            (scores[0].1 - 1.068_579_679_865_685).abs() < 1e-12,
            "{scores:?}"
        );
        assert_eq!(scores[1].0, 2);
        assert!(
            (scores[1].1 - 0.857_470_035_794_659).abs() < 1e-12,
            "{scores:?}"
        );
    }

    #[test]
    fn the_shorter_document_wins_at_equal_term_counts() {
        let scores = sorted(all(&corpus(), "production deploy"));
        assert!(
            (scores[0].1 - 0.917_918_315_080_445).abs() < 1e-12,
            "{scores:?}"
        );
        assert!(scores[0].1 > scores[1].1);
    }

    #[test]
    fn a_term_in_every_document_still_scores_positive() {
        let scores = all(&corpus(), "the");
        assert_eq!(scores.len(), 3);
        assert!(scores.iter().all(|&(_, s)| s > 0.0), "{scores:?}");
    }

    #[test]
    fn no_tokens_or_no_documents_score_nothing() {
        assert!(all(&corpus(), "?! --").is_empty());
        assert!(all(&corpus(), "kubernetes").is_empty());
        assert!(all(&Bm25Index::default(), "deploy").is_empty());
    }
}
