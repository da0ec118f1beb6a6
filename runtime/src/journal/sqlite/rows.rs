//! How the SQLite journal stores a run's events (schema version 5): one row of `batches` per
//! append (a commit point's events: their kinds and their JSON, one per line, numbered from
//! the row's `first_seq`; shared values cut out of them are in `blobs`, where `refs` says:
//! `sqlite/blobs.rs`), the run's row in `runs`, and its tool calls' idempotency keys in
//! `tool_keys`. One row per append instead of one per event is what keeps a commit cheap: a
//! run of 2 model calls and a tool call writes 4 rows and 4 index entries, not 13 of each.
//! The run's row holds what changes only with its status (tenant, status, start, when the
//! status was set) and is written only when the run starts or its status changes (twice in
//! that run, not at each of its 4 commits); its last event (number, kind, time) is read from
//! its last row of `batches`.
//!
//! Writing checks every event of an append before writing any; reading validates every event
//! and names the run and the sequence number of anything wrong, never a skip.

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension, Row};

use std::collections::HashMap;
use std::sync::Arc;

use super::super::event::{check_append, decode, KeyUse, RunHead, StoredEvent, StoredRun};
use super::super::writer::Append;
use super::super::{
    empty_batch, in_batch, JournalEntry, JournalError, RunEvent, Seq, EVENT_VERSION,
};
use super::blobs::{parse_refs, splice, KnownValues, Ref, ValueCache};
use crate::llm::JsonDigest;
use crate::RunId;

/// What separates the events of a row. Compact JSON (`serde_json::to_string`, what every
/// journal stores) never holds a raw line break: one inside a string is written `\n`.
const SEPARATOR: char = '\n';

/// Checks the events of one append, then writes them as one row (and the values cut out of
/// them the file does not hold, `known` says), all or none: every event is
/// checked before anything is written, so a refusal writes nothing (no savepoint to roll back).
/// The run's head is read once and its row written once, whatever the number of events. Outer
/// error: storage failed (the caller's transaction is then dropped, nothing of it written);
/// inner: an event was refused, and none was written.
pub(super) fn insert_all(
    tx: &Connection,
    append: &Append,
    known: &mut KnownValues,
    at_ms: i64,
) -> rusqlite::Result<Result<Seq, JournalError>> {
    let Append {
        run, events, blobs, ..
    } = append;
    let Some((last, _)) = events.last() else {
        return Ok(Err(empty_batch(run)));
    };
    let first = match run_head(tx, run)? {
        Ok(head) => head,
        Err(corrupt) => return Ok(Err(corrupt)),
    };
    let mut head = first;
    for (i, (event, _)) in events.iter().enumerate() {
        let key_use = key_use(tx, run, event, &events[..i], first)?;
        if let Err(refused) = check_append(run, head.as_ref(), event, |_| key_use) {
            return Ok(Err(in_batch(refused, i, events.len())));
        }
        head = Some(RunHead {
            status: event.status_after(),
            last_seq: head.map_or(1, |h| h.last_seq + 1),
        });
    }
    let first_seq = first.map_or(1, |h| h.last_seq + 1);
    let refs = known.store(tx, blobs)?;
    insert_batch(tx, run, events, refs, first_seq, at_ms)?;
    let tenant = match events.first() {
        Some((RunEvent::RunSubmitted { tenant, .. }, _)) => tenant.as_str(),
        _ => "",
    };
    let seq = head.map_or(0, |h| h.last_seq);
    if first.is_none_or(|stored| stored.status != last.status_after()) {
        write_run_row(tx, run, tenant, last, at_ms)?;
    }
    Ok(Ok(seq))
}

/// The run's stored status (its row) and last sequence number (its last row of `batches`)
/// (`None`: a new run). Inner error: the stored status is not one this build knows, or the
/// run has a row but no events.
fn run_head(
    tx: &Connection,
    run: &RunId,
) -> rusqlite::Result<Result<Option<RunHead>, JournalError>> {
    let head = tx
        .prepare_cached(
            "SELECT r.status, b.first_seq, b.kinds FROM runs r
             LEFT JOIN batches b ON b.run_id = r.run_id
             WHERE r.run_id = ?1 ORDER BY b.first_seq DESC LIMIT 1",
        )?
        .query_row([run.as_str()], |r| {
            let status: String = r.get(0)?;
            let last = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<String>>(2)?) {
                (Some(first_seq), Some(kinds)) => Some(last_event(first_seq, &kinds).0),
                _ => None,
            };
            Ok((status, last))
        })
        .optional()?;
    Ok(match head {
        None => Ok(None),
        Some((status, Some(last_seq))) => RunHead::parse(run, &status, last_seq).map(Some),
        Some((_, None)) => Err(JournalError::Corrupt {
            run: run.clone(),
            seq: 1,
            reason: "the run has a row in `runs` but no events".into(),
        }),
    })
}

