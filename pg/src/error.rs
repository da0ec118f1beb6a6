//! Why the PostgreSQL backend fails: [`PgError`], and the driver's errors as text.

/// Why the database could not be used. Each message names the server and the database (never
/// the password) and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL does not parse.
    #[error("journal.url {url} is not a PostgreSQL URL ({reason}); write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE")]
    Url {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached, or refused the login.
    #[error("cannot connect to PostgreSQL {target}: {cause}; check that the server is up and the host, port, database, user and password of journal.url")]
    Connect {
        /// Host, port, database and user.
        target: String,
        /// What failed.
        cause: String,
    },
    /// The database was set up by a newer Impresario. It was not modified.
    #[error("PostgreSQL {target} has Impresario schema version {found}, this build supports up to {supported}; use a newer Impresario (the database was not modified)")]
    NewerSchema {
        /// Host, port, database and user.
        target: String,
        /// Its schema version.
        found: i32,
        /// The newest this build knows.
        supported: i32,
    },
    /// The database holds something else than Impresario's tables. It was not modified.
    #[error("PostgreSQL {target} is not an Impresario database ({reason}); point journal.url at an empty database (this one was not modified)")]
    Foreign {
        /// Host, port, database and user.
        target: String,
        /// What gave it away.
        reason: String,
    },
    /// A query failed.
    #[error("PostgreSQL {target} failed while {context}: {cause}")]
    Query {
        /// Host, port, database and user.
        target: String,
        /// What was being done.
        context: String,
        /// The server's or the driver's error.
        cause: String,
    },
}

/// The driver's error with the server's message, when there is one (the driver's own `Display`
/// says only "db error").
pub(crate) fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}
