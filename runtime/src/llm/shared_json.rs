//! A JSON value shared between many requests, serialized once.
//!
//! A planner's output schema goes into every request of every run, and each request is
//! serialized several times (the journal's `llm_request` event, the response cache's key, the
//! provider's wire body). [`SharedJson`] keeps the value with its compact JSON text, made the
//! first time it is serialized and written as is afterwards: the bytes are the ones
//! `serde_json` writes for the value itself, so stored journals and cache keys do not change.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// A JSON value whose clones share one allocation and one serialization.
///
/// It serializes as the value does; a serializer other than `serde_json`'s sees the value's
/// compact JSON as a `serde_json` raw value. It derefs to the [`Value`].
#[derive(Clone)]
pub struct SharedJson(Arc<Shared>);

struct Shared {
    value: Value,
    json: OnceLock<Box<RawValue>>,
}

impl SharedJson {
    /// Shares `value`.
    pub fn new(value: Value) -> Self {
        SharedJson(Arc::new(Shared {
            value,
            json: OnceLock::new(),
        }))
    }

    /// The value's compact JSON text (what `serde_json::to_string` makes of it), made on the
    /// first call.
    pub fn json(&self) -> &str {
        self.raw().get()
    }

    fn raw(&self) -> &RawValue {
        self.0.json.get_or_init(|| {
            // A `Value` always serializes: its keys are strings and its numbers finite.
            serde_json::value::to_raw_value(&self.0.value).expect("a JSON value serializes")
        })
    }
}

impl Deref for SharedJson {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0.value
    }
}

impl From<Value> for SharedJson {
    fn from(value: Value) -> Self {
        SharedJson::new(value)
    }
}

impl PartialEq for SharedJson {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.value == other.0.value
    }
}

impl fmt::Debug for SharedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.value.fmt(f)
    }
}

impl Serialize for SharedJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(SharedJson::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_to_the_bytes_of_the_plain_value() {
        let value = json!({"type": "object", "n": 1.5, "s": "é\"\n", "a": [null, true, {"z": 0}]});
        let shared = SharedJson::new(value.clone());
        let plain = serde_json::to_string(&value).unwrap();
        assert_eq!(serde_json::to_string(&shared).unwrap(), plain);
        assert_eq!(serde_json::to_string(&shared).unwrap(), plain, "reused");
        assert_eq!(shared.json(), plain);
        assert_eq!(serde_json::to_value(&shared).unwrap(), value);
        let back: SharedJson = serde_json::from_str(&plain).unwrap();
        assert_eq!(back, shared);
        assert_eq!(*back, value);
    }
}
