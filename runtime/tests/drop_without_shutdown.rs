//! Dropping the last handle without `shutdown` must neither hang nor leave threads behind.
//! (Its own test binary: it counts the process's threads.)

use std::time::{Duration, Instant};

use actix::prelude::*;
use impresario_runtime::{agent, AgentId, Runtime};

/// An agent that refuses a graceful stop for a long time.
struct Stubborn;
impl Actor for Stubborn {
    type Context = Context<Self>;
    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        Running::Continue
    }
}
agent!(Stubborn);

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn dropping_the_last_handle_stops_and_joins_every_thread() {
    let before = thread_count();
    let rt = Runtime::builder().arbiters(3).start().unwrap();
    let clone = rt.clone();
    let _agent = rt
        .spawn(AgentId::new("stubborn", "1"), || Stubborn)
        .unwrap();
    assert!(
        thread_count() >= before + 4,
        "system thread + 3 arbiters are running"
    );
    drop(rt);
    assert!(
        thread_count() >= before + 4,
        "a clone still holds the runtime"
    );
    let started = Instant::now();
    drop(clone);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drop must not wait for agents"
    );
    assert_eq!(thread_count(), before, "every runtime thread was joined");
}