/// The number and kind of the last event of a row of `batches` (`first_seq`, `kinds`).
fn last_event(first_seq: i64, kinds: &str) -> (i64, &str) {
    let count = kinds.split(SEPARATOR).count() as i64;
    let kind = kinds.rsplit(SEPARATOR).next().unwrap_or_default();
    (first_seq + count - 1, kind)
}

/// The columns of `runs` and of each run's last row of `batches` that [`stored_run`] reads,
/// for a query `FROM runs r` ([`RUNS_JOIN`]).
pub(super) const RUNS_COLUMNS: &str =
    "r.run_id, r.tenant, r.status, b.first_seq, b.kinds, r.started_ms, b.at_ms";

/// Joins each run (`r`) to its last row of `batches` (`b`).
pub(super) const RUNS_JOIN: &str = "JOIN batches b ON b.run_id = r.run_id
     AND b.first_seq = (SELECT max(first_seq) FROM batches WHERE run_id = r.run_id)";

/// A run as [`RUNS_COLUMNS`] read it: its row, and its last event from its last row of events.
pub(super) fn stored_run(r: &Row<'_>) -> rusqlite::Result<StoredRun> {
    let kinds: String = r.get(4)?;
    let (last_seq, last_event) = last_event(r.get(3)?, &kinds);
    Ok(StoredRun {
        id: r.get(0)?,
        tenant: r.get(1)?,
        status: r.get(2)?,
        last_seq,
        last_event: last_event.to_owned(),
        started_ms: r.get(5)?,
        updated_ms: r.get(6)?,
    })
}

/// For a tool result: whether its idempotency key already has an intent and a result in `run`,
/// stored or among `before` (the events of its append before it, to be numbered from after
/// `head`, the run's stored head).
fn key_use(
    tx: &Connection,
    run: &RunId,
    event: &RunEvent,
    before: &[(RunEvent, String)],
    head: Option<RunHead>,
) -> rusqlite::Result<KeyUse> {
    let mut key_use = KeyUse::default();
    let (RunEvent::ToolResult { .. }, Some(key)) = (event, event.idempotency_key()) else {
        return Ok(key_use);
    };
    let stored = tx
        .prepare_cached("SELECT result_seq FROM tool_keys WHERE run_id = ?1 AND idem_key = ?2")?
        .query_row(params![run.as_str(), key], |r| r.get::<_, Option<i64>>(0))
        .optional()?;
    if let Some(result) = stored {
        // A key's row is written with its first intent.
        key_use.intent = true;
        key_use.result = result.map(|seq| seq as Seq);
    }
    let first_seq = head.map_or(1, |h| h.last_seq + 1);
    for (seq, (earlier, _)) in (first_seq..).zip(before) {
        match earlier {
            _ if earlier.idempotency_key() != Some(key) => {}
            RunEvent::ToolResult { .. } => key_use.result = Some(seq),
            _ => key_use.intent = true,
        }
    }
    Ok(key_use)
}

/// Writes accepted `events` as one row, numbered from `first_seq`, with `refs` (the values
/// cut out of them, already stored), and their idempotency keys.
fn insert_batch(
    tx: &Connection,
    run: &RunId,
    events: &[(RunEvent, String)],
    refs: Option<String>,
    first_seq: Seq,
    at_ms: i64,
) -> rusqlite::Result<()> {
    let mut kinds = String::new();
    let mut bodies = String::with_capacity(events.iter().map(|(_, b)| b.len() + 1).sum());
    for (i, (event, body)) in events.iter().enumerate() {
        if i > 0 {
            kinds.push(SEPARATOR);
            bodies.push(SEPARATOR);
        }
        // Bodies come from `serialize_batch`: compact JSON, never a raw line break.
        debug_assert!(!body.contains(SEPARATOR), "a body of one line");
        kinds.push_str(event.kind());
        bodies.push_str(body);
    }
    tx.prepare_cached(
        "INSERT INTO batches (run_id, first_seq, at_ms, version, kinds, bodies, refs)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        run.as_str(),
        first_seq as i64,
        at_ms,
        EVENT_VERSION,
        kinds,
        bodies,
        refs
    ])?;
    for (seq, (event, _)) in (first_seq..).zip(events) {
        record_key(tx, run, event, seq)?;
    }
    Ok(())
}

