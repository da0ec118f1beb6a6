//! The run queue against a real server: claims never overlap, `max_runs` holds, a lease that is
//! not renewed passes to another replica and the old holder's writes are refused, a drain hands
//! runs back at once. Each "replica" is a `Queue` on a connection pool of its own, as two
//! processes would be.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Runtime};
use impresario_pg::database::Database;
use impresario_pg::queue::{fence, Lease, Queue, QueueConfig, QueueError};
use impresario_pg::schema::SCHEMA_VERSION;
use impresario_pg::test_cluster;
use tokio_postgres::NoTls;

/// A fresh database of the shared server, with [`install`]ed tables, and its URL.
async fn database(name: &str) -> String {
    install(test_cluster::shared().create_database(name)).await
}

/// Brings the database at `url` to the current schema (the journal's migrations, the queue's
/// among them) and adds a table standing for the journal's and the ledger's writes (`effects`);
/// returns `url`.
async fn install(url: String) -> String {
    let migrate = url.clone();
    tokio::task::spawn_blocking(move || Database::connect(&migrate).map(drop))
        .await
        .unwrap()
        .unwrap();
    pool(&url)
        .get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE effects (run_id text, epoch bigint, note text)")
        .await
        .unwrap();
    url
}

pub(crate) fn pool(url: &str) -> Pool {
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url.to_owned());
    config.create_pool(Some(Runtime::Tokio1), NoTls).unwrap()
}

/// A replica: a queue on a pool of its own.
pub(crate) fn replica(url: &str, name: &str, max_runs: u32, lease: Duration) -> Queue {
    let config = QueueConfig {
        max_runs,
        lease,
        ..QueueConfig::new(name)
    };
    Queue::new(pool(url), config).unwrap()
}

