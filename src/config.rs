//! The binary's configuration: one TOML file (`--config FILE`, optional), every key overridable
//! by an environment variable named `IMPRESARIO_<SECTION>__<KEY>` (upper case, two underscores
//! between section and key): `server.listen` is `IMPRESARIO_SERVER__LISTEN`. A list is written
//! comma-separated in the environment (`IMPRESARIO_RUNS__TOOLS=search_notes,calculator`).
//!
//! Unknown keys, in the file or as `IMPRESARIO_*__*` variables, are errors, and so are values of
//! the wrong type or out of range: every message names the key and its variable.
//! `impresario.example.toml` documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use impresario::agents::memory::Retention;
use impresario::agents::ModelChoice;
use impresario::mcp::{ServerConfig, ServerEntry};
use impresario::runtime::journal::{Durability, RetentionPolicy};
use impresario::runtime::ledger::{BudgetPeriod, Ceilings};
use impresario_pg::queue::{QueueConfig, QueueError};
use serde::Deserialize;
use toml::{Table, Value};

use crate::identity::Identity;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the HTTP control plane.
    pub server: Server,
    /// `[runs]`: defaults of the runs a request leaves open.
    pub runs: RunDefaults,
    /// `[models]`: which models runs use.
    pub models: Models,
    /// `[journal]`: where runs are journaled.
    pub journal: Journal,
    /// `[memory]`: where each tenant's long-term memory is kept, and for how long.
    pub memory: Memory,
    /// `[budget]`: money ceilings above the run.
    pub budget: BudgetCeilings,
    /// `[prices."<model>"]`: prices in LiteLLM's fields (`litellm_provider`,
    /// `input_cost_per_token`, `output_cost_per_token`, ...), over `models.prices_file` and the
    /// bundled table.
    pub prices: BTreeMap<String, Value>,
    /// `[health]`: the semantic health check.
    pub health: HealthCheck,
    /// `[telemetry]`: where traces go.
    pub telemetry: Telemetry,
    /// `[tools]`: tools besides the built-in ones.
    pub tools: Tools,
    /// `[cluster]`: this replica's share of the run queue (with `journal.url`).
    pub cluster: Cluster,
}

/// `[cluster]`: `serve` with `journal.url` (PostgreSQL) is one replica of a cluster (one
/// replica is a cluster of one): runs wait in the database's run queue, and each replica drives
/// the ones it claims (docs/ARCHITECTURE.md, "Cluster"). Ignored without `journal.url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// This replica's name, unique among the live replicas; empty: `<hostname>-<pid>`.
    pub replica: String,
    /// The most runs this replica drives at once; the rest wait in PostgreSQL.
    pub max_runs_per_replica: u64,
    /// How long a claim on a run lasts without a heartbeat, in seconds (heartbeats go every
    /// third of it): after it, another replica takes the run over.
    pub lease_secs: f64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            replica: String::new(),
            max_runs_per_replica: 16,
            lease_secs: 10.0,
        }
    }
}

impl Cluster {
    /// The run queue's settings these keys describe (the replica named `<hostname>-<pid>`
    /// unless `replica` names it), checked: an out-of-range value names its key.
    pub fn queue_config(&self) -> Result<QueueConfig, ConfigError> {
        let replica = match self.replica.trim() {
            "" => format!("{}-{}", hostname(), std::process::id()),
            named => named.to_owned(),
        };
        let lease = Duration::try_from_secs_f64(self.lease_secs)
            .map_err(|_| invalid("cluster.lease_secs", "is not a number of seconds"))?;
        let config = QueueConfig {
            replica,
            max_runs: u32::try_from(self.max_runs_per_replica).unwrap_or(u32::MAX),
            lease,
        };
        config.validate().map_err(|e| match e {
            QueueError::Config { field, problem } => invalid(field, problem),
            other => invalid("cluster", other.to_string()),
        })?;
        Ok(config)
    }
}

/// This machine's name (a pod's name in Kubernetes), or `localhost` if it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// The OTLP/HTTP traces URL spans are exported to (a collector's
    /// `http://HOST:4318/v1/traces`); empty: no export.
    pub otlp_endpoint: String,
    /// The `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: String::new(),
            service_name: "impresario".into(),
        }
    }
}

/// `[tools]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tools {
    /// `[[tools.mcp]]`: MCP servers whose tools runs may use, as `<name>.<tool>`. Only in the
    /// file; checked by [`Config::mcp_servers`].
    pub mcp: Vec<Table>,
}

/// `[budget]`, in US dollars: the global ceiling, the default tenant ceiling, per-tenant
/// overrides (`[budget.tenants]`, `name = usd`) and the largest budget one run may ask for;
/// and the period the tenant and global ceilings apply to (`period`).
/// Spend counted against them is rebuilt from the journal at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetCeilings {
    /// Most the whole service may spend (absent: unlimited).
    pub global_usd: Option<f64>,
    /// Most a tenant without an override may spend (absent: unlimited).
    pub tenant_default_usd: Option<f64>,
    /// The largest budget a run may ask for; larger requests get 422 naming `budget_usd`.
    pub max_run_usd: f64,
    /// Per-tenant ceilings (`acme = 25.0`), overriding `tenant_default_usd`.
    pub tenants: BTreeMap<String, f64>,
    /// `none` (the default: spend counts from the journal's first run), `day` or `month`:
    /// the tenant and global ceilings apply to the spend of the current calendar period (UTC).
    pub period: String,
}

impl Default for BudgetCeilings {
    fn default() -> Self {
        BudgetCeilings {
            global_usd: None,
            tenant_default_usd: None,
            max_run_usd: 10.0,
            tenants: BTreeMap::new(),
            period: BudgetPeriod::None.name().into(),
        }
    }
}

/// The largest amount of dollars a key accepts: beyond it a typo is more likely than a budget.
const MAX_USD: f64 = 1e9;

impl BudgetCeilings {
    /// The ledger's ceilings (micro-USD).
    pub fn ceilings(&self) -> Ceilings {
        Ceilings {
            global: self.global_usd.map(micro_usd),
            tenant_default: self.tenant_default_usd.map(micro_usd),
            tenants: self
                .tenants
                .iter()
                .map(|(tenant, usd)| (tenant.as_str().into(), micro_usd(*usd)))
                .collect(),
            max_run: Some(micro_usd(self.max_run_usd)),
        }
    }

    /// `period`, as the ledger takes it.
    pub fn period(&self) -> Result<BudgetPeriod, ConfigError> {
        self.period
            .trim()
            .parse()
            .map_err(|problem: String| invalid("budget.period", problem))
    }

    /// A period needs spend the journal can date: the ledger in this process (the one on
    /// PostgreSQL has no period yet), and a retention that deletes no run of the current
    /// period (what retention carries over of a deleted run's spend has no date).
    fn check_period(&self, journal: &Journal) -> Result<(), ConfigError> {
        let period = self.period()?;
        let Some(days) = period.longest_days() else {
            return Ok(());
        };
        let problem = if journal.postgres_url().is_some() {
            "a budget period is not built yet for the ledger on PostgreSQL (journal.url)".to_owned()
        } else if journal.retain_finished_runs > 0 {
            format!(
                "it needs journal.retain_finished_runs = 0 (it is {}): retention by count could \
                 delete runs of the current period, and their spend would stop counting",
                journal.retain_finished_runs
            )
        } else if journal.retain_days > 0 && journal.retain_days < days {
            format!(
                "it needs journal.retain_days = 0 or at least {days} (it is {}): retention must \
                 delete only runs of past periods, or their spend would stop counting",
                journal.retain_days
            )
        } else {
            return Ok(());
        };
        Err(invalid(
            "budget.period",
            format!("is \"{period}\": {problem}; or set it to \"none\""),
        ))
    }

