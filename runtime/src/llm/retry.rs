//! When to try a failed call again, and how long to wait first.

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::error::LlmError;
use crate::backoff::{exponential, unit_random};

/// Retry policy of one model call (per model of a fallback chain).
///
/// Only [retryable](LlmError::is_retryable) failures are retried. A provider's
/// `retry-after-ms` / `retry-after` is honoured exactly when it is at most
/// `max_retry_after`; a longer requested wait is not retried at all (the error is returned, so
/// a fallback model can take over). Otherwise the wait is exponential backoff with jitter:
/// `min(base_delay × 2^attempt, max_delay) × (1 − jitter × r)`, `r` uniform in `[0, 1)`.
///
/// Streaming is not implemented, so there is no partially streamed output that a retry could
/// duplicate; every retry resends a request that produced no usable output.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (2 = at most 3 attempts).
    pub max_retries: u32,
    /// First backoff.
    pub base_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
    /// Fraction of the backoff randomly taken off (0.0 to 1.0) so clients do not retry in step.
    pub jitter: f64,
    /// Longest provider-requested wait we honour (120 s by default).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            jitter: 0.25,
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// How long to wait before retry number `attempt + 1` after `err`, or `None` to give up.
    pub fn delay_before_retry(&self, attempt: u32, err: &LlmError) -> Option<Duration> {
        if !err.is_retryable() || attempt >= self.max_retries {
            return None;
        }
        if let Some(wait) = err.retry_after() {
            return (wait <= self.max_retry_after).then_some(wait);
        }
        let capped = exponential(self.base_delay, attempt, self.max_delay);
        Some(capped.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * unit_random()))
    }
}

/// The wait a provider asked for: `retry-after-ms` (OpenAI, milliseconds) or `retry-after`
/// (seconds). The HTTP-date form of `retry-after` is not understood and counts as absent.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    Duration::try_from_secs_f64(number("retry-after")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> LlmError {
        LlmError::Transient {
            status: 500,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_stops() {
        let p = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            jitter: 0.25,
            ..RetryPolicy::default()
        };
        for (attempt, full) in [(0, 100), (1, 200), (2, 300)] {
            let d = p.delay_before_retry(attempt, &transient()).unwrap();
            let full = Duration::from_millis(full);
            assert!(d <= full && d >= full.mul_f64(0.75), "{attempt}: {d:?}");
        }
        assert_eq!(p.delay_before_retry(3, &transient()), None);
        let bad = LlmError::InvalidRequest {
            status: Some(400),
            message: String::new(),
        };
        assert_eq!(p.delay_before_retry(0, &bad), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_limit() {
        let p = RetryPolicy::default();
        let asked = |s| LlmError::RateLimited {
            message: String::new(),
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(
            p.delay_before_retry(0, &asked(7)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            p.delay_before_retry(0, &asked(120)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(p.delay_before_retry(0, &asked(121)), None);
    }

    #[test]
    fn parses_retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_micros(150_500)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
