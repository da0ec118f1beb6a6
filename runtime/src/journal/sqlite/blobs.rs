//! Shared values stored once per journal file (schema version 4).
//!
//! A value a run's events share with other runs' events (a planner's system prompt, a plan's
//! output schema: the [`JsonBlob`]s of [`RunEvent::shared_values`] of at least [`MIN_BYTES`] of
//! JSON) is cut out of its event's JSON on the caller's thread ([`cut`]) and `null` is left in
//! its place. The writer stores the value in `blobs` under its SHA-256 (computed once per shared
//! value, not per run: [`JsonDigest`]), unless the file has it already, and lists in the row's
//! `refs` where each value goes: one line per value, `event offset digest` (the event's index in
//! the row, the byte offset of its `null` in that event's stored JSON, the digest in hex).
//! Reading splices each value back in place of its `null` ([`splice`]): an event reads back
//! byte for byte as it was serialized. Rows without `refs` (every row of an older file) read as
//! they are.
//!
//! What a blob holds was in an event: it is as redacted as the event was when it was appended
//! (the runs' events are, before they reach the journal). Retention deletes a blob once no row
//! refers to it ([`delete_unreferenced`]), in the transaction that deletes the runs.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use memchr::memmem;
use rusqlite::{params, Connection, OptionalExtension};

use super::super::event::CutValue;
use super::super::RunEvent;
use crate::llm::{JsonBlob, JsonDigest};

/// Shared values with less JSON than this stay in their events: a reference costs about 80
/// bytes of `refs`.
pub(super) const MIN_BYTES: usize = 256;

/// What stands for a cut value in an event's stored JSON.
const PLACEHOLDER: &str = "null";

/// Cuts the shared values of at least [`MIN_BYTES`] out of `events`' JSON bodies, leaving
/// `null` in their place, and says where each went. A value that does not show in its body is
/// left there (whichever occurrence of a value's bytes is cut, splicing them back restores the
/// same body).
pub(super) fn cut(events: &mut [(RunEvent, String)]) -> Vec<CutValue> {
    let mut cuts = Vec::new();
    for (index, (event, body)) in events.iter_mut().enumerate() {
        let mut found: Vec<(usize, JsonBlob)> = Vec::new();
        let mut from = 0;
        for blob in event.shared_values() {
            let json = blob.json();
            if json.len() < MIN_BYTES {
                continue;
            }
            if let Some(at) = find(body, from, json) {
                from = at + json.len();
                found.push((at, blob));
            }
        }
        if !found.is_empty() {
            *body = cut_out(body, found, index, &mut cuts);
        }
    }
    cuts
}

/// Where `json` is in `body`, from byte `from` on. Its first bytes are looked for, then the rest
/// compared: a searcher made for the whole value would cost more than the search (tens of
/// thousands of instructions to prepare for a 2 KB prompt, at every append).
fn find(body: &str, from: usize, json: &str) -> Option<usize> {
    let (body, json) = (body.as_bytes(), json.as_bytes());
    let head = memmem::Finder::new(&json[..json.len().min(16)]);
    let mut at = from;
    while let Some(i) = head.find(body.get(at..)?) {
        if body[at + i..].starts_with(json) {
            return Some(at + i);
        }
        at += i + 1;
    }
    None
}

/// `body` with each found value (at its byte offset, in order) replaced by `null`, recorded in
/// `cuts` as values of event `index`.
fn cut_out(
    body: &str,
    found: Vec<(usize, JsonBlob)>,
    index: usize,
    cuts: &mut Vec<CutValue>,
) -> String {
    let mut out = String::with_capacity(body.len());
    let mut last = 0;
    for (at, blob) in found {
        out.push_str(&body[last..at]);
        cuts.push(CutValue {
            event: index,
            offset: out.len(),
            blob: blob.clone(),
        });
        out.push_str(PLACEHOLDER);
        last = at + blob.json().len();
    }
    out.push_str(&body[last..]);
    out
}

/// The values the writer knows the file holds, by digest, so that an append does not write
/// again a value an earlier one wrote. Forgotten when another connection committed to the file
/// since (it may have deleted values: retention), when a transaction of the writer failed
/// ([`KnownValues::forget`]: what it wrote is not there), and past [`KNOWN`] values (requests
/// whose large system prompts are all different would otherwise grow it without end).
#[derive(Default)]
pub(super) struct KnownValues {
    digests: HashSet<JsonDigest>,
    /// The file's `PRAGMA data_version` when `digests` was last checked against it.
    data_version: Option<i64>,
}