    /// Every amount is finite, at least 0 and at most `MAX_USD`.
    fn validate(&self, run_budget: f64) -> Result<(), ConfigError> {
        let named = [
            ("budget.global_usd".to_owned(), self.global_usd),
            (
                "budget.tenant_default_usd".to_owned(),
                self.tenant_default_usd,
            ),
            ("budget.max_run_usd".to_owned(), Some(self.max_run_usd)),
        ];
        let tenants = self
            .tenants
            .iter()
            .map(|(t, usd)| (format!("budget.tenants.{t}"), Some(*usd)));
        for (key, usd) in named.into_iter().chain(tenants) {
            if let Some(usd) = usd.filter(|usd| !(0.0..=MAX_USD).contains(usd)) {
                return Err(invalid(
                    &key,
                    format!("{usd} is not an amount of dollars between 0 and {MAX_USD}"),
                ));
            }
        }
        if run_budget > self.max_run_usd {
            return Err(invalid(
                "runs.budget_usd",
                format!(
                    "{run_budget} is above budget.max_run_usd ({})",
                    self.max_run_usd
                ),
            ));
        }
        Ok(())
    }
}

/// Dollars to micro-USD, rounded down (amounts are validated first).
fn micro_usd(usd: f64) -> u64 {
    (usd * 1e6) as u64
}

/// `usd` in micro-USD if it is an amount a ceiling accepts (finite, 0 to `MAX_USD`), else
/// what is wrong with it.
pub fn checked_micro_usd(usd: f64) -> Result<u64, String> {
    if (0.0..=MAX_USD).contains(&usd) {
        Ok(micro_usd(usd))
    } else {
        Err(format!(
            "{usd} is not an amount of dollars between 0 and {MAX_USD}"
        ))
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Where to listen (`127.0.0.1:8080`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The bearer token every `/v1` request must carry.
    pub token: Option<String>,
    /// A file holding the token (instead of `token`; surrounding whitespace is ignored).
    pub token_file: Option<PathBuf>,
    /// More tokens (`[[server.tokens]]`), each an admin's or bound to one tenant.
    pub tokens: Vec<TokenEntry>,
    /// The largest request body accepted, in bytes (larger ones get 413).
    pub body_limit_bytes: u64,
    /// On SIGTERM, how long running runs get to finish their current step before they are
    /// halted immediately.
    pub drain_timeout_secs: u64,
    /// A request body still arriving after this many seconds gets 408 and its connection is
    /// closed.
    pub body_timeout_secs: u64,
    /// An event stream with nothing to say for this many seconds sends a keep-alive comment.
    pub sse_keepalive_secs: u64,
    /// How many finished runs this process keeps in memory with their events (the most
    /// recent), for `GET /v1/runs/{id}/events`; older ones are shown from the journal.
    pub keep_finished_runs: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            token_file: None,
            tokens: Vec::new(),
            body_limit_bytes: 64 * 1024,
            drain_timeout_secs: 30,
            body_timeout_secs: 10,
            sse_keepalive_secs: 15,
            keep_finished_runs: 100,
        }
    }
}

/// One `[[server.tokens]]` entry: whose token it is, and where to read it (never the
/// token itself, which stays out of the config file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The tenant the token acts for: it sees and acts on that tenant's runs only.
    pub tenant: Option<String>,
    /// `true`: an admin token, which sees and acts on every tenant's runs.
    pub admin: Option<bool>,
    /// A file holding the token (surrounding whitespace is ignored).
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    pub token_env: Option<String>,
}

/// `[runs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunDefaults {
    /// The budget of a run that names none, in US dollars.
    pub budget_usd: f64,
    /// The most steps of a run that names no limit.
    pub max_steps: u64,
    /// The tools of a run that names none (names from `impresario::tools`).
    pub tools: Vec<String>,
    /// The most tokens (input and output) a run may use; 0: no token limit. With models priced
    /// at 0 (a local server), this is what caps a run.
    pub budget_tokens: u64,
}

impl Default for RunDefaults {
    fn default() -> Self {
        RunDefaults {
            budget_tokens: 0,
            budget_usd: 0.50,
            max_steps: 20,
            tools: vec!["search_notes".into(), "calculator".into()],
        }
    }
}

/// `[models]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Models {
    /// `auto`: a real provider when `OPENAI_API_KEY`, `ANTHROPIC_API_KEY` or `OPENAI_BASE_URL`
    /// is set (model in `IMPRESARIO_MODEL`), else the offline stand-in; `offline`: always the
    /// offline stand-in.
    pub provider: String,
    /// How long each call of the offline stand-in takes, in milliseconds.
    pub offline_latency_ms: u64,
    /// The model (and fallbacks) of cheap work; unset: `standard`'s.
    pub light: Option<ModelChoice>,
    /// The model (and fallbacks) of ordinary work; unset: the provider's default model.
    pub standard: Option<ModelChoice>,
    /// The model (and fallbacks) of demanding work; unset: `standard`'s.
    pub heavy: Option<ModelChoice>,
    /// The planner's model, instead of its tier's (`heavy`).
    pub planner: Option<ModelChoice>,
    /// The executor's model, instead of its tier's (`standard`).
    pub executor: Option<ModelChoice>,
    /// The summarizer's model, instead of its tier's (`light`).
    pub summarizer: Option<ModelChoice>,
    /// A price file in LiteLLM's `model_prices_and_context_window.json` format, over the
    /// bundled prices.
    pub prices_file: Option<PathBuf>,
    /// Answers kept in the response cache (identical requests answered once); 0: no cache.
    pub cache_entries: u64,
    /// The longest one request to a provider may take, in seconds (each retry gets it again).
    pub request_timeout_secs: u64,
    /// Retries of a failed call (rate limited, overloaded, timed out) before falling back.
    pub max_retries: u64,
}

impl Default for Models {
    fn default() -> Self {
        Models {
            provider: "auto".into(),
            offline_latency_ms: 0,
            light: None,
            standard: None,
            heavy: None,
            planner: None,
            executor: None,
            summarizer: None,
            prices_file: None,
            cache_entries: 0,
            request_timeout_secs: 120,
            max_retries: 2,
        }
    }
}

impl Models {
    /// The model keys, with what they set: `(key, choice)` for each one given.
    pub fn chosen(&self) -> Vec<(&'static str, &ModelChoice)> {
        [
            ("light", &self.light),
            ("standard", &self.standard),
            ("heavy", &self.heavy),
            ("planner", &self.planner),
            ("executor", &self.executor),
            ("summarizer", &self.summarizer),
        ]
        .into_iter()
        .filter_map(|(key, choice)| choice.as_ref().map(|c| (key, c)))
        .collect()
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// How often `serve` asks the semantic health question, in seconds; 0: never. Never with
    /// the offline stand-in either (it does not reason).
    pub semantic_every_secs: u64,
    /// The question.
    pub semantic_question: String,
    /// What a correct answer contains (case-insensitive).
    pub semantic_expected: String,
    /// The model asked; empty: the `standard` tier's model.
    pub semantic_model: String,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            semantic_every_secs: 300,
            semantic_question: "What is 2 + 2? Answer with the number only.".into(),
            semantic_expected: "4".into(),
            semantic_model: String::new(),
        }
    }
}

