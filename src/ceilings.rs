//! Tenant ceilings set over the API (`PUT /v1/tenants/{tenant}`), kept in
//! `<journal>.ceilings.json` so they survive a restart. The ledger holds and enforces every
//! ceiling (`[budget]` from the configuration, these overrides over it); this module only
//! persists the overrides and applies them at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use impresario::runtime::ledger::Ledger;

/// The overrides, and the ledger they apply to.
pub struct CeilingOverrides {
    /// By tenant: micro-USD, or `None` (back to the configured ceiling).
    set: Mutex<BTreeMap<String, Option<u64>>>,
    file: Option<PathBuf>,
    ledger: Ledger,
}

impl CeilingOverrides {
    /// Reads the overrides file beside `journal` (if any) and applies it to `ledger`.
    pub fn load(journal: Option<&Path>, ledger: Ledger) -> Result<CeilingOverrides, String> {
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
        for (tenant, ceiling) in &set {
            ledger.set_tenant_ceiling(&tenant.as_str().into(), *ceiling);
        }
        Ok(CeilingOverrides {
            set: Mutex::new(set),
            file,
            ledger,
        })
    }

    /// Sets the ceiling of `tenant` in micro-USD (`None`: back to the configured one): in the
    /// file first, then on the ledger, where it applies to the tenant's next reservation.
    pub fn set(&self, tenant: &str, ceiling: Option<u64>) -> Result<(), String> {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = set.clone();
        next.insert(tenant.to_owned(), ceiling);
        if let Some(file) = &self.file {
            write_atomically(file, &next)?;
        }
        *set = next;
        self.ledger.set_tenant_ceiling(&tenant.into(), ceiling);
        Ok(())
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