impl KnownValues {
    /// Stores the values of `cuts` the file does not hold yet (in the writer's transaction)
    /// and returns the row's `refs` column: `None` when nothing was cut.
    pub(super) fn store(
        &mut self,
        tx: &Connection,
        cuts: &[CutValue],
    ) -> rusqlite::Result<Option<String>> {
        if cuts.is_empty() {
            return Ok(None);
        }
        self.check(tx)?;
        if self.digests.len() + cuts.len() > KNOWN {
            self.digests.clear();
        }
        let mut refs = String::with_capacity(cuts.len() * 80);
        for (i, cut) in cuts.iter().enumerate() {
            let hex = cut.blob.digest_hex();
            if self.digests.insert(*cut.blob.digest()) {
                tx.prepare_cached(
                    "INSERT INTO blobs (digest, json) VALUES (?1, ?2) ON CONFLICT (digest) DO NOTHING",
                )?
                .execute(params![hex, cut.blob.json()])?;
            }
            if i > 0 {
                refs.push('\n');
            }
            // Writing to a `String` cannot fail.
            let _ = write!(refs, "{} {} ", cut.event, cut.offset);
            refs.push_str(hex);
        }
        Ok(Some(refs))
    }

    /// Forgets every value known: the writer's transaction failed, or it deleted values.
    pub(super) fn forget(&mut self) {
        self.digests.clear();
        self.data_version = None;
    }

    /// Forgets every value known if another connection committed to the file since the last
    /// check (its own commits do not change `data_version`).
    fn check(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        let version = tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get::<_, i64>(0))?;
        if self.data_version != Some(version) {
            self.digests.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }
}

/// A reference of a stored row: a value of event `event` (index in the row) at `offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Ref {
    pub(super) event: usize,
    pub(super) offset: usize,
    pub(super) digest: JsonDigest,
}

/// The references of a row's `refs` column, in order; what is wrong with it otherwise.
pub(super) fn parse_refs(refs: &str) -> Result<Vec<Ref>, String> {
    refs.split('\n')
        .map(|line| {
            let mut fields = line.split(' ');
            let mut number = || fields.next().and_then(|f| f.parse::<usize>().ok());
            let (event, offset) = (number(), number());
            let digest = fields.next().and_then(JsonDigest::from_hex);
            match (event, offset, digest, fields.next()) {
                (Some(event), Some(offset), Some(digest), None) => Ok(Ref {
                    event,
                    offset,
                    digest,
                }),
                _ => Err(format!(
                    "column `refs` holds `{line}`, not `event offset digest`"
                )),
            }
        })
        .collect()
}

/// `body` (an event's stored JSON) with the values of `refs` (its own, offsets ascending)
/// spliced back in place of their `null`s; what is wrong otherwise.
pub(super) fn splice(
    body: &str,
    refs: &[Ref],
    values: &HashMap<JsonDigest, Arc<str>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(body.len() + 4096);
    let mut last = 0;
    for r in refs {
        let Some(value) = values.get(&r.digest) else {
            return Err(format!(
                "the event refers to stored value {}, which the journal does not hold (intact)",
                r.digest
            ));
        };
        let end = r.offset.saturating_add(PLACEHOLDER.len());
        if r.offset < last || body.get(r.offset..end) != Some(PLACEHOLDER) {
            return Err(format!(
                "column `refs` puts stored value {} at byte {}, where the event has no `null`",
                r.digest, r.offset
            ));
        }
        out.push_str(&body[last..r.offset]);
        out.push_str(value);
        last = end;
    }
    out.push_str(&body[last..]);
    Ok(out)
}

/// Most values a [`KnownValues`] keeps.
const KNOWN: usize = 4096;

/// Stored values already read, by digest (each checked against its digest once): a value never
/// changes under its digest, so the cache is never stale. Bounded: emptied past [`CACHED`].
#[derive(Default)]
pub(super) struct ValueCache(Mutex<HashMap<JsonDigest, Arc<str>>>);

/// Most values a [`ValueCache`] keeps.
const CACHED: usize = 256;

