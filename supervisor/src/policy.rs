//! Restart policy: which children restart (strategy, restart type), how often before giving up
//! (intensity), and how long to wait first (backoff). OTP's semantics with Akka's backoff.

use std::time::{Duration, Instant};

use impresario_runtime::backoff::exponential;

/// Which children restart when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Only the failed child.
    #[default]
    OneForOne,
    /// Every child: the others are stopped (newest first), then all start again in order.
    OneForAll,
    /// The failed child and every child started after it.
    RestForOne,
}

/// Whether a child is restarted when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartType {
    /// Always, even after a normal exit.
    #[default]
    Permanent,
    /// Only after a failure (panic, kill, `fail`).
    Transient,
    /// Never; it is removed when it exits.
    Temporary,
}

/// At most `max_restarts` restarts within `period`; one more and the supervisor gives up:
/// it stops its children and escalates to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within `period`.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Default for Intensity {
    /// 3 restarts in 5 seconds.
    fn default() -> Self {
        Intensity {
            max_restarts: 3,
            period: Duration::from_secs(5),
        }
    }
}

/// Delay before a restart, as Akka's `BackoffSupervisor` computes it:
/// `min(max_backoff, min_backoff * 2^attempt) * (1 + random_factor * r)` with `r` in `[0, 1)`.
/// The attempt count resets when the child had run for `reset_after` before failing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub min_backoff: Duration,
    /// The largest delay before jitter.
    pub max_backoff: Duration,
    /// Jitter: up to this fraction is added (0.2 = up to 20 % longer).
    pub random_factor: f64,
    /// A child that ran this long before failing starts again from `min_backoff`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// Restart at once: OTP's behaviour. Set a `min_backoff` to slow restart storms down.
    fn default() -> Self {
        Backoff {
            min_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            random_factor: 0.0,
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before restart number `attempt` (0-based), with jitter drawn from `unit`
    /// (`impresario_runtime::backoff::unit_random()`, or a fixed number in tests)
    /// (a number in `[0, 1)`).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let cap = self.max_backoff.max(self.min_backoff);
        exponential(self.min_backoff, attempt, cap)
            .mul_f64(1.0 + self.random_factor.max(0.0) * unit.clamp(0.0, 1.0))
    }
}

/// The restarts within the intensity window.
#[derive(Debug, Default)]
pub(crate) struct RestartWindow {
    times: std::collections::VecDeque<Instant>,
}

impl RestartWindow {
    /// Records a restart at `now`; false if it is one more than the intensity allows.
    pub(crate) fn admit(&mut self, intensity: &Intensity, now: Instant) -> bool {
        while let Some(&oldest) = self.times.front() {
            if now.duration_since(oldest) > intensity.period {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.push_back(now);
        self.times.len() <= intensity.max_restarts as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_adds_bounded_jitter() {
        let b = Backoff {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(70),
            random_factor: 0.5,
            reset_after: Duration::from_secs(1),
        };
        let plain: Vec<u128> = (0..5).map(|a| b.delay(a, 0.0).as_millis()).collect();
        assert_eq!(plain, [10, 20, 40, 70, 70]);
        assert_eq!(b.delay(1, 0.999).as_millis(), 29); // 20 * 1.4995
        assert_eq!(b.delay(40, 0.0).as_millis(), 70, "huge attempts saturate");
    }

    #[test]
    fn window_allows_max_restarts_within_the_period_then_refuses() {
        let intensity = Intensity {
            max_restarts: 2,
            period: Duration::from_secs(5),
        };
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        assert!(w.admit(&intensity, t0));
        assert!(w.admit(&intensity, t0 + Duration::from_secs(1)));
        assert!(!w.admit(&intensity, t0 + Duration::from_secs(2)));
        // Past the period the old ones no longer count.
        let mut w = RestartWindow::default();
        assert!(w.admit(&intensity, t0));
        assert!(w.admit(&intensity, t0 + Duration::from_secs(1)));
        assert!(w.admit(&intensity, t0 + Duration::from_secs(7)));
    }
}
