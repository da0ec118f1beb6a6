//! The ledger on PostgreSQL: reservations held as rows with an expiry, checked against every
//! account of the path in one transaction, exact however many processes spend against the same
//! ceilings ([`PgLedger`], a [`LedgerStore`]).
//!
//! - **Accounts** (`ledger_accounts`): one row per account (`global`, `tenant:<id>`,
//!   `run:<id>`), with its money, token and model-call limits (`NULL`: unlimited) and what was
//!   spent. An account is created, unlimited, the first time a path names it.
//! - **Holds** (`ledger_holds`): one row per reservation in flight: its path, its amount and
//!   when it expires; settling deletes it. An account's *held* amount is the sum of its holds
//!   that have not expired, so an expired hold stops counting the instant it expires, whoever
//!   held it (a crashed process never pins budget), and no sweep is needed for that.
//!   [`PgLedger::sweep`] (also run every [`SWEEP_EVERY`] reservations) deletes the rows of holds
//!   expired longer than the retention.
//! - **Reserve** is one transaction: lock the path's account rows `FOR UPDATE` in one fixed
//!   order (by name: no deadlock between paths), read the live holds, check
//!   `spent + held + amount <= limit` on each account, insert the hold. Every reservation and
//!   settlement touching an account holds its row lock until it commits, so the check sees
//!   every hold and charge of that account: spent + held never passes a limit by a reservation.
//! - **Settle** is one transaction: lock the hold's path in the same order, delete the hold,
//!   add what the call cost to `spent` on each account (in full, even above the hold: the
//!   provider billed it). Settling a hold that is gone is a no-op, so a settlement whose commit
//!   answer was lost is retried safely; a reservation retried after a lost answer reuses its
//!   hold id.
//!
//! - **Fencing**: a reservation on a path with a run that has an epoch in the ledger's
//!   [`Fences`] (a run this process drives under a cluster lease), and the settlement of its
//!   hold, run the fencing check first in their transaction: refused once the lease is gone
//!   ([`ReserveError::Fenced`]; a fenced settlement is a [`StoreError`] naming the stale epoch),
//!   nothing written.
//!
//! Deadlines are process-local limits (the in-memory ledger's); this store counts money, tokens
//! and model calls.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Object, Transaction};
use impresario_runtime::fencing::Fenced;
use impresario_runtime::ledger::{AccountId, AccountSnapshot, CeilingReached, Charge, Limits};
use impresario_runtime::ledger_store::{Hold, LedgerStore, ReserveError, StoreError, StoreFuture};
use impresario_runtime::RunId;
use tokio_postgres::Row;

use crate::counters::{charge_at, from_sql, to_sql, DIMENSIONS};
use crate::database::Database;
use crate::fences::Fences;
use crate::ledger_retry::{run, Step};
use crate::ledger_warnings::{self, Charged};

/// A sweep of old hold rows runs after this many reservations of one [`PgLedger`].
pub const SWEEP_EVERY: u64 = 1024;

const LOCK_ACCOUNTS: &str = "SELECT account, limit_micro_usd, limit_tokens, limit_model_calls, \
     spent_micro_usd, spent_tokens, spent_model_calls \
     FROM ledger_accounts WHERE account = ANY($1) ORDER BY account FOR UPDATE";
const OPEN_ACCOUNTS: &str = "INSERT INTO ledger_accounts (account) \
     SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING";
const HELD: &str = "SELECT a.account, coalesce(sum(h.micro_usd), 0)::bigint, \
     coalesce(sum(h.tokens), 0)::bigint, coalesce(sum(h.model_calls), 0)::bigint \
     FROM unnest($1::text[]) AS a(account) LEFT JOIN ledger_holds h \
     ON h.path @> ARRAY[a.account] AND h.expires_at > now() \
     GROUP BY a.account";
const INSERT_HOLD: &str =
    "INSERT INTO ledger_holds (id, path, micro_usd, tokens, model_calls, expires_at) \
     VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING expires_at";
