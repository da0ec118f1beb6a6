//! Fencing in the journal and the ledger against a real server: once a run's lease has passed
//! to another replica, this process's appends, reservations and settlements for the run are
//! refused and write nothing; under the current epoch they go through; a run without an epoch
//! is written as in a single process.

use std::time::Duration;

use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_pg::test_cluster::shared;
use impresario_pg::{Fences, PgJournal, PgJournalOptions};
use impresario_runtime::fencing::Fenced;
use impresario_runtime::journal::{Journal, JournalError};
use impresario_runtime::ledger::{AccountId, Charge};
use impresario_runtime::ledger_store::{LedgerStore, ReserveError};
use impresario_runtime::RunId;

use crate::journal_suite::{step, submitted};
use crate::ledger::database;
use crate::queue::replica;

fn path(run: &str) -> Vec<AccountId> {
    vec![
        AccountId::Run(run.into()),
        AccountId::Tenant("t".into()),
        AccountId::Global,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_writes_nothing_and_the_current_epoch_writes() {
    let url = shared().create_database("fences_stale_epoch");
    let db = database(&url).await;
    let fences = Fences::new();
    let options = PgJournalOptions {
        fences: fences.clone(),
        ..PgJournalOptions::default()
    };
    let journal = PgJournal::open_with(db.clone(), options);
    let ledger = PgLedger::new(db, PgLedgerConfig::default()).fenced_by(fences.clone());
    let lease_for = Duration::from_secs(60);
    let (a, b) = (
        replica(&url, "a", 5, lease_for),
        replica(&url, "b", 5, lease_for),
    );
    let (run, solo) = (RunId::new("r1"), RunId::new("solo"));
    a.enqueue("r1", "t").await.unwrap();

    // Replica a claims the run: its writes go through under epoch 1.
    let first = a.claim().await.unwrap().pop().unwrap();
    fences.set(&first);
    journal.append(&run, submitted("t")).await.unwrap();
    let amount = Charge::usd(40) + Charge::model_calls(1);
    let hold = ledger.reserve(&path("r1"), amount).await.unwrap();

    // a hands the run back and b claims it (epoch 2): a's epoch is stale.
    a.drain().await.unwrap();
    let second = b.claim().await.unwrap().pop().unwrap();
    assert_eq!((first.epoch, second.epoch), (1, 2));
    let stale = Fenced {
        run: run.clone(),
        epoch: 1,
    };
    // Queued together, so usually written in one transaction: the fenced append is refused,
    // the unfenced run's append is written.
    let (fenced, unfenced) = (
        journal.append(&run, step(1)),
        journal.append(&solo, submitted("t")),
    );
    match fenced.await {
        Err(JournalError::Fenced(f)) => assert_eq!(f, stale),
        other => panic!("a stale epoch's append was not fenced: {other:?}"),
    }
    assert_eq!(unfenced.await.unwrap(), 1);
    match ledger.reserve(&path("r1"), amount).await {
        Err(ReserveError::Fenced(f)) => assert_eq!(f, stale),
        other => panic!("a stale epoch's reservation was not fenced: {other:?}"),
    }
    let refused = ledger.settle(&hold, amount).await.unwrap_err();
    assert!(refused.message.contains("epoch 1 is stale"), "{refused}");
    // Nothing of it was written: one event, one hold (not settled), nothing spent.
    assert_eq!(journal.read(&run).unwrap().len(), 1);
    let snapshot = ledger.snapshot(&path("r1")[0]).await.unwrap();
    assert_eq!((snapshot.spent, snapshot.reserved), (Charge::ZERO, amount));
    let err = JournalError::Fenced(stale).to_string();
    assert!(err.contains("stop driving the run"), "{err}");

    // This process takes the current epoch: its writes go through again.
    fences.set(&second);
    assert_eq!(journal.append(&run, step(1)).await.unwrap(), 2);
    ledger.settle(&hold, amount).await.unwrap();
    let again = ledger.reserve(&path("r1"), amount).await.unwrap();
    ledger.settle(&again, Charge::ZERO).await.unwrap();
    let snapshot = ledger.snapshot(&path("r1")[0]).await.unwrap();
    assert_eq!((snapshot.spent, snapshot.reserved), (amount, Charge::ZERO));

    // Without an epoch, nothing is checked (a single process).
    fences.remove("r1");
    assert_eq!(fences.epoch("r1"), None);
    b.drain().await.unwrap();
    assert_eq!(journal.append(&run, step(2)).await.unwrap(), 3);
}