/// Records the idempotency key of a tool call's intent (its first) or result (number `seq`).
fn record_key(tx: &Connection, run: &RunId, event: &RunEvent, seq: Seq) -> rusqlite::Result<()> {
    let Some(key) = event.idempotency_key() else {
        return Ok(());
    };
    let result = matches!(event, RunEvent::ToolResult { .. }).then_some(seq as i64);
    tx.prepare_cached(
        "INSERT INTO tool_keys (run_id, idem_key, result_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (run_id, idem_key) DO UPDATE
             SET result_seq = coalesce(excluded.result_seq, result_seq)",
    )?
    .execute(params![run.as_str(), key, result])?;
    Ok(())
}

/// Writes `run`'s row with the status after `last` (`tenant`: from its submission, kept only
/// when the row is new).
fn write_run_row(
    tx: &Connection,
    run: &RunId,
    tenant: &str,
    last: &RunEvent,
    at_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO runs (run_id, tenant, status, started_ms, status_ms)
         VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (run_id) DO UPDATE SET status = excluded.status,
             status_ms = excluded.status_ms",
    )?
    .execute(params![
        run.as_str(),
        tenant,
        last.status_after().as_str(),
        at_ms
    ])?;
    Ok(())
}

/// Deletes every stored event of `run` (not its row).
pub(super) fn delete_events(tx: &Connection, run: &RunId) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM tool_keys WHERE run_id = ?1", [run.as_str()])?;
    tx.execute("DELETE FROM batches WHERE run_id = ?1", [run.as_str()])?;
    Ok(())
}

/// The stored rows of `run`, in order, not decoded yet.
fn raw_batches(conn: &Connection, run: &RunId) -> rusqlite::Result<Vec<RawBatch>> {
    conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE run_id = ?1 ORDER BY first_seq"
    ))?
    .query_map([run.as_str()], RawBatch::from_row)?
    .collect()
}

/// The stored rows of `run`, in order, and the stored values they refer to (through `cache`):
/// what [`decode_all`] decodes.
pub(super) fn read_rows(
    conn: &Connection,
    run: &RunId,
    cache: &ValueCache,
) -> rusqlite::Result<(Vec<RawBatch>, StoredValues)> {
    let rows = raw_batches(conn, run)?;
    let values = values_of(conn, &rows, cache)?;
    Ok((rows, values))
}

/// The stored values `rows` refer to, read through `conn` unless `cache` has them.
pub(super) fn values_of(
    conn: &Connection,
    rows: &[RawBatch],
    cache: &ValueCache,
) -> rusqlite::Result<StoredValues> {
    // A row whose `refs` does not parse is reported when it is decoded, naming its events.
    let refs: Vec<Ref> = rows
        .iter()
        .filter_map(|row| parse_refs(row.refs()?).ok())
        .flatten()
        .collect();
    cache.values(conn, refs.iter())
}

/// The stored values some rows refer to, by digest.
pub(super) type StoredValues = HashMap<JsonDigest, Arc<str>>;

/// `rows`, the stored rows of `run`, validated and decoded (events numbered from 1, no gap),
/// the values they refer to taken from `values`.
pub(super) fn decode_all(
    run: &RunId,
    rows: &[RawBatch],
    values: &StoredValues,
) -> Result<Vec<JournalEntry>, JournalError> {
    let mut entries = Vec::with_capacity(rows.len());
    let mut expected = 1;
    for row in rows {
        expected = row.decode(run, (expected, 1), values, &mut entries)?;
    }
    Ok(entries)
}

/// The stored rows of `run` that hold its events after `after`, in order, not decoded yet: the
/// row holding event `after + 1` (the last one starting at or before it, found in the key
/// `(run_id, first_seq)`) and every row after it. No row before it is read.
pub(super) fn raw_batches_after(
    conn: &Connection,
    run: &RunId,
    after: Seq,
) -> rusqlite::Result<Vec<RawBatch>> {
    let from = i64::try_from(after).map_or(i64::MAX, |a| a.saturating_add(1));
    conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE run_id = ?1 AND first_seq >= coalesce(
             (SELECT first_seq FROM batches WHERE run_id = ?1 AND first_seq <= ?2
              ORDER BY first_seq DESC LIMIT 1), ?2)
         ORDER BY first_seq"
    ))?
    .query_map(params![run.as_str(), from], RawBatch::from_row)?
    .collect()
}

/// `rows`, from [`raw_batches_after`], validated and decoded from event `after + 1` on (no
/// gap): the events of the first row up to `after` are cut, not decoded. The values they refer
/// to are taken from `values`.
pub(super) fn decode_after(
    run: &RunId,
    after: Seq,
    rows: &[RawBatch],
    values: &StoredValues,
) -> Result<Vec<JournalEntry>, JournalError> {
    let from = after.saturating_add(1);
    let mut entries = Vec::new();
    // The first row may start before `from` (it is cut there); a row starting after it means
    // event `from` is missing, which decoding it from `from` reports.
    let mut expected = rows
        .first()
        .and_then(RawBatch::first_seq)
        .filter(|first| *first < from)
        .unwrap_or(from);
    for row in rows {
        expected = row.decode(run, (expected, from), values, &mut entries)?;
    }
    Ok(entries)
}

