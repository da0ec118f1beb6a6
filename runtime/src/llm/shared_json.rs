//! JSON values shared between many requests, serialized once.
//!
//! A planner's output schema and its system prompt go into every request of every run, and
//! each request is serialized several times (the journal's `llm_request` event, the response
//! cache's key, the provider's wire body). [`SharedJson`] keeps the value with its compact JSON
//! text, made the first time it is serialized and written as is afterwards: the bytes are the
//! ones `serde_json` writes for the value itself, so stored journals and cache keys do not
//! change. Its SHA-256 ([`JsonDigest`]) is computed once too, on first use: the SQLite journal
//! stores a shared value once per file, under that digest ([`JsonBlob`]).

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A JSON value whose clones share one allocation, one serialization and one digest.
///
/// `T` is a [`Value`] (an output schema: `SharedJson`) or a `String` ([`SharedText`]: a system
/// prompt). It serializes as the value does; a serializer other than `serde_json`'s sees the
/// value's compact JSON as a `serde_json` raw value. It derefs to the value.
pub struct SharedJson<T = Value>(Arc<Shared<T>>);

/// A text shared between requests (a system prompt), serialized once: a [`SharedJson`] of a
/// string. It derefs to the `String`.
pub type SharedText = SharedJson<String>;

/// The types a [`SharedJson`] holds: those whose every value serializes to JSON.
pub trait JsonType: Serialize + Send + Sync + 'static + sealed::Sealed {}

impl JsonType for Value {}
impl JsonType for String {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for serde_json::Value {}
    impl Sealed for String {}
}

struct Shared<T> {
    value: T,
    json: OnceLock<Box<RawValue>>,
    /// The digest, and the digest in hex.
    digest: OnceLock<(JsonDigest, Box<str>)>,
}

/// The SHA-256 of a value's compact JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JsonDigest(pub [u8; 32]);

impl JsonDigest {
    /// The digest of `json`, as it is.
    pub fn of(json: &str) -> Self {
        JsonDigest(Sha256::digest(json.as_bytes()).into())
    }

    /// The digest written as 64 lowercase hexadecimal digits ([`fmt::Display`] writes the same).
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for b in self.0 {
            hex.push(char::from(DIGITS[usize::from(b >> 4)]));
            hex.push(char::from(DIGITS[usize::from(b & 15)]));
        }
        hex
    }

    /// The digest of 64 hexadecimal digits ([`JsonDigest::to_hex`]); `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(JsonDigest(bytes))
    }
}

impl fmt::Display for JsonDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A shared value seen without its type: its compact JSON text and its digest, made once for
/// all the value's clones. What a stored journal keeps once and refers to by digest.
#[derive(Clone)]
pub struct JsonBlob(Arc<dyn Piece>);

/// What a [`JsonBlob`] asks of the shared value behind it.
trait Piece: Send + Sync {
    fn json(&self) -> &str;
    fn digest(&self) -> &(JsonDigest, Box<str>);
}

impl<T: JsonType> Piece for Shared<T> {
    fn json(&self) -> &str {
        self.raw().get()
    }

    fn digest(&self) -> &(JsonDigest, Box<str>) {
        self.digest.get_or_init(|| {
            let digest = JsonDigest::of(self.json());
            (digest, digest.to_hex().into())
        })
    }
}

impl<T: JsonType> Shared<T> {
    fn raw(&self) -> &RawValue {
        self.json.get_or_init(|| {
            // `JsonType`s always serialize: a `Value`'s keys are strings and its numbers finite.
            serde_json::value::to_raw_value(&self.value).expect("a JSON value serializes")
        })
    }
}

impl JsonBlob {
    /// The value's compact JSON text.
    pub fn json(&self) -> &str {
        self.0.json()
    }

    /// The SHA-256 of [`JsonBlob::json`].
    pub fn digest(&self) -> &JsonDigest {
        &self.0.digest().0
    }

    /// [`JsonBlob::digest`] in hex ([`JsonDigest::to_hex`]), made once for all the value's
    /// clones.
    pub fn digest_hex(&self) -> &str {
        &self.0.digest().1
    }
}

impl fmt::Debug for JsonBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonBlob({} bytes)", self.json().len())
    }
}

impl<T: JsonType> SharedJson<T> {
    /// Shares `value`.
    pub fn new(value: T) -> Self {
        SharedJson(Arc::new(Shared {
            value,
            json: OnceLock::new(),
            digest: OnceLock::new(),
        }))
    }

    /// The value's compact JSON text (what `serde_json::to_string` makes of it), made on the
    /// first call.
    pub fn json(&self) -> &str {
        self.0.json()
    }

    /// Whether `a` and `b` are clones of one shared value (not merely equal values).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The value as a [`JsonBlob`] (sharing its text and digest with this value's clones).
    pub fn blob(&self) -> JsonBlob {
        JsonBlob(self.0.clone())
    }
}

impl<T> Clone for SharedJson<T> {
    fn clone(&self) -> Self {
        SharedJson(self.0.clone())
    }
}

impl<T> Deref for SharedJson<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T: JsonType> From<T> for SharedJson<T> {
    fn from(value: T) -> Self {
        SharedJson::new(value)
    }
}

impl From<&str> for SharedText {
    fn from(text: &str) -> Self {
        SharedJson::new(text.to_owned())
    }
}

impl<T: PartialEq> PartialEq for SharedJson<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.value == other.0.value
    }
}

impl<T: fmt::Debug> fmt::Debug for SharedJson<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.value.fmt(f)
    }
}

impl<T: JsonType> Serialize for SharedJson<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.raw().serialize(serializer)
    }
}

impl<'de, T: JsonType + DeserializeOwned> Deserialize<'de> for SharedJson<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(SharedJson::new)
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

    #[test]
    fn a_shared_text_is_the_json_string_and_its_blob_the_digest_of_that() {
        let text = SharedText::from("line 1\n\"quoted\" é");
        let plain = serde_json::to_string("line 1\n\"quoted\" é").unwrap();
        assert_eq!(serde_json::to_string(&text).unwrap(), plain);
        let back: SharedText = serde_json::from_str(&plain).unwrap();
        assert_eq!(back.as_str(), "line 1\n\"quoted\" é");

        let blob = text.clone().blob();
        assert_eq!(blob.json(), plain);
        assert_eq!(*blob.digest(), JsonDigest::of(&plain));
        assert_eq!(blob.digest_hex(), blob.digest().to_hex());
        assert_ne!(*blob.digest(), JsonDigest::of("\"line 1\""));
        // SHA-256 of the three bytes `"a"`, as `sha256sum` prints it.
        let a = SharedText::from("a").blob();
        assert_eq!(
            a.digest().to_hex(),
            "ac8d8342bbb2362d13f0a559a3621bb407011368895164b628a54f7fc33fc43c"
        );
        assert_eq!(
            JsonDigest::from_hex(&a.digest().to_hex()),
            Some(*a.digest())
        );
        assert_eq!(JsonDigest::from_hex("ac8d"), None);
        assert_eq!(JsonDigest::from_hex(&"g".repeat(64)), None);
    }
}
