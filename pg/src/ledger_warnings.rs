//! Ceiling warnings on PostgreSQL: the 50/80/100 % warnings of the accounts' limits (tenant and
//! global ceilings), decided in the transaction that charges the account, and reported by
//! exactly one process however many spend against it.
//!
//! - **Decided where the charge commits.** `ledger::settle_on` charges a path's
//!   accounts under their row locks; every fraction a charge crossed
//!   ([`percents_crossed`]: from the spending before it to the spending after it) becomes a row
//!   of `ledger_warnings` (migration 11) inserted in that same transaction, with a `NOTIFY` on
//!   [`CHANNEL`]. So a crossing is recorded if and only if its charge commits, and once: the
//!   row lock orders every charge of the account, and only one of them crosses each fraction.
//!   A limit that changes re-arms its fractions (the next charge crossing one reports it).
//! - **Reported by one process.** Every process follows the channel ([`follow`]). Woken, it
//!   takes rows out of the table (`DELETE ... FOR UPDATE SKIP LOCKED ... RETURNING`) and
//!   publishes them on its own [`Ledger`], whose subscribers report them as the in-process
//!   ledger's own: a `SupervisorEvent::CeilingWarning` and
//!   `impresario_ceiling_warnings_total`. A row is deleted by one transaction only, so each
//!   crossing is reported by the one process that took it (not necessarily the one that
//!   spent). On every (re)connection a follower first takes what is left, so a warning
//!   recorded while no process was following (or by one that died) is reported later.
//! - **At most once:** a take whose commit answer is lost (a server restart in the middle)
//!   may lose those warnings; it never reports one twice.

use std::sync::Arc;

use deadpool_postgres::{Object, Transaction};
use impresario_runtime::ledger::{
    percents_crossed, AccountId, Charge, Ledger, LedgerEvent, DEFAULT_WARNING_PERCENTS,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::counters::{from_sql, to_sql, DIMENSIONS};
use crate::database::Database;
use crate::ledger_retry::{run, Step};
use crate::listener::{Follower, Listener};

/// The `LISTEN/NOTIFY` channel that says warnings were recorded.
pub const CHANNEL: &str = "impresario_ledger_warnings";

/// The most warnings one take reads; a follower takes again until fewer come back.
const TAKE_AT_MOST: usize = 64;

const RECORD: &str = "INSERT INTO ledger_warnings (account, dimension, percent, spent, ceiling) \
     VALUES ($1, $2, $3, $4, $5)";
const NOTIFY: &str = "SELECT pg_notify($1, '')";
const TAKE: &str = "DELETE FROM ledger_warnings WHERE id IN (SELECT id FROM ledger_warnings \
     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, account, dimension, percent, spent, ceiling";

/// One account as a charge left it: its name, its limits and what it spent after the charge.
pub(crate) struct Charged {
    /// `global`, `tenant:<id>`, `run:<id>`.
    pub account: String,
    /// Money, tokens, model calls (`None`: unlimited).
    pub limits: [Option<u64>; 3],
    /// Spent after the charge.
    pub spent: Charge,
}

/// Records, inside the charging transaction `tx`, every warning fraction that `charge` crossed
/// on the `charged` accounts, and notifies the followers if there is any.
pub(crate) async fn record(
    tx: &Transaction<'_>,
    charged: &[Charged],
    charge: Charge,
) -> Result<(), tokio_postgres::Error> {
    let mut recorded = false;
    for account in charged {
        for (dim, limit) in DIMENSIONS.into_iter().zip(account.limits) {
            let Some(limit) = limit else { continue };
            let after = account.spent.get(dim);
            let before = after.saturating_sub(charge.get(dim));
            for percent in percents_crossed(&DEFAULT_WARNING_PERCENTS, before, after, limit) {
                let insert = tx.prepare_cached(RECORD).await?;
                let row: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                    &account.account,
                    &dim.to_string(),
                    &i16::from(percent),
                    &to_sql(after),
                    &to_sql(limit),
                ];
                tx.execute(&insert, &row).await?;
                recorded = true;
            }
        }
    }
    if recorded {
        tx.execute(NOTIFY, &[&CHANNEL]).await?;
    }
    Ok(())
}

/// Reports the warnings recorded in `db` on `ledger` (see the module docs) for as long as the
/// returned follower lives, on the database's I/O thread.
pub fn follow(db: &Database, ledger: Ledger) -> WarningFollower {
    let wake = Arc::new(Notify::new());
    let follower = Follower::start(
        db.config().clone(),
        CHANNEL,
        Waker(wake.clone()),
        db.runtime(),
    );
    let reporter = db.runtime().spawn(report(db.clone(), ledger, wake));
    WarningFollower { follower, reporter }
}

/// Takes the warnings recorded in the database and reports them on this process's ledger;
/// stopped when dropped.
pub struct WarningFollower {
    follower: Follower,
    reporter: JoinHandle<()>,
}

impl WarningFollower {
    /// Resolves once the follower listens (and has been woken to take what was left).
    pub async fn listening(&mut self) {
        self.follower.listening().await;
    }
}

impl Drop for WarningFollower {
    fn drop(&mut self) {
        self.reporter.abort();
    }
}

/// Wakes the reporter on every notification, and after every (re)connection.
struct Waker(Arc<Notify>);

impl Listener for Waker {
    async fn catch_up(&mut self, _: &Client) -> Result<(), tokio_postgres::Error> {
        self.0.notify_one();
        Ok(())
    }

    fn notified(&mut self, _: &str) {
        self.0.notify_one();
    }
}

/// Each time it is woken, takes the recorded warnings until none is left, and publishes them.
async fn report(db: Database, ledger: Ledger, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            match run(&db, Take).await {
                Ok(taken) => {
                    let more = taken.len() == TAKE_AT_MOST;
                    taken
                        .into_iter()
                        .for_each(|warning| ledger.publish(warning));
                    if !more {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "taking the ceiling warnings failed; taken at the next notification");
                    break;
                }
            }
        }
    }
}

/// Deletes up to [`TAKE_AT_MOST`] warnings no other process is taking, oldest first.
struct Take;

impl Step for Take {
    type Out = Vec<LedgerEvent>;

    fn what(&self) -> String {
        "take the recorded ceiling warnings".to_owned()
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<Self::Out, tokio_postgres::Error> {
        let at_most = TAKE_AT_MOST as i64;
        let mut rows = client.query(TAKE, &[&at_most]).await?;
        rows.sort_by_key(|row| row.get::<_, i64>(0));
        Ok(rows.iter().filter_map(warning).collect())
    }
}

/// A taken row as the ledger's event; a row this build cannot read is logged and dropped.
fn warning(row: &tokio_postgres::Row) -> Option<LedgerEvent> {
    let (account, dimension): (String, String) = (row.get(1), row.get(2));
    let Ok(parsed) = account.parse::<AccountId>() else {
        tracing::warn!(%account, "dropping a ceiling warning on an account this build does not know");
        return None;
    };
    let Some(dim) = DIMENSIONS.into_iter().find(|d| d.to_string() == dimension) else {
        tracing::warn!(%dimension, "dropping a ceiling warning in a dimension this build does not know");
        return None;
    };
    Some(LedgerEvent::Warning {
        account: parsed,
        dimension: dim,
        fraction_percent: u8::try_from(row.get::<_, i16>(3)).unwrap_or(u8::MAX),
        spent: from_sql(row.get(4)),
        limit: from_sql(row.get(5)),
    })
}
