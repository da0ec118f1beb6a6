//! How one replica uses the run queue: its name, how many runs it drives, how long a lease lasts.

use std::time::Duration;

use super::error::QueueError;

/// One replica's queue settings (`[cluster]` in the service's configuration, once wired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// This replica's name, unique among the live replicas (e.g. the pod's name and the
    /// process id). It is recorded as the owner of the leases it holds.
    pub replica: String,
    /// The most runs this replica drives at once (`cluster.max_runs_per_replica`); the rest
    /// wait in PostgreSQL.
    pub max_runs: u32,
    /// How long a lease lasts without a heartbeat (`cluster.lease_secs`, default 10 s): after
    /// that, another replica may claim the run.
    pub lease: Duration,
}

impl QueueConfig {
    /// The defaults for replica `replica`: 16 runs at once, 10-second leases.
    pub fn new(replica: impl Into<String>) -> Self {
        QueueConfig {
            replica: replica.into(),
            max_runs: 16,
            lease: Duration::from_secs(10),
        }
    }

    /// How often to call [`super::Queue::heartbeat`]: a third of the lease, so that two
    /// heartbeats can be late or fail before a lease expires.
    pub fn heartbeat_every(&self) -> Duration {
        self.lease / 3
    }

    /// The configuration's first out-of-range value, named.
    pub fn validate(&self) -> Result<(), QueueError> {
        let problem = |field, problem: &str| {
            Err(QueueError::Config {
                field,
                problem: problem.to_owned(),
            })
        };
        if self.replica.trim().is_empty() {
            return problem(
                "cluster.replica",
                "empty; name the replica (e.g. the pod's name)",
            );
        }
        if self.max_runs == 0 {
            return problem("cluster.max_runs_per_replica", "0; use 1 or more");
        }
        if self.lease < Duration::from_millis(100) || self.lease > Duration::from_secs(3600) {
            return problem(
                "cluster.lease_secs",
                "out of range; use from 0.1 to 3600 seconds (default 10)",
            );
        }
        Ok(())
    }

    /// The lease in whole milliseconds, as the SQL takes it.
    pub(crate) fn lease_millis(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}
