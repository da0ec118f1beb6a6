//! Tenant and global ceilings on PostgreSQL, the same for every process on the database
//! ([`PgCeilings`]).
//!
//! - The ceilings a process is configured with (`[budget]`: global, default per tenant,
//!   per-tenant) are mirrored into the ledger's account rows (`ledger_accounts.limit_micro_usd`)
//!   at start ([`PgCeilings::mirror`]). Every process on one database must be configured
//!   alike: the last one to start wins.
//! - Overrides set over the API are rows of `tenant_ceilings` (migration 5), written with the
//!   account's limit in one transaction ([`PgCeilings::set_override`]), so every process
//!   applies them, and a restart keeps them.
//! - A tenant's account row is created with its ceiling (its override, else its configured
//!   one) before its first reservation, by whichever process sees the tenant first:
//!   [`PgCeilings`] is the [`LedgerStore`] runs reserve through, and it opens the tenant's row
//!   (once per tenant and process) before handing the reservation to [`PgLedger`], which would
//!   otherwise create it unlimited.
//! - Ceilings are money only: token and model-call limits of tenant and global accounts are
//!   left as they are.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::Object;
use impresario_runtime::ledger::{
    AccountId, BudgetPeriod, Ceilings, Charge, Ledger, MicroUsd, TenantBudget,
};
use impresario_runtime::ledger_store::{Hold, LedgerStore, ReserveError, StoreError, StoreFuture};
use impresario_runtime::TenantId;

use crate::counters::to_sql;
use crate::database::Database;
use crate::ledger::PgLedger;
use crate::ledger_retry::{run, Step};
use crate::ledger_warnings::{self, WarningFollower};

/// The money limit of one account, created if need be.
const SET_LIMIT: &str = "INSERT INTO ledger_accounts (account, limit_micro_usd) VALUES ($1, $2) \
     ON CONFLICT (account) DO UPDATE SET limit_micro_usd = EXCLUDED.limit_micro_usd";
/// A tenant's account row with its override, else `$2`; an existing row is left alone.
const OPEN_TENANT: &str = "INSERT INTO ledger_accounts (account, limit_micro_usd) \
     SELECT 'tenant:' || $1::text, coalesce((SELECT micro_usd FROM tenant_ceilings \
     WHERE tenant = $1), $2) ON CONFLICT (account) DO NOTHING";
/// Every tenant row but those with a configured ceiling of their own (`$1`) gets the default
/// ceiling `$2` (overrides are applied again after it).
const MIRROR_DEFAULT: &str = "UPDATE ledger_accounts SET limit_micro_usd = $2 \
     WHERE account LIKE 'tenant:%' AND NOT (substr(account, 8) = ANY($1))";
/// Every override applied to its tenant's row.
const MIRROR_OVERRIDES: &str = "INSERT INTO ledger_accounts (account, limit_micro_usd) \
     SELECT 'tenant:' || tenant, micro_usd FROM tenant_ceilings \
     ON CONFLICT (account) DO UPDATE SET limit_micro_usd = EXCLUDED.limit_micro_usd";
const SET_OVERRIDE: &str = "INSERT INTO tenant_ceilings (tenant, micro_usd) VALUES ($1, $2) \
     ON CONFLICT (tenant) DO UPDATE SET micro_usd = EXCLUDED.micro_usd, set_at = now()";
const DROP_OVERRIDE: &str = "DELETE FROM tenant_ceilings WHERE tenant = $1";
/// The tenant's limit as its row has it (or no row), and its override.
const CEILING: &str = "SELECT a.account IS NOT NULL, a.limit_micro_usd, o.micro_usd \
     FROM (SELECT 1) AS one LEFT JOIN ledger_accounts a ON a.account = 'tenant:' || $1::text \
     LEFT JOIN tenant_ceilings o ON o.tenant = $1";
const TENANTS: &str = "SELECT substr(account, 8) FROM ledger_accounts \
     WHERE account LIKE 'tenant:%' UNION SELECT tenant FROM tenant_ceilings";

