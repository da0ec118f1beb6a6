//! Opt-in response cache for deterministic requests.
//!
//! Only requests with `temperature == Some(0.0)` are cached. The key is a 128-bit hash of the
//! call's scope (a tenant, from [`CallOptions`](super::CallOptions)) and the request's JSON form
//! (model, messages, tools, schema, `max_tokens`, stop), made of two
//! differently seeded std `DefaultHasher`s: stable within one process, which is all an
//! in-memory cache needs (it is not persisted). The cache holds at most `capacity` answers and
//! evicts the oldest insertion first. It is per [`Client`](super::Client); an answer cached under
//! one scope never serves another, so tenants sharing a client do not share answers.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use super::types::{ChatRequest, ChatResponse};

/// Identity of a cacheable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(u64, u64);

impl CacheKey {
    /// The key of `request` in `scope` (a tenant; `None`: unscoped), or `None` when it is not
    /// deterministic (temperature not 0).
    pub fn of(scope: Option<&str>, request: &ChatRequest) -> Option<CacheKey> {
        if request.temperature != Some(0.0) {
            return None;
        }
        let bytes = serde_json::to_vec(request).ok()?;
        let hash = |seed: u8| {
            let mut h = DefaultHasher::new();
            seed.hash(&mut h);
            scope.hash(&mut h);
            bytes.hash(&mut h);
            h.finish()
        };
        Some(CacheKey(hash(0), hash(1)))
    }
}

/// A bounded map from request to answer.
#[derive(Debug)]
pub struct ResponseCache {
    capacity: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<CacheKey, ChatResponse>,
    order: VecDeque<CacheKey>,
}

impl ResponseCache {
    /// A cache holding at most `capacity` answers (at least one).
    pub fn new(capacity: usize) -> Self {
        ResponseCache {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// The cached answer for `key`.
    pub fn get(&self, key: &CacheKey) -> Option<ChatResponse> {
        self.lock().map.get(key).cloned()
    }

    /// Stores an answer, evicting the oldest when full.
    pub fn insert(&self, key: CacheKey, response: ChatResponse) {
        let mut e = self.lock();
        if e.map.insert(key, response).is_none() {
            e.order.push_back(key);
            while e.order.len() > self.capacity {
                if let Some(old) = e.order.pop_front() {
                    e.map.remove(&old);
                }
            }
        }
    }

    /// How many answers are cached.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // a panic while holding the lock cannot leave the map inconsistent with itself
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::{FinishReason, Usage};

    fn answer(text: &str) -> ChatResponse {
        ChatResponse {
            model: "m".into(),
            content: text.into(),
            tool_calls: vec![],
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
            request_id: None,
            rate_limit: None,
            cost_micro_usd: None,
            cache_hit: false,
        }
    }

    #[test]
    fn only_deterministic_requests_have_keys() {
        let req = ChatRequest::new("m").user("hi");
        assert_eq!(CacheKey::of(None, &req), None);
        assert_eq!(CacheKey::of(None, &req.clone().temperature(0.7)), None);
        let a = CacheKey::of(None, &req.clone().temperature(0.0)).unwrap();
        assert_eq!(Some(a), CacheKey::of(None, &req.clone().temperature(0.0)));
        let tenant_a = CacheKey::of(Some("a"), &req.clone().temperature(0.0));
        assert_ne!(
            tenant_a,
            CacheKey::of(Some("b"), &req.clone().temperature(0.0))
        );
        assert_ne!(
            tenant_a,
            Some(a),
            "a scoped key differs from the unscoped one"
        );
        assert_ne!(
            Some(a),
            CacheKey::of(None, &req.user("more").temperature(0.0))
        );
    }

    #[test]
    fn evicts_the_oldest_beyond_capacity() {
        let cache = ResponseCache::new(2);
        let keys: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|u| CacheKey::of(None, &ChatRequest::new("m").user(*u).temperature(0.0)).unwrap())
            .collect();
        for (k, t) in keys.iter().zip(["a", "b", "c"]) {
            cache.insert(*k, answer(t));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&keys[0]).is_none());
        assert_eq!(cache.get(&keys[2]).unwrap().content, "c");
    }
}
