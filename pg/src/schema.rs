//! The database's schema and its versioned migrations.
//!
//! - `impresario_schema` holds one row: the application (`impresario`) and the schema version.
//!   [`MIGRATIONS`]`[i]` takes a database from version `i` to `i + 1`; append new ones (the
//!   ledger's, the halts'), never edit one that shipped.
//! - [`migrate`] runs in one transaction under an advisory lock, so that several processes
//!   starting on one database migrate it once. PostgreSQL's DDL is transactional: a migration
//!   that fails leaves the database as it was.
//! - Refused untouched (the transaction is rolled back, nothing was written): a database with
//!   a newer version, a database that holds other tables but not `impresario_schema`, and one
//!   whose `impresario_schema` is not of our shape.

use deadpool_postgres::{Pool, Transaction};

use crate::error::{describe_error, PgError};

/// Schema migrations, in order. Append; never edit one that has shipped.
pub const MIGRATIONS: &[&str] = &[
    // 1: the journal: runs and their events (as the SQLite journal keeps them).
    "CREATE TABLE journal_runs (
        run_id     TEXT PRIMARY KEY,
        tenant     TEXT NOT NULL,
        status     TEXT NOT NULL,
        last_seq   BIGINT NOT NULL,
        last_kind  TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE INDEX journal_runs_by_start ON journal_runs (started_ms, run_id);
    CREATE INDEX journal_runs_by_tenant ON journal_runs (tenant, started_ms, run_id);
    CREATE TABLE journal_events (
        run_id   TEXT NOT NULL,
        seq      BIGINT NOT NULL,
        at_ms    BIGINT NOT NULL,
        version  INTEGER NOT NULL,
        kind     TEXT NOT NULL,
        idem_key TEXT,
        body     TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX journal_events_by_key ON journal_events (run_id, idem_key)
        WHERE idem_key IS NOT NULL;
    CREATE UNIQUE INDEX journal_one_result_per_key ON journal_events (run_id, idem_key)
        WHERE kind = 'tool_result';",
    // 2: the cluster's run queue and its fencing function (issue 14).
    crate::queue::MIGRATION,
    // 3: the ledger (ledger.rs): an account's limits and spend; a hold per reservation
    // in flight.
    "CREATE TABLE ledger_accounts (
        account text PRIMARY KEY,
        limit_micro_usd bigint,
        limit_tokens bigint,
        limit_model_calls bigint,
        spent_micro_usd bigint NOT NULL DEFAULT 0,
        spent_tokens bigint NOT NULL DEFAULT 0,
        spent_model_calls bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE ledger_holds (
        id text PRIMARY KEY,
        path text[] NOT NULL,
        micro_usd bigint NOT NULL,
        tokens bigint NOT NULL,
        model_calls bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX ledger_holds_expiry ON ledger_holds (expires_at);",
    // 4: the halts (halts.rs): a row per halt, until lifted.
    "CREATE TABLE halts (
        id bigserial PRIMARY KEY,
        scope text NOT NULL,
        halt text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        lifted_at timestamptz
    );
    CREATE INDEX halts_standing ON halts (scope) WHERE lifted_at IS NULL;",
    // 5: tenant ceilings set over the API (ceilings.rs), for every process on the database.
    "CREATE TABLE tenant_ceilings (
        tenant text PRIMARY KEY,
        micro_usd bigint NOT NULL,
        set_at timestamptz NOT NULL DEFAULT now()
    );",
    // 6: long-term memory (memory.rs): a row per record with its index words, full-text
    // searched through a generated tsvector, always by tenant.
    "CREATE TABLE memory_records (
        id bigserial PRIMARY KEY,
        tenant text NOT NULL,
        at_ms bigint NOT NULL,
        record text NOT NULL,
        terms text NOT NULL,
        search tsvector GENERATED ALWAYS AS (to_tsvector('simple', terms)) STORED
    );
    CREATE INDEX memory_records_by_tenant ON memory_records (tenant, at_ms, id);
    CREATE INDEX memory_records_search ON memory_records USING gin (search);",
    // 7: operators' decisions about steps waiting for approval (approvals.rs), by the
    // journal event that asked.
    "CREATE TABLE approvals (
        run_id text NOT NULL,
        requested_seq bigint NOT NULL,
        step integer NOT NULL,
        approved boolean NOT NULL,
        reason text,
        decided_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, requested_seq)
    );",
    // 8: a tenant's newest records by id (memory.rs: recall's candidates and word counts).
    "CREATE INDEX memory_records_newest ON memory_records (tenant, id);",
    // 9: what the runs retention deleted had spent, per tenant (journal.rs), so that a
    // tenant's spend is rebuilt whole after a restart.
    "CREATE TABLE journal_spend_carried (
        tenant text PRIMARY KEY,
        micro_usd bigint NOT NULL,
        tokens bigint NOT NULL,
        model_calls bigint NOT NULL
    );",
    // 10: the lease epoch each journal row was written under (journal.rs; NULL: not under a
    // cluster lease), so a run's journal shows which claim wrote what.
    "ALTER TABLE journal_events ADD COLUMN lease_epoch bigint;",
    // 11: ceiling warnings recorded by the charge that crossed them, until one process takes
    // and reports them (ledger_warnings.rs).
    "CREATE TABLE ledger_warnings (
        id bigserial PRIMARY KEY,
        account text NOT NULL,
        dimension text NOT NULL,
        percent smallint NOT NULL,
        spent bigint NOT NULL,
        ceiling bigint NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    );",
    // 12: the run queue's claim order by tenant, and its rows pruned with journal retention
    // (issue 14).
    crate::queue::FAIRNESS,
];

