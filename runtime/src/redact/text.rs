//! The text of a serializable value as redaction sees it, without making its JSON: every
//! string, map key, field name and variant name it serializes, as they are (unescaped), one
//! after another with a NUL between them. What [`super::redact`] could replace in the value's
//! JSON lies inside one of those strings (JSON puts only quotes, `:`, `,`, brackets, numbers,
//! `true`, `false` and `null` between them), so a value whose text holds neither a registered
//! secret nor the start of a credential shape has nothing to redact.

use std::cell::RefCell;
use std::fmt;

use serde::ser::{self, Serialize};

/// Whether `value` may hold something [`super::redact`] replaces in its JSON: true when its
/// text holds a registered secret or a word a credential shape starts with, or when it cannot
/// be gathered (then its JSON is looked at).
pub(super) fn may_need_redaction(value: &impl Serialize) -> bool {
    thread_local! {
        // Reused: a model request's text is kilobytes, gathered at every journaled request.
        static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
    }
    BUFFER.with(|buffer| {
        let Ok(mut buffer) = buffer.try_borrow_mut() else {
            return true;
        };
        buffer.clear();
        let mut text = Text(&mut buffer);
        let gathered = value.serialize(&mut text).is_ok();
        !gathered || super::may_hold_credentials(&buffer)
    })
}

/// Gathers the text of what is serialized into it.
struct Text<'a>(&'a mut String);

impl Text<'_> {
    fn push(&mut self, s: &str) {
        self.0.push_str(s);
        self.0.push('\0');
    }
}

/// A value that cannot be gathered (a serializer's custom error).
#[derive(Debug)]
struct Ungathered;

impl fmt::Display for Ungathered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the value's text could not be gathered")
    }
}

impl std::error::Error for Ungathered {}

impl ser::Error for Ungathered {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Ungathered
    }
}

type Done = Result<(), Ungathered>;

/// What holds no text: numbers, booleans, nothing.
macro_rules! no_text {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Done { Ok(()) })*
    };
}

impl ser::Serializer for &mut Text<'_> {
    type Ok = ();
    type Error = Ungathered;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    no_text!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_char(self, v: char) -> Done {
        self.push(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Done {
        self.push(v);
        Ok(())
    }

    fn serialize_none(self) -> Done {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Done {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Done {
        self.push(variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Done {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Done {
        self.push(variant);
        value.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Ungathered> {
        Ok(self)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self, Ungathered> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Ungathered> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, Ungathered> {
        self.push(variant);
        Ok(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, Ungathered> {
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Ungathered> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Ungathered> {
        self.serialize_tuple_variant(name, index, variant, len)
    }
}

/// Sequences, tuples and their variants: their elements' text.
macro_rules! elements {
    ($($kind:ident :: $method:ident),* $(,)?) => {
        $(impl ser::$kind for &mut Text<'_> {
            type Ok = ();
            type Error = Ungathered;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
                value.serialize(&mut **self)
            }
            fn end(self) -> Done {
                Ok(())
            }
        })*
    };
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for &mut Text<'_> {
    type Ok = ();
    type Error = Ungathered;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Done {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

/// Structs and struct variants: their field names and their fields' text.
macro_rules! fields {
    ($($kind:ident),* $(,)?) => {
        $(impl ser::$kind for &mut Text<'_> {
            type Ok = ();
            type Error = Ungathered;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> Done {
                self.push(name);
                value.serialize(&mut **self)
            }
            fn end(self) -> Done {
                Ok(())
            }
        })*
    };
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::super::{redact, redact_serialized, register};
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Event {
        Call {
            authorization: Option<String>,
            args: BTreeMap<String, serde_json::Value>,
            tags: Vec<char>,
        },
        Note {
            text: String,
        },
        Plain,
    }

    /// The text gathered of `value`, NULs shown as `|`.
    fn text(value: &impl Serialize) -> String {
        let mut buffer = String::new();
        value.serialize(&mut Text(&mut buffer)).unwrap();
        buffer.replace('\0', "|")
    }

    #[test]
    fn the_text_is_every_string_key_field_and_variant_name() {
        let event = Event::Call {
            authorization: Some("x".into()),
            args: BTreeMap::from([("k".into(), json!({"n": [1, "two", null, true]}))]),
            tags: vec!['c'],
        };
        assert_eq!(
            text(&event),
            "type|call|authorization|x|args|k|n|two|tags|c|"
        );
        assert_eq!(text(&Event::Plain), "type|plain|");
        assert_eq!(text(&(1, 2.5, false)), "");
    }

    /// The slow path alone: JSON, redacted, read back.
    fn through_json<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        let json = serde_json::to_string(value).unwrap();
        let clean = redact(&json);
        serde_json::from_str(&clean).unwrap_or_else(|e| panic!("{clean}: {e}"))
    }

    #[test]
    fn values_redact_as_their_json_does() {
        register("sk-text-gather-0123456789");
        let args = |v: serde_json::Value| BTreeMap::from([("a".to_string(), v)]);
        let call = |auth: Option<&str>, v| Event::Call {
            authorization: auth.map(str::to_owned),
            args: args(v),
            tags: Vec::new(),
        };
        let cases = [
            Event::Note {
                text: "nothing to see".into(),
            },
            Event::Note {
                text: "key sk-text-gather-0123456789".into(),
            },
            Event::Note {
                text: "see https://user:pw-secret@host/x".into(),
            },
            call(Some("abcdefghij"), json!(1)),
            call(None, json!({"api_key": "zzzzzzzzzz"})),
            call(None, json!(["Bearer q1w2e3r4t5y6", 3])),
            call(None, json!({"deep": {"x-api-key": "k-12345678"}})),
            call(None, json!({"u": "https://x", "k": "p@h"})),
            call(
                None,
                json!({"$schema": "https://json-schema.org/draft/2020-12/schema"}),
            ),
            Event::Plain,
        ];
        for case in cases {
            assert_eq!(
                redact_serialized(case.clone()),
                through_json(&case),
                "{case:?}"
            );
        }
        assert!(!may_need_redaction(&Event::Note {
            text: "nothing to see".into(),
        }));
        assert!(may_need_redaction(&call(Some("abcdefghij"), json!(1))));
        // Every JSON schema names its dialect by URL: no user in it, nothing to redact.
        let schema = json!({"$schema": "https://json-schema.org/draft/2020-12/schema"});
        assert!(!may_need_redaction(&schema));
        assert!(may_need_redaction(&json!(["https://me:pw@host"])));
    }
}
