//! Halts against real HTTP calls on loopback: an immediate halt aborts a call in flight and
//! closes its connection; a graceful halt lets the step in flight finish and starts no other.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, HaltToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the test server saw.
#[derive(Debug)]
enum Seen {
    /// A request head arrived.
    Request,
    /// The client closed the connection (read returned 0 or failed) before the answer.
    ClientClosed(Instant),
    /// The answer was written.
    Answered,
}

/// A loopback HTTP/1.1 server that answers each request after `delay`, unless the client goes
/// away first. Reports what it sees.
async fn slow_server(delay: Duration) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(conn, delay, tx.clone()));
        }
    });
    (addr, rx)
}

async fn serve(mut conn: TcpStream, delay: Duration, seen: mpsc::UnboundedSender<Seen>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = seen.send(Seen::Request);
    tokio::select! {
        () = tokio::time::sleep(delay) => {
            let body = "done";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
            let _ = seen.send(Seen::Answered);
        }
        // A GET has no body, so any read result here means the client closed (0) or reset.
        _ = conn.read(&mut buf) => {
            let _ = seen.send(Seen::ClientClosed(Instant::now()));
        }
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, within: Duration) -> Seen {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("the server saw nothing in time")
        .expect("server stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_halt_aborts_the_call_and_closes_the_connection() {
    let (addr, mut seen) = slow_server(Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let run = HaltToken::new().child();
    let call = run.child();

    let task = tokio::spawn({
        let (client, call) = (client.clone(), call.clone());
        async move {
            let result = call.run(client.get(format!("http://{addr}/")).send()).await;
            (result, Instant::now())
        }
    });
    assert!(matches!(
        next(&mut seen, Duration::from_secs(5)).await,
        Seen::Request
    ));

    let halted_at = Instant::now();
    run.halt(Halt::new(
        HaltScope::Run("r".into()),
        HaltMode::Immediate,
        HaltReason::Operator,
    ));
    let (result, returned_at) = task.await.unwrap();

    let err = result.expect_err("the call must be halted, not answered");
    assert_eq!(err.halt.reason, HaltReason::Operator);
    let latency = returned_at - halted_at;
    assert!(
        latency < Duration::from_millis(100),
        "call returned {latency:?} after the halt"
    );

    // The client (still alive, with its pool) must not keep the aborted request's connection.
    match next(&mut seen, Duration::from_secs(1)).await {
        Seen::ClientClosed(at) => assert!(at - halted_at < Duration::from_secs(1)),
        other => panic!("expected the connection to be closed, saw {other:?}"),
    }
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_halt_finishes_the_step_in_flight_and_starts_no_other() {
    let (addr, mut seen) = slow_server(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let run = HaltToken::new().child();

    let task = tokio::spawn({
        let run = run.clone();
        async move {
            let mut finished = Vec::new();
            // The step loop every run executes: check before starting, select while running.
            while !run.stop_requested() {
                let call = run.child();
                let response = call.run(client.get(format!("http://{addr}/")).send()).await;
                let body = response
                    .expect("a graceful halt must not abort the step")
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                finished.push(body);
            }
            finished
        }
    });
    assert!(matches!(
        next(&mut seen, Duration::from_secs(5)).await,
        Seen::Request
    ));
    let graceful = HaltMode::Graceful {
        deadline: Duration::from_secs(10),
    };
    run.halt(Halt::new(
        HaltScope::Run("r".into()),
        graceful,
        HaltReason::ErrorBudget,
    ));
    assert!(run.stop_requested() && !run.is_halted());

    let finished = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run did not stop")
        .unwrap();
    assert_eq!(
        finished,
        vec!["done".to_string()],
        "exactly the step in flight finishes"
    );
    assert!(matches!(
        next(&mut seen, Duration::from_secs(1)).await,
        Seen::Answered
    ));
    // No second request reaches the server.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err()
    );
    assert_eq!(
        run.halt_info().map(|h| h.reason),
        Some(HaltReason::ErrorBudget)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_halt_escalates_when_the_step_outlives_its_deadline() {
    let (addr, mut seen) = slow_server(Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let run = HaltToken::new().child();
    let task = tokio::spawn({
        let run = run.clone();
        async move {
            run.run(client.get(format!("http://{addr}/")).send())
                .await
                .map(|_| ())
        }
    });
    assert!(matches!(
        next(&mut seen, Duration::from_secs(5)).await,
        Seen::Request
    ));

    let start = Instant::now();
    let graceful = HaltMode::Graceful {
        deadline: Duration::from_millis(200),
    };
    run.halt(Halt::new(HaltScope::All, graceful, HaltReason::Shutdown));
    let err = task
        .await
        .unwrap()
        .expect_err("the step must be aborted at the deadline");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "aborted after {took:?}"
    );
    assert_eq!(err.halt.reason, HaltReason::Shutdown);
    assert!(matches!(
        next(&mut seen, Duration::from_secs(1)).await,
        Seen::ClientClosed(_)
    ));
}
