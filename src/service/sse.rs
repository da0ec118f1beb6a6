//! `GET /v1/runs/{id}/events`: a run's events as server-sent events, every one from the first
//! (or after `Last-Event-ID`), in order, live, ending after the terminal state.
//!
//! Each event is `id: <n>` (1, 2, ...), `event: <type>` (`state`, `planned`, `step_finished`,
//! ...) and `data: <the RunUpdate as JSON>`. A reconnecting client whose `Last-Event-ID` is at or
//! past the last event of a finished run gets an empty stream that ends at once. While nothing
//! happens, a `: keep-alive` comment goes out every `server.sse_keepalive_secs`, so proxies
//! and clients do not take a quiet run for a dead connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::Stream;
use impresario::agents::RunUpdate;
use tokio::sync::watch;

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
    // serde_json writes one line: newlines inside strings are escaped.
    Bytes::from(format!("id: {id}\nevent: {kind}\ndata: {data}\n\n"))
}
