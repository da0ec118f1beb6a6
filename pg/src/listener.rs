//! One connection of a process's own `LISTEN`ing on a channel, kept for as long as its
//! [`Follower`] lives: every notification goes to a [`Listener`], and after every
//! (re)connection the listener first catches up with what it missed while disconnected. The
//! halts and the approvals follow their channels with it.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

/// The longest pause before a follower reconnects.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// What a follower does with its channel.
pub(crate) trait Listener: Send + 'static {
    /// Runs after `LISTEN` on every (re)connection, before any notification is handed over:
    /// catch up with what was missed meanwhile.
    fn catch_up(
        &mut self,
        client: &Client,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;

    /// A notification's payload.
    fn notified(&mut self, payload: &str);
}

/// The task following a channel; stopped when dropped.
pub struct Follower {
    task: JoinHandle<()>,
    listening: watch::Receiver<bool>,
}

impl Follower {
    /// Follows `channel` on connections to `config` with `listener`, on the current tokio
    /// runtime (reconnecting, with a catch-up, whenever the connection is lost).
    pub(crate) fn start(
        config: Config,
        channel: &'static str,
        listener: impl Listener,
        runtime: &tokio::runtime::Handle,
    ) -> Follower {
        let (ready, listening) = watch::channel(false);
        let task = runtime.spawn(follow(config, channel, listener, ready));
        Follower { task, listening }
    }

    /// Resolves once the follower listens and has caught up (again after a reconnection).
    pub async fn listening(&mut self) {
        // Err only if the task ended, which it never does on its own.
        let _ = self.listening.wait_for(|up| *up).await;
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reconnects for as long as the follower lives, pausing longer after each failure.
async fn follow(
    config: Config,
    channel: &'static str,
    mut listener: impl Listener,
    ready: watch::Sender<bool>,
) {
    let mut failures = 0u32;
    loop {
        match session(&config, channel, &mut listener, &ready).await {
            Ok(()) => failures = 0,
            Err(err) => {
                failures += 1;
                tracing::warn!(error = %err, channel, "following a PostgreSQL channel: connection lost; reconnecting");
            }
        }
        ready.send_replace(false);
        let pause = Duration::from_millis(100).saturating_mul(1 << failures.min(5));
        tokio::time::sleep(pause.min(MAX_RECONNECT_PAUSE)).await;
    }
}

/// One connection: listen, catch up, then hand notifications over until it closes.
async fn session(
    config: &Config,
    channel: &str,
    listener: &mut impl Listener,
    ready: &watch::Sender<bool>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (notices, mut received) = mpsc::unbounded_channel();
    // Drives the connection and hands its notifications over; ends when it closes.
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if notices.send(n.payload().to_owned()).is_err() {
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    listener.catch_up(&client).await?;
    ready.send_replace(true);
    while let Some(payload) = received.recv().await {
        listener.notified(&payload);
    }
    Ok(())
}
