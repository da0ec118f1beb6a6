//! The ceilings above the run on the engine's ledger: the global account's (`budget.global_usd`)
//! and each tenant's (`[budget.tenants]`, else `budget.tenant_default_usd`), which
//! `PUT /v1/tenants/{tenant}` overrides. Overrides are kept in `<journal>.ceilings.json`, so
//! they survive a restart; the ledger enforces every ceiling when a paid call reserves.
//!
//! A tenant's account is opened with its ceiling before its first run starts or resumes
//! ([`Ceilings::open`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use impresario::runtime::ledger::{Account, AccountId, Ledger, LedgerError, Limits};

use crate::config::{micro_usd, BudgetConfig};

/// The ceilings, and the ledger they apply to.
pub struct Ceilings {
    config: BudgetConfig,
    /// Set by `PUT /v1/tenants/{tenant}`: micro-USD, or `None` for no ceiling.
    overrides: Mutex<BTreeMap<String, Option<u64>>>,
    file: Option<PathBuf>,
    ledger: Ledger,
}

impl Ceilings {
    /// The ceilings of `config` and of the overrides file beside `journal` (if any), applied
    /// to `ledger`'s global account.
    pub fn load(
        config: &BudgetConfig,
        journal: Option<&Path>,
        ledger: Ledger,
    ) -> Result<Ceilings, String> {
        let file = journal.map(overrides_path);
        let overrides = match &file {
            Some(file) if file.exists() => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read the tenant ceilings {file:?}: {e}"))?;
                serde_json::from_str(&text).map_err(|e| {
                    format!("the tenant ceilings {file:?} are not valid: {e}; fix or delete the file (PUT /v1/tenants/{{tenant}} writes it)")
                })?
            }
            _ => BTreeMap::new(),
        };
        if let Some(global) = ledger.account(&AccountId::Global) {
            global.set_limits(usd_limit(config.global_usd));
        }
        Ok(Ceilings {
            config: config.clone(),
            overrides: Mutex::new(overrides),
            file,
            ledger,
        })
    }

    /// The ceiling of `tenant` in micro-USD (`None`: no ceiling).
    pub fn ceiling(&self, tenant: &str) -> Option<u64> {
        let overrides = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        match overrides.get(tenant) {
            Some(set) => *set,
            None => self.config.tenant_ceiling(tenant),
        }
    }

    /// The ledger account of `tenant`, opened with its ceiling if it was not open yet.
    pub fn open(&self, tenant: &str) -> Result<Account, LedgerError> {
        let id = AccountId::Tenant(tenant.to_owned());
        let limits = Limits {
            micro_usd: self.ceiling(tenant),
            ..Limits::default()
        };
        match self.ledger.open(id.clone(), None, limits) {
            Ok(account) => Ok(account),
            Err(LedgerError::AlreadyOpen(_)) => self
                .ledger
                .account(&id)
                .ok_or(LedgerError::UnknownAccount(id)),
            Err(e) => Err(e),
        }
    }

    /// Sets the ceiling of `tenant` (`None`: no ceiling), on its account at once and in the
    /// overrides file.
    pub fn set(&self, tenant: &str, ceiling: Option<u64>) -> Result<(), String> {
        let mut overrides = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = overrides.clone();
        next.insert(tenant.to_owned(), ceiling);
        if let Some(file) = &self.file {
            write_atomically(file, &next)?;
        }
        *overrides = next;
        drop(overrides);
        let account = self
            .open(tenant)
            .map_err(|e| format!("cannot open the tenant's account: {e}"))?;
        let mut limits = account.snapshot().limits;
        limits.micro_usd = ceiling;
        account.set_limits(limits);
        Ok(())
    }
}

/// A limit of `usd` (already checked by the configuration) on money only.
fn usd_limit(usd: Option<f64>) -> Limits {
    Limits {
        micro_usd: usd.and_then(|usd| micro_usd(usd).ok()),
        ..Limits::default()
    }
}

/// `<journal>.ceilings.json`.
fn overrides_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".ceilings.json");
    PathBuf::from(name)
}

/// Writes `overrides` to a temporary file beside `file`, then renames it over `file`: a crash
/// leaves the old overrides or the new ones, never half of them.
fn write_atomically(file: &Path, overrides: &BTreeMap<String, Option<u64>>) -> Result<(), String> {
    let text = serde_json::to_string_pretty(overrides)
        .map_err(|e| format!("cannot encode the tenant ceilings: {e}"))?;
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, file))
        .map_err(|e| format!("cannot write the tenant ceilings {file:?}: {e}; check the directory's permissions and free space"))
}
