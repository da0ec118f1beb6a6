//! `GET /v1/runs/{id}/events`: a run's events as server-sent events, every one from the first
//! (or after `Last-Event-ID`), in order, live, ending after the terminal state. A run this
//! process drives streams its `RunUpdate`s ([`stream`]); a run another replica of a cluster
//! drives streams its journal, followed as it is committed ([`follow`]).
//!
//! Each event is `id: <n>` (1, 2, ...), `event: <type>` (`state`, `planned`, `step_finished`,
//! ...) and `data: <the RunUpdate as JSON>`. A reconnecting client whose `Last-Event-ID` is at or
//! past the last event of a finished run gets an empty stream that ends at once. While nothing
//! happens, a `: keep-alive` comment goes out every `server.sse_keepalive_secs`, so proxies
//! and clients do not take a quiet run for a dead connection.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use futures_util::Stream;
use impresario::agents::RunUpdate;
use impresario::runtime::journal::{Journal, JournalEntry, RunEvent};
use impresario::runtime::RunId;
use impresario_pg::deltas::Delta;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::runs::{is_terminal, Tracked};

/// The comment a quiet stream sends (clients ignore comments).
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// What the stream does next.
enum Next {
    /// Send this event.
    Event(RunUpdate),
    /// Nothing happened for a keep-alive interval.
    KeepAlive,
    /// The run ended and every event after the client's last one was sent.
    End,
}

/// The stream of `run`'s events from index `from` (0 = the first), with a keep-alive comment
/// after every `keep_alive` of silence.
pub fn stream(
    run: Arc<Tracked>,
    from: usize,
    keep_alive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + 'static {
    let events = run.events();
    futures_util::stream::unfold((events, from), move |(mut events, next)| async move {
        match wait(&mut events, next, keep_alive).await {
            Next::Event(event) => {
                let frame = frame(next + 1, &event);
                // After the terminal event nothing follows: the next call ends the stream.
                let next = if is_terminal(&event) {
                    usize::MAX
                } else {
                    next + 1
                };
                Some((Ok(frame), (events, next)))
            }
            Next::KeepAlive => Some((Ok(Bytes::from_static(KEEP_ALIVE)), (events, next))),
            Next::End => None,
        }
    })
}

/// Waits for event `next`, the end of the run, or `keep_alive`, whichever comes first.
async fn wait(
    events: &mut watch::Receiver<Vec<RunUpdate>>,
    next: usize,
    keep_alive: Duration,
) -> Next {
    if next == usize::MAX {
        return Next::End;
    }
    let ready = |all: &Vec<RunUpdate>| all.len() > next || all.last().is_some_and(is_terminal);
    tokio::select! {
        seen = events.wait_for(ready) => match seen {
            Ok(all) => all.get(next).cloned().map_or(Next::End, Next::Event),
            // The recorder is gone (the service is stopping): nothing more will come.
            Err(_) => Next::End,
        },
        () = tokio::time::sleep(keep_alive) => Next::KeepAlive,
    }
}

/// One event in the `text/event-stream` format.
fn frame(id: usize, event: &RunUpdate) -> Bytes {
    let data = serde_json::to_value(event).unwrap_or_default();
    let kind = data["event"].as_str().unwrap_or("message").to_owned();
    frame_of(id as u64, &kind, &data)
}

/// `id`, `event` and `data` lines of one event.
fn frame_of(id: u64, kind: &str, data: &Value) -> Bytes {
    // serde_json writes one line: newlines inside strings are escaped.
    Bytes::from(format!("id: {id}\nevent: {kind}\ndata: {data}\n\n"))
}

/// How often a followed journal is read for newly committed events.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Where a followed journal stands.
struct Following {
    journal: Arc<dyn Journal>,
    run: RunId,
    /// The last sequence number read (and sent, unless the client had it).
    after: u64,
    /// The last sequence number the client had when it connected (`Last-Event-ID`): read
    /// again, not sent, to see whether the run ended with it.
    known: u64,
    /// Read, not sent yet.
    pending: VecDeque<JournalEntry>,
    /// When something was last sent.
    sent_at: Instant,
    ended: bool,
    /// The streamed text of every run driven elsewhere, as it arrives.
    deltas: broadcast::Receiver<Arc<Delta>>,
}

