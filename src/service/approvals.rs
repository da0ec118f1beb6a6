//! Operators' decisions about steps waiting for approval, with `journal.url`: a decision posted
//! to any process on the database is recorded there (`impresario_pg::approvals::PgApprovals`),
//! and the process driving the run hands it to the run's driver ([`SharedApprovals`]). Without
//! `journal.url` a decision goes straight to the driver, in memory (`routes::decide_step`).
//!
//! - Which request a decision answers comes from the run's journal: the last
//!   `ApprovalRequested` of the step with no `ApprovalDecided` after it ([`Requests`],
//!   [`waiting_request`]).
//! - Every run this process drives has a watcher ([`SharedApprovals::watch`]): whenever the run
//!   waits for approval, and whenever a decision about it is notified (or the notifications
//!   reconnect), it reads the run's events it has not read yet (never the whole journal
//!   again), then the recorded decision about the request it waits on, and hands that to the
//!   driver, once. A decision posted while the driving process was down is found when the
//!   resumed run asks again.

use std::collections::HashMap;
use std::sync::Arc;

use impresario::agents::{RunState, RunUpdate};
use impresario::runtime::journal::{JournalEntry, RunEvent, Seq};
use impresario::runtime::RunId;
use impresario_pg::approvals::{Decision, PgApprovals};
use impresario_pg::Follower;
use tokio::sync::{broadcast, watch};

use super::runs::Tracked;

/// How many notified runs a watcher may fall behind before it checks again anyway.
const WAKES: usize = 256;

/// The decisions of every process on the database, and the follower of their notifications.
pub struct SharedApprovals {
    store: PgApprovals,
    /// The runs decisions were notified about (`None`: any, after a reconnection).
    wakes: broadcast::Sender<Option<RunId>>,
    _follower: Follower,
}

impl SharedApprovals {
    /// Follows the decisions recorded in `store`.
    pub fn start(store: PgApprovals) -> SharedApprovals {
        let (wakes, _) = broadcast::channel(WAKES);
        let notified = wakes.clone();
        let follower = store.follow_here(move |run| {
            // No watcher listening: no run of this process waits.
            let _ = notified.send(run);
        });
        SharedApprovals {
            store,
            wakes,
            _follower: follower,
        }
    }

    /// Records a decision about the request `requested` (see [`waiting_request`]); false if
    /// another decision about it was recorded first.
    pub async fn decide(&self, decision: &Decision) -> Result<bool, String> {
        self.store.decide(decision).await.map_err(|e| e.to_string())
    }

    /// Hands `run` the recorded decisions about the requests it waits on, until it ends;
    /// `journal(after)` reads its events after sequence number `after` (none if it cannot:
    /// they are asked for again at the next wake).
    pub async fn watch(&self, run: Arc<Tracked>, journal: impl Fn(Seq) -> Vec<JournalEntry>) {
        let mut wakes = self.wakes.subscribe();
        let mut events = run.events();
        let mut delivered: Option<Seq> = None;
        let mut requests = Requests::default();
        loop {
            if let Some(step) = awaited_step(&run) {
                requests.fold(&journal(requests.read));
                let requested = requests.waiting(step);
                if requested.is_some() && requested != delivered {
                    if let Some(decision) = self.recorded(run.handle.id(), requested).await {
                        deliver(&run, decision);
                        delivered = requested;
                    }
                }
            }
            if !woken(&run, &mut events, &mut wakes).await {
                return;
            }
        }
    }

    async fn recorded(&self, run: &RunId, requested: Option<Seq>) -> Option<Decision> {
        match self.store.decided(run, requested?).await {
            Ok(decision) => decision,
            Err(err) => {
                tracing::warn!(%run, error = %err, "cannot read the decisions; the next notification reads them again");
                None
            }
        }
    }
}

/// Waits until the run changes or a decision about it (or about any run, after a
/// reconnection) is notified; notifications about other runs are skipped. False once the run
/// ended or the notifications stopped.
async fn woken(
    run: &Tracked,
    events: &mut watch::Receiver<Vec<RunUpdate>>,
    wakes: &mut broadcast::Receiver<Option<RunId>>,
) -> bool {
    loop {
        tokio::select! {
            changed = events.changed() => return changed.is_ok() && !run.state().is_terminal(),
            woke = wakes.recv() => match woke {
                Ok(Some(notified)) if &notified != run.handle.id() => continue,
                Err(broadcast::error::RecvError::Closed) => return false,
                _ => return true,
            },
        }
    }
}

