//! `GET /v1/runs/{id}/events`: a run's events as server-sent events, every one from the first
//! (or after `Last-Event-ID`), in order, live, ending after the terminal state.
//!
//! Each event is `id: <n>` (1, 2, ...), `event: <type>` (`state`, `planned`, `step_finished`,
//! ...) and `data: <the RunEvent as JSON>`.

use std::convert::Infallible;
use std::sync::Arc;

use actix_web::web::Bytes;
use futures_util::Stream;
use impresario::agents::RunEvent;

use super::runs::{is_terminal, Tracked};

/// The stream of `run`'s events from index `from` (0 = the first).
pub fn stream(
    run: Arc<Tracked>,
    from: usize,
) -> impl Stream<Item = Result<Bytes, Infallible>> + 'static {
    let events = run.events();
    futures_util::stream::unfold(
        (events, from, false),
        |(mut events, next, ended)| async move {
            if ended {
                return None;
            }
            let event = events
                .wait_for(|all| all.len() > next)
                .await
                .ok()
                .map(|all| all[next].clone())?;
            let ended = is_terminal(&event);
            Some((Ok(frame(next + 1, &event)), (events, next + 1, ended)))
        },
    )
}

/// One event in the `text/event-stream` format.
fn frame(id: usize, event: &RunEvent) -> Bytes {
    let data = serde_json::to_value(event).unwrap_or_default();
    let kind = data["event"].as_str().unwrap_or("message").to_owned();
    // serde_json writes one line: newlines inside strings are escaped.
    Bytes::from(format!("id: {id}\nevent: {kind}\ndata: {data}\n\n"))
}
