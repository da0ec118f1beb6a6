//! Approvals on PostgreSQL: an operator's decision about a step waiting for approval is a row
//! of `approvals` (migration 7), whichever process it was posted to, and a notification on
//! [`CHANNEL`] wakes the process driving the run ([`PgApprovals`]).
//!
//! - A decision is about one *request*: the `ApprovalRequested` event the run journaled, named
//!   by its sequence number in the run's journal, so a later request about the same step (a
//!   step asked about again) is never answered by an earlier decision.
//! - The first decision recorded about a request is the one that counts
//!   ([`PgApprovals::decide`] says whether it was this one).
//! - The row stays: a run resumed later (its driving process was down when the decision was
//!   posted) finds it when it asks again ([`PgApprovals::decided`]).
//! - The notification carries the run's id only; the process reads the decision from the row.

use deadpool_postgres::Object;
use impresario_runtime::ledger_store::StoreError;
use impresario_runtime::RunId;
use tokio_postgres::Client;

use crate::counters::to_sql;
use crate::database::Database;
use crate::ledger_retry::{run, Step};
use crate::listener::{Follower, Listener};

/// The `LISTEN/NOTIFY` channel of decisions: the payload is the run's id.
pub const CHANNEL: &str = "impresario_approvals";

const INSERT: &str = "INSERT INTO approvals (run_id, requested_seq, step, approved, reason) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, requested_seq) DO NOTHING";
const FIND: &str = "SELECT step, approved, reason FROM approvals \
     WHERE run_id = $1 AND requested_seq = $2";

/// An operator's decision about one request for approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The run.
    pub run: RunId,
    /// The journal sequence number of the run's `ApprovalRequested` event it answers.
    pub requested_seq: u64,
    /// The step asked about.
    pub step: u32,
    /// Approved (run the step) or rejected.
    pub approved: bool,
    /// Why it was rejected, if said.
    pub reason: Option<String>,
}

/// The decisions recorded in PostgreSQL (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgApprovals {
    db: Database,
}

impl PgApprovals {
    /// The approvals in `db` (connected and migrated). Every operation runs on the database's
    /// I/O thread and retries while the server is unreachable.
    pub fn new(db: Database) -> Self {
        PgApprovals { db }
    }

    /// Records `decision` and notifies every follower, unless a decision about the same
    /// request was recorded first. True when the recorded decision is this one (also when an
    /// identical one was recorded before it).
    pub async fn decide(&self, decision: &Decision) -> Result<bool, StoreError> {
        run(&self.db, Record(decision.clone())).await
    }

    /// The decision recorded about the request journaled at `requested_seq` of `run`.
    pub async fn decided(
        &self,
        run_id: &RunId,
        requested_seq: u64,
    ) -> Result<Option<Decision>, StoreError> {
        let step = Find {
            run: run_id.clone(),
            requested_seq,
        };
        run(&self.db, step).await
    }

    /// Calls `wake` with the run of every decision recorded by any process from now on, and
    /// with `None` after every (re)connection (decisions may have been missed meanwhile). On
    /// the database's I/O thread, on a connection of its own.
    pub fn follow_here(&self, wake: impl FnMut(Option<RunId>) + Send + 'static) -> Follower {
        let config = self.db.config().clone();
        Follower::start(config, CHANNEL, Wake(wake), self.db.runtime())
    }
}

/// Hands every notified run to its function.
struct Wake<F>(F);

impl<F: FnMut(Option<RunId>) + Send + 'static> Listener for Wake<F> {
    async fn catch_up(&mut self, _: &Client) -> Result<(), tokio_postgres::Error> {
        (self.0)(None);
        Ok(())
    }

    fn notified(&mut self, payload: &str) {
        (self.0)(Some(RunId::new(payload)));
    }
}

struct Record(Decision);

impl Step for Record {
    type Out = bool;

    fn what(&self) -> String {
        format!(
            "record a decision about step {} of run {}",
            self.0.step, self.0.run
        )
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<bool, tokio_postgres::Error> {
        let d = &self.0;
        let (run_id, seq) = (d.run.as_str(), to_sql(d.requested_seq));
        let step = i32::try_from(d.step).unwrap_or(i32::MAX);
        let tx = client.transaction().await?;
        tx.execute(INSERT, &[&run_id, &seq, &step, &d.approved, &d.reason])
            .await?;
        // The recorded one: ours, or the first (a retry after a lost commit finds ours).
        let row = tx.query_one(FIND, &[&run_id, &seq]).await?;
        let ours =
            row.get::<_, bool>(1) == d.approved && row.get::<_, Option<String>>(2) == d.reason;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &run_id])
            .await?;
        tx.commit().await?;
        Ok(ours)
    }
}

struct Find {
    run: RunId,
    requested_seq: u64,
}

impl Step for Find {
    type Out = Option<Decision>;

    fn what(&self) -> String {
        format!(
            "read the decision about event {} of run {}",
            self.requested_seq, self.run
        )
    }

    async fn once(
        &self,
        client: &mut Object,
        _: u32,
    ) -> Result<Option<Decision>, tokio_postgres::Error> {
        let seq = to_sql(self.requested_seq);
        let row = client.query_opt(FIND, &[&self.run.as_str(), &seq]).await?;
        Ok(row.map(|row| Decision {
            run: self.run.clone(),
            requested_seq: self.requested_seq,
            step: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
            approved: row.get(1),
            reason: row.get(2),
        }))
    }
}