/// A write on behalf of `lease`, fenced in its transaction, as the journal's appends will be.
async fn write(url: &str, lease: &Lease, note: &str) -> Result<(), QueueError> {
    let pool = pool(url);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    fence(&tx, lease).await?;
    tx.execute(
        "INSERT INTO effects VALUES ($1, $2, $3)",
        &[&lease.run, &lease.epoch, &note],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn effects(url: &str) -> Vec<(String, i64, String)> {
    let rows = pool(url)
        .get()
        .await
        .unwrap()
        .query(
            "SELECT run_id, epoch, note FROM effects ORDER BY run_id, epoch",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn enqueue(queue: &Queue, runs: std::ops::Range<usize>) {
    for i in runs {
        queue
            .enqueue(&format!("run-{i:03}"), &format!("tenant-{}", i % 5))
            .await
            .unwrap();
    }
}

fn runs_of(leases: &[Lease]) -> HashSet<String> {
    leases.iter().map(|l| l.run.clone()).collect()
}

/// Claims and completes runs until the queue is empty (at most 200 rounds); every lease claimed.
async fn drive_all(queue: Queue) -> Vec<Lease> {
    let mut claimed = Vec::new();
    for _ in 0..200 {
        let leases = queue.claim().await.unwrap();
        assert!(leases.len() <= 20, "claimed {} at once", leases.len());
        for lease in &leases {
            queue.complete(lease).await.unwrap();
        }
        claimed.extend(leases);
        if queue.stats().await.unwrap().depth == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    claimed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_claiming_200_runs_never_claim_one_twice() {
    let url = database("queue_two_replicas").await;
    let lease = Duration::from_secs(60);
    let (a, b) = (replica(&url, "a", 20, lease), replica(&url, "b", 20, lease));
    enqueue(&a, 0..200).await;

    let (by_a, by_b) = tokio::join!(tokio::spawn(drive_all(a)), tokio::spawn(drive_all(b)));
    let (by_a, by_b) = (by_a.unwrap(), by_b.unwrap());

    let all: Vec<&Lease> = by_a.iter().chain(&by_b).collect();
    let distinct: HashSet<&str> = all.iter().map(|l| l.run.as_str()).collect();
    assert_eq!(all.len(), 200, "a: {}, b: {}", by_a.len(), by_b.len());
    assert_eq!(distinct.len(), 200, "a run was claimed twice");
    assert!(all.iter().all(|l| l.epoch == 1), "a run was claimed twice");
    assert!(!by_a.is_empty() && !by_b.is_empty(), "both replicas drive");
    let stats = replica(&url, "c", 1, lease).stats().await.unwrap();
    assert_eq!((stats.depth, stats.leased, stats.oldest_age), (0, 0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_drives_at_most_max_runs_even_when_it_claims_concurrently() {
    let url = database("queue_max_runs").await;
    let a = replica(&url, "a", 3, Duration::from_secs(60));
    enqueue(&a, 0..10).await;

    let claims = futures_join4(&a).await;
    let leases: Vec<Lease> = claims.into_iter().flatten().collect();
    assert_eq!(leases.len(), 3, "{leases:?}");
    assert!(a.claim().await.unwrap().is_empty());

    a.complete(&leases[0]).await.unwrap();
    assert_eq!(
        a.claim().await.unwrap().len(),
        1,
        "a finished run frees a place"
    );
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.depth, stats.leased), (6, 3));

    let zero = QueueConfig {
        max_runs: 0,
        ..QueueConfig::new("z")
    };
    let refused = Queue::new(pool(&url), zero).err().unwrap().to_string();
    assert!(
        refused.contains("cluster.max_runs_per_replica"),
        "{refused}"
    );
}

/// Four claims of one replica at the same time, each on a connection of its own that is
/// already open (so that their statements interleave).
async fn futures_join4(queue: &Queue) -> Vec<Vec<Lease>> {
    let (w, x, y, z) = tokio::join!(queue.stats(), queue.stats(), queue.stats(), queue.stats());
    assert!(w.is_ok() && x.is_ok() && y.is_ok() && z.is_ok());
    let (w, x, y, z) = tokio::join!(queue.claim(), queue.claim(), queue.claim(), queue.claim());
    vec![w.unwrap(), x.unwrap(), y.unwrap(), z.unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_lease_and_a_lease_left_to_expire_passes_to_another_replica() {
    let url = database("queue_expiry").await;
    let lease = Duration::from_secs(2);
    let (a, b) = (replica(&url, "a", 3, lease), replica(&url, "b", 10, lease));
    enqueue(&a, 0..3).await;
    let held = a.claim().await.unwrap();
    assert_eq!(held.len(), 3);

    // Renewed every 200 ms for twice the lease: nobody else can claim the runs.
    for _ in 0..20 {
        assert!(a.heartbeat().await.unwrap().is_empty(), "no lease lost");
        assert!(a.overdue().is_empty(), "renewed leases are not overdue");
        assert!(b.claim().await.unwrap().is_empty(), "b claimed a's run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    write(&url, &held[0], "a, in time").await.unwrap();

    // a stops heartbeating: once the leases expire, b claims them, one epoch up.
    let mut taken = Vec::new();
    for _ in 0..100 {
        taken.extend(b.claim().await.unwrap());
        if taken.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runs_of(&taken), runs_of(&held));
    assert!(taken.iter().all(|l| l.epoch == 2), "{taken:?}");

    // a's writes under its stale epoch are refused and leave nothing; b's go through.
    let refused = write(&url, &held[0], "a, stale").await.unwrap_err();
    assert!(
        matches!(&refused, QueueError::Fenced { run, epoch: 1 } if *run == held[0].run),
        "{refused}"
    );
    assert!(matches!(
        a.complete(&held[1]).await,
        Err(QueueError::Fenced { .. })
    ));
    let b_lease = taken.iter().find(|l| l.run == held[0].run).unwrap();
    write(&url, b_lease, "b").await.unwrap();
    let notes: Vec<String> = effects(&url).await.into_iter().map(|e| e.2).collect();
    assert_eq!(notes, ["a, in time", "b"]);
    assert_eq!(
        runs_of(&a.heartbeat().await.unwrap()),
        runs_of(&held),
        "a learns it lost them"
    );
    assert!(a.held().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_cannot_write_even_before_another_replica_claims_it() {
    let url = database("queue_expired_unclaimed").await;
    let a = replica(&url, "a", 1, Duration::from_millis(300));
    enqueue(&a, 0..1).await;
    let lease = a.claim().await.unwrap().remove(0);
    for _ in 0..100 {
        if a.stats().await.unwrap().depth == 1 {
            break; // expired: waiting again
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.stats().await.unwrap().depth, 1, "the lease never expired");
    let refused = write(&url, &lease, "late").await.unwrap_err();
    assert!(refused.to_string().contains("stale"), "{refused}");
    assert!(effects(&url).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_write_in_flight_holds_off_a_claim_until_it_commits() {
    let url = database("queue_fence_lock").await;
    let (a, b) = (
        replica(&url, "a", 1, Duration::from_millis(200)),
        replica(&url, "b", 1, Duration::from_secs(60)),
    );
    enqueue(&a, 0..1).await;
    let lease = a.claim().await.unwrap().remove(0);

    let pool = pool(&url);
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    fence(&tx, &lease).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // the lease expires meanwhile
    assert!(
        b.claim().await.unwrap().is_empty(),
        "claimed during a's write"
    );
    tx.execute("INSERT INTO effects VALUES ($1, 1, 'a')", &[&lease.run])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let taken = b.claim().await.unwrap();
    assert_eq!(taken.len(), 1, "claimable once a's write committed");
    assert_eq!(taken[0].epoch, 2);
    assert_eq!(effects(&url).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_hands_runs_back_at_once_ahead_of_newer_runs() {
    let url = database("queue_drain").await;
    let lease = Duration::from_secs(60); // nothing expires during this test
    let (a, b) = (replica(&url, "a", 5, lease), replica(&url, "b", 5, lease));
    enqueue(&a, 0..5).await;
    let held = a.claim().await.unwrap();
    enqueue(&a, 5..10).await;

    let handed_back = a.drain().await.unwrap();
    assert_eq!(runs_of(&handed_back), runs_of(&held));
    assert!(a.held().is_empty());
    let taken = b.claim().await.unwrap();
    assert_eq!(runs_of(&taken), runs_of(&held), "the drained runs first");
    assert!(taken.iter().all(|l| l.epoch == 2));
    assert!(matches!(
        write(&url, &held[0], "a after drain").await,
        Err(QueueError::Fenced { .. })
    ));
    assert!(effects(&url).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_one_run_back_and_a_stale_one_changes_nothing() {
    let url = database("queue_release").await;
    let lease = Duration::from_secs(60);
    let (a, b) = (replica(&url, "a", 2, lease), replica(&url, "b", 2, lease));
    enqueue(&a, 0..2).await;
    let held = a.claim().await.unwrap();
    assert!(a.release(&held[0]).await.unwrap());
    assert_eq!(
        runs_of(&a.held()),
        runs_of(&held[1..]),
        "the other run stays held"
    );
    let taken = b.claim().await.unwrap();
    assert_eq!(runs_of(&taken), runs_of(&held[..1]));
    assert_eq!(taken[0].epoch, 2);
    // Released again by its old holder: refused, b keeps it.
    assert!(!a.release(&held[0]).await.unwrap());
    assert!(b.heartbeat().await.unwrap().is_empty());
    assert!(matches!(
        write(&url, &held[0], "a after release").await,
        Err(QueueError::Fenced { .. })
    ));
    write(&url, &taken[0], "b").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_queued_once_and_its_epoch_grows_across_requeues() {
    let url = database("queue_requeue").await;
    let a = replica(&url, "a", 1, Duration::from_secs(60));
    a.enqueue("r", "acme").await.unwrap();
    let again = a.enqueue("r", "acme").await.unwrap_err();
    assert!(
        matches!(&again, QueueError::AlreadyQueued { run } if run == "r"),
        "{again}"
    );
    let first = a.claim().await.unwrap().remove(0);
    assert!(a.enqueue("r", "acme").await.is_err(), "queued while driven");
    a.complete(&first).await.unwrap();
    assert!(
        a.enqueue("r", "other-tenant").await.is_err(),
        "a run keeps its tenant"
    );

    a.enqueue("r", "acme").await.unwrap(); // resumed later
    let second = a.claim().await.unwrap().remove(0);
    assert_eq!((first.epoch, second.epoch), (1, 2));
    assert_eq!(second.tenant, "acme");
    assert!(matches!(
        write(&url, &first, "old").await,
        Err(QueueError::Fenced { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_waiting_runs_and_age_the_oldest() {
    let url = database("queue_stats").await;
    let a = replica(&url, "a", 2, Duration::from_secs(60));
    let empty = a.stats().await.unwrap();
    assert_eq!((empty.depth, empty.oldest_age, empty.leased), (0, None, 0));
    enqueue(&a, 0..5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.depth, stats.leased), (5, 0));
    let age = stats.oldest_age.unwrap();
    assert!(age >= Duration::from_millis(300), "{age:?}");

    a.claim().await.unwrap();
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.depth, stats.leased), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_nothing_is_claimed_and_unrenewed_leases_expire_on_both_sides() {
    let pg = test_cluster::TestCluster::start(); // a server of its own: this test stops it
    let url = install(pg.create_database("queue_outage")).await;
    let lease = Duration::from_millis(500);
    // b's own lease is long: its write after the outage (a new connection to a server just
    // back up) must come inside it even on a loaded machine; only a's leases expire here.
    let b_lease = Duration::from_secs(60);
    let (a, b) = (replica(&url, "a", 2, lease), replica(&url, "b", 2, b_lease));
    enqueue(&a, 0..2).await;
    let held = a.claim().await.unwrap();

    pg.stop();
    let down = a.heartbeat().await.unwrap_err().to_string();
    assert!(down.contains("check that PostgreSQL is up"), "{down}");
    assert!(!down.contains(pg.password()), "the password leaked: {down}");
    assert!(b.claim().await.is_err());
    tokio::time::sleep(lease * 2).await;
    assert_eq!(
        runs_of(&a.overdue()),
        runs_of(&held),
        "a stops driving them"
    );
    assert!(a.held().is_empty());
    pg.resume();

    // The leases expired in database time: b takes them, and a is fenced.
    let taken = b.claim().await.unwrap();
    assert_eq!(runs_of(&taken), runs_of(&held));
    assert!(taken.iter().all(|l| l.epoch == 2), "{taken:?}");
    assert!(matches!(
        write(&url, &held[0], "a after the outage").await,
        Err(QueueError::Fenced { .. })
    ));
    write(&url, &taken[0], "b").await.unwrap();
    assert_eq!(effects(&url).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_left_open_by_a_paused_replica_ends_with_idle_in_transaction_session_timeout() {
    let url = database("queue_idle_in_transaction").await;
    let (a, b) = (
        replica(&url, "a", 1, Duration::from_secs(2)),
        replica(&url, "b", 1, Duration::from_secs(60)),
    );
    // a's connection is ready before the claim, so its fence comes well inside the lease even
    // on a loaded machine (with a 200 ms lease, a slow pool checkout once made it stale).
    let pool = pool(&url);
    let mut client = pool.get().await.unwrap();
    client
        .batch_execute("SET idle_in_transaction_session_timeout = '4s'")
        .await
        .unwrap();
    enqueue(&a, 0..1).await;
    let lease = a.claim().await.unwrap().remove(0);

    // a fences a write, then stalls inside the transaction (as a paused process would).
    let tx = client.transaction().await.unwrap();
    fence(&tx, &lease).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // expired, but still locked
    assert!(
        b.claim().await.unwrap().is_empty(),
        "claimed under a's lock"
    );

    // PostgreSQL ends a's session after the timeout; then b takes the run over.
    let mut taken = Vec::new();
    for _ in 0..100 {
        taken = b.claim().await.unwrap();
        if !taken.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(taken.first().map(|l| l.epoch), Some(2), "{taken:?}");
    assert!(tx.commit().await.is_err(), "a's stalled write committed");
    assert!(effects(&url).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_migrated_with_the_journal_and_runs_on_its_database_thread() {
    let pg = test_cluster::shared();
    let url = pg.create_database("queue_on_database");
    let connect = url.clone();
    let db = tokio::task::spawn_blocking(move || Database::connect(&connect))
        .await
        .unwrap()
        .unwrap();
    let version = pg
        .psql(&url, "SELECT version FROM impresario_schema")
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());
    assert_eq!(
        pg.psql(&url, "SELECT count(*) FROM run_queue").unwrap(),
        "0"
    );

    // As serve will: the queue on the journal's pool, its futures on the database's thread.
    let queue = Arc::new(Queue::new(db.pool().clone(), QueueConfig::new("a")).unwrap());
    let q = queue.clone();
    let claimed = db
        .spawn(async move {
            q.enqueue("r", "acme").await?;
            q.claim().await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].run.as_str(), claimed[0].epoch), ("r", 1));
    tokio::task::spawn_blocking(move || drop(db)).await.unwrap();
}

/// Claims one run at a time with `queue` (whose `max_runs` is 1), completing each, until it
/// claims `run`: how many claims that took (at most `limit`, then the test fails).
async fn claims_until(queue: &Queue, run: &str, limit: usize) -> usize {
    for claims in 1..=limit {
        let leases = queue.claim().await.unwrap();
        assert_eq!(leases.len(), 1, "claim {claims}");
        if leases[0].run == run {
            return claims;
        }
        queue.complete(&leases[0]).await.unwrap();
    }
    panic!("{run} was not claimed in {limit} claims");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_queue_delays_another_tenants_run_by_a_bounded_number_of_claims() {
    let url = database("queue_fairness").await;
    let lease = Duration::from_secs(60);
    let a = replica(&url, "a", 1, lease);
    // Tenant "flood" queues 1,000 runs, and has had some claimed already.
    pool(&url)
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO run_queue (run_id, tenant, enqueued_at) \
             SELECT format('flood-%s', to_char(i, 'FM0000')), 'flood', \
                    clock_timestamp() - interval '1 hour' + i * interval '1 millisecond' \
               FROM generate_series(1, 1000) AS i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claims_until(&a, "flood-0003", 5).await, 3, "oldest first");
    a.complete(&a.held()[0]).await.unwrap();
    // Tenant "quiet" queues one run, the newest of all: it is the next claimed.
    a.enqueue("quiet-1", "quiet").await.unwrap();
    assert_eq!(claims_until(&a, "quiet-1", 5).await, 1);
    a.complete(&a.held()[0]).await.unwrap();

    // With 5 of "flood"'s runs in flight on another replica, "quiet"'s next run still goes
    // first, though "flood" was claimed for longer ago than "quiet" now.
    let b = replica(&url, "b", 5, lease);
    assert_eq!(b.claim().await.unwrap().len(), 5);
    a.enqueue("quiet-2", "quiet").await.unwrap();
    assert_eq!(claims_until(&a, "quiet-2", 5).await, 1);
    a.complete(&a.held()[0]).await.unwrap();

    // Claiming several at once interleaves the tenants: with "flood" 5 in flight and "quiet"
    // 3 queued, 4 claims take "quiet"'s 3 first (ranks 1-3) and one "flood" run (rank 6).
    for n in 3..=5 {
        a.enqueue(&format!("quiet-{n}"), "quiet").await.unwrap();
    }
    let c = replica(&url, "c", 4, lease);
    let mut tenants: Vec<String> = c
        .claim()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.tenant)
        .collect();
    tenants.sort();
    assert_eq!(tenants, ["flood", "quiet", "quiet", "quiet"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_rows_go_with_their_journal_when_retention_deletes_the_run() {
    use impresario_runtime::journal::{Journal, RetentionPolicy};
    use impresario_runtime::RunId;

    use crate::journal_suite::{finished, submitted};

    let url = database("queue_prune").await;
    let connect = url.clone();
    let journal = tokio::task::spawn_blocking(move || impresario_pg::PgJournal::connect(&connect))
        .await
        .unwrap()
        .unwrap();
    let a = replica(&url, "a", 10, Duration::from_secs(60));
    for name in ["old-1", "old-2", "old-3", "old-4", "live"] {
        journal
            .append(&RunId::new(name), submitted("t"))
            .await
            .unwrap();
        a.enqueue(name, "t").await.unwrap();
    }
    for lease in a.claim().await.unwrap() {
        if lease.run != "live" {
            let run = RunId::new(lease.run.as_str());
            journal.append(&run, finished()).await.unwrap();
            a.complete(&lease).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let rows = || {
        test_cluster::shared()
            .psql(
                &url,
                "SELECT run_id || ':' || state FROM run_queue ORDER BY run_id",
            )
            .unwrap()
    };
    let before = rows();
    // Retention keeps the last run that finished (whichever the claim's order made it): the
    // queue rows of the runs it deleted go in its transaction; the others stay.
    let report = journal
        .apply_retention(&RetentionPolicy {
            max_finished_runs: Some(1),
            ..RetentionPolicy::default()
        })
        .await
        .unwrap();
    assert_eq!(report.runs_deleted, 3, "{before}");
    let kept = journal
        .runs(&impresario_runtime::journal::RunFilter::all())
        .unwrap();
    let mut expected: Vec<String> = kept
        .iter()
        .map(|s| {
            let state = if s.run.as_str() == "live" {
                "leased"
            } else {
                "done"
            };
            format!("{}:{state}", s.run)
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 2, "{kept:?}");
    assert_eq!(rows(), expected.join("\n"), "before retention: {before}");
}