const FIND_HOLD: &str = "SELECT expires_at FROM ledger_holds WHERE id = $1";
const HOLDS_PATH: &str = "SELECT path FROM ledger_holds WHERE id = ANY($1) LIMIT 1";
const DELETE_HOLDS: &str = "DELETE FROM ledger_holds WHERE id = ANY($1)";
const CHARGE: &str = "UPDATE ledger_accounts SET spent_micro_usd = spent_micro_usd + $2, \
     spent_tokens = spent_tokens + $3, spent_model_calls = spent_model_calls + $4 \
     WHERE account = ANY($1) RETURNING account, limit_micro_usd, limit_tokens, \
     limit_model_calls, spent_micro_usd, spent_tokens, spent_model_calls";
const SET_LIMITS: &str = "INSERT INTO ledger_accounts \
     (account, limit_micro_usd, limit_tokens, limit_model_calls) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (account) DO UPDATE SET limit_micro_usd = EXCLUDED.limit_micro_usd, \
     limit_tokens = EXCLUDED.limit_tokens, limit_model_calls = EXCLUDED.limit_model_calls";
const SWEEP: &str = "DELETE FROM ledger_holds WHERE expires_at < now() - make_interval(secs => $1)";
const DELETE_RUN_HOLDS: &str = "DELETE FROM ledger_holds WHERE path @> ARRAY[$1::text]";

/// How holds behave.
#[derive(Clone, Debug)]
pub struct PgLedgerConfig {
    /// How long a hold counts if it is never settled. Longer than the longest call (its
    /// timeout and retries): a call still running when its hold expires is charged in full
    /// when it settles, but others could reserve its capacity meanwhile.
    pub hold_ttl: Duration,
    /// How long an expired hold is kept: a late settlement within this time is still charged;
    /// after it, the hold is deleted and its settlement charges nothing.
    pub retention: Duration,
}

impl Default for PgLedgerConfig {
    /// Holds of 10 minutes, kept an hour after they expire.
    fn default() -> Self {
        PgLedgerConfig {
            hold_ttl: Duration::from_secs(600),
            retention: Duration::from_secs(3600),
        }
    }
}

/// The ledger on PostgreSQL (see the module docs). Cheap to clone; clones share the database.
/// Every operation runs on the database's I/O thread and retries while the server is
/// unreachable (for [`crate::database::RETRY_FOR`]).
#[derive(Clone)]
pub struct PgLedger {
    db: Database,
    config: PgLedgerConfig,
    /// Accounts known to have a row, so a path's rows are created once per process.
    opened: Arc<Mutex<HashSet<String>>>,
    reservations: Arc<AtomicU64>,
    fences: Fences,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("config", &self.config)
            .finish()
    }
}

impl PgLedger {
    /// The ledger in `db` (connected and migrated).
    pub fn new(db: Database, config: PgLedgerConfig) -> Self {
        PgLedger {
            db,
            config,
            opened: Arc::default(),
            reservations: Arc::default(),
            fences: Fences::default(),
        }
    }

    /// The same ledger, fencing the reservations and settlements of the runs that have an
    /// epoch in `fences` (shared with the [`PgJournal`](crate::PgJournal) of the same runs).
    pub fn fenced_by(mut self, fences: Fences) -> Self {
        self.fences = fences;
        self
    }

    /// Sets the money, token and model-call limits of `account` (creating it); the other
    /// limits of [`Limits`] are process-local and ignored here.
    pub async fn set_limits(&self, account: &AccountId, limits: &Limits) -> Result<(), StoreError> {
        let step = SetLimits {
            account: account.to_string(),
            limits: [limits.micro_usd, limits.tokens, limits.model_calls].map(|l| l.map(to_sql)),
        };
        run(&self.db, step).await
    }

    /// The account's limits, what it spent and what live holds hold on it.
    pub async fn snapshot(&self, account: &AccountId) -> Result<AccountSnapshot, StoreError> {
        let step = Snapshot {
            account: account.clone(),
        };
        run(&self.db, step).await
    }

