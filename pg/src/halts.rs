//! Halts on PostgreSQL: a halt is a durable row, and every process following the table sees it
//! within milliseconds through `LISTEN/NOTIFY` ([`PgHalts`], [`HaltFollower`]).
//!
//! - [`PgHalts::halt`] inserts the halt's row and notifies channel [`CHANNEL`] in the same
//!   transaction: the notification is delivered when (and only if) the row commits.
//! - [`PgHalts::follow`] keeps one connection listening on the channel and applies every halt
//!   and lift to this process's [`Halts`], so the `HaltToken` of a run driven here fires
//!   however far away the halt was requested. After (re)connecting it first reads the standing
//!   halts, so nothing requested while it was disconnected is missed (lifts included).
//! - A run also checks the table before each step ([`PgHalts::standing`]): it covers a run
//!   that was not running here when its halt was notified.
//! - [`PgHalts::lift`] marks the scope's rows lifted and notifies. Resuming a halted run lifts
//!   its run-scope rows (`lift(&HaltScope::Run(..))`), or the check before its next step would
//!   halt it again.
//!
//! Halts of an agent are not stored (agents are halted through their supervisor).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Object;
use impresario_runtime::halt::{Halt, HaltScope, Halts};
use impresario_runtime::halt_store::HaltStore;
use impresario_runtime::ledger_store::{StoreError, StoreFuture};
use impresario_runtime::{RunId, TenantId};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::database::Database;
use crate::ledger_retry::{self, Step};
use crate::listener::{Follower, Listener};

/// The `LISTEN/NOTIFY` channel of halts and lifts.
pub const CHANNEL: &str = "impresario_halts";

/// A notification's detail is cut to this many characters (a payload must stay under 8000
/// bytes); the row keeps the whole detail.
const NOTIFIED_DETAIL_CHARS: usize = 1_000;

/// What travels on [`CHANNEL`].
#[derive(Serialize, Deserialize)]
enum Notice {
    /// Halt row `id` was recorded.
    Halt { id: i64, halt: Halt },
    /// The standing halts of a scope were lifted.
    Lift { scope: HaltScope },
}

/// The key of a scope's rows: `all`, `tenant:<id>` or `run:<id>` (agents: none).
fn scope_key(scope: &HaltScope) -> Option<String> {
    match scope {
        HaltScope::All => Some("all".to_owned()),
        HaltScope::Tenant(t) => Some(format!("tenant:{t}")),
        HaltScope::Run(r) => Some(format!("run:{r}")),
        HaltScope::Agent(_) => None,
    }
}

/// Halts recorded in PostgreSQL (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgHalts {
    db: Database,
}

impl HaltStore for PgHalts {
    fn standing<'a>(
        &'a self,
        tenant: &'a TenantId,
        run: &'a RunId,
    ) -> StoreFuture<'a, Result<Option<Halt>, StoreError>> {
        Box::pin(PgHalts::standing(self, tenant, run))
    }
}

impl PgHalts {
    /// The halts in `db` (connected and migrated). Every operation runs on the database's I/O
    /// thread and retries while the server is unreachable.
    pub fn new(db: Database) -> Self {
        PgHalts { db }
    }

    /// Records `halt` and notifies every follower. Returns false for an agent's halt, which is
    /// not stored. A retry after a lost commit answer may record it twice (harmless: the first
    /// halt of a token wins).
    pub async fn halt(&self, halt: &Halt) -> Result<bool, StoreError> {
        let Some(scope) = scope_key(&halt.scope) else {
            return Ok(false);
        };
        let halt = halt.clone();
        ledger_retry::run(&self.db, Record { scope, halt }).await?;
        Ok(true)
    }

    /// Lifts the standing halts of `scope` and notifies every follower; returns how many were
    /// standing (0: nothing to lift).
    pub async fn lift(&self, scope: &HaltScope) -> Result<u64, StoreError> {
        let Some(key) = scope_key(scope) else {
            return Ok(0);
        };
        let scope = scope.clone();
        ledger_retry::run(&self.db, Lift { key, scope }).await
    }

    /// The oldest halt standing on the run, its tenant or everything: a run checks it before
    /// each step.
    pub async fn standing(
        &self,
        tenant: &TenantId,
        run: &RunId,
    ) -> Result<Option<Halt>, StoreError> {
        let keys = [
            HaltScope::All,
            HaltScope::Tenant(tenant.clone()),
            HaltScope::Run(run.clone()),
        ]
        .iter()
        .filter_map(scope_key)
        .collect();
        ledger_retry::run(&self.db, Standing { keys }).await
    }

    /// Applies every halt and lift recorded by any process to `halts`, on a connection of its
    /// own to `config` (reconnecting, with a catch-up, whenever it is lost). Runs on the
    /// current tokio runtime.
    pub fn follow(config: tokio_postgres::Config, halts: Halts) -> HaltFollower {
        let runtime = tokio::runtime::Handle::current();
        Follower::start(config, CHANNEL, HaltListener::new(halts), &runtime)
    }

