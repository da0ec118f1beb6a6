//! Circuit breakers, one per model (a model belongs to exactly one provider in the price
//! table, so this is one per (provider, model)).
//!
//! Closed: calls pass; `failure_threshold` provider failures in a row (transient HTTP status,
//! network error, timeout; not 4xx, not 429, not cancellation) open it. Open: calls fail at
//! once with [`LlmError::CircuitOpen`](super::LlmError::CircuitOpen), nothing is sent or
//! reserved, until `cool_down` has passed. Half-open: one probe call passes; its success
//! closes the breaker, its failure re-opens it for another cool-down, and other calls are
//! refused while it is in flight. A probe abandoned without an answer (cancelled, rate
//! limited) lets the next call probe.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Breaker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive provider failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// A breaker's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// The cool-down ended: the next call is a probe.
    HalfOpen,
}

impl BreakerState {
    /// The value of `impresario_llm_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub(crate) fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// How an attempt went, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The provider answered (even with a 4xx): it is up.
    Success,
    /// The provider is failing.
    Failure,
    /// Says nothing about the provider's health (cancelled, rate limited).
    Neutral,
}

/// All breakers of a client.
#[derive(Debug)]
pub(crate) struct Breakers {
    config: BreakerConfig,
    states: DashMap<String, State>,
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            states: DashMap::new(),
        }
    }

    /// The state of `model`'s breaker.
    pub(crate) fn state(&self, model: &str) -> BreakerState {
        match self.states.get(model).map(|s| *s) {
            None | Some(State::Closed { .. }) => BreakerState::Closed,
            Some(State::Open { until }) if Instant::now() < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// The models that have a breaker (every model called so far).
    pub(crate) fn models(&self) -> Vec<String> {
        self.states.iter().map(|e| e.key().clone()).collect()
    }

    /// Lets a call through, or says how long until a probe will be allowed (zero while a probe
    /// is in flight).
    pub(crate) fn acquire<'a>(&'a self, model: &'a str) -> Result<Permit<'a>, Duration> {
        let mut state = match self.states.get_mut(model) {
            Some(s) => s,
            None => self
                .states
                .entry(model.to_owned())
                .or_insert(State::Closed { failures: 0 }),
        };
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                true
            }
            State::HalfOpen { probing: true } => return Err(Duration::ZERO),
            State::HalfOpen { probing: false } => true,
        };
        if probe {
            *state = State::HalfOpen { probing: true };
        }
        Ok(Permit {
            breakers: self,
            model,
            probe,
            recorded: false,
        })
    }

    fn record(&self, model: &str, probe: bool, outcome: Outcome) {
        let Some(mut state) = self.states.get_mut(model) else {
            return;
        };
        let open = State::Open {
            until: Instant::now() + self.config.cool_down,
        };
        *state = match (*state, probe, outcome) {
            (State::Closed { .. }, _, Outcome::Success) => State::Closed { failures: 0 },
            (State::Closed { failures }, _, Outcome::Failure) => {
                if failures + 1 >= self.config.failure_threshold {
                    open
                } else {
                    State::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (State::HalfOpen { .. }, true, Outcome::Success) => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, true, Outcome::Failure) => open,
            (State::HalfOpen { .. }, true, Outcome::Neutral) => State::HalfOpen { probing: false },
            // late outcomes of calls let through before the state changed
            (s, _, _) => s,
        };
    }
}

/// Permission for one attempt; report how it went with [`Permit::record`]. Dropping it
/// unrecorded counts as [`Outcome::Neutral`].
pub(crate) struct Permit<'a> {
    breakers: &'a Breakers,
    model: &'a str,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    pub(crate) fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breakers.record(self.model, self.probe, outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breakers
                .record(self.model, self.probe, Outcome::Neutral);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_and_closes() {
        let b = Breakers::new(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(30),
        });
        b.acquire("m").unwrap().record(Outcome::Failure);
        assert_eq!(b.state("m"), BreakerState::Closed);
        b.acquire("m").unwrap().record(Outcome::Failure);
        assert_eq!(b.state("m"), BreakerState::Open);
        assert!(b.acquire("m").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state("m"), BreakerState::HalfOpen);
        let probe = b.acquire("m").unwrap();
        assert_eq!(
            b.acquire("m").err(),
            Some(Duration::ZERO),
            "one probe at a time"
        );
        probe.record(Outcome::Failure);
        assert_eq!(b.state("m"), BreakerState::Open, "failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        drop(b.acquire("m").unwrap()); // abandoned probe
        b.acquire("m").unwrap().record(Outcome::Success);
        assert_eq!(b.state("m"), BreakerState::Closed);
        assert_eq!(b.state("other"), BreakerState::Closed);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = Breakers::new(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_secs(60),
        });
        b.acquire("m").unwrap().record(Outcome::Failure);
        b.acquire("m").unwrap().record(Outcome::Success);
        b.acquire("m").unwrap().record(Outcome::Failure);
        assert_eq!(b.state("m"), BreakerState::Closed);
    }
}
