//! Working memory: one run's key-value scratchpad, with an optional time to live per entry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where working memory reads the time. [`SystemClock`] in production; [`ManualClock`] lets
/// tests move time by hand.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance)d. Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl ManualClock {
    /// A clock reading the current instant, then frozen.
    pub fn new() -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Clone)]
struct Slot {
    value: Value,
    /// `None`: never expires.
    expires: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| now < at)
    }
}

/// A run's key-value memory. An entry put with a TTL is gone once the TTL has passed: reads
/// never see it, and [`purge_expired`](WorkingMemory::purge_expired) frees it.
pub struct WorkingMemory {
    entries: BTreeMap<String, Slot>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WorkingMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkingMemory")
            .field("stored", &self.entries.len())
            .finish()
    }
}

impl Default for WorkingMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkingMemory {
    /// An empty memory on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty memory reading time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        WorkingMemory {
            entries: BTreeMap::new(),
            clock,
        }
    }

    /// Stores `value` under `key`, replacing what was there, for `ttl` from now (`None`: until
    /// removed). Returns the previous value if it had not expired.
    pub fn put(
        &mut self,
        key: impl Into<String>,
        value: Value,
        ttl: Option<Duration>,
    ) -> Option<Value> {
        let now = self.clock.now();
        // A TTL too long to represent as an instant never expires.
        let expires = ttl.and_then(|ttl| now.checked_add(ttl));
        self.entries
            .insert(key.into(), Slot { value, expires })
            .filter(|old| old.live(now))
            .map(|old| old.value)
    }

    /// The value under `key`, unless absent or expired.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let now = self.clock.now();
        self.entries
            .get(key)
            .filter(|s| s.live(now))
            .map(|s| &s.value)
    }

    /// Removes `key`; returns its value if it had not expired.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let now = self.clock.now();
        self.entries
            .remove(key)
            .filter(|s| s.live(now))
            .map(|s| s.value)
    }

    /// The entries that have not expired, sorted by key.
    pub fn entries(&self) -> Vec<(&str, &Value)> {
        let now = self.clock.now();
        self.entries
            .iter()
            .filter(|(_, s)| s.live(now))
            .map(|(k, s)| (k.as_str(), &s.value))
            .collect()
    }

    /// How many entries have not expired.
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        self.entries.values().filter(|s| s.live(now)).count()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees the expired entries; returns how many there were.
    pub fn purge_expired(&mut self) -> usize {
        let now = self.clock.now();
        let before = self.entries.len();
        self.entries.retain(|_, s| s.live(now));
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_expire_exactly_at_their_ttl() {
        let clock = ManualClock::new();
        let mut m = WorkingMemory::with_clock(Arc::new(clock.clone()));
        m.put("short", json!(1), Some(Duration::from_secs(10)));
        m.put("long", json!(2), Some(Duration::from_secs(60)));
        m.put("forever", json!(3), None);
        assert_eq!(m.len(), 3);

        clock.advance(Duration::from_secs(9));
        assert_eq!(m.get("short"), Some(&json!(1)), "1 s before its TTL");
        clock.advance(Duration::from_secs(1));
        assert_eq!(m.get("short"), None, "at its TTL");
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.entries(),
            [("forever", &json!(3)), ("long", &json!(2))],
            "live entries, by key"
        );
        assert_eq!(m.purge_expired(), 1);
        assert_eq!(m.purge_expired(), 0);

        clock.advance(Duration::from_secs(3600));
        assert_eq!(m.get("long"), None);
        assert_eq!(m.remove("long"), None, "an expired value is not returned");
        assert_eq!(m.get("forever"), Some(&json!(3)));
        assert_eq!(m.purge_expired(), 0, "`long` was removed already");
    }

    #[test]
    fn put_replaces_and_resets_the_ttl() {
        let clock = ManualClock::new();
        let mut m = WorkingMemory::with_clock(Arc::new(clock.clone()));
        assert_eq!(m.put("k", json!("a"), Some(Duration::from_secs(5))), None);
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            m.put("k", json!("b"), Some(Duration::from_secs(5))),
            Some(json!("a"))
        );
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            m.get("k"),
            Some(&json!("b")),
            "the new TTL counts from the new put"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            m.put("k", json!("c"), None),
            None,
            "the old value had expired"
        );
        assert_eq!(m.remove("k"), Some(json!("c")));
        assert!(m.is_empty());
    }

    #[test]
    fn a_huge_ttl_never_expires() {
        let clock = ManualClock::new();
        let mut m = WorkingMemory::with_clock(Arc::new(clock.clone()));
        m.put("k", json!(null), Some(Duration::MAX));
        clock.advance(Duration::from_secs(10 * 365 * 24 * 3600));
        assert_eq!(m.get("k"), Some(&json!(null)));
    }
}
