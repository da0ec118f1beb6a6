//! Where the tenant ceilings set over the API (`PUT /v1/tenants/{tenant}`) are kept, and what
//! the tenants API reads a tenant's money from:
//!
//! - **in a file**, with a SQLite (or memory) journal: `<journal>.ceilings.json`, applied to
//!   this process's ledger at start; spend and reservations are this process's ledger's
//!   (spend rebuilt from the journal at start);
//! - **in the database**, with `journal.url`: `impresario_pg::ceilings::PgCeilings`, the
//!   ledger's account rows that every process on the database reserves against (the
//!   configured ceilings are written there at start); spend and reservations are every
//!   process's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use impresario::runtime::ledger::{Ledger, MicroUsd, TenantBudget};
use impresario::runtime::ledger_store::LedgerStore;
use impresario::runtime::TenantId;
use impresario_pg::ceilings::PgCeilings;
use impresario_pg::ledger_warnings::WarningFollower;

/// The tenant ceilings, where they are kept (see the module docs).
pub struct TenantCeilings {
    kept: Kept,
}

enum Kept {
    File(FileOverrides),
    /// The ceilings, and (in `serve`) the follower reporting their warnings here.
    Database {
        db: PgCeilings,
        warnings: Option<WarningFollower>,
    },
}

impl TenantCeilings {
    /// Reads the overrides file beside `journal` (if any) and applies it to `ledger`.
    pub fn in_file(journal: Option<&Path>, ledger: Ledger) -> Result<TenantCeilings, String> {
        Ok(TenantCeilings {
            kept: Kept::File(FileOverrides::load(journal, ledger)?),
        })
    }

    /// The ceilings of the database.
    pub fn in_database(ceilings: PgCeilings) -> TenantCeilings {
        TenantCeilings {
            kept: Kept::Database {
                db: ceilings,
                warnings: None,
            },
        }
    }

    /// What `serve` does at start: from now on, takes the ceiling warnings that charges record
    /// in the database and reports them on `ledger` (each is taken by one of the serving
    /// processes; `run` and `replay` take none, so none is lost to a process nobody scrapes).
    /// Nothing to do with the ceilings in a file (`ledger` raises them itself).
    pub fn report_warnings(&mut self, ledger: Ledger) {
        if let Kept::Database { db, warnings } = &mut self.kept {
            *warnings = Some(db.follow_warnings(ledger));
        }
    }

    /// Where calls made outside runs (the semantic health check) hold their reservations so
    /// that the database counts them: the ceilings in the database; `None` with the ceilings
    /// in a file (this process's ledger counts them).
    pub fn store(&self) -> Option<Arc<dyn LedgerStore>> {
        match &self.kept {
            Kept::File(_) => None,
            Kept::Database { db, .. } => Some(Arc::new(db.clone())),
        }
    }

    /// Writes the configured ceilings (`[budget]`) into the database's accounts, for every
    /// process on it: what `serve` does at start (`run` and `replay` leave them as they are).
    /// Nothing to do with the ceilings in a file (this process's ledger has them).
    pub async fn write_configured(&self) -> Result<(), String> {
        match &self.kept {
            Kept::File(_) => Ok(()),
            Kept::Database { db, .. } => db
                .mirror()
                .await
                .map_err(|e| format!("cannot write the configured ceilings ([budget]): {e}")),
        }
    }

    /// Sets the ceiling of `tenant` in micro-USD (`None`: back to the configured one); it
    /// applies to the tenant's next reservation.
    pub async fn set(&self, tenant: &str, ceiling: Option<MicroUsd>) -> Result<(), String> {
        match &self.kept {
            Kept::File(file) => file.set(tenant, ceiling),
            Kept::Database { db, .. } => db
                .set_override(&tenant.into(), ceiling)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// What `tenant` may spend, has spent and holds.
    pub async fn budget(&self, tenant: &str) -> Result<TenantBudget, String> {
        match &self.kept {
            Kept::File(file) => Ok(file.ledger.tenant_budget(&tenant.into())),
            Kept::Database { db, .. } => db.budget(&tenant.into()).await.map_err(|e| e.to_string()),
        }
    }

    /// Every tenant with an account or a ceiling of its own, by name.
    pub async fn tenants(&self) -> Result<BTreeSet<TenantId>, String> {
        match &self.kept {
            Kept::File(file) => {
                let mut all: BTreeSet<TenantId> = file.ledger.tenants().into_iter().collect();
                all.extend(file.ledger.ceilings().tenants.into_keys());
                Ok(all)
            }
            Kept::Database { db, .. } => db.tenants().await.map_err(|e| e.to_string()),
        }
    }
}

/// The overrides in `<journal>.ceilings.json`, and the ledger they apply to.
struct FileOverrides {
    /// By tenant: micro-USD, or `None` (back to the configured ceiling).
    set: Mutex<BTreeMap<String, Option<u64>>>,
    file: Option<PathBuf>,
    ledger: Ledger,
    /// The per-tenant ceilings of the configuration, which an override of `None` goes back to.
    configured: BTreeMap<TenantId, MicroUsd>,
}

impl FileOverrides {
    fn load(journal: Option<&Path>, ledger: Ledger) -> Result<FileOverrides, String> {
        let file = journal.map(overrides_path);
        let set: BTreeMap<String, Option<u64>> = match &file {
            Some(file) if file.exists() => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read the tenant ceilings {file:?}: {e}"))?;
                serde_json::from_str(&text).map_err(|e| {
                    format!("the tenant ceilings {file:?} are not valid: {e}; fix or delete the file (PUT /v1/tenants/{{tenant}} writes it)")
                })?
            }
            _ => BTreeMap::new(),
        };
        let overrides = FileOverrides {
            set: Mutex::new(BTreeMap::new()),
            file,
            configured: ledger.ceilings().tenants,
            ledger,
        };
        for (tenant, ceiling) in &set {
            overrides.apply(tenant, *ceiling);
        }
        *overrides.set.lock().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(overrides)
    }

    /// Sets the ceiling of `tenant`: in the file first, then on the ledger.
    fn set(&self, tenant: &str, ceiling: Option<u64>) -> Result<(), String> {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = set.clone();
        next.insert(tenant.to_owned(), ceiling);
        if let Some(file) = &self.file {
            write_atomically(file, &next)?;
        }
        *set = next;
        self.apply(tenant, ceiling);
        Ok(())
    }

    /// `ceiling` on the ledger; `None` goes back to the tenant's configured ceiling.
    fn apply(&self, tenant: &str, ceiling: Option<u64>) {
        let tenant = TenantId::from(tenant);
        let ceiling = ceiling.or_else(|| self.configured.get(&tenant).copied());
        self.ledger.set_tenant_ceiling(&tenant, ceiling);
    }
}

/// `<journal>.ceilings.json`.
fn overrides_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".ceilings.json");
    PathBuf::from(name)
}

/// Writes `set` to a temporary file beside `file`, then renames it over `file`: a crash leaves
/// the old overrides or the new ones, never half of them.
fn write_atomically(file: &Path, set: &BTreeMap<String, Option<u64>>) -> Result<(), String> {
    let text = serde_json::to_string_pretty(set)
        .map_err(|e| format!("cannot encode the tenant ceilings: {e}"))?;
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, file))
        .map_err(|e| format!("cannot write the tenant ceilings {file:?}: {e}; check the directory's permissions and free space"))
}
