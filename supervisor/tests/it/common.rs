//! Helpers shared by the supervisor's integration tests.

use std::time::Duration;

use impresario_supervisor::SupervisorEvent;
use tokio::sync::broadcast;

/// Waits for the next event matching `pred`, failing after 5 s with the events it skipped.
pub async fn until(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    pred: impl Fn(&SupervisorEvent) -> bool,
) -> SupervisorEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if pred(&event) => return event,
            Ok(Ok(event)) => skipped.push(event),
            other => panic!("expected event did not come: {other:?}; saw {skipped:#?}"),
        }
    }
}
