//! Embeddings for long-term memory: the [`Embedder`] trait a vector model implements, cosine
//! similarity, and [`HashingEmbedder`], a deterministic embedder that needs no model.

use futures_util::future::BoxFuture;

use super::rank::tokenize;
use super::MemoryError;

/// Turns texts into vectors of a fixed length, e.g. by calling an embedding model.
///
/// [`LongTermMemory`](super::LongTermMemory) checks every answer: one vector per text, each of
/// exactly [`dimensions`](Embedder::dimensions) finite numbers; anything else is rejected with
/// [`MemoryError::Dimension`] or [`MemoryError::BadInput`] and nothing is stored.
pub trait Embedder: Send + Sync {
    /// One vector per text, in the same order. Report a failure of the model or service as
    /// [`MemoryError::Embedder`].
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>>;

    /// The length of every vector this embedder returns.
    fn dimensions(&self) -> usize;
}

/// Cosine similarity of two vectors of the same length, in `[-1, 1]`; `0` when either is the
/// zero vector.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        dot / (aa.sqrt() * bb.sqrt())
    }
}

/// A bag-of-words embedder by feature hashing: each token of [`tokenize`] adds `+1` or `-1`
/// (by one bit of its hash) to the coordinate its hash selects.
///
/// It is deterministic across processes and platforms (64-bit FNV-1a), free and instant, but
/// lexical: it matches shared words, not meanings. Use it for tests and offline runs, or as a
/// stand-in until a real embedding model is configured.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dimensions: usize,
}

impl HashingEmbedder {
    /// An embedder of `dimensions` coordinates (a few hundred keep collisions rare for short
    /// texts).
    ///
    /// # Panics
    /// If `dimensions` is 0.
    pub fn new(dimensions: usize) -> Self {
        assert!(
            dimensions > 0,
            "a HashingEmbedder needs at least one dimension"
        );
        HashingEmbedder { dimensions }
    }

    fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimensions];
        for token in tokenize(text) {
            let h = fnv1a(token.as_bytes());
            let slot = (h % self.dimensions as u64) as usize;
            v[slot] += if h >> 63 == 0 { 1.0 } else { -1.0 };
        }
        v
    }
}

impl Embedder for HashingEmbedder {
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>> {
        let vectors = texts.iter().map(|t| self.vector(t)).collect();
        Box::pin(async move { Ok(vectors) })
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[-3.0, 0.0]) + 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn hashing_is_deterministic_and_case_insensitive() {
        let e = HashingEmbedder::new(64);
        let a = e.vector("Deploy the service");
        assert_eq!(a, e.vector("deploy THE service"));
        assert_eq!(
            a.iter().map(|x| x.abs()).sum::<f32>(),
            3.0,
            "3 tokens, 3 unit votes"
        );
        // FNV-1a of "a" is a published test vector: the hashing is the same on every platform.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