/// `[journal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Journal {
    /// The SQLite file every run is journaled to (created if missing), or `:memory:` to keep
    /// the journal in memory only (runs are then lost at exit and cannot be replayed later).
    /// With `url` set, runs are journaled in PostgreSQL instead; the tenant ceilings and the
    /// long-term memory files still go beside this path.
    pub path: String,
    /// A PostgreSQL URL (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`): runs are journaled in
    /// that database (its schema is created or migrated at start; a database of another
    /// application or of a newer Impresario is refused untouched). Empty: the SQLite file
    /// `path`. `serve` on a database is a replica of a cluster (`[cluster]`).
    pub url: String,
    /// Keep at most this many ended runs (the most recent); 0 keeps them all. Halted runs,
    /// which can still be resumed, and running ones are always kept.
    pub retain_finished_runs: u64,
    /// Delete ended runs whose last event is older than this many days; 0: no age limit.
    pub retain_days: u64,
    /// How often retention runs (and compacts the file), in seconds; also once at start.
    pub retention_interval_secs: u64,
    /// How durable a commit to the SQLite file is when the run goes on: `full` (the default)
    /// syncs every commit, so nothing acknowledged is lost even to a power loss or an OS
    /// crash; `normal` syncs at checkpoints only, so a crash or kill of the process loses
    /// nothing acknowledged but a power loss or an OS crash may lose the last commits.
    pub sync: String,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            path: "impresario.db".into(),
            url: String::new(),
            retain_finished_runs: 10_000,
            retain_days: 30,
            retention_interval_secs: 3_600,
            sync: "full".into(),
        }
    }
}

impl Journal {
    /// The value of `path` that keeps the journal in memory.
    pub const IN_MEMORY: &'static str = ":memory:";

    /// The journal file, unless the journal is in memory. The tenant ceilings and the
    /// long-term memory files go beside it, even when `url` puts the journal in PostgreSQL.
    pub fn file(&self) -> Option<&Path> {
        (self.path != Self::IN_MEMORY).then(|| Path::new(&self.path))
    }

    /// Checks the keys of `[journal]`.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(invalid(
                "journal.path",
                "is empty; name a file, or \":memory:\" to keep the journal in memory",
            ));
        }
        if self.retention_interval_secs == 0 {
            return Err(invalid(
                "journal.retention_interval_secs",
                "is 0; retention needs an interval (e.g. 3600)",
            ));
        }
        self.durability()?;
        match self.postgres_url() {
            Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
                Err(invalid(
                    "journal.url",
                    format!(
                        "{} is not a PostgreSQL URL; write postgres://USER:PASSWORD@HOST:PORT/DATABASE, or leave it empty to journal in the SQLite file journal.path",
                        impresario_pg::database::redact_url(url)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// How durable the SQLite file's commits are (`sync`).
    pub fn durability(&self) -> Result<Durability, ConfigError> {
        match self.sync.trim() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(invalid(
                "journal.sync",
                format!("is {other:?}; write \"full\" (sync every commit) or \"normal\" (sync at checkpoints)"),
            )),
        }
    }

    /// The PostgreSQL URL the journal is in, if `url` is set.
    pub fn postgres_url(&self) -> Option<&str> {
        Some(self.url.trim()).filter(|url| !url.is_empty())
    }

    /// Where runs are journaled, for messages: the URL without its password, or the file.
    pub fn describe(&self) -> String {
        match self.postgres_url() {
            Some(url) => format!("journal.url {}", impresario_pg::database::redact_url(url)),
            None => format!("journal.path {:?}", self.path),
        }
    }

    /// The retention policy the keys describe, if they limit anything.
    pub fn retention(&self) -> Option<RetentionPolicy> {
        let policy = RetentionPolicy {
            max_age: (self.retain_days > 0).then(|| Duration::from_secs(self.retain_days * 86_400)),
            max_finished_runs: (self.retain_finished_runs > 0)
                .then(|| usize::try_from(self.retain_finished_runs).unwrap_or(usize::MAX)),
            include_halted: false,
        };
        (policy.max_age.is_some() || policy.max_finished_runs.is_some()).then_some(policy)
    }

    /// How often retention runs.
    pub fn retention_interval(&self) -> Duration {
        Duration::from_secs(self.retention_interval_secs)
    }
}

/// `[memory]`: long-term memory, what runs recall of their tenant's earlier runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Memory {
    /// The SQLite file of every tenant's long-term memory (each tenant's records apart);
    /// empty: `<journal.path>.memory` beside the journal file (in this process only if the
    /// journal is in memory); `:memory:`: in this process only, lost at exit. Ignored when
    /// `journal.url` is set: long-term memory is then kept in that PostgreSQL database.
    pub path: String,
    /// Keep at most this many records per tenant (the newest); 0: no count limit.
    pub retain_records: u64,
    /// Delete records older than this many days; 0: no age limit.
    pub retain_days: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            path: String::new(),
            retain_records: 10_000,
            retain_days: 90,
        }
    }
}

impl Memory {
    /// The memory file: `path`, or beside `journal`'s file when `path` is empty; `None` when
    /// memory is kept in this process only.
    pub fn file(&self, journal: &Journal) -> Option<PathBuf> {
        match self.path.as_str() {
            Journal::IN_MEMORY => None,
            "" => journal.file().map(|file| {
                let mut name = file.as_os_str().to_owned();
                name.push(".memory");
                PathBuf::from(name)
            }),
            path => Some(PathBuf::from(path)),
        }
    }

    /// The retention policy the keys describe.
    pub fn retention(&self) -> Retention {
        Retention {
            max_records: (self.retain_records > 0)
                .then(|| usize::try_from(self.retain_records).unwrap_or(usize::MAX)),
            max_age: (self.retain_days > 0).then(|| Duration::from_secs(self.retain_days * 86_400)),
        }
    }
}

impl Server {
    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// How long a request body may take to arrive.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    /// How often a quiet event stream sends a keep-alive comment.
    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_secs(self.sse_keepalive_secs)
    }

    /// Every bearer token with whose it is: the admin token of `token` or `token_file` (if
    /// set), then each `[[server.tokens]]` entry's. Serving needs at least one; each must be
    /// long enough and different from the others.
    pub fn bearer_tokens(&self) -> Result<Vec<(Identity, String)>, ConfigError> {
        let mut tokens = Vec::new();
        if let Some((key, token)) = self.admin_token()? {
            tokens.push((Identity::Admin, checked(key, token)?));
        }
        for (n, entry) in self.tokens.iter().enumerate() {
            let key = format!("server.tokens[{n}]");
            let access = match (&entry.tenant, entry.admin) {
                (Some(tenant), None) if !tenant.trim().is_empty() => {
                    Identity::Tenant(tenant.clone())
                }
                (None, Some(true)) => Identity::Admin,
                _ => {
                    return Err(invalid(
                        &key,
                        "needs either tenant = \"<name>\" or admin = true",
                    ))
                }
            };
            let token = match (&entry.token_file, &entry.token_env) {
                (Some(path), None) => read_token_file(&key, path)?,
                (None, Some(name)) => std::env::var(name).map_err(|_| {
                    invalid(
                        &key,
                        format!("token_env names {name:?}, which is not set (or not UTF-8)"),
                    )
                })?,
                _ => {
                    return Err(invalid(
                        &key,
                        "reads its token from one of token_file or token_env",
                    ))
                }
            };
            let token = checked(&key, token.trim().to_owned())?;
            if tokens.iter().any(|(_, t)| *t == token) {
                return Err(invalid(
                    &key,
                    "has the same token as an earlier one; give each its own",
                ));
            }
            tokens.push((access, token));
        }
        if tokens.is_empty() {
            return Err(invalid(
                "server.token",
                "is required to serve: every /v1 request needs a bearer token (set server.token, server.token_file or [[server.tokens]])",
            ));
        }
        Ok(tokens)
    }

    /// The admin token of `token` or `token_file`, with the key it came from.
    fn admin_token(&self) -> Result<Option<(&'static str, String)>, ConfigError> {
        match (&self.token, &self.token_file) {
            (Some(token), None) => Ok(Some(("server.token", token.trim().to_owned()))),
            (None, Some(path)) => Ok(Some((
                "server.token_file",
                read_token_file("server.token_file", path)?,
            ))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(invalid(
                "server.token",
                "and server.token_file are both set; keep one",
            )),
        }
    }
}

