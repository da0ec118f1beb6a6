//! The three ways to start a runtime: from plain synchronous code, from inside a tokio
//! multi-thread runtime, and attached to an actix System that is already running.

use std::time::Duration;

use actix::prelude::*;
use impresario_runtime::{agent, AgentError, AgentId, Runtime, RuntimeError, RuntimeHandle};

#[derive(Message)]
#[rtype(result = "String")]
struct WhereAmI;

struct Probe;
impl Actor for Probe {
    type Context = Context<Self>;
}
agent!(Probe);

impl Handler<WhereAmI> for Probe {
    type Result = String;
    fn handle(&mut self, _: WhereAmI, _: &mut Context<Self>) -> String {
        std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned()
    }
}

fn assert_send_sync_static<T: Clone + Send + Sync + 'static>() {}

#[test]
fn handles_are_clone_send_sync_static() {
    assert_send_sync_static::<RuntimeHandle>();
    assert_send_sync_static::<impresario_runtime::AgentRef<Probe>>();
}

#[test]
fn from_plain_synchronous_code() {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    assert_eq!(rt.arbiter_count(), 2);
    let probe = rt.spawn(AgentId::new("probe", "sync"), || Probe).unwrap();
    let thread = probe.ask(WhereAmI).wait().unwrap();
    assert!(
        thread.starts_with("actix-rt"),
        "handled on an arbiter thread, not here: {thread}"
    );
    assert_eq!(
        probe
            .ask(WhereAmI)
            .timeout(Duration::from_secs(1))
            .wait()
            .unwrap(),
        thread
    );
    let report = rt.shutdown_blocking(Duration::from_secs(5));
    assert_eq!(report.stopped, 1);
    assert!(matches!(
        probe.ask(WhereAmI).wait(),
        Err(AgentError::Stopped { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_inside_a_tokio_multi_thread_runtime() {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let probe = rt.spawn(AgentId::new("probe", "tokio"), || Probe).unwrap();
    // The handle and the futures are Send: use them from spawned tasks.
    let task = tokio::spawn({
        let probe = probe.clone();
        async move { probe.ask(WhereAmI).await }
    });
    let thread = task.await.unwrap().unwrap();
    assert!(thread.starts_with("actix-rt"), "{thread}");
    let rt2 = rt.clone();
    let report = tokio::spawn(async move { rt2.shutdown(Duration::from_secs(5)).await })
        .await
        .unwrap();
    assert_eq!(report.stopped, 1);
}

#[test]
fn attached_to_a_running_actix_system() {
    let system = actix::System::new();
    system.block_on(async {
        let host = actix::System::current().id();
        let rt = Runtime::builder().arbiters(2).attach().unwrap();
        let probe = rt
            .spawn(AgentId::new("probe", "attached"), || Probe)
            .unwrap();
        let thread = probe.ask(WhereAmI).await.unwrap();
        assert!(
            thread.starts_with(&format!("actix-rt|system:{host}|arbiter:")),
            "{thread}"
        );
        let report = rt.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.stopped, 1);
        // The host system is still ours to use after the runtime has shut down.
        assert_eq!(actix::System::current().id(), host);
    });
}

#[test]
fn attach_outside_an_actix_system_says_what_to_do() {
    let err = std::thread::spawn(|| Runtime::builder().attach().err())
        .join()
        .unwrap()
        .expect("attach must fail without a System");
    assert!(matches!(err, RuntimeError::NoActixSystem));
    assert!(err.to_string().contains("use start()"), "{err}");
}

#[test]
fn zero_arbiters_is_refused() {
    assert!(matches!(
        Runtime::builder().arbiters(0).start(),
        Err(RuntimeError::ZeroArbiters)
    ));
}
