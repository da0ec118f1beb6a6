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

use std::collections::HashMap;

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

/// An inverted index of documents numbered `0, 1, 2, ...` in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct Bm25Index {
    /// For each term, the documents containing it (ascending) and the term's count in each.
    postings: HashMap<String, Vec<(u32, u32)>>,
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
            self.postings.entry(term).or_default().push((doc, tf));
        }
        self.lengths.push(length);
        self.total_length += u64::from(length);
        doc
    }

    /// The documents matching at least one term of `query`, with their scores (all `> 0`), in
    /// no particular order. Empty when the query has no tokens.
    pub(crate) fn score(&self, query: &str) -> Vec<(u32, f64)> {
        let n = self.lengths.len();
        if n == 0 {
            return Vec::new();
        }
        let mut terms: Vec<String> = tokenize(query).collect();
        terms.sort_unstable();
        terms.dedup();
        let avg_length = self.total_length as f64 / n as f64;
        // A dense accumulator: one slot per document, and the list of the ones touched.
        let mut scores = vec![0.0f64; n];
        let mut touched = Vec::new();
        for term in &terms {
            let Some(postings) = self.postings.get(term) else {
                continue;
            };
            let containing = postings.len() as f64;
            let idf = (1.0 + (n as f64 - containing + 0.5) / (containing + 0.5)).ln();
            for &(doc, tf) in postings {
                let tf = f64::from(tf);
                let length = f64::from(self.lengths[doc as usize]);
                let norm = K1 * (1.0 - B + B * length / avg_length.max(f64::MIN_POSITIVE));
                let slot = &mut scores[doc as usize];
                if *slot == 0.0 {
                    touched.push(doc);
                }
                *slot += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        touched
            .into_iter()
            .map(|doc| (doc, scores[doc as usize]))
            .collect()
    }
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

    fn sorted(mut scores: Vec<(u32, f64)>) -> Vec<(u32, f64)> {
        scores.sort_by_key(|&(doc, _)| doc);
        scores
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
        let scores = sorted(corpus().score("failed migration failed"));
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
        let scores = sorted(corpus().score("production deploy"));
        assert!(
            (scores[0].1 - 0.917_918_315_080_445).abs() < 1e-12,
            "{scores:?}"
        );
        assert!(scores[0].1 > scores[1].1);
    }

    #[test]
    fn a_term_in_every_document_still_scores_positive() {
        let scores = corpus().score("the");
        assert_eq!(scores.len(), 3);
        assert!(scores.iter().all(|&(_, s)| s > 0.0), "{scores:?}");
    }

    #[test]
    fn no_tokens_or_no_documents_score_nothing() {
        assert!(corpus().score("?! --").is_empty());
        assert!(corpus().score("kubernetes").is_empty());
        assert!(Bm25Index::default().score("deploy").is_empty());
    }
}
