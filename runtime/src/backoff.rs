//! Exponential backoff and its jitter: the one helper behind supervisors' restart backoff
//! (`impresario-supervisor`), MCP server restarts, and model-call retries ([`crate::llm`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// `base × 2^attempt`, at most `cap`; saturating, so a huge `attempt` gives `cap`.
pub fn exponential(base: Duration, attempt: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(cap)
}

/// A uniform number in `[0, 1)` for jitter. Each call hashes with a fresh key of std's
/// `RandomState` (randomly seeded per thread, then stepped per call), so callers started at the
/// same moment still draw different numbers. Not for cryptography.
pub fn unit_random() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_up_to_the_cap_and_saturates() {
        let (base, cap) = (Duration::from_millis(10), Duration::from_millis(70));
        let delays: Vec<u128> = (0..5)
            .map(|a| exponential(base, a, cap).as_millis())
            .collect();
        assert_eq!(delays, [10, 20, 40, 70, 70]);
        assert_eq!(exponential(base, 40, cap), cap);
    }

    #[test]
    fn unit_random_is_in_the_unit_interval_and_varies() {
        let draws: Vec<f64> = (0..1000).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
        let distinct: std::collections::HashSet<u64> = draws.iter().map(|u| u.to_bits()).collect();
        assert!(distinct.len() > 990, "{} distinct of 1000", distinct.len());
    }
}