/// The token in the file at `path` (trimmed).
fn read_token_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|e| invalid(key, format!("cannot read {path:?}: {e}")))
}

/// `token`, if it is long enough.
fn checked(key: &str, token: String) -> Result<String, ConfigError> {
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(invalid(
            key,
            format!("the token is shorter than {MIN_TOKEN_CHARS} characters; use a random one (`openssl rand -hex 32`)"),
        ));
    }
    Ok(token)
}

/// The shortest bearer token accepted.
const MIN_TOKEN_CHARS: usize = 16;

/// The type of a key's value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A string.
    Text,
    /// A socket address as a string (`127.0.0.1:8080`).
    Address,
    /// A non-negative integer.
    Integer,
    /// A non-negative number.
    Number,
    /// A list of strings (comma-separated in the environment).
    Names,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A list of `[[server.tokens]]` tables (file only: the environment cannot hold one).
    Tokens,
    /// An array of tables (`[[tools.mcp]]`), only in the file.
    Tables,
    /// A table of non-negative numbers by name (`name=1.5,other=2` in the environment).
    Amounts,
    /// A model and its fallbacks: `{ model = "m", fallbacks = ["f"] }`, or the list
    /// `["m", "f"]` (comma-separated in the environment).
    Chain,
    /// A model's prices in LiteLLM's fields (a table; only in the file).
    Price,
}

/// Every key: section, name, type. A field of [`Config`] missing here cannot be set.
const KEYS: &[(&str, &str, Kind)] = &[
    ("server", "listen", Kind::Address),
    ("server", "token", Kind::Text),
    ("server", "token_file", Kind::Text),
    ("server", "tokens", Kind::Tokens),
    ("server", "body_limit_bytes", Kind::Integer),
    ("server", "drain_timeout_secs", Kind::Integer),
    ("server", "body_timeout_secs", Kind::Integer),
    ("server", "sse_keepalive_secs", Kind::Integer),
    ("server", "keep_finished_runs", Kind::Integer),
    ("runs", "budget_usd", Kind::Number),
    ("runs", "max_steps", Kind::Integer),
    ("runs", "tools", Kind::Names),
    ("runs", "budget_tokens", Kind::Integer),
    ("models", "provider", Kind::Choice(&["auto", "offline"])),
    ("models", "offline_latency_ms", Kind::Integer),
    ("models", "light", Kind::Chain),
    ("models", "standard", Kind::Chain),
    ("models", "heavy", Kind::Chain),
    ("models", "planner", Kind::Chain),
    ("models", "executor", Kind::Chain),
    ("models", "summarizer", Kind::Chain),
    ("models", "prices_file", Kind::Text),
    ("models", "cache_entries", Kind::Integer),
    ("models", "request_timeout_secs", Kind::Integer),
    ("models", "max_retries", Kind::Integer),
    ("health", "semantic_every_secs", Kind::Integer),
    ("health", "semantic_question", Kind::Text),
    ("health", "semantic_expected", Kind::Text),
    ("health", "semantic_model", Kind::Text),
    ("telemetry", "otlp_endpoint", Kind::Text),
    ("telemetry", "service_name", Kind::Text),
    ("journal", "path", Kind::Text),
    ("journal", "url", Kind::Text),
    ("journal", "retain_finished_runs", Kind::Integer),
    ("journal", "retain_days", Kind::Integer),
    ("journal", "retention_interval_secs", Kind::Integer),
    ("journal", "sync", Kind::Text),
    ("memory", "path", Kind::Text),
    ("memory", "retain_records", Kind::Integer),
    ("memory", "retain_days", Kind::Integer),
    ("tools", "mcp", Kind::Tables),
    ("budget", "global_usd", Kind::Number),
    ("budget", "tenant_default_usd", Kind::Number),
    ("budget", "max_run_usd", Kind::Number),
    ("budget", "tenants", Kind::Amounts),
    ("budget", "period", Kind::Choice(&["none", "day", "month"])),
    ("cluster", "replica", Kind::Text),
    ("cluster", "max_runs_per_replica", Kind::Integer),
    ("cluster", "lease_secs", Kind::Number),
];

/// The prefix of every configuration variable.
const ENV_PREFIX: &str = "IMPRESARIO_";

