//! On PostgreSQL a model call's charge and its journaled outcome commit in one transaction:
//! the run's calls leave their `PgLedger` holds to the `PgJournal`, whose append of the answer
//! settles them. A child process is SIGKILLed after the provider answered and before that
//! append: neither the answer nor its charge is in the database, the hold expires uncharged,
//! and the resumed run asks the model again and pays once. After every run, no hold is left and
//! the tenant's spend in `ledger_accounts` equals the charges in its runs' journals. Runs in
//! flight go on through a restart of the server (`pg_ctl restart`): they all finish, nothing
//! journaled is lost, and the spend is still exact.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_agents::{Budget, ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunState};
use impresario_pg::ledger::{PgLedger, PgLedgerConfig};
use impresario_pg::test_cluster::TestCluster;
use impresario_pg::PgJournal;
use impresario_runtime::journal::{
    Journal, JournalEntry, JournalError, JournalFuture, RetentionPolicy, RetentionReport, RunEvent,
    RunFilter, RunSummary, Seq,
};
use impresario_runtime::ledger::{AccountId, Charge};
use impresario_runtime::{RunId, Runtime, RuntimeHandle};
use serde_json::json;

use crate::held_in_pg::{database, orchestrator};
use crate::loopback::{fake_openai_with, Answer};

const DB: &str = "IMPRESARIO_SETTLE_DB";
const PROVIDER: &str = "IMPRESARIO_SETTLE_PROVIDER";
/// How long an unsettled hold counts: short, so the test sees the killed call's expire.
const HOLD_TTL: Duration = Duration::from_secs(2);

/// The PostgreSQL journal, killing the process when a batch with a model's answer is about to
/// be written: after the answer arrived, before it (and its charge) commit.
struct KillBeforeAnswer(PgJournal);

impl Journal for KillBeforeAnswer {
    fn append_batch(&self, run: &RunId, events: Vec<RunEvent>) -> JournalFuture<u64> {
        if events
            .iter()
            .any(|e| matches!(e, RunEvent::LlmResponse { .. }))
        {
            let me = nix::unistd::Pid::this();
            let _ = nix::sys::signal::kill(me, nix::sys::signal::Signal::SIGKILL);
        }
        self.0.append_batch(run, events)
    }
    fn commits(&self) -> u64 {
        self.0.commits()
    }
    fn read(&self, run: &RunId) -> Result<Vec<JournalEntry>, JournalError> {
        self.0.read(run)
    }
    fn read_after(&self, run: &RunId, after: Seq) -> Result<Vec<JournalEntry>, JournalError> {
        self.0.read_after(run, after)
    }
    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        self.0.runs(filter)
    }
    fn apply_retention(&self, policy: &RetentionPolicy) -> JournalFuture<RetentionReport> {
        self.0.apply_retention(policy)
    }
    fn settles_holds(&self) -> bool {
        self.0.settles_holds()
    }
    fn probe_write(&self) -> JournalFuture<()> {
        self.0.probe_write()
    }
}

/// An orchestrator journaling in the database at `url` and holding its calls there.
async fn process(
    rt: &RuntimeHandle,
    provider: &str,
    url: &str,
    kill: bool,
) -> (Orchestrator, PgLedger, PgJournal) {
    let db = database(url).await;
    let config = PgLedgerConfig {
        hold_ttl: HOLD_TTL,
        ..PgLedgerConfig::default()
    };
    let store = PgLedger::new(db.clone(), config);
    let journal = PgJournal::open(db);
    assert!(journal.settles_holds());
    let as_journal: Arc<dyn Journal> = match kill {
        true => Arc::new(KillBeforeAnswer(journal.clone())),
        false => Arc::new(journal.clone()),
    };
    let config = OrchestratorConfig {
        journal: as_journal,
        ledger_store: Some(Arc::new(store.clone())),
        recall: 0,
        ..OrchestratorConfig::default()
    };
    (orchestrator(rt, provider, config).await, store, journal)
}

fn request() -> RunRequest {
    RunRequest::new("What is the answer?", ModelMap::all("local"))
        .tenant("acme")
        .budget(Budget::usd(0.5))
}

/// The child: submits one run; killed when its answer is about to be journaled.
#[test]
#[ignore = "run by a_kill_between_the_answer_and_its_commit_leaves_neither as a child process"]
fn settle_child() {
    let (Ok(url), Ok(provider)) = (std::env::var(DB), std::env::var(PROVIDER)) else {
        return;
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async move {
        let rt = Runtime::builder().arbiters(2).start().unwrap();
        let (team, _, _) = process(&rt, &provider, &url, true).await;
        let run = team.submit(request()).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(60), run.wait()).await;
        panic!("the child was not killed before its answer was journaled");
    });
}

/// The money and model calls the journal says `runs` were charged.
fn journaled_charges(journal: &PgJournal, runs: &[RunId]) -> Charge {
    let mut total = Charge::ZERO;
    for run in runs {
        for entry in journal.read(run).unwrap() {
            total = total + entry.event.charge();
        }
    }
    total
}