    /// Deletes holds expired longer than `retention` ago, unsettled; returns how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let step = Sweep {
            retention: self.config.retention,
        };
        run(&self.db, step).await
    }

    /// Releases the holds left on `run` by its earlier leases (a replica that died or lost the
    /// run while calls were in flight), fenced with this process's epoch for the run; returns
    /// how many. Call it when a run is claimed, before it is driven: an answer that was
    /// journaled settled its hold in the same transaction, so every hold left is a call whose
    /// answer was never journaled, asked again (and held again) by the resumed run.
    pub async fn release_run(&self, run: &RunId) -> Result<u64, StoreError> {
        let step = ReleaseRun {
            run: run.to_string(),
            fences: self.fences.clone(),
        };
        crate::ledger_retry::run(&self.db, step)
            .await?
            .map_err(|fenced| StoreError {
                message: format!("release the holds of {run}: {fenced}"),
            })
    }

    async fn reserve_hold(&self, path: &[AccountId], amount: Charge) -> Result<Hold, ReserveError> {
        let names: Vec<String> = path.iter().map(ToString::to_string).collect();
        if !self.all_opened(&names) {
            run(&self.db, OpenAccounts(names.clone())).await?;
            self.lock_opened().extend(names.iter().cloned());
        }
        let step = Reserve {
            id: new_hold_id(),
            path: path.to_vec(),
            names,
            amount,
            ttl: self.config.hold_ttl,
            fences: self.fences.clone(),
        };
        let hold = run(&self.db, step).await??;
        if self.reservations.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            if let Err(err) = self.sweep().await {
                tracing::warn!(error = %err, "sweeping old ledger holds failed; retried later");
            }
        }
        Ok(hold)
    }

    fn all_opened(&self, names: &[String]) -> bool {
        let opened = self.lock_opened();
        names.iter().all(|n| opened.contains(n))
    }

    fn lock_opened(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.opened.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LedgerStore for PgLedger {
    fn reserve<'a>(
        &'a self,
        path: &'a [AccountId],
        amount: Charge,
    ) -> StoreFuture<'a, Result<Hold, ReserveError>> {
        Box::pin(self.reserve_hold(path, amount))
    }

    fn settle<'a>(
        &'a self,
        hold: &'a Hold,
        charge: Charge,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        let step = Settle {
            id: hold.id.clone(),
            charge,
            fences: self.fences.clone(),
        };
        Box::pin(async move {
            run(&self.db, step).await?.map_err(|fenced| StoreError {
                message: format!("settle hold {}: {fenced}", hold.id),
            })
        })
    }
}