/// The tenant and global ceilings in the database, and the ledger store that applies them
/// (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct PgCeilings {
    db: Database,
    ledger: PgLedger,
    configured: Arc<Ceilings>,
    /// Tenants whose account row this process has made sure of.
    opened: Arc<Mutex<HashSet<TenantId>>>,
}

impl std::fmt::Debug for PgCeilings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCeilings")
            .field("db", &self.db.target())
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

impl PgCeilings {
    /// The ceilings `configured` (this process's `[budget]`) over `ledger`, in `db`.
    pub fn new(db: Database, ledger: PgLedger, configured: Ceilings) -> Self {
        PgCeilings {
            db,
            ledger,
            configured: Arc::new(configured),
            opened: Arc::default(),
        }
    }

    /// Writes the configured ceilings into the accounts: the global one, each configured
    /// tenant's (unless overridden over the API), the default on every other tenant without
    /// an override; and every override again. One transaction.
    pub async fn mirror(&self) -> Result<(), StoreError> {
        let c = &self.configured;
        let step = Mirror {
            global: c.global.map(to_sql),
            default: c.tenant_default.map(to_sql),
            tenants: c.tenants.keys().map(|t| t.as_str().to_owned()).collect(),
            amounts: c.tenants.values().copied().map(to_sql).collect(),
        };
        run(&self.db, step).await
    }

    /// Overrides the ceiling of `tenant` for every process (`None`: back to the configured
    /// one), in one transaction with its account's limit.
    pub async fn set_override(
        &self,
        tenant: &TenantId,
        micro_usd: Option<MicroUsd>,
    ) -> Result<(), StoreError> {
        let step = SetOverride {
            tenant: tenant.as_str().to_owned(),
            micro_usd: micro_usd.map(to_sql),
            configured: self.configured.tenant(tenant).map(to_sql),
        };
        run(&self.db, step).await?;
        self.lock_opened().insert(tenant.clone());
        Ok(())
    }

    /// What `tenant` may spend (its account's limit; for a tenant no process has used yet, the
    /// ceiling it will get), has spent and holds, counting every process.
    pub async fn budget(&self, tenant: &TenantId) -> Result<TenantBudget, StoreError> {
        let step = Ceiling(tenant.as_str().to_owned());
        let (exists, limit, overridden) = run(&self.db, step).await?;
        let ceiling = match exists {
            true => limit,
            false => overridden.or(self.configured.tenant(tenant)),
        };
        let snapshot = self
            .ledger
            .snapshot(&AccountId::Tenant(tenant.clone()))
            .await?;
        Ok(TenantBudget {
            tenant: tenant.clone(),
            ceiling,
            spent: snapshot.spent.micro_usd,
            reserved: snapshot.reserved.micro_usd,
            // The ledger on PostgreSQL has no budget period yet (`budget.period` is refused
            // with `journal.url`).
            period: BudgetPeriod::None,
            period_start: None,
        })
    }

    /// Every tenant with an account, an override or a configured ceiling, by name.
    pub async fn tenants(&self) -> Result<BTreeSet<TenantId>, StoreError> {
        let mut all: BTreeSet<TenantId> = run(&self.db, Tenants).await?;
        all.extend(self.configured.tenants.keys().cloned());
        Ok(all)
    }

    /// Reports on `ledger` the ceiling warnings that charges record in the database (see
    /// [`ledger_warnings`]), for as long as the returned follower lives.
    pub fn follow_warnings(&self, ledger: Ledger) -> WarningFollower {
        ledger_warnings::follow(&self.db, ledger)
    }

