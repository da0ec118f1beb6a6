//! Streamed text across the replicas of a cluster (docs/ARCHITECTURE.md, "Cluster"): the replica
//! driving a streaming run publishes its models' text as it arrives (the run's `delta` events,
//! which the journal does not keep) as notifications on [`CHANNEL`]; every replica follows the
//! channel ([`PgDeltas::follow_here`]) and hands each [`Delta`] to the event streams that follow
//! that run there ([`PgDeltas::subscribe`]).
//!
//! - A notification is `{"run", "step", "text"}` as JSON. A text whose JSON would make the
//!   payload too long for PostgreSQL (under 8,000 bytes) is sent as several, in order.
//! - Best effort, like the driver's own stream: NOTIFY is not stored. A delta notified while a
//!   follower's connection is down, or that a slow stream falls behind on, is lost to it; the
//!   journaled answer still arrives whole.
//! - NOTIFY goes to every listening connection: every replica receives every streaming run's
//!   text, and drops what no stream of its own follows.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_postgres::Client;

use crate::database::Database;
use crate::listener::{Follower, Listener};

/// The `LISTEN/NOTIFY` channel of streamed text.
pub const CHANNEL: &str = "impresario_deltas";

/// The most bytes of escaped text one notification carries (PostgreSQL refuses a payload of
/// 8,000 bytes or more; the rest is the run's id and the step).
const MAX_TEXT: usize = 7_000;

/// How many deltas a replica keeps for streams that fall behind.
const BUFFERED: usize = 1_024;

/// A piece of a model's answer in a run, as it arrived where the run is driven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The run's id.
    pub run: String,
    /// The step the model call belongs to (as the run's `delta` event has it).
    pub step: u32,
    /// The text.
    pub text: String,
}

/// This replica's end of the channel (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgDeltas {
    db: Database,
    arrived: broadcast::Sender<Arc<Delta>>,
}

impl PgDeltas {
    /// The channel on `db` (connected).
    pub fn new(db: Database) -> Self {
        PgDeltas {
            db,
            arrived: broadcast::channel(BUFFERED).0,
        }
    }

    /// Notifies every replica of `delta` (several notifications if it is long, in one
    /// transaction that does not wait for its commit record's flush), on the database's I/O
    /// thread. An error says why it was not sent; nothing retries it.
    pub async fn publish(&self, delta: &Delta) -> Result<(), String> {
        let payloads = payloads(delta);
        let pool = self.db.pool().clone();
        let sent = self.db.spawn(async move {
            let mut client = pool.get().await.map_err(|e| e.to_string())?;
            let tx = client.transaction().await.map_err(|e| e.to_string())?;
            // A notification's transaction writes a commit record: best effort needs no flush.
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .map_err(|e| e.to_string())?;
            for payload in &payloads {
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, payload])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().await.map_err(|e| e.to_string())
        });
        sent.await
            .map_err(|_| "the database's I/O thread stopped".to_owned())?
    }

    /// Follows the channel from this process for as long as the returned [`Follower`] lives,
    /// handing every delta to [`subscribe`](Self::subscribe)rs.
    pub fn follow_here(&self) -> Follower {
        let config = self.db.config().clone();
        let forward = Forward(self.arrived.clone());
        Follower::start(config, CHANNEL, forward, self.db.runtime())
    }

    /// Every delta that arrives from now on, of every run (filter by [`Delta::run`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Delta>> {
        self.arrived.subscribe()
    }
}

/// `delta` as notification payloads, each under PostgreSQL's limit, in order.
fn payloads(delta: &Delta) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut escaped = 0;
    for c in delta.text.chars() {
        // What the character takes in JSON (a control character: \uXXXX).
        let size = match c {
            '"' | '\\' | '\n' | '\r' | '\t' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if escaped + size > MAX_TEXT {
            pieces.push(String::new());
            escaped = 0;
        }
        escaped += size;
        if let Some(piece) = pieces.last_mut() {
            piece.push(c);
        }
    }
    pieces
        .into_iter()
        .map(|text| {
            let piece = Delta {
                text,
                ..delta.clone()
            };
            serde_json::to_string(&piece).unwrap_or_default()
        })
        .collect()
}

/// Hands every notified delta to the subscribers.
struct Forward(broadcast::Sender<Arc<Delta>>);

impl Listener for Forward {
    async fn catch_up(&mut self, _: &Client) -> Result<(), tokio_postgres::Error> {
        // What was notified meanwhile is gone: deltas are not stored.
        Ok(())
    }

    fn notified(&mut self, payload: &str) {
        match serde_json::from_str::<Delta>(payload) {
            // None subscribed: no stream follows a run here now.
            Ok(delta) => drop(self.0.send(Arc::new(delta))),
            Err(e) => {
                tracing::warn!(error = %e, "a notification on {CHANNEL} is not a delta; ignored")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_split_into_payloads_under_the_limit_that_join_back_to_it() {
        let text = format!("{}{}", "\"quoted\"\n".repeat(1_000), "é\u{1}".repeat(3_000));
        let delta = Delta {
            run: "run-1".into(),
            step: 2,
            text: text.clone(),
        };
        let pieces = payloads(&delta);
        assert!(pieces.len() > 2, "{}", pieces.len());
        let mut joined = String::new();
        for payload in &pieces {
            assert!(payload.len() < 8_000, "{}", payload.len());
            let piece: Delta = serde_json::from_str(payload).unwrap();
            assert_eq!((piece.run.as_str(), piece.step), ("run-1", 2));
            joined.push_str(&piece.text);
        }
        assert_eq!(joined, text);
        let short = Delta {
            text: "hi".into(),
            ..delta
        };
        assert_eq!(payloads(&short).len(), 1);
    }
}
