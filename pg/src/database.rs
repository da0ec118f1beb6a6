//! The connection to one PostgreSQL database, shared by every store of this crate (the journal,
//! the ledger, the halts): the URL, a connection pool, and the I/O thread the pool runs on.
//!
//! - [`Database::connect`] parses the URL, connects once (a URL that cannot connect fails here,
//!   naming the host and database, never the password) and brings the schema up to date
//!   ([`crate::schema`]): a database of a foreign or newer schema is refused untouched.
//! - The pool and every query run on a small tokio runtime of the database's own, on its own
//!   thread (`impresario-pg`): the stores' synchronous reads block on a reply from it, and any
//!   runtime (actix's, a test's) can await [`Database::spawn`]. Use the pool only from futures
//!   run there: its connections live on that runtime.
//! - Connection loss: [`retrying`] runs an operation again, on a new connection, while the
//!   server cannot be reached (a restart, a failover), for at most [`RETRY_FOR`].

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls};

use crate::error::{describe_error, PgError};
use crate::schema;

/// How long an operation is retried while PostgreSQL cannot be reached, before it fails.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// Connections the pool keeps at most.
const POOL_SIZE: usize = 8;

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One PostgreSQL database: its pool and the I/O thread it runs on. Clones share both; the
/// thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Shared>,
}

struct Shared {
    target: String,
    config: Config,
    pool: Pool,
    handle: tokio::runtime::Handle,
    thread: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

/// Names the database as [`Database::target`] does: never the password.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Database").field(&self.target()).finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let thread = self.thread.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((stop, thread)) = thread.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

impl Database {
    /// Connects to the database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`) and
    /// brings its schema up to date. Blocks until done: call it at start, or from
    /// `spawn_blocking`.
    pub fn connect(url: &str) -> Result<Database, PgError> {
        let config = parse(url)?;
        let target = describe(&config);
        let password = config.get_password().map(|p| p.to_vec());
        let db = Database::start(config, target)?;
        db.block_on(schema::migrate(db.pool().clone(), db.target().to_owned()))?
            .map_err(|e| scrub(e, password.as_deref()))?;
        Ok(db)
    }

    /// Starts the I/O thread and the pool, without connecting yet.
    fn start(config: Config, target: String) -> Result<Database, PgError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| query_error(&target, "starting its I/O thread", e))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("impresario-pg".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(|e| query_error(&target, "starting its I/O thread", e))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| query_error(&target, "building its connection pool", e))?;
        Ok(Database {
            shared: Arc::new(Shared {
                target,
                config,
                pool,
                handle,
                thread: Mutex::new(Some((stop, thread))),
            }),
        })
    }

    /// `host H:P, database "D", user "U"`: how messages name this database (no password).
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// The connection settings parsed from the URL (for a connection of one's own, such as a
    /// `LISTEN`ing one). Holds the password: never print it.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The connection pool. Use it only from futures run by [`Database::spawn`] or
    /// [`Database::block_on`]: its connections live on the database's I/O thread.
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// The runtime of the database's I/O thread.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.handle
    }

    /// Runs `future` on the database's I/O thread; the handle can be awaited from any runtime.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.handle.spawn(future)
    }

    /// Runs `future` on the database's I/O thread and blocks the calling thread until it is
    /// done. Async callers put this in `spawn_blocking`. Fails if the I/O thread is gone.
    pub fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, PgError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.shared.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| PgError::Query {
            target: self.target().to_owned(),
            context: "waiting for a reply".into(),
            cause: "the database's I/O thread stopped".into(),
        })
    }
}

/// Parses `url`, with a connect timeout unless it names one.
fn parse(url: &str) -> Result<Config, PgError> {
    let refuse = |reason: String| PgError::Url {
        url: redact_url(url),
        reason,
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(refuse("it does not start with postgres://".into()));
    }
    let mut config = Config::from_str(url).map_err(|e| refuse(e.to_string()))?;
    if config.get_hosts().is_empty() {
        return Err(refuse("it names no host".into()));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("impresario");
    Ok(config)
}

/// `url` with the password of its user part replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// How messages name the database of `config`.
fn describe(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let port = |i: usize| {
        let ports = config.get_ports();
        ports.get(i).or(ports.first()).copied().unwrap_or(5432)
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            Host::Unix(path) => format!("{}", path.display()),
        })
        .collect();
    let user = config.get_user().unwrap_or("?");
    let database = config.get_dbname().unwrap_or(user);
    format!(
        "host {}, database \"{database}\", user \"{user}\"",
        hosts.join(",")
    )
}