/// Why the configuration was refused. Each message names the key and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path:?}: {cause}; check the path given to --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The file is not TOML.
    #[error("the config file {path:?} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key that does not exist (a typo, or a key of another version).
    #[error(
        "unknown config key `{key}` ({origin}); the keys are: {}",
        known_keys()
    )]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was written.
        origin: String,
    },
    /// A value of the wrong type or out of range.
    #[error(
        "config key `{key}` (environment variable {}): {problem}",
        env_name(key)
    )]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong, and what is expected.
        problem: String,
    },
    /// A `[[tools.mcp]]` entry is wrong.
    #[error("config key `{key}` (a [[tools.mcp]] table of the file): {problem}")]
    McpServer {
        /// The entry (`tools.mcp[1]`).
        key: String,
        /// What is wrong, naming the server and the field.
        problem: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

fn known_keys() -> String {
    KEYS.iter()
        .map(|(section, key, _)| format!("{section}.{key}"))
        .chain(["prices.\"<model>\"".to_owned()])
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes every model chain given as a list (`["m", "f"]`) as the table it stands for.
fn chains_as_tables(table: &mut Table) {
    let Some(Value::Table(models)) = table.get_mut("models") else {
        return;
    };
    for (key, value) in models.iter_mut() {
        let chain = matches!(kind_of("models", key), Some(Kind::Chain));
        if let (true, Value::Array(items)) = (chain, &*value) {
            let mut items = items.clone().into_iter();
            let mut choice = Table::new();
            choice.extend(items.next().map(|m| ("model".to_owned(), m)));
            choice.insert("fallbacks".into(), Value::Array(items.collect()));
            *value = Value::Table(choice);
        }
    }
}

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

impl Config {
    /// Reads `file` (if any), applies the `IMPRESARIO_*__*` variables of `env` over it, and
    /// checks every key and value.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
                    path: path.to_owned(),
                    cause,
                })?;
                let table: Table =
                    text.parse()
                        .map_err(|e: toml::de::Error| ConfigError::Syntax {
                            path: path.to_owned(),
                            message: e.to_string(),
                        })?;
                check_file(&table, path)?;
                table
            }
            None => Table::new(),
        };
        for (name, value) in env {
            apply_env(&mut table, &name, &value)?;
        }
        chains_as_tables(&mut table);
        let config = Config::deserialize(Value::Table(table))
            .map_err(|e| invalid("(config)", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The `[models]` and `[health]` keys: a role's model and its tier's are not both given,
    /// timeouts are not 0, a health check that runs knows what to expect.
    fn validate_models(&self) -> Result<(), ConfigError> {
        let models = &self.models;
        for (role, tier) in [
            ("planner", "heavy"),
            ("executor", "standard"),
            ("summarizer", "light"),
        ] {
            let given: Vec<&str> = models.chosen().iter().map(|(k, _)| *k).collect();
            if given.contains(&role) && given.contains(&tier) {
                return Err(invalid(
                    &format!("models.{role}"),
                    format!("and models.{tier} both name the {role}'s model (the {role} works in the {tier} tier); keep one"),
                ));
            }
        }
        if models.provider == "offline" {
            if let Some((key, _)) = models.chosen().first() {
                return Err(invalid(
                    &format!("models.{key}"),
                    "names a model, but models.provider is \"offline\" (the offline stand-in answers every call); set provider = \"auto\" or remove the key",
                ));
            }
        }
        if models.request_timeout_secs == 0 {
            return Err(invalid(
                "models.request_timeout_secs",
                "is 0; allow each request some seconds (e.g. 120)",
            ));
        }
        let health = &self.health;
        if health.semantic_every_secs > 0 && health.semantic_expected.trim().is_empty() {
            return Err(invalid(
                "health.semantic_expected",
                "is empty, so every answer would pass; say what a correct answer contains, or set health.semantic_every_secs = 0",
            ));
        }
        Ok(())
    }

    /// Ranges and relations the types do not say.
    fn validate(&self) -> Result<(), ConfigError> {
        self.journal.validate()?;
        self.cluster.queue_config()?;
        for (key, secs) in [
            ("server.body_timeout_secs", self.server.body_timeout_secs),
            ("server.sse_keepalive_secs", self.server.sse_keepalive_secs),
        ] {
            if secs == 0 {
                return Err(invalid(key, "is 0; use 1 second or more"));
            }
        }
        self.validate_models()?;
        if self.server.body_limit_bytes == 0 {
            return Err(invalid(
                "server.body_limit_bytes",
                "is 0; allow at least a small JSON body (e.g. 65536)",
            ));
        }
        let budget = self.runs.budget_usd;
        if !budget.is_finite() || budget < 0.0 {
            return Err(invalid(
                "runs.budget_usd",
                format!("{budget} is not an amount of dollars; use a number such as 0.50"),
            ));
        }
        if self.runs.max_steps == 0 || self.runs.max_steps > u64::from(u32::MAX) {
            return Err(invalid(
                "runs.max_steps",
                format!("{} is out of range; use 1 or more", self.runs.max_steps),
            ));
        }
        let servers = self.mcp_servers()?;
        self.budget.validate(budget)?;
        self.budget.check_period(&self.journal)?;
        for tool in &self.runs.tools {
            let from_mcp = tool
                .split_once('.')
                .is_some_and(|(server, _)| servers.iter().any(|s| s.name == server));
            if !from_mcp && !impresario::tools::NAMES.contains(&tool.as_str()) {
                return Err(invalid(
                    "runs.tools",
                    format!(
                        "there is no tool named {tool:?}; the tools are {:?} and <server>.<tool> for each [[tools.mcp]] server",
                        impresario::tools::NAMES
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `[[tools.mcp]]` servers, checked: an error names the entry (`tools.mcp[1]`), the
    /// server and the field.
    pub fn mcp_servers(&self) -> Result<Vec<ServerConfig>, ConfigError> {
        let mut servers: Vec<ServerConfig> = Vec::new();
        for (i, table) in self.tools.mcp.iter().enumerate() {
            let bad = |problem: String| ConfigError::McpServer {
                key: format!("tools.mcp[{i}]"),
                problem,
            };
            let entry = ServerEntry::deserialize(Value::Table(table.clone()))
                .map_err(|e| bad(e.to_string().trim().to_owned()))?;
            let server = ServerConfig::try_from(entry).map_err(|e| bad(e.to_string()))?;
            if servers.iter().any(|s| s.name == server.name) {
                return Err(bad(format!(
                    "a second server named {:?}; give each its own name",
                    server.name
                )));
            }
            servers.push(server);
        }
        Ok(servers)
    }
}

/// Checks every key of the file: known, and of the right type.
fn check_file(table: &Table, path: &Path) -> Result<(), ConfigError> {
    let origin = || format!("in {}", path.display());
    for (section, entries) in table {
        let Some(entries) = entries.as_table() else {
            return Err(ConfigError::UnknownKey {
                key: section.clone(),
                origin: format!("{}; keys belong to a [section]", origin()),
            });
        };
        for (key, value) in entries {
            let full = format!("{section}.{key}");
            let kind = kind_of(section, key).ok_or_else(|| ConfigError::UnknownKey {
                key: full.clone(),
                origin: origin(),
            })?;
            check_value(kind, value).map_err(|problem| invalid(&full, problem))?;
        }
    }
    Ok(())
}

fn kind_of(section: &str, key: &str) -> Option<Kind> {
    if section == "prices" {
        return Some(Kind::Price);
    }
    KEYS.iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map(|(_, _, kind)| *kind)
}

fn check_value(kind: Kind, value: &Value) -> Result<(), String> {
    let ok = match (kind, value) {
        (Kind::Text, Value::String(_)) => true,
        (Kind::Address, Value::String(s)) => {
            return s.parse::<SocketAddr>().map(drop).map_err(|_| {
                format!("{s:?} is not an address; use IP:PORT such as 127.0.0.1:8080")
            })
        }
        (Kind::Integer, Value::Integer(n)) => *n >= 0,
        (Kind::Number, Value::Integer(n)) => *n >= 0,
        (Kind::Number, Value::Float(x)) => *x >= 0.0,
        (Kind::Names, Value::Array(items)) => items.iter().all(Value::is_str),
        (Kind::Tokens, Value::Array(items)) => return items.iter().try_for_each(check_token),
        (Kind::Tables, Value::Array(items)) => items.iter().all(Value::is_table),
        (Kind::Amounts, Value::Table(amounts)) => amounts
            .values()
            .all(|v| check_value(Kind::Number, v).is_ok()),
        (Kind::Chain, Value::Array(items)) => !items.is_empty() && items.iter().all(Value::is_str),
        (Kind::Chain, Value::Table(t)) => {
            t.get("model").is_some_and(Value::is_str)
                && t.keys().all(|k| k == "model" || k == "fallbacks")
                && t.get("fallbacks")
                    .is_none_or(|f| f.as_array().is_some_and(|f| f.iter().all(Value::is_str)))
        }
        (Kind::Price, Value::Table(_)) => true,
        (Kind::Choice(choices), Value::String(s)) => {
            return if choices.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(format!("{s:?} is not one of {choices:?}"))
            }
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{value} is not {}", describe(kind)))
    }
}

fn describe(kind: Kind) -> String {
    match kind {
        Kind::Text => "a string".into(),
        Kind::Address => "an address string (IP:PORT)".into(),
        Kind::Integer => "a non-negative integer".into(),
        Kind::Number => "a non-negative number".into(),
        Kind::Names => "a list of strings".into(),
        Kind::Amounts => "a table of non-negative numbers by name".into(),
        Kind::Choice(choices) => format!("one of {choices:?}"),
        Kind::Tables => "an array of tables ([[section.key]])".into(),
        Kind::Chain => "a model and its fallbacks: { model = \"m\", fallbacks = [\"f\"] } or [\"m\", \"f\"]".into(),
        Kind::Price => "a table of LiteLLM price fields (litellm_provider, input_cost_per_token, output_cost_per_token, ...)".into(),
        Kind::Tokens => "a list of [[server.tokens]] tables".into(),
    }
}

/// Checks one `[[server.tokens]]` entry: its keys, their types, one owner and one source.
fn check_token(entry: &Value) -> Result<(), String> {
    let Some(entry) = entry.as_table() else {
        return Err(
            "each entry must be a table: [[server.tokens]] with tenant and token_file".into(),
        );
    };
    for (key, value) in entry {
        let ok = match key.as_str() {
            "tenant" | "token_env" => value.is_str(),
            "token_file" => value.is_str(),
            "admin" => value.as_bool() == Some(true),
            _ => return Err(format!("unknown key {key:?} in a [[server.tokens]] entry; the keys are tenant, admin, token_file, token_env")),
        };
        if !ok {
            return Err(format!("{key} = {value} is not valid in a [[server.tokens]] entry (tenant, token_file, token_env: strings; admin: true)"));
        }
    }
    match (entry.contains_key("tenant"), entry.contains_key("admin")) {
        (true, false) | (false, true) => {}
        _ => {
            return Err(
                "each [[server.tokens]] entry needs either tenant = \"<name>\" or admin = true"
                    .into(),
            )
        }
    }
    match (
        entry.contains_key("token_file"),
        entry.contains_key("token_env"),
    ) {
        (true, false) | (false, true) => Ok(()),
        _ => Err(
            "each [[server.tokens]] entry reads its token from one of token_file or token_env"
                .into(),
        ),
    }
}

/// Applies one environment variable, if it is a configuration variable (`IMPRESARIO_*__*`).
fn apply_env(table: &mut Table, name: &str, raw: &str) -> Result<(), ConfigError> {
    let Some((section, key)) = name
        .strip_prefix(ENV_PREFIX)
        .and_then(|rest| rest.split_once("__"))
    else {
        return Ok(());
    };
    let (section, key) = (section.to_lowercase(), key.to_lowercase());
    let full = format!("{section}.{key}");
    let kind = kind_of(&section, &key).ok_or_else(|| ConfigError::UnknownKey {
        key: full.clone(),
        origin: format!("from the environment variable {name}"),
    })?;
    let value = match kind {
        Kind::Tables | Kind::Tokens => {
            return Err(invalid(
                &full,
                format!("is only read from the config file ([[{full}]] tables), not the environment"),
            ))
        }
        Kind::Text | Kind::Address | Kind::Choice(_) => Value::String(raw.to_owned()),
        Kind::Integer => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| invalid(&full, format!("{raw:?} is not {}", describe(kind))))?,
        Kind::Number => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| invalid(&full, format!("{raw:?} is not {}", describe(kind))))?,
        Kind::Price => {
            return Err(invalid(
                &full,
                "prices are set in the config file ([prices.\"<model>\"]) or models.prices_file, not in the environment",
            ))
        }
        Kind::Names | Kind::Chain => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Kind::Amounts => Value::Table(amounts_from_env(raw).map_err(|p| invalid(&full, p))?),
    };
    check_value(kind, &value).map_err(|problem| invalid(&full, problem))?;
    table
        .entry(section)
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| invalid(&full, "its section is not a table in the file"))?
        .insert(key, value);
    Ok(())
}

/// `name=1.5,other=2` as a table of numbers.
fn amounts_from_env(raw: &str) -> Result<Table, String> {
    let mut table = Table::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = item
            .split_once('=')
            .and_then(|(name, n)| Some((name.trim(), n.trim().parse::<f64>().ok()?)));
        let Some((name, amount)) = parsed else {
            return Err(format!("{item:?} is not NAME=AMOUNT (e.g. acme=25.0)"));
        };
        table.insert(name.to_owned(), Value::Float(amount));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A file under the system temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "impresario-config-test-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn error(file_text: Option<&str>, vars: &[(&str, &str)]) -> String {
        let f = file_text.map(file);
        Config::load(f.as_ref().map(|f| f.0.as_path()), env(vars))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_environment_overrides_the_file_and_other_variables_are_ignored() {
        let f = file(
            "[server]\nlisten = \"127.0.0.1:9000\"\nbody_limit_bytes = 100\n[runs]\ntools = []\n",
        );
        let config = Config::load(
            Some(&f.0),
            env(&[
                ("IMPRESARIO_SERVER__LISTEN", "0.0.0.0:7000"),
                ("IMPRESARIO_RUNS__TOOLS", "calculator, save_note"),
                ("IMPRESARIO_RUNS__BUDGET_USD", "2"),
                ("IMPRESARIO_JOURNAL__SYNC", "normal"),
                ("IMPRESARIO_MODEL", "gpt-4o"), // not a config variable: no `__`
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(config.server.body_limit_bytes, 100);
        assert_eq!(config.runs.tools, ["calculator", "save_note"]);
        assert_eq!(config.runs.budget_usd, 2.0);
        assert_eq!(config.runs.max_steps, RunDefaults::default().max_steps);
        assert_eq!(config.journal.durability().unwrap(), Durability::Normal);
        assert_eq!(
            Journal::default().durability().unwrap(),
            Durability::Full,
            "every commit synced unless asked otherwise"
        );
    }

    #[test]
    fn long_term_memory_is_a_file_beside_the_journal_unless_configured_otherwise() {
        let load = |vars: &[(&str, &str)]| Config::load(None, env(vars)).unwrap();
        let config = load(&[("IMPRESARIO_JOURNAL__PATH", "/data/runs.db")]);
        assert_eq!(
            config.memory.file(&config.journal),
            Some(PathBuf::from("/data/runs.db.memory"))
        );
        let retention = config.memory.retention();
        assert_eq!(retention.max_records, Some(10_000));
        assert_eq!(retention.max_age, Some(Duration::from_secs(90 * 86_400)));
        let config = load(&[
            ("IMPRESARIO_MEMORY__PATH", "/m/memory.db"),
            ("IMPRESARIO_MEMORY__RETAIN_RECORDS", "0"),
            ("IMPRESARIO_MEMORY__RETAIN_DAYS", "7"),
        ]);
        assert_eq!(
            config.memory.file(&config.journal),
            Some(PathBuf::from("/m/memory.db"))
        );
        assert_eq!(
            config.memory.retention().max_records,
            None,
            "0: no count limit"
        );
        assert_eq!(
            config.memory.retention().max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        let config = load(&[("IMPRESARIO_MEMORY__PATH", ":memory:")]);
        assert_eq!(config.memory.file(&config.journal), None);
        let config = load(&[("IMPRESARIO_JOURNAL__PATH", ":memory:")]);
        assert_eq!(
            config.memory.file(&config.journal),
            None,
            "a journal in memory keeps memory in this process too"
        );
        let e = error(
            Some(
                "[memory]
retain_days = -1
",
            ),
            &[],
        );
        assert!(e.contains("memory.retain_days"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name_wherever_they_are_written() {
        let e = error(Some("[server]\nlisn = \"x\"\n"), &[]);
        assert!(
            e.starts_with("unknown config key `server.lisn` (in "),
            "{e}"
        );
        let e = error(Some("[sever]\nlisten = \"127.0.0.1:1\"\n"), &[]);
        assert!(e.contains("`sever.listen`"), "{e}");
        let e = error(Some("listen = \"127.0.0.1:1\"\n"), &[]);
        assert!(e.contains("`listen`"), "{e}");
        let e = error(None, &[("IMPRESARIO_SERVER__LISN", "x")]);
        assert!(
            e.contains("`server.lisn` (from the environment variable IMPRESARIO_SERVER__LISN)"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_key_and_its_variable() {
        // (file, environment, the key the error must name)
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                Some("[server]\nlisten = \"localhost\"\n"),
                &[],
                "server.listen",
            ),
            (
                Some("[server]\nbody_limit_bytes = \"big\"\n"),
                &[],
                "server.body_limit_bytes",
            ),
            (
                Some("[server]\nbody_limit_bytes = 0\n"),
                &[],
                "server.body_limit_bytes",
            ),
            (
                None,
                &[("IMPRESARIO_SERVER__DRAIN_TIMEOUT_SECS", "soon")],
                "server.drain_timeout_secs",
            ),
            (
                None,
                &[("IMPRESARIO_RUNS__BUDGET_USD", "-1")],
                "runs.budget_usd",
            ),
            (Some("[runs]\nmax_steps = 0\n"), &[], "runs.max_steps"),
            (Some("[runs]\ntools = [\"shell\"]\n"), &[], "runs.tools"),
            (
                None,
                &[("IMPRESARIO_MODELS__PROVIDER", "openai")],
                "models.provider",
            ),
            (
                Some("[journal]\nsync = \"sometimes\"\n"),
                &[],
                "journal.sync",
            ),
        ];
        for (text, vars, key) in cases {
            let e = error(*text, vars);
            let variable = env_name(key);
            assert!(
                e.starts_with(&format!(
                    "config key `{key}` (environment variable {variable}): "
                )),
                "{key}: {e}"
            );
        }
        let e = error(Some("[server\n"), &[]);
        assert!(e.contains("is not valid TOML"), "{e}");
    }

    #[test]
    fn models_are_chains_from_the_file_or_the_environment_and_conflicts_are_named() {
        let f = file(
            "[models]\nheavy = { model = \"gpt-4o\", fallbacks = [\"claude-sonnet-4-5\"] }\nlight = [\"gpt-5-nano\"]\n[prices.\"my-model\"]\nlitellm_provider = \"local\"\ninput_cost_per_token = 0\noutput_cost_per_token = 0\n",
        );
        let vars = [("IMPRESARIO_MODELS__STANDARD", "my-model, gpt-4o-mini")];
        let config = Config::load(Some(&f.0), env(&vars)).unwrap();
        let chosen: Vec<(&str, Vec<&str>)> = config
            .models
            .chosen()
            .into_iter()
            .map(|(key, choice)| (key, choice.chain().collect()))
            .collect();
        assert_eq!(
            chosen,
            [
                ("light", vec!["gpt-5-nano"]),
                ("standard", vec!["my-model", "gpt-4o-mini"]),
                ("heavy", vec!["gpt-4o", "claude-sonnet-4-5"]),
            ]
        );
        assert!(config.prices.contains_key("my-model"));

        let e = error(Some("[models]\nplanner = [\"a\"]\nheavy = [\"b\"]\n"), &[]);
        assert!(
            e.contains("`models.planner`") && e.contains("models.heavy both"),
            "{e}"
        );
        let e = error(
            Some("[models]\nprovider = \"offline\"\nstandard = [\"a\"]\n"),
            &[],
        );
        assert!(
            e.contains("`models.standard`") && e.contains("offline"),
            "{e}"
        );
        let e = error(Some("[models]\nheavy = { modle = \"a\" }\n"), &[]);
        assert!(e.starts_with("config key `models.heavy`"), "{e}");
        let e = error(Some("[models]\nrequest_timeout_secs = 0\n"), &[]);
        assert!(e.contains("`models.request_timeout_secs`"), "{e}");
        let e = error(None, &[("IMPRESARIO_PRICES__M", "1")]);
        assert!(e.contains("not in the environment"), "{e}");
    }

    #[test]
    fn serving_needs_one_token_of_sixteen_characters_or_more() {
        let server = |token: Option<&str>, token_file: Option<PathBuf>| Server {
            token: token.map(str::to_owned),
            token_file,
            ..Server::default()
        };
        let e = server(None, None).bearer_tokens().unwrap_err().to_string();
        assert!(
            e.contains("`server.token`") && e.contains("is required"),
            "{e}"
        );
        let e = server(Some("short"), None)
            .bearer_tokens()
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than 16"), "{e}");
        let f = file("0123456789abcdef\n");
        assert_eq!(
            server(None, Some(f.0.clone())).bearer_tokens().unwrap(),
            [(Identity::Admin, "0123456789abcdef".to_owned())]
        );
        let e = server(Some("0123456789abcdef"), Some(f.0.clone()))
            .bearer_tokens()
            .unwrap_err()
            .to_string();
        assert!(e.contains("both set"), "{e}");
    }

    #[test]
    fn tenant_tokens_are_read_from_files_or_the_environment_and_bad_entries_are_named() {
        let acme = file("acme-token-0123456789\n");
        let text = format!(
            "[[server.tokens]]\ntenant = \"acme\"\ntoken_file = {:?}\n\
             [[server.tokens]]\nadmin = true\ntoken_env = \"IMPRESARIO_TEST_ADMIN_TOKEN_7\"\n",
            acme.0
        );
        let f = file(&text);
        let config = Config::load(Some(&f.0), Vec::new()).unwrap();
        std::env::set_var("IMPRESARIO_TEST_ADMIN_TOKEN_7", "admin-token-0123456789");
        assert_eq!(
            config.server.bearer_tokens().unwrap(),
            [
                (
                    Identity::Tenant("acme".into()),
                    "acme-token-0123456789".into()
                ),
                (Identity::Admin, "admin-token-0123456789".into()),
            ]
        );
        let e = error(
            Some("[[server.tokens]]\ntenant = \"a\"\nadmin = true\ntoken_env = \"X\"\n"),
            &[],
        );
        assert!(
            e.contains("`server.tokens`") && e.contains("either tenant"),
            "{e}"
        );
        let e = error(Some("[[server.tokens]]\ntenant = \"a\"\n"), &[]);
        assert!(e.contains("one of token_file or token_env"), "{e}");
        let e = error(
            Some("[[server.tokens]]\ntenant = \"a\"\ntoken = \"x\"\n"),
            &[],
        );
        assert!(e.contains("unknown key \"token\""), "{e}");
        let e = error(None, &[("IMPRESARIO_SERVER__TOKENS", "x")]);
        assert!(e.contains("only read from the config file"), "{e}");
        let twice = format!(
            "[[server.tokens]]\ntenant = \"a\"\ntoken_file = {0:?}\n[[server.tokens]]\ntenant = \"b\"\ntoken_file = {0:?}\n",
            acme.0
        );
        let f = file(&twice);
        let e = Config::load(Some(&f.0), Vec::new())
            .unwrap()
            .server
            .bearer_tokens()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`server.tokens[1]`") && e.contains("same token"),
            "{e}"
        );
    }

    #[test]
    fn every_key_is_a_field_and_the_example_file_loads_and_shows_every_key() {
        let mut table = Table::new();
        for (section, key, kind) in KEYS {
            let sample = match kind {
                Kind::Text => Value::String("0123456789abcdef".into()),
                Kind::Address => Value::String("127.0.0.1:1".into()),
                Kind::Integer | Kind::Number => Value::Integer(1),
                Kind::Names | Kind::Tokens | Kind::Tables => Value::Array(Vec::new()),
                Kind::Choice(choices) => Value::String(choices[0].into()),
                Kind::Amounts => Value::Table(Table::new()),
                Kind::Chain | Kind::Price => {
                    let mut choice = Table::new();
                    choice.insert("model".into(), Value::String("m".into()));
                    Value::Table(choice)
                }
            };
            let entries = table.entry(*section).or_insert(Value::Table(Table::new()));
            entries
                .as_table_mut()
                .unwrap()
                .insert((*key).into(), sample);
        }
        Config::deserialize(Value::Table(table)).unwrap();

        let example = include_str!("../impresario.example.toml");
        let f = file(example);
        Config::load(Some(&f.0), Vec::new()).unwrap();
        for (section, key, kind) in KEYS {
            let written = match kind {
                Kind::Tables | Kind::Tokens => format!("[[{section}.{key}]]"),
                _ => format!("{key} = "),
            };
            let shown = example
                .lines()
                .any(|line| line.trim_start_matches(['#', ' ']).starts_with(&written));
            assert!(shown, "{key} is not shown in impresario.example.toml");
        }
    }

    #[test]
    fn mcp_servers_come_from_the_file_and_a_bad_one_is_named() {
        let f = file(
            "[runs]\ntools = [\"calculator\", \"files.read\"]\n\
             [[tools.mcp]]\nname = \"files\"\ncommand = \"node\"\nargs = [\"s.js\"]\n\
             [[tools.mcp]]\nname = \"web\"\nurl = \"http://127.0.0.1:9/mcp\"\n\
             headers = { Authorization = \"WEB_TOKEN\" }\napproval = \"always\"\n",
        );
        let config = Config::load(Some(&f.0), Vec::new()).unwrap();
        let servers = config.mcp_servers().unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].headers["Authorization"], "WEB_TOKEN");

        let e = error(
            Some("[[tools.mcp]]\nname = \"a\"\nurl = \"http://h\"\n[[tools.mcp]]\nname = \"b\"\ncommand = \"x\"\ntimeout_secs = 0\n"),
            &[],
        );
        assert!(e.starts_with("config key `tools.mcp[1]`"), "{e}");
        assert!(e.contains("MCP server \"b\": timeout_secs is 0"), "{e}");
        let e = error(
            Some("[[tools.mcp]]\nname = \"a\"\nurl = \"http://h\"\nalow = []\n"),
            &[],
        );
        assert!(
            e.contains("tools.mcp[0]") && e.contains("unknown field `alow`"),
            "{e}"
        );
        let e = error(None, &[("IMPRESARIO_TOOLS__MCP", "x")]);
        assert!(e.contains("only read from the config file"), "{e}");
        let e = error(Some("[runs]\ntools = [\"files.read\"]\n"), &[]);
        assert!(e.contains("no tool named \"files.read\""), "{e}");
    }

    #[test]
    fn budget_ceilings_from_the_file_and_the_environment() {
        let f = file(
            "[budget]\nglobal_usd = 100\ntenant_default_usd = 2.5\n[budget.tenants]\nacme = 25.0\n",
        );
        let config =
            Config::load(Some(&f.0), env(&[("IMPRESARIO_BUDGET__MAX_RUN_USD", "3")])).unwrap();
        let c = config.budget.ceilings();
        assert_eq!(
            (c.global, c.tenant_default, c.max_run),
            (Some(100_000_000), Some(2_500_000), Some(3_000_000))
        );
        assert_eq!(c.tenants.get(&"acme".into()), Some(&25_000_000));
        let config =
            Config::load(None, env(&[("IMPRESARIO_BUDGET__TENANTS", "a=1, b=0.5")])).unwrap();
        assert_eq!(
            config.budget.ceilings().tenants.get(&"b".into()),
            Some(&500_000)
        );
        assert_eq!(
            Config::default().budget.ceilings().max_run,
            Some(10_000_000)
        );
    }

    #[test]
    fn budget_period_is_read_and_needs_a_journal_that_dates_every_charge() {
        assert_eq!(
            Config::default().budget.period().unwrap(),
            BudgetPeriod::None
        );
        let monthly = [
            ("IMPRESARIO_BUDGET__PERIOD", "month"),
            ("IMPRESARIO_JOURNAL__RETAIN_FINISHED_RUNS", "0"),
            ("IMPRESARIO_JOURNAL__RETAIN_DAYS", "31"),
        ];
        let config = Config::load(None, env(&monthly)).unwrap();
        assert_eq!(config.budget.period().unwrap(), BudgetPeriod::Month);
        let f = file("[budget]\nperiod = \"day\"\n[journal]\nretain_finished_runs = 0\n");
        let config = Config::load(Some(&f.0), Vec::new()).unwrap();
        assert_eq!(config.budget.period().unwrap(), BudgetPeriod::Day);

        let refused = |vars: &[(&str, &str)], expected: &str| {
            let e = Config::load(None, env(vars)).unwrap_err().to_string();
            assert!(
                e.contains("`budget.period`") && e.contains(expected),
                "{vars:?}: {e}"
            );
        };
        refused(&[("IMPRESARIO_BUDGET__PERIOD", "monthly")], "\"monthly\"");
        refused(
            &monthly[..2],
            "journal.retain_days = 0 or at least 31 (it is 30)",
        );
        refused(
            &[monthly[0], monthly[2]],
            "journal.retain_finished_runs = 0 (it is 10000)",
        );
        let on_postgres = [
            monthly[0],
            monthly[1],
            ("IMPRESARIO_JOURNAL__URL", "postgres://h/db"),
        ];
        refused(&on_postgres, "not built yet for the ledger on PostgreSQL");
        let f = file("[budget]\nperiod = \"weekly\"\n");
        let e = Config::load(Some(&f.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`budget.period`") && e.contains("\"weekly\""),
            "{e}"
        );
    }

    #[test]
    fn bad_budget_ceilings_are_named() {
        let cases: [(&str, &str, &str); 4] = [
            (
                "IMPRESARIO_BUDGET__GLOBAL_USD",
                "1e300",
                "budget.global_usd",
            ),
            ("IMPRESARIO_BUDGET__TENANTS", "acme", "budget.tenants"),
            (
                "IMPRESARIO_BUDGET__TENANTS",
                "acme=1e300",
                "budget.tenants.acme",
            ),
            ("IMPRESARIO_RUNS__BUDGET_USD", "11", "runs.budget_usd"),
        ];
        for (name, value, key) in cases {
            let e = Config::load(None, env(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{name}={value}: {e}");
        }
        let f = file("[budget]\ntenants = { acme = -1 }\n");
        let e = Config::load(Some(&f.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`budget.tenants`"), "{e}");
    }
}