/// The stream of a run driven elsewhere (by another replica of a cluster): its journal's
/// events after sequence number `after`, as they are committed (those after the last one sent
/// are read every 200 ms, never the whole journal again), each as
/// `id: <seq>`, `event: <the journaled event's type>` (`llm_request`, `tool_result`, ...),
/// `data: <the journaled event>`; and, between them as it arrives from `deltas`, the run's
/// streamed text (a streaming run's; not journaled) as `id: <the last journaled event's
/// seq>`, `event: delta`, `data: {"type": "delta", "step", "text"}` (a reconnection continues
/// after that journaled event; text is never sent again). It ends after the run's end
/// (`run_finished`, or a `halted` with nothing after it; also when event `after`, the
/// client's last, was that end: the stream is then empty), or when the journal cannot be read
/// (reconnect with `Last-Event-ID`), with keep-alive comments as [`stream`] sends them.
pub fn follow(
    journal: Arc<dyn Journal>,
    (run, after): (RunId, u64),
    deltas: broadcast::Receiver<Arc<Delta>>,
    keep_alive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + 'static {
    let start = Following {
        journal,
        run,
        after: after.saturating_sub(1),
        known: after,
        pending: VecDeque::new(),
        sent_at: Instant::now(),
        ended: false,
        deltas,
    };
    futures_util::stream::unfold(start, move |mut at| async move {
        loop {
            if let Some(entry) = at.pending.pop_front() {
                at.ended = match &entry.event {
                    RunEvent::RunFinished { .. } => true,
                    RunEvent::Halted { .. } => at.pending.is_empty(),
                    _ => false,
                };
                at.after = entry.seq;
                if entry.seq <= at.known {
                    continue;
                }
                at.sent_at = Instant::now();
                let data = serde_json::to_value(&entry.event).unwrap_or_default();
                let kind = data["type"].as_str().unwrap_or("message").to_owned();
                return Some((Ok(frame_of(entry.seq, &kind, &data)), at));
            }
            if at.ended || !read_newer(&mut at).await {
                return None;
            }
            if !at.pending.is_empty() {
                continue;
            }
            if at.sent_at.elapsed() >= keep_alive {
                at.sent_at = Instant::now();
                return Some((Ok(Bytes::from_static(KEEP_ALIVE)), at));
            }
            if let Some(delta) = next_delta(&mut at).await {
                at.sent_at = Instant::now();
                let data = json!({ "type": "delta", "step": delta.step, "text": delta.text });
                return Some((Ok(frame_of(at.after, "delta", &data)), at));
            }
        }
    })
}

/// The followed run's next streamed text, if some arrives within [`FOLLOW_EVERY`] (then it is
/// time to read the journal again).
async fn next_delta(at: &mut Following) -> Option<Arc<Delta>> {
    let (run, deltas) = (at.run.as_str(), &mut at.deltas);
    let wait = async {
        loop {
            match deltas.recv().await {
                Ok(delta) if delta.run == run => return delta,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        run,
                        missed,
                        "a followed stream fell behind the streamed text; some is not sent"
                    );
                }
                // The replica is stopping: only the journal is followed from now on.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    };
    tokio::time::timeout(FOLLOW_EVERY, wait).await.ok()
}

/// Reads the followed run's events after the last one sent into `pending` (only those: the
/// journal's [`Journal::read_after`]; off the runtime's threads: reading blocks); `false` if
/// the journal could not be read.
async fn read_newer(at: &mut Following) -> bool {
    let (journal, run, after) = (at.journal.clone(), at.run.clone(), at.after);
    match tokio::task::spawn_blocking(move || journal.read_after(&run, after)).await {
        Ok(Ok(entries)) => {
            at.pending.extend(entries);
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(run = %at.run, error = %e, "cannot follow the run's journal; the stream ends");
            false
        }
        Err(_) => false,
    }
}