/// The step the run waits for approval of, as its last recorded state says.
fn awaited_step(run: &Tracked) -> Option<u32> {
    let events = run.events();
    let last = events.borrow().iter().rev().find_map(|event| match event {
        RunUpdate::State(state) => Some(state.clone()),
        _ => None,
    });
    match last {
        Some(RunState::AwaitingApproval { step, .. }) => Some(step),
        _ => None,
    }
}

/// Hands `decision` to the run's driver.
fn deliver(run: &Tracked, decision: Decision) {
    tracing::info!(run = %decision.run, step = decision.step, approved = decision.approved, "a recorded decision reached the run");
    match decision.approved {
        true => run.handle.approve(decision.step),
        false => run.handle.reject(
            decision.step,
            decision
                .reason
                .unwrap_or_else(|| "rejected by an operator".into()),
        ),
    }
}

/// The requests for approval a run waits on, per step, from its journal's events read so far
/// (folded in order, so a follower reads each event once).
#[derive(Debug, Default)]
pub struct Requests {
    /// Per step, the sequence number of its last `ApprovalRequested` with no `ApprovalDecided`
    /// of the step after it.
    waiting: HashMap<u32, Seq>,
    /// The sequence number of the last event folded (0: none).
    read: Seq,
}

impl Requests {
    /// Takes in `entries`, the run's events after the last one folded, in order.
    pub fn fold(&mut self, entries: &[JournalEntry]) {
        for entry in entries {
            match &entry.event {
                RunEvent::ApprovalRequested { step, .. } => {
                    self.waiting.insert(*step, entry.seq);
                }
                RunEvent::ApprovalDecided { step, .. } => {
                    self.waiting.remove(step);
                }
                _ => {}
            }
            self.read = entry.seq;
        }
    }

    /// The sequence number of the request for approval of `step` the run waits on.
    pub fn waiting(&self, step: u32) -> Option<Seq> {
        self.waiting.get(&step).copied()
    }
}

/// The journal sequence number of the request for approval of `step` the run waits on: its
/// last `ApprovalRequested` of the step, unless an `ApprovalDecided` of the step follows it
/// (`entries`: every event of the run, in order).
pub fn waiting_request(entries: &[JournalEntry], step: u32) -> Option<Seq> {
    let mut requests = Requests::default();
    requests.fold(entries);
    requests.waiting(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn entry(seq: Seq, event: RunEvent) -> JournalEntry {
        JournalEntry {
            run: RunId::new("r"),
            seq,
            at: SystemTime::UNIX_EPOCH,
            version: 4,
            event,
        }
    }

    fn asked(step: u32) -> RunEvent {
        RunEvent::ApprovalRequested {
            step,
            tool: "send_email".into(),
            reason: "high-impact tool".into(),
        }
    }

    fn decided(step: u32) -> RunEvent {
        RunEvent::ApprovalDecided {
            step,
            approved: true,
            by: "ops".into(),
            reason: None,
        }
    }

    /// The step's last request with no decision after it, found by a plain scan of `entries`
    /// (not by [`Requests`], which the test checks against it).
    fn last_unanswered(entries: &[JournalEntry], step: u32) -> Option<Seq> {
        entries.iter().fold(None, |waiting, e| match &e.event {
            RunEvent::ApprovalRequested { step: s, .. } if *s == step => Some(e.seq),
            RunEvent::ApprovalDecided { step: s, .. } if *s == step => None,
            _ => waiting,
        })
    }

    /// A watcher folds the journal a few events at a time: wherever it is cut, it waits on
    /// what a reading of the whole journal says.
    #[test]
    fn requests_folded_in_pieces_are_those_of_the_whole_journal() {
        let events = [
            asked(1),
            decided(1),
            asked(2),
            asked(1),
            decided(2),
            asked(2),
        ];
        let entries: Vec<JournalEntry> = (1..).zip(events).map(|(s, e)| entry(s, e)).collect();
        for end in 0..=entries.len() {
            let whole = &entries[..end];
            for cut in 0..=end {
                let mut folded = Requests::default();
                folded.fold(&whole[..cut]);
                folded.fold(&whole[cut..]);
                assert_eq!(folded.read, end as Seq);
                for step in [1, 2, 3] {
                    let expected = last_unanswered(whole, step);
                    assert_eq!(folded.waiting(step), expected, "{end} cut at {cut}");
                }
            }
        }
        // At the end: step 1 asked again at 4, step 2's second request (6) waits.
        assert_eq!(waiting_request(&entries, 1), Some(4));
        assert_eq!(waiting_request(&entries, 2), Some(6));
        assert_eq!(waiting_request(&entries[..5], 2), None, "decided at 5");
    }
}
