//! The run queue of a cluster (docs/ARCHITECTURE.md, "Cluster"): runs wait in PostgreSQL; each
//! replica claims at most `max_runs` of them with `FOR UPDATE SKIP LOCKED`; a claim is a lease
//! with an epoch (a fencing token that grows with every claim of the run), kept alive by
//! [`Queue::heartbeat`]; a lease that is not renewed in time can be claimed by another replica;
//! [`Queue::drain`] hands a replica's runs back at once. Every write made for a run runs
//! [`fence`] in its transaction, so a replica whose lease is gone cannot write.
//!
//! Leases expire on the database server's clock: no two replicas' clocks are ever compared.
//! [`Queue::overdue`] is a replica's own, earlier, reckoning on its monotonic clock.

mod config;
mod error;
mod held;
mod lease;

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

pub use config::QueueConfig;
pub use error::{QueueError, FENCED};
pub use lease::{fence, Lease};

use held::Held;

/// The queue's schema, a step for the migration list: the `run_queue` table and the
/// `impresario_fence(run, epoch)` function.
pub const MIGRATION: &str = include_str!("schema.sql");

/// The queue's second step (migration 12): when each run was last claimed (the claim order
/// by tenant), and the trigger that deletes a run's row when retention deletes its journal.
pub const FAIRNESS: &str = include_str!("fairness.sql");

/// Claims up to `$2` minus this replica's (`$1`) live leases of the waiting runs, each for `$3`
/// ms. Tenants take turns: a run's rank is its tenant's runs in flight plus its place in its
/// tenant's line; ties go to the tenant claimed for longest ago (never first), then to the
/// oldest run. The ranks are read before the rows are locked (`FOR UPDATE` takes no window
/// function); a row another transaction holds is skipped, not waited for.
const CLAIM: &str = "WITH waiting AS ( \
       SELECT run_id, tenant, enqueued_at, \
              row_number() OVER (PARTITION BY tenant ORDER BY enqueued_at, run_id) AS place \
         FROM run_queue \
        WHERE state = 'queued' OR (state = 'leased' AND lease_until <= clock_timestamp())), \
     tenants AS ( \
       SELECT t.tenant, \
              (SELECT count(*) FROM run_queue l WHERE l.tenant = t.tenant \
                  AND l.state = 'leased' AND l.lease_until > clock_timestamp()) AS in_flight, \
              (SELECT max(c.claimed_at) FROM run_queue c WHERE c.tenant = t.tenant) AS last_claim \
         FROM (SELECT DISTINCT tenant FROM waiting) t), \
     picked AS ( \
       SELECT q.run_id FROM run_queue q \
         JOIN waiting w ON w.run_id = q.run_id JOIN tenants t ON t.tenant = w.tenant \
        WHERE q.state = 'queued' OR (q.state = 'leased' AND q.lease_until <= clock_timestamp()) \
        ORDER BY t.in_flight + w.place, t.last_claim NULLS FIRST, w.enqueued_at, w.run_id \
        LIMIT greatest(0, $2 - (SELECT count(*) FROM run_queue \
               WHERE owner = $1 AND state = 'leased' AND lease_until > clock_timestamp())) \
          FOR UPDATE OF q SKIP LOCKED) \
     UPDATE run_queue q \
        SET state = 'leased', owner = $1, epoch = q.epoch + 1, claimed_at = clock_timestamp(), \
            lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond' \
       FROM picked WHERE q.run_id = picked.run_id \
     RETURNING q.run_id, q.tenant, q.epoch";

/// Puts this replica's leases ($1 the replica, $2/$3 runs and epochs) back in the queue, keeping
/// their place in line; returns the runs it put back.
const HAND_BACK: &str =
    "UPDATE run_queue q SET state = 'queued', owner = NULL, lease_until = NULL \
       FROM unnest($2::text[], $3::bigint[]) AS h(run_id, epoch) \
      WHERE q.run_id = h.run_id AND q.epoch = h.epoch AND q.owner = $1 AND q.state = 'leased' \
     RETURNING q.run_id";

