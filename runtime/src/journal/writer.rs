//! What a stored journal's callers send to its single writer (SQLite's thread, PostgreSQL's
//! task), and how the writer gathers queued appends into one group commit: one protocol for
//! every stored journal.

use crate::RunId;

use super::event::CutValue;
use super::{JournalError, RetentionPolicy, RetentionReport, RunEvent, Seq};

/// Where the writer sends a command's result.
pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T, JournalError>>;

/// A request to the writer.
pub enum Command {
    /// Append a batch (boxed: an append is a few hundred bytes, the others a few dozen).
    Append(Box<Append>),
    /// Apply retention.
    Retention {
        /// What to delete.
        policy: RetentionPolicy,
        /// Its report.
        reply: Reply<RetentionReport>,
    },
    /// Write durably without changing any run ([`super::Journal::probe_write`]).
    Probe {
        /// The result.
        reply: Reply<()>,
    },
}

/// One [`super::Journal::append_batch`]: its events in order, each with its serialized body.
pub struct Append {
    /// The run.
    pub run: RunId,
    /// The events and their JSON.
    pub events: Vec<(RunEvent, String)>,
    /// The shared values cut out of that JSON, to be stored once (the SQLite journal's; empty
    /// for a journal that stores events whole).
    pub blobs: Vec<CutValue>,
    /// The last event's sequence number once durable, or why not.
    pub reply: Reply<Seq>,
}

/// The group commit that starts with `first`: it and the appends queued behind it (taken with
/// `try_next` until the queue is empty or `max` are gathered). A command of another kind met on
/// the way ends the group and is returned, to run next.
pub fn gather(
    first: Append,
    max: usize,
    mut try_next: impl FnMut() -> Option<Command>,
) -> (Vec<Append>, Option<Command>) {
    let mut group = vec![first];
    while group.len() < max {
        match try_next() {
            Some(Command::Append(append)) => group.push(*append),
            other => return (group, other),
        }
    }
    (group, None)
}