/// `error` with any occurrence of `password` replaced by `***`: errors come from the server and
/// the driver, and a password must never reach a message.
fn scrub(error: PgError, password: Option<&[u8]>) -> PgError {
    let Some(password) = password.and_then(|p| std::str::from_utf8(p).ok()) else {
        return error;
    };
    if password.is_empty() {
        return error;
    }
    let clean = |s: String| s.replace(password, "***");
    match error {
        PgError::Connect { target, cause } => PgError::Connect {
            target,
            cause: clean(cause),
        },
        PgError::Query {
            target,
            context,
            cause,
        } => PgError::Query {
            target,
            context,
            cause: clean(cause),
        },
        other => other,
    }
}

/// A failure of `context` on `target`.
pub(crate) fn query_error(target: &str, context: &str, cause: impl ToString) -> PgError {
    PgError::Query {
        target: target.to_owned(),
        context: context.to_owned(),
        cause: cause.to_string(),
    }
}

/// Whether `error` means the server could not be reached or dropped the connection (worth a
/// retry on a new connection), or a transaction lost a race it can win on a second try.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        return [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::UNIQUE_VIOLATION,
        ]
        .contains(code);
    }
    // No SQL state: the socket failed (refused, reset, timed out).
    std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
}

/// Whether a pool error is worth a retry (the server is unreachable for now).
pub(crate) fn pool_transient(error: &PoolError) -> bool {
    match error {
        PoolError::Backend(e) => is_transient(e),
        PoolError::Timeout(_) => true,
        _ => false,
    }
}

/// An error of one attempt: `retry` when another attempt may succeed (from [`retrying`]: the
/// server stayed unreachable for all of [`RETRY_FOR`]).
pub(crate) struct Attempt {
    /// Another attempt, on a new connection, may succeed.
    pub retry: bool,
    /// What failed.
    pub cause: String,
}

impl From<tokio_postgres::Error> for Attempt {
    fn from(e: tokio_postgres::Error) -> Self {
        Attempt {
            retry: is_transient(&e),
            cause: describe_error(&e),
        }
    }
}

impl From<PoolError> for Attempt {
    fn from(e: PoolError) -> Self {
        let cause = match &e {
            PoolError::Backend(backend) => describe_error(backend),
            other => other.to_string(),
        };
        Attempt {
            retry: pool_transient(&e),
            cause,
        }
    }
}

/// Runs `attempt` on `target` (named in the logs) until it succeeds, fails for good, or [`RETRY_FOR`] has passed, waiting a
/// little longer between attempts (50 ms, doubling up to 1 s). Only for operations that may run
/// twice: reads, and writes that check what a failed attempt did.
pub(crate) async fn retrying<T, F, Fut>(target: &str, mut attempt: F) -> Result<T, Attempt>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if e.retry && Instant::now() + pause < deadline => {
                tracing::warn!(%target, cause = %e.cause, "PostgreSQL unreachable; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) if e.retry => {
                return Err(Attempt {
                    retry: true,
                    cause: format!(
                        "{} (still failing after {} s of retries)",
                        e.cause,
                        RETRY_FOR.as_secs()
                    ),
                })
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_described_without_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5433/runs?sslmode=disable"),
            "postgres://app:***@db.example:5433/runs?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://a:p@ss@h/db"),
            "postgres://a:***@h/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        let config = parse("postgres://app:s3cret@db.example:5433/runs").unwrap();
        assert_eq!(
            describe(&config),
            "host db.example:5433, database \"runs\", user \"app\""
        );
        let err = parse("postgres://app:s3cret@db.example:notaport/runs").unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("app:***@db.example"), "{text}");
        let err = parse("mysql://app:s3cret@h/db").unwrap_err();
        assert!(err.to_string().contains("does not start with postgres://"));
    }
}