impl ValueCache {
    /// The stored values `refs` refer to, read through `conn` unless cached. A value the file
    /// does not hold, or whose JSON does not match its digest, is left out (the event that
    /// refers to it is then reported corrupt).
    pub(super) fn values<'r>(
        &self,
        conn: &Connection,
        refs: impl Iterator<Item = &'r Ref>,
    ) -> rusqlite::Result<HashMap<JsonDigest, Arc<str>>> {
        let mut values = HashMap::new();
        for r in refs {
            if values.contains_key(&r.digest) {
                continue;
            }
            let cached = self.lock().get(&r.digest).cloned();
            let value = match cached {
                Some(value) => Some(value),
                None => self.read(conn, &r.digest)?,
            };
            if let Some(value) = value {
                values.insert(r.digest, value);
            }
        }
        Ok(values)
    }

    fn read(&self, conn: &Connection, digest: &JsonDigest) -> rusqlite::Result<Option<Arc<str>>> {
        let json: Option<String> = conn
            .prepare_cached("SELECT json FROM blobs WHERE digest = ?1")?
            .query_row([digest.to_hex()], |r| r.get(0))
            .optional()?;
        let Some(json) = json.filter(|j| JsonDigest::of(j) == *digest) else {
            return Ok(None);
        };
        let value: Arc<str> = json.into();
        let mut cache = self.lock();
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(*digest, value.clone());
        Ok(Some(value))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JsonDigest, Arc<str>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Deletes those of the stored values `candidates` (the ones the runs retention deleted
/// referred to) that no row left refers to, in retention's transaction; the number deleted.
/// A value still in use is usually found in the first rows looked at (the runs left use the
/// same prompts); one no longer in use costs a scan of the rows' `refs`.
pub(super) fn delete_unreferenced(
    tx: &Connection,
    candidates: &HashSet<JsonDigest>,
) -> rusqlite::Result<usize> {
    let mut deleted = 0;
    for digest in candidates.iter().map(JsonDigest::to_hex) {
        let used: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM batches WHERE instr(refs, ?1) > 0)")?
            .query_row([&digest], |r| r.get(0))?;
        if !used {
            deleted += tx.execute("DELETE FROM blobs WHERE digest = ?1", [&digest])?;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatRequest, SharedJson, SharedText};
    use serde_json::json;

    fn request(prompt: &SharedText, schema: &SharedJson) -> RunEvent {
        RunEvent::LlmRequest {
            step: 1,
            call: 1,
            request: ChatRequest::new("m")
                .system(prompt.clone())
                .user("the goal")
                .output_schema("plan", schema.clone(), false),
        }
    }

    #[test]
    fn cut_values_splice_back_to_the_same_bytes() {
        let prompt = SharedText::new(format!("You plan.\n\"quoted\" {}", "x".repeat(300)));
        let schema = SharedJson::new(json!({"type": "object", "title": "y".repeat(300)}));
        let small = SharedText::from("short");
        let event = request(&prompt, &schema);
        let other = RunEvent::LlmRequest {
            step: 1,
            call: 2,
            request: ChatRequest::new("m").system(small).user("hi"),
        };
        let whole: Vec<String> = [&event, &other]
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let mut events = vec![(event, whole[0].clone()), (other, whole[1].clone())];
        let cuts = cut(&mut events);
        assert_eq!(cuts.len(), 2, "the short prompt stays in its event");
        assert!(cuts.iter().all(|c| c.event == 0));
        assert!(!events[0].1.contains("xxxx") && !events[0].1.contains("yyyy"));
        assert_eq!(events[1].1, whole[1]);
        let stored: serde_json::Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(stored["request"]["messages"][0]["content"], json!(null));

        let refs: Vec<Ref> = cuts
            .iter()
            .map(|c| Ref {
                event: c.event,
                offset: c.offset,
                digest: *c.blob.digest(),
            })
            .collect();
        let values: HashMap<JsonDigest, Arc<str>> = cuts
            .iter()
            .map(|c| (*c.blob.digest(), c.blob.json().into()))
            .collect();
        assert_eq!(splice(&events[0].1, &refs, &values).unwrap(), whole[0]);
        let err = splice(&events[0].1, &refs, &HashMap::new()).unwrap_err();
        assert!(err.contains("does not hold"), "{err}");
        let moved = [Ref {
            offset: refs[0].offset + 1,
            ..refs[0]
        }];
        let err = splice(&events[0].1, &moved, &values).unwrap_err();
        assert!(err.contains("no `null`"), "{err}");
    }

    #[test]
    fn refs_are_read_back_and_bad_ones_named() {
        let digest = JsonDigest::of("\"a\"");
        let text = format!("0 17 {digest}\n2 5 {digest}");
        let refs = parse_refs(&text).unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[1].event, refs[1].offset, refs[1].digest),
            (2, 5, digest)
        );
        for bad in ["0 17", "x 1 00", &format!("0 1 {digest} 4")] {
            let err = parse_refs(bad).unwrap_err();
            assert!(err.contains("column `refs`"), "{bad}: {err}");
        }
    }
}