    /// [`PgHalts::follow`] on this database's I/O thread (no tokio runtime needed by the
    /// caller).
    pub fn follow_here(&self, halts: Halts) -> HaltFollower {
        let config = self.db.config().clone();
        Follower::start(config, CHANNEL, HaltListener::new(halts), self.db.runtime())
    }
}

/// The task applying notified halts to a process's [`Halts`]; stopped when dropped.
pub type HaltFollower = Follower;

/// Applies the notified halts and lifts to a process's [`Halts`].
struct HaltListener {
    halts: Halts,
    applied: Applied,
}

impl HaltListener {
    fn new(halts: Halts) -> Self {
        HaltListener {
            halts,
            applied: Applied::default(),
        }
    }
}

impl Listener for HaltListener {
    async fn catch_up(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        catch_up(client, &self.halts, &mut self.applied).await
    }

    fn notified(&mut self, payload: &str) {
        match serde_json::from_str::<Notice>(payload) {
            Ok(notice) => self.applied.apply(notice, &self.halts),
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a halt notification that is not ours")
            }
        }
    }
}

/// Applies the standing halts not applied yet, and lifts those applied that no longer stand.
async fn catch_up(
    client: &Client,
    halts: &Halts,
    applied: &mut Applied,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, halt FROM halts WHERE lifted_at IS NULL ORDER BY id",
            &[],
        )
        .await?;
    let standing: Vec<(i64, Halt)> = rows
        .iter()
        .filter_map(|r| Some((r.get(0), serde_json::from_str(r.get(1)).ok()?)))
        .collect();
    let ids: HashSet<i64> = standing.iter().map(|(id, _)| *id).collect();
    let gone: Vec<HaltScope> = applied
        .standing
        .iter()
        .filter(|(id, _)| !ids.contains(id))
        .map(|(_, scope)| scope.clone())
        .collect();
    for scope in gone {
        applied.apply(Notice::Lift { scope }, halts);
    }
    for (id, halt) in standing {
        applied.apply(Notice::Halt { id, halt }, halts);
    }
    Ok(())
}

/// The halt rows this follower applied and that still stand, by id.
#[derive(Default)]
struct Applied {
    standing: HashMap<i64, HaltScope>,
}

impl Applied {
    fn apply(&mut self, notice: Notice, halts: &Halts) {
        match notice {
            Notice::Halt { id, halt } => {
                if self.standing.insert(id, halt.scope.clone()).is_none() {
                    halts.halt_with(halt);
                }
            }
            Notice::Lift { scope } => {
                self.standing.retain(|_, s| *s != scope);
                if matches!(scope, HaltScope::All | HaltScope::Tenant(_)) {
                    // Not halted here (or not standing): nothing to lift locally.
                    let _ = halts.lift(&scope);
                }
            }
        }
    }
}

/// `halt` as notified: its detail cut to [`NOTIFIED_DETAIL_CHARS`].
fn notified(id: i64, halt: &Halt) -> String {
    let mut halt = halt.clone();
    if let Some(detail) = halt.detail.as_mut() {
        if let Some((cut, _)) = detail.char_indices().nth(NOTIFIED_DETAIL_CHARS) {
            detail.truncate(cut);
        }
    }
    serde_json::to_string(&Notice::Halt { id, halt }).expect("a halt serializes")
}

struct Record {
    scope: String,
    halt: Halt,
}

impl Step for Record {
    type Out = ();

    fn what(&self) -> String {
        format!("record the halt of {}", self.scope)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let json = serde_json::to_string(&self.halt).expect("a halt serializes");
        let row = tx
            .query_one(
                "INSERT INTO halts (scope, halt) VALUES ($1, $2) RETURNING id",
                &[&self.scope, &json],
            )
            .await?;
        let payload = notified(row.get(0), &self.halt);
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await?;
        tx.commit().await
    }
}

struct Lift {
    key: String,
    scope: HaltScope,
}

impl Step for Lift {
    type Out = u64;

    fn what(&self) -> String {
        format!("lift the halts of {}", self.key)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<u64, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let lifted = tx
            .execute(
                "UPDATE halts SET lifted_at = now() WHERE scope = $1 AND lifted_at IS NULL",
                &[&self.key],
            )
            .await?;
        let payload = serde_json::to_string(&Notice::Lift {
            scope: self.scope.clone(),
        })
        .expect("a scope serializes");
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await?;
        tx.commit().await?;
        Ok(lifted)
    }
}

struct Standing {
    keys: Vec<String>,
}

impl Step for Standing {
    type Out = Option<Halt>;

    fn what(&self) -> String {
        format!("read the standing halts of {}", self.keys.join(", "))
    }

    async fn once(
        &self,
        client: &mut Object,
        _: u32,
    ) -> Result<Option<Halt>, tokio_postgres::Error> {
        let row = client
            .query_opt(
                "SELECT halt FROM halts WHERE lifted_at IS NULL AND scope = ANY($1) \
                 ORDER BY id LIMIT 1",
                &[&self.keys],
            )
            .await?;
        Ok(row.and_then(|r| serde_json::from_str(r.get(0)).ok()))
    }
}