    /// Creates the account of the tenant on `path`, if any, with its ceiling, unless this
    /// process already did.
    async fn open_tenant(&self, path: &[AccountId]) -> Result<(), StoreError> {
        let Some(tenant) = path.iter().find_map(|id| match id {
            AccountId::Tenant(t) => Some(t),
            _ => None,
        }) else {
            return Ok(());
        };
        if self.lock_opened().contains(tenant) {
            return Ok(());
        }
        let step = OpenTenant {
            tenant: tenant.as_str().to_owned(),
            configured: self.configured.tenant(tenant).map(to_sql),
        };
        run(&self.db, step).await?;
        self.lock_opened().insert(tenant.clone());
        Ok(())
    }

    fn lock_opened(&self) -> std::sync::MutexGuard<'_, HashSet<TenantId>> {
        self.opened.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reserves through [`PgLedger`], after giving the path's tenant its ceiling.
impl LedgerStore for PgCeilings {
    fn reserve<'a>(
        &'a self,
        path: &'a [AccountId],
        amount: Charge,
    ) -> StoreFuture<'a, Result<Hold, ReserveError>> {
        Box::pin(async move {
            self.open_tenant(path).await?;
            self.ledger.reserve(path, amount).await
        })
    }

    fn settle<'a>(
        &'a self,
        hold: &'a Hold,
        charge: Charge,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        self.ledger.settle(hold, charge)
    }
}

fn from_sql(v: Option<i64>) -> Option<u64> {
    v.map(crate::counters::from_sql)
}

struct Mirror {
    global: Option<i64>,
    default: Option<i64>,
    tenants: Vec<String>,
    amounts: Vec<i64>,
}

impl Step for Mirror {
    type Out = ();

    fn what(&self) -> String {
        "write the configured ceilings".to_owned()
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        tx.execute(SET_LIMIT, &[&"global", &self.global]).await?;
        tx.execute(MIRROR_DEFAULT, &[&self.tenants, &self.default])
            .await?;
        for (tenant, amount) in self.tenants.iter().zip(&self.amounts) {
            tx.execute(SET_LIMIT, &[&format!("tenant:{tenant}"), amount])
                .await?;
        }
        tx.execute(MIRROR_OVERRIDES, &[]).await?;
        tx.commit().await
    }
}

struct SetOverride {
    tenant: String,
    micro_usd: Option<i64>,
    configured: Option<i64>,
}

impl Step for SetOverride {
    type Out = ();

    fn what(&self) -> String {
        format!("set the ceiling of tenant {}", self.tenant)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        match self.micro_usd {
            Some(amount) => tx.execute(SET_OVERRIDE, &[&self.tenant, &amount]).await?,
            None => tx.execute(DROP_OVERRIDE, &[&self.tenant]).await?,
        };
        let account = format!("tenant:{}", self.tenant);
        let limit = self.micro_usd.or(self.configured);
        tx.execute(SET_LIMIT, &[&account, &limit]).await?;
        tx.commit().await
    }
}

struct OpenTenant {
    tenant: String,
    configured: Option<i64>,
}

impl Step for OpenTenant {
    type Out = ();

    fn what(&self) -> String {
        format!("open the account of tenant {}", self.tenant)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<(), tokio_postgres::Error> {
        client
            .execute(OPEN_TENANT, &[&self.tenant, &self.configured])
            .await
            .map(drop)
    }
}

struct Ceiling(String);

impl Step for Ceiling {
    /// Whether the account exists, its limit, the tenant's override.
    type Out = (bool, Option<u64>, Option<u64>);

    fn what(&self) -> String {
        format!("read the ceiling of tenant {}", self.0)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<Self::Out, tokio_postgres::Error> {
        let row = client.query_one(CEILING, &[&self.0]).await?;
        Ok((row.get(0), from_sql(row.get(1)), from_sql(row.get(2))))
    }
}

struct Tenants;

impl Step for Tenants {
    type Out = BTreeSet<TenantId>;

    fn what(&self) -> String {
        "list the tenants".to_owned()
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<Self::Out, tokio_postgres::Error> {
        let rows = client.query(TENANTS, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| TenantId::from(r.get::<_, String>(0).as_str()))
            .collect())
    }
}