/// How many runs wait, and for how long the oldest has: values for the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueStats {
    /// Runs waiting for a replica: queued, or leased with the lease expired.
    pub depth: u64,
    /// How long the oldest waiting run has waited since it was queued (`None`: none waits).
    pub oldest_age: Option<Duration>,
    /// Runs driven under a live lease, by every replica.
    pub leased: u64,
}

/// One replica's handle on the run queue: what it claims, it drives, until it completes the run,
/// drains, or loses the lease.
pub struct Queue {
    pool: Pool,
    config: QueueConfig,
    held: Held,
}

impl Queue {
    /// A handle for the replica `config` names, on `pool`'s database (whose schema includes
    /// [`MIGRATION`]). Refuses an out-of-range configuration, naming the key.
    pub fn new(pool: Pool, config: QueueConfig) -> Result<Queue, QueueError> {
        config.validate()?;
        Ok(Queue {
            pool,
            config,
            held: Held::default(),
        })
    }

    /// This replica's settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The leases this replica holds, as far as it knows (a heartbeat tells it which it lost).
    pub fn held(&self) -> Vec<Lease> {
        self.held.leases()
    }

    /// The leases this replica has not been able to renew for a whole lease (the database was
    /// unreachable, or this process was paused): they may have expired, so it forgets them and
    /// must stop driving their runs now (their writes would be refused anyway). Check it after
    /// every heartbeat, failed ones included. Measured on this process's monotonic clock from
    /// when the claim or renewal was sent, so it errs on the side of stopping early.
    pub fn overdue(&self) -> Vec<Lease> {
        self.held.overdue(Instant::now())
    }

    /// Puts run `run` of `tenant` in the queue; a done run is queued again (its next claim gets
    /// a higher epoch than any before). [`QueueError::AlreadyQueued`] if it waits or is driven.
    pub async fn enqueue(&self, run: &str, tenant: &str) -> Result<(), QueueError> {
        let queued = self
            .pool
            .get()
            .await?
            .execute(
                "INSERT INTO run_queue (run_id, tenant) VALUES ($1, $2) \
                 ON CONFLICT (run_id) DO UPDATE \
                 SET state = 'queued', enqueued_at = clock_timestamp() \
                 WHERE run_queue.state = 'done' AND run_queue.tenant = EXCLUDED.tenant",
                &[&run, &tenant],
            )
            .await?;
        if queued == 0 {
            return Err(QueueError::AlreadyQueued {
                run: run.to_owned(),
            });
        }
        Ok(())
    }

