//! Runs the real `impresario` binary: `serve` on a free loopback port with a temporary config,
//! and CLI commands. Children are killed if a test fails before it stops them.

#![allow(dead_code)] // cli and service each use a part

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The token every test service uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "impresario-bin-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary in `dir` (where its journal, `impresario.db`, goes by default), with an empty
/// environment (no provider keys, no IMPRESARIO_ variables).
pub fn impresario(dir: &TempDir) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_impresario"));
    command.env_clear().current_dir(&dir.0);
    command
}

/// Runs a CLI command in `dir` to its end.
pub fn cli(dir: &TempDir, args: &[&str]) -> Output {
    impresario(dir).args(args).output().unwrap()
}

/// A running `impresario serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its working directory, with its config and its journal (`impresario.db`).
    pub dir: Arc<TempDir>,
    http: reqwest::Client,
}

impl Server {
    /// Serves with the offline model, the test token, and `extra` TOML lines appended to
    /// the `[server]` section (more sections may follow).
    pub fn start(extra: &str) -> Server {
        Server::start_in(Arc::new(TempDir::new()), extra)
    }

    /// [`Server::start`] in `dir` (another server's, to start again on its journal).
    pub fn start_in(dir: Arc<TempDir>, extra: &str) -> Server {
        // The offline model whatever the file says (also: an override by the environment).
        Server::try_start(dir, extra, &[("IMPRESARIO_MODELS__PROVIDER", "offline")])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Server::start_in`] with more environment variables (they may override the offline
    /// provider: `IMPRESARIO_MODELS__PROVIDER=auto` and `OPENAI_BASE_URL`).
    pub fn start_with(dir: Arc<TempDir>, extra: &str, env: &[(&str, &str)]) -> Server {
        let mut all = vec![("IMPRESARIO_MODELS__PROVIDER", "offline")];
        all.extend_from_slice(env);
        Server::try_start(dir, extra, &all).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Serves in `dir` with `extra` config lines and `env` as its only environment; the error
    /// is what it printed if it did not start.
    pub fn try_start(
        dir: Arc<TempDir>,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let config = dir.write(
            "impresario.toml",
            &format!("[server]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{extra}\n"),
        );
        let stderr = std::fs::File::create(dir.0.join("stderr")).unwrap();
        let mut child = impresario(&dir)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the service did not start: {line:?}; stderr: {}",
                std::fs::read_to_string(dir.0.join("stderr")).unwrap_or_default()
            ));
        };
        Ok(Server {
            url: url.to_owned(),
            child,
            dir,
            http: client(),
        })
    }

    /// `GET /metrics`, parsed strictly.
    pub async fn scrape(&self) -> crate::support::exposition::Exposition {
        let response = self.http.get(format!("{}/metrics", self.url)).send().await;
        let text = response.unwrap().text().await.unwrap();
        crate::support::exposition::parse(&text).unwrap()
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr")).unwrap_or_default()
    }

    /// A request to `path` with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_as(TOKEN, method, path)
    }

    /// A request to `path` with `token`.
    pub fn request_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
    }

    /// `method path` with `token` and a JSON body -> (status, JSON body).
    pub async fn send_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        answer(self.request_as(token, method, path).json(body)).await
    }

    /// `GET path` -> (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        answer(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST path` with a JSON body -> (status, JSON body).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        answer(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    /// Submits a run; returns its id.
    pub async fn submit(&self, body: Value) -> String {
        let (status, answer) = self.post("/v1/runs", body).await;
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls the run until its state satisfies `done` (10 s at most); returns the state.
    pub async fn until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.until_within(id, Duration::from_secs(10), done).await
    }

    /// [`Server::until`], `limit` at most.
    pub async fn until_within(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (status, run) = self.get(&format!("/v1/runs/{id}")).await;
            assert_eq!(status, 200, "{run}");
            if done(&run["state"]) {
                return run["state"].clone();
            }
            assert!(start.elapsed() < limit, "run {id} stayed {}", run["state"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens the run's event stream.
    pub async fn events(&self, id: &str) -> Events {
        let response = self
            .request(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            response,
            buffer: Vec::new(),
        }
    }

    /// Kills it (SIGKILL: a crash) and waits for it to be gone.
    pub fn crash(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits (30 s at most) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        // Our own child, not waited for yet: the pid is still its.
        kill(pid, Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The tests' HTTP client. It lets an idle connection go after 2 s, before the service's
/// keep-alive (actix-web's default, 5 s) closes it: a request sent on a connection the server
/// is closing at that moment fails with `IncompleteMessage` (seen under load in the chaos test).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client with default TLS settings builds")
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, body)
}

/// One server-sent event.
#[derive(Debug)]
pub struct Event {
    pub id: usize,
    pub kind: String,
    pub data: Value,
}

/// A stream of server-sent events.
pub struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    /// The next event; `None` when the stream ended (10 s at most per event).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let frame = String::from_utf8(frame).unwrap();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or_else(|| panic!("no {name} in {frame:?}"))
                        .to_owned()
                };
                return Some(Event {
                    id: field("id: ").parse().unwrap(),
                    kind: field("event: "),
                    data: serde_json::from_str(&field("data: ")).unwrap(),
                });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("no event within 10 s")
                .unwrap();
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => {
                    assert!(self.buffer.is_empty(), "a partial event at the end");
                    return None;
                }
            }
        }
    }

    /// Every event to the end of the stream.
    pub async fn all(mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// An event's kind, with the state for state events (`state:planning`).
pub fn label(event: &Event) -> String {
    match event.kind.as_str() {
        "state" => format!("state:{}", event.data["state"].as_str().unwrap()),
        other => other.to_owned(),
    }
}
