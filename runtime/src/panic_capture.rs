//! Turning panics into answers.
//!
//! actix never catches panics: a panicking handler unwinds through the actor's task and every
//! caller sees `MailboxError::Closed`. We catch what we can where it happens (`catch_unwind`
//! around each handler call and around each poll of the actor), and for the one place we cannot
//! wrap — an async handler's `ResponseFuture`, which actix polls on a task of its own — a panic
//! hook remembers the last panic message of each thread so the arbiter task that notices the lost
//! answer can report it.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that records each panic's message for its thread,
/// then calls the hook that was installed before, so default reporting is unchanged.
pub(crate) fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = payload_message(info.payload());
            LAST_PANIC.with(|slot| {
                if let Ok(mut slot) = slot.try_borrow_mut() {
                    *slot = Some(message);
                }
            });
            previous(info);
        }));
    });
}

/// Takes the message of the last panic on this thread, if the hook saw one.
pub(crate) fn take_last_panic() -> Option<String> {
    LAST_PANIC.with(|slot| slot.try_borrow_mut().ok().and_then(|mut s| s.take()))
}

/// The human-readable message of a panic payload.
pub(crate) fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