/// A row of `batches` as stored, before validation (any column may hold anything).
pub(super) struct RawBatch([SqlValue; 6]);

const BATCH_COLUMNS: &str = "first_seq, at_ms, version, kinds, bodies, refs";

impl RawBatch {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawBatch([
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
        ]))
    }

    /// The row's stored `first_seq`, if it holds a sequence number.
    fn first_seq(&self) -> Option<Seq> {
        match self.0[0] {
            SqlValue::Integer(first) => Seq::try_from(first).ok(),
            _ => None,
        }
    }

    /// The row's `refs`, if it has any (a row of an older file has none).
    fn refs(&self) -> Option<&str> {
        match &self.0[5] {
            SqlValue::Text(refs) => Some(refs),
            _ => None,
        }
    }

    /// Validates the row, whose first event is expected to be number `expected` of `run`, and
    /// pushes its events numbered `from` or more, decoded (the values they refer to spliced
    /// back in from `values`), onto `out` (the ones before are counted, not decoded). Returns
    /// the number the next row's first event is expected to have.
    fn decode(
        &self,
        run: &RunId,
        (expected, from): (Seq, Seq),
        values: &StoredValues,
        out: &mut Vec<JournalEntry>,
    ) -> Result<Seq, JournalError> {
        let row = self.columns(run, expected)?;
        let lines = row.kinds.split(SEPARATOR).zip(row.bodies.split(SEPARATOR));
        let cut = usize::try_from(from.saturating_sub(expected)).unwrap_or(usize::MAX);
        for (i, (kind, body)) in lines.enumerate().skip(cut) {
            let seq = expected + i as Seq;
            let own: Vec<Ref> = row.refs.iter().filter(|r| r.event == i).copied().collect();
            let whole;
            let body = if own.is_empty() {
                body
            } else {
                whole = splice(body, &own, values).map_err(|reason| JournalError::Corrupt {
                    run: run.clone(),
                    seq,
                    reason,
                })?;
                &whole
            };
            let stored = StoredEvent {
                seq: row.first_seq.saturating_add(i as i64),
                at_ms: row.at_ms,
                version: row.version,
                kind,
                body,
            };
            out.push(decode(run, seq, stored)?);
        }
        Ok(expected + row.count as Seq)
    }
    /// The row's columns, checked: numbers and texts where they belong, as many kinds as
    /// bodies, and `refs` that read and name events of the row.
    fn columns(&self, run: &RunId, expected: Seq) -> Result<Columns<'_>, JournalError> {
        let [first_seq, at_ms, version, kinds, bodies, _] = &self.0;
        let corrupt = |reason: String| JournalError::Corrupt {
            run: run.clone(),
            seq: expected,
            reason,
        };
        let holds =
            |column: &str, value: &SqlValue| corrupt(format!("column `{column}` holds {value:?}"));
        let int = |column: &str, value: &SqlValue| match value {
            SqlValue::Integer(i) => Ok(*i),
            other => Err(holds(column, other)),
        };
        fn text(value: &SqlValue) -> Option<&str> {
            match value {
                SqlValue::Text(s) => Some(s),
                _ => None,
            }
        }
        let (first_seq, at_ms, version) = (
            int("first_seq", first_seq)?,
            int("at_ms", at_ms)?,
            int("version", version)?,
        );
        let kinds = text(kinds).ok_or_else(|| holds("kinds", kinds))?;
        let bodies = text(bodies).ok_or_else(|| holds("bodies", bodies))?;
        let (count, n_bodies) = (
            kinds.split(SEPARATOR).count(),
            bodies.split(SEPARATOR).count(),
        );
        if count != n_bodies {
            return Err(corrupt(format!(
                "the row of events {first_seq}.. holds {count} kinds but {n_bodies} bodies"
            )));
        }
        let refs = self.refs().map_or(Ok(Vec::new()), parse_refs);
        let refs = refs.map_err(&corrupt)?;
        if let Some(r) = refs.iter().find(|r| r.event >= count) {
            let reason = format!("column `refs` names event {} of a row of {count}", r.event);
            return Err(corrupt(reason));
        }
        Ok(Columns {
            count,
            first_seq,
            at_ms,
            version,
            kinds,
            bodies,
            refs,
        })
    }
}

/// A row's columns, checked ([`RawBatch::columns`]).
struct Columns<'a> {
    /// How many events the row holds.
    count: usize,
    first_seq: i64,
    at_ms: i64,
    version: i64,
    kinds: &'a str,
    bodies: &'a str,
    refs: Vec<Ref>,
}