/// The holds of every answer journaled for `run` (each must have one: the journal settled it).
fn answer_holds(journal: &PgJournal, run: &RunId) -> Vec<String> {
    let mut holds = Vec::new();
    for entry in journal.read(run).unwrap() {
        if let RunEvent::LlmResponse { holds: h, .. } = &entry.event {
            assert_eq!(h.len(), 1, "{:?}", entry.event);
            holds.extend(h.iter().cloned());
        }
    }
    holds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_answer_and_its_commit_leaves_neither() {
    let answer = json!({ "steps": [{ "type": "final_answer", "answer": "42" }] }).to_string();
    let answers = vec![Answer::new(answer).usage(1_000, 20)];
    let (provider, requests) = fake_openai_with(answers).await;
    let url = impresario_pg::test_cluster::shared().create_database("settled_with_answers");
    let pg = impresario_pg::test_cluster::shared();

    // The child dies after the provider answered, before the answer's append.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "settled_with_answers::settle_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env(DB, &url)
        .env(PROVIDER, &provider)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the child did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the child was SIGKILLed: {status:?}"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "the model answered once"
    );

    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let (team, store, journal) = process(&rt, &provider, &url, false).await;
    let runs: Vec<RunId> = journal
        .runs(&RunFilter::all())
        .unwrap()
        .into_iter()
        .map(|r| r.run)
        .collect();
    assert_eq!(runs.len(), 1);
    // Neither the answer nor its charge: the request is journaled, no answer, nothing spent,
    // and the hold of the call (live until it expires) is not settled.
    let entries = journal.read(&runs[0]).unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e.event.kind()).collect();
    assert!(
        kinds.contains(&"llm_request") && !kinds.contains(&"llm_response"),
        "{kinds:?}"
    );
    let tenant = AccountId::Tenant("acme".into());
    let before = store.snapshot(&tenant).await.unwrap();
    assert_eq!(
        before.spent,
        Charge::ZERO,
        "charged without its journaled answer"
    );
    let unsettled = pg.psql(&url, "SELECT count(*) FROM ledger_holds").unwrap();
    assert_eq!(unsettled, "1", "the killed call's hold stays unsettled");
    let mut reserved = before.reserved;
    for _ in 0..100 {
        if reserved == Charge::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        reserved = store.snapshot(&tenant).await.unwrap().reserved;
    }
    assert_eq!(reserved, Charge::ZERO, "the hold expired uncharged");

    // The resumed run asks again, pays once; then a new run on the same tenant.
    for resumed in team.recover().await.unwrap() {
        let result = resumed.wait().await;
        assert!(
            matches!(result.state, RunState::Succeeded { .. }),
            "{:?}",
            result.state
        );
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "asked again after the kill"
    );
    let fresh = team.submit(request()).await.unwrap().wait().await;
    assert!(
        matches!(fresh.state, RunState::Succeeded { .. }),
        "{:?}",
        fresh.state
    );
    let all = [runs[0].clone(), fresh.run.clone()];

    let after = store.snapshot(&tenant).await.unwrap();
    let charged = journaled_charges(&journal, &all);
    assert_eq!(
        after.spent.micro_usd, charged.micro_usd,
        "spend = the journals' charges"
    );
    assert_eq!(after.spent.model_calls, 2, "one paid call per run");
    assert!(charged.micro_usd > 0);
    assert_eq!(after.reserved, Charge::ZERO);
    // Every answer's hold was settled by its append: none of them is stored any more.
    for run in &all {
        for hold in answer_holds(&journal, run) {
            let sql = format!("SELECT count(*) FROM ledger_holds WHERE id = '{hold}'");
            assert_eq!(pg.psql(&url, &sql).unwrap(), "0", "hold {hold} left");
        }
    }
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_on_through_a_server_restart_and_their_spend_stays_exact() {
    const RUNS: usize = 8;
    let answer = json!({ "steps": [{ "type": "final_answer", "answer": "42" }] }).to_string();
    // Every call answers after 300 ms: the restart lands while they are in flight.
    let slow = Answer::new(answer)
        .usage(1_000, 20)
        .after(Duration::from_millis(300));
    let (provider, requests) = fake_openai_with(vec![slow]).await;
    // A server of its own: restarting the shared one would cut the other tests off.
    let pg = Arc::new(TestCluster::start());
    let url = pg.create_database("restart_mid_runs");
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let (team, store, journal) = process(&rt, &provider, &url, false).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(team.submit(request()).await.unwrap());
    }
    for _ in 0..400 {
        if requests.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(requests.load(Ordering::SeqCst) > 0, "no call was sent");
    let restarting = pg.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap();

    let mut ids = Vec::new();
    for run in runs {
        let result = tokio::time::timeout(Duration::from_secs(120), run.wait())
            .await
            .expect("the run ended");
        assert!(
            matches!(result.state, RunState::Succeeded { .. }),
            "{:?}",
            result.state
        );
        ids.push(result.run.clone());
    }
    // Every run's journal reads whole and ends finished; each answer was paid once, charged
    // once in the database, and no hold is left.
    for id in &ids {
        let entries = journal.read(id).unwrap();
        let last = entries.last().map(|e| e.event.kind());
        assert_eq!(last, Some("run_finished"), "{id}");
    }
    let charged = journaled_charges(&journal, &ids);
    assert_eq!(charged.model_calls, RUNS as u64);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        RUNS,
        "no answer asked twice"
    );
    let after = store
        .snapshot(&AccountId::Tenant("acme".into()))
        .await
        .unwrap();
    assert_eq!(
        (after.spent.micro_usd, after.spent.model_calls),
        (charged.micro_usd, charged.model_calls),
        "spend = the journals' charges"
    );
    assert_eq!(after.reserved, Charge::ZERO);
    // `reserved` counts unexpired holds only, and the restart can outlast HOLD_TTL: the rows
    // show whether a hold was left behind.
    let left = pg.psql(&url, "SELECT count(*) FROM ledger_holds").unwrap();
    assert_eq!(left, "0", "holds left after the runs ended");
    rt.shutdown(Duration::from_secs(5)).await;
}
