//! Request bodies: read under the size limit (413 past it) and the read timeout (408 past it:
//! a stalled upload does not hold its connection), parsed as a JSON object (400 if it is not
//! one), then taken field by field so that a bad value is a 422 naming its field.

use std::time::Duration;

use actix_web::web;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::errors::ApiError;

/// The fields of a JSON object body not taken yet.
pub struct Fields(Map<String, Value>);

/// How much body a request may send, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Larger bodies get 413 (`server.body_limit_bytes`).
    pub bytes: usize,
    /// Bodies still arriving after this get 408 (`server.body_timeout_secs`).
    pub read_timeout: Duration,
}

/// Reads the body (an empty body is an empty object).
pub async fn read(payload: web::Payload, limits: Limits) -> Result<Fields, ApiError> {
    let read = payload.to_bytes_limited(limits.bytes);
    let bytes = tokio::time::timeout(limits.read_timeout, read)
        .await
        .map_err(|_| ApiError::body_timeout(limits.read_timeout))?
        .map_err(|_| ApiError::too_large(limits.bytes))?
        .map_err(|e| ApiError::malformed(format!("could not read the body: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields(Map::new()));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Fields(map)),
        Ok(_) => Err(ApiError::malformed("the body must be a JSON object")),
        Err(e) => Err(ApiError::malformed(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

impl Fields {
    /// The field, if present and not null.
    pub fn take<T: DeserializeOwned>(&mut self, field: &str) -> Result<Option<T>, ApiError> {
        match self.0.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value)
                .map(Some)
                .map_err(|e| ApiError::invalid(field, e)),
        }
    }

    /// Whether the field is present (even as `null`).
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// The field, which must be present.
    pub fn require<T: DeserializeOwned>(&mut self, field: &str) -> Result<T, ApiError> {
        self.take(field)?
            .ok_or_else(|| ApiError::invalid(field, "is required"))
    }

    /// Fails on the first field nobody took: an unknown field is a mistake, not something to
    /// ignore.
    pub fn done(self) -> Result<(), ApiError> {
        match self.0.keys().next() {
            Some(field) => Err(ApiError::invalid(
                field.clone(),
                "is not a field of this request",
            )),
            None => Ok(()),
        }
    }
}