/// A hold id unique across processes: a per-process random prefix and a counter.
fn new_hold_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one((std::process::id(), SystemTime::now()))
    });
    format!("{prefix:016x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The run of an account path as stored (`run:<id>`), if it has one.
fn run_of(path: &[String]) -> Option<&str> {
    path.iter().find_map(|account| account.strip_prefix("run:"))
}

/// An account row as locked by [`LOCK_ACCOUNTS`].
struct AccountRow {
    limits: [Option<u64>; 3],
    spent: Charge,
}

impl AccountRow {
    fn from_row(row: &Row) -> Self {
        let limit = |i: usize| row.get::<_, Option<i64>>(i).map(from_sql);
        AccountRow {
            limits: [limit(1), limit(2), limit(3)],
            spent: charge_at(row, 4),
        }
    }

    /// The first dimension in which `amount` does not fit on top of `held`.
    fn refusal(&self, id: &AccountId, held: Charge, amount: Charge) -> Option<CeilingReached> {
        DIMENSIONS
            .into_iter()
            .zip(self.limits)
            .find_map(|(dim, limit)| {
                let limit = limit?;
                let (spent, reserved, requested) =
                    (self.spent.get(dim), held.get(dim), amount.get(dim));
                (spent.saturating_add(reserved).saturating_add(requested) > limit).then(|| {
                    CeilingReached {
                        account: id.clone(),
                        dimension: dim,
                        limit,
                        spent,
                        reserved,
                        requested,
                    }
                })
            })
    }
}

struct OpenAccounts(Vec<String>);

impl Step for OpenAccounts {
    type Out = ();

    fn what(&self) -> String {
        format!("open the ledger accounts {}", self.0.join(", "))
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<(), tokio_postgres::Error> {
        let stmt = client.prepare_cached(OPEN_ACCOUNTS).await?;
        client.execute(&stmt, &[&self.0]).await.map(drop)
    }
}

struct Reserve {
    id: String,
    path: Vec<AccountId>,
    names: Vec<String>,
    amount: Charge,
    ttl: Duration,
    fences: Fences,
}

impl Step for Reserve {
    type Out = Result<Hold, ReserveError>;

    fn what(&self) -> String {
        format!("reserve on {}", self.names[0])
    }

    async fn once(
        &self,
        client: &mut Object,
        attempt: u32,
    ) -> Result<Self::Out, tokio_postgres::Error> {
        let mut tx = client.transaction().await?;
        if let Some(run) = run_of(&self.names) {
            if let Err(fenced) = self.fences.check(&mut tx, run).await? {
                return Ok(Err(fenced.into()));
            }
        }
        let locked = tx.prepare_cached(LOCK_ACCOUNTS).await?;
        let rows: HashMap<String, AccountRow> = tx
            .query(&locked, &[&self.names])
            .await?
            .iter()
            .map(|r| (r.get(0), AccountRow::from_row(r)))
            .collect();
        if attempt > 0 {
            // An earlier attempt may have committed without our hearing it.
            let find = tx.prepare_cached(FIND_HOLD).await?;
            if let Some(row) = tx.query_opt(&find, &[&self.id]).await? {
                return Ok(Ok(self.hold(row.get(0))));
            }
        }
        if let Some(refusal) = self.refusal(&tx, &rows).await? {
            return Ok(Err(refusal.into()));
        }
        let insert = tx.prepare_cached(INSERT_HOLD).await?;
        let a = self.amount;
        let amounts = [a.micro_usd, a.tokens, a.model_calls].map(to_sql);
        let ttl = self.ttl.as_secs_f64();
        let row = tx
            .query_one(
                &insert,
                &[
                    &self.id,
                    &self.names,
                    &amounts[0],
                    &amounts[1],
                    &amounts[2],
                    &ttl,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Ok(self.hold(row.get(0))))
    }
}

impl Reserve {
    fn hold(&self, expires_at: SystemTime) -> Hold {
        Hold {
            id: self.id.clone(),
            expires_at,
        }
    }

    /// Reads the live holds of the locked accounts and checks the amount against each, leaf
    /// first: the first account that refuses.
    async fn refusal(
        &self,
        tx: &Transaction<'_>,
        rows: &HashMap<String, AccountRow>,
    ) -> Result<Option<CeilingReached>, tokio_postgres::Error> {
        let held = tx.prepare_cached(HELD).await?;
        let held: HashMap<String, Charge> = tx
            .query(&held, &[&self.names])
            .await?
            .iter()
            .map(|r| (r.get(0), charge_at(r, 1)))
            .collect();
        Ok(self.path.iter().zip(&self.names).find_map(|(id, name)| {
            let row = rows.get(name)?;
            row.refusal(id, held.get(name).copied().unwrap_or_default(), self.amount)
        }))
    }
}

struct Settle {
    id: String,
    charge: Charge,
    fences: Fences,
}

impl Step for Settle {
    type Out = Result<(), Fenced>;

    fn what(&self) -> String {
        format!("settle hold {}", self.id)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<Self::Out, tokio_postgres::Error> {
        let mut tx = client.transaction().await?;
        let ids = std::slice::from_ref(&self.id);
        // Gone: settled (an earlier attempt committed), or expired past its retention.
        let Some(path) = holds_path(&tx, ids).await? else {
            return Ok(Ok(()));
        };
        if let Some(run) = run_of(&path) {
            if let Err(fenced) = self.fences.check(&mut tx, run).await? {
                return Ok(Err(fenced));
            }
        }
        settle_on(&tx, &path, ids, self.charge).await?;
        tx.commit().await.map(Ok)
    }
}

/// The account path of the holds `ids` (one call's: they share it), if any of them is still
/// stored (not settled, nor swept after its retention).
pub(crate) async fn holds_path(
    tx: &Transaction<'_>,
    ids: &[String],
) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
    let find = tx.prepare_cached(HOLDS_PATH).await?;
    let row = tx.query_opt(&find, &[&ids]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// Settles the holds `ids` on `path` inside `tx`: locks the path's accounts in the global
/// order, deletes the holds, and charges `charge` on every account of the path once if any of
/// them was still there (a hold already settled is not charged again), recording the warning
/// fractions the charge crossed ([`crate::ledger_warnings`]). The journal's appends call it for
/// the holds of the answers they write; [`LedgerStore::settle`] for one hold.
pub(crate) async fn settle_on(
    tx: &Transaction<'_>,
    path: &[String],
    ids: &[String],
    charge: Charge,
) -> Result<(), tokio_postgres::Error> {
    let lock = tx.prepare_cached(LOCK_ACCOUNTS).await?;
    tx.query(&lock, &[&path]).await?;
    let delete = tx.prepare_cached(DELETE_HOLDS).await?;
    if tx.execute(&delete, &[&ids]).await? == 0 {
        return Ok(());
    }
    let update = tx.prepare_cached(CHARGE).await?;
    let amounts = [charge.micro_usd, charge.tokens, charge.model_calls].map(to_sql);
    let charged: Vec<Charged> = tx
        .query(&update, &[&path, &amounts[0], &amounts[1], &amounts[2]])
        .await?
        .iter()
        .map(|row| {
            let account = AccountRow::from_row(row);
            Charged {
                account: row.get(0),
                limits: account.limits,
                spent: account.spent,
            }
        })
        .collect();
    ledger_warnings::record(tx, &charged, charge).await
}

struct SetLimits {
    account: String,
    limits: [Option<i64>; 3],
}

impl Step for SetLimits {
    type Out = ();

    fn what(&self) -> String {
        format!("set the limits of {}", self.account)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<(), tokio_postgres::Error> {
        let [usd, tokens, calls] = &self.limits;
        client
            .execute(SET_LIMITS, &[&self.account, usd, tokens, calls])
            .await
            .map(drop)
    }
}

struct Snapshot {
    account: AccountId,
}

impl Step for Snapshot {
    type Out = AccountSnapshot;

    fn what(&self) -> String {
        format!("read the ledger account {}", self.account)
    }

    async fn once(
        &self,
        client: &mut Object,
        _: u32,
    ) -> Result<AccountSnapshot, tokio_postgres::Error> {
        let names = vec![self.account.to_string()];
        let held = client.query_one(HELD, &[&names]).await?;
        let sql = LOCK_ACCOUNTS.trim_end_matches(" FOR UPDATE");
        let row = client.query_opt(sql, &[&names]).await?;
        let row = row.as_ref().map(AccountRow::from_row);
        let [micro_usd, tokens, model_calls] = row.as_ref().map_or([None; 3], |r| r.limits);
        Ok(AccountSnapshot {
            id: self.account.clone(),
            limits: Limits {
                micro_usd,
                tokens,
                model_calls,
                ..Limits::default()
            },
            spent: row.map_or(Charge::ZERO, |r| r.spent),
            reserved: charge_at(&held, 1),
        })
    }
}

/// Deletes the holds of one run, fenced.
struct ReleaseRun {
    run: String,
    fences: Fences,
}

impl Step for ReleaseRun {
    type Out = Result<u64, Fenced>;

    fn what(&self) -> String {
        format!("release the holds of run {}", self.run)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<Self::Out, tokio_postgres::Error> {
        let mut tx = client.transaction().await?;
        if let Err(fenced) = self.fences.check(&mut tx, &self.run).await? {
            return Ok(Err(fenced));
        }
        let account = format!("run:{}", self.run);
        let released = tx.execute(DELETE_RUN_HOLDS, &[&account]).await?;
        tx.commit().await?;
        Ok(Ok(released))
    }
}

struct Sweep {
    retention: Duration,
}

impl Step for Sweep {
    type Out = u64;

    fn what(&self) -> String {
        "sweep old ledger holds".to_owned()
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<u64, tokio_postgres::Error> {
        client
            .execute(SWEEP, &[&self.retention.as_secs_f64()])
            .await
    }
}