    /// Claims waiting runs until this replica drives `max_runs` (none if it already does):
    /// each a new lease, its epoch one more than the run's last. Tenants take turns (the
    /// tenant with the fewest runs in flight first, then the one claimed for longest ago;
    /// within a tenant, oldest first), so a tenant that floods the queue delays another's run
    /// by at most its own runs in flight. Runs another transaction has locked are skipped, not
    /// waited for.
    pub async fn claim(&self) -> Result<Vec<Lease>, QueueError> {
        let sent = Instant::now();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One claim at a time per replica, so two concurrent claims cannot both see room.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('impresario.run_queue.claim'), hashtext($1))",
            &[&self.config.replica],
        )
        .await?;
        let rows = tx
            .query(
                CLAIM,
                &[
                    &self.config.replica,
                    &i64::from(self.config.max_runs),
                    &self.config.lease_millis(),
                ],
            )
            .await?;
        tx.commit().await?;
        let claimed: Vec<Lease> = rows
            .iter()
            .map(|row| Lease {
                run: row.get(0),
                tenant: row.get(1),
                epoch: row.get(2),
            })
            .collect();
        self.held.claimed(&claimed, sent + self.config.lease);
        Ok(claimed)
    }

    /// Renews every lease this replica holds for another `lease`; returns those it lost (they
    /// expired or another replica claimed them): stop driving those runs. Call it every
    /// [`QueueConfig::heartbeat_every`]; when it fails (the database is down), keep calling it:
    /// leases that expire meanwhile are reported lost by the next one that succeeds.
    pub async fn heartbeat(&self) -> Result<Vec<Lease>, QueueError> {
        let held = self.held();
        let sent = Instant::now();
        let renewed = self
            .by_lease(
                "UPDATE run_queue q \
                    SET lease_until = clock_timestamp() + $4::bigint * interval '1 millisecond' \
                   FROM unnest($2::text[], $3::bigint[]) AS h(run_id, epoch) \
                  WHERE q.run_id = h.run_id AND q.epoch = h.epoch AND q.owner = $1 \
                    AND q.state = 'leased' AND q.lease_until > clock_timestamp() \
                 RETURNING q.run_id",
                &held,
                Some(self.config.lease_millis()),
            )
            .await?;
        let (kept, lost): (Vec<Lease>, Vec<Lease>) =
            held.into_iter().partition(|l| renewed.contains(&l.run));
        self.held.renewed(&kept, sent + self.config.lease);
        self.held.forget(&lost);
        Ok(lost)
    }

    /// Marks the run of `lease` done, fenced: [`QueueError::Fenced`] if the lease is gone.
    pub async fn complete(&self, lease: &Lease) -> Result<(), QueueError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        fence(&tx, lease).await?;
        tx.execute(
            "UPDATE run_queue SET state = 'done', owner = NULL, lease_until = NULL \
             WHERE run_id = $1",
            &[&lease.run],
        )
        .await?;
        tx.commit().await?;
        self.held.forget(std::slice::from_ref(lease));
        Ok(())
    }

    /// Hands every run this replica drives back to the queue at once (a graceful drain): other
    /// replicas can claim them right away, ahead of newer runs, and this replica's writes for
    /// them are refused from now on. Returns the leases handed back.
    pub async fn drain(&self) -> Result<Vec<Lease>, QueueError> {
        let held = self.held();
        let released = self.by_lease(HAND_BACK, &held, None).await?;
        self.held.forget(&held);
        Ok(held
            .into_iter()
            .filter(|l| released.contains(&l.run))
            .collect())
    }

    /// Hands the run of `lease` back to the queue at once, like [`drain`](Self::drain) for one
    /// run (this replica could not start it now): `false` if the lease was gone already.
    pub async fn release(&self, lease: &Lease) -> Result<bool, QueueError> {
        let released = self
            .by_lease(HAND_BACK, std::slice::from_ref(lease), None)
            .await?;
        self.held.forget(std::slice::from_ref(lease));
        Ok(!released.is_empty())
    }

    /// Queue depth, the oldest waiting run's age, and the live leases: one query.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT live), \
                        extract(epoch FROM clock_timestamp() \
                                - min(enqueued_at) FILTER (WHERE NOT live))::float8, \
                        count(*) FILTER (WHERE live) \
                   FROM (SELECT enqueued_at, state = 'leased' \
                                AND lease_until > clock_timestamp() AS live \
                           FROM run_queue WHERE state <> 'done') AS waiting",
                &[],
            )
            .await?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(QueueStats {
            depth: count(0),
            oldest_age: row
                .get::<_, Option<f64>>(1)
                .map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            leased: count(2),
        })
    }

    /// Runs `sql` with $1 this replica, $2/$3 the runs and epochs of `leases`, and $4 `renew`
    /// (a lease in milliseconds) if given; returns the run ids of the rows it returned.
    async fn by_lease(
        &self,
        sql: &str,
        leases: &[Lease],
        renew: Option<i64>,
    ) -> Result<Vec<String>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<&str> = leases.iter().map(|l| l.run.as_str()).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&self.config.replica, &runs, &epochs];
        if let Some(millis) = &renew {
            params.push(millis);
        }
        let rows = self.pool.get().await?.query(sql, &params).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}