/// The schema version this build writes, and the newest it accepts.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// What `impresario_schema.application` holds in an Impresario database.
const APPLICATION: &str = "impresario";

/// The advisory lock migrations hold ("IMPR").
const MIGRATION_LOCK: i64 = 0x494D_5052;

/// Checks the database behind `pool` and migrates it to [`SCHEMA_VERSION`]; `target` names it
/// in errors. A connection that cannot be opened is [`PgError::Connect`].
pub(crate) async fn migrate(pool: Pool, target: String) -> Result<(), PgError> {
    let mut client = pool.get().await.map_err(|e| PgError::Connect {
        target: target.clone(),
        cause: match &e {
            deadpool_postgres::PoolError::Backend(e) => describe_error(e),
            other => other.to_string(),
        },
    })?;
    let query = |context: &'static str| {
        let target = target.clone();
        move |e: tokio_postgres::Error| PgError::Query {
            target,
            context: context.to_owned(),
            cause: describe_error(&e),
        }
    };
    let tx = client
        .transaction()
        .await
        .map_err(query("starting the schema check"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(query("locking the schema"))?;
    let found = match stored_version(&tx)
        .await
        .map_err(query("reading the schema"))?
    {
        Found::Ours(version) => version,
        Found::Empty => {
            tx.batch_execute(
                "CREATE TABLE impresario_schema (application TEXT NOT NULL, version INTEGER NOT NULL);
                 INSERT INTO impresario_schema VALUES ('impresario', 0);",
            )
            .await
            .map_err(query("creating the schema table"))?;
            0
        }
        Found::Foreign(reason) => return Err(PgError::Foreign { target, reason }),
    };
    if found > SCHEMA_VERSION {
        return Err(PgError::NewerSchema {
            target,
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(migration)
            .await
            .map_err(query("migrating the schema"))?;
        tracing::info!(version = i + 1, "PostgreSQL schema migrated");
    }
    tx.execute(
        "UPDATE impresario_schema SET version = $1",
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(query("recording the schema version"))?;
    tx.commit().await.map_err(query("committing the schema"))
}

/// What the database holds.
enum Found {
    /// No table at all: a new database.
    Empty,
    /// An Impresario database at this version.
    Ours(i32),
    /// Something else, and why we think so.
    Foreign(String),
}

/// Reads what the database holds, without writing.
async fn stored_version(tx: &Transaction<'_>) -> Result<Found, tokio_postgres::Error> {
    let tables: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() ORDER BY table_name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if tables.is_empty() {
        return Ok(Found::Empty);
    }
    if !tables.iter().any(|t| t == "impresario_schema") {
        let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        return Ok(Found::Foreign(format!(
            "it holds {} other table(s) ({}{}) and no impresario_schema table",
            tables.len(),
            shown.join(", "),
            if tables.len() > 5 { ", ..." } else { "" }
        )));
    }
    let columns: Vec<(String, String)> = tx
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'impresario_schema'
             ORDER BY ordinal_position",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ours = [("application", "text"), ("version", "integer")];
    if columns
        .iter()
        .map(|(c, t)| (c.as_str(), t.as_str()))
        .ne(ours)
    {
        return Ok(Found::Foreign(format!(
            "its impresario_schema table has columns {columns:?}, not (application text, version integer)"
        )));
    }
    let rows = tx
        .query("SELECT application, version FROM impresario_schema", &[])
        .await?;
    Ok(match rows.as_slice() {
        [row] if row.get::<_, String>(0) == APPLICATION => Found::Ours(row.get(1)),
        _ => Found::Foreign(format!(
            "its impresario_schema table holds {} row(s), not one row of application `{APPLICATION}`",
            rows.len()
        )),
    })
}
