//! Headless Chromium over WebDriver: Debian's `chromedriver` on a free loopback port, driven
//! with `fantoccini`. One browser at a time in a test binary (the machine is small); each is
//! closed, and its chromedriver killed, when the test ends.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long a test waits for something to show up in the page.
pub const PATIENCE: Duration = Duration::from_secs(20);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chromedriver process and a browser session on it.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280x800. Fails, saying what to install,
    /// when chromedriver is missing.
    pub async fn start() -> Browser {
        let turn = ONE_AT_A_TIME.lock().await;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = match Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start chromedriver ({e}): the console's tests need headless Chromium; \
                 install Debian's `chromium` and `chromium-driver` packages (.ci/run does)"
            ),
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > PATIENCE {
                let _ = driver.kill();
                panic!("chromedriver did not listen on port {port} within {PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = match connect(port).await {
            Ok(client) => client,
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("cannot open a Chromium session through chromedriver: {e}; is `chromium` installed?")
            }
        };
        Browser {
            client,
            driver,
            _turn: turn,
        }
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css:?} within {PATIENCE:?}: {e}"))
    }

    /// The text of the first element matching `css` (found again if the page replaced it
    /// meanwhile).
    pub async fn text(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(e) if start.elapsed() < PATIENCE => {
                    eprintln!("{css}: {e}; looking again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot read the text of {css:?}: {e}"),
            }
        }
    }

    /// Runs `script` (a function body) in the page; returns what it returns.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    /// Waits until `script` returns `true`.
    pub async fn until(&self, what: &str, script: &str) {
        let start = Instant::now();
        while self.js(script).await != json!(true) {
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: not within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The path of the page shown.
    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Saves the page at 1280x800 and at 420x900 as `<name>-wide.png` and `<name>-narrow.png`
    /// in [`screenshots`].
    pub async fn screenshot(&self, name: &str) {
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        for (suffix, (width, height)) in [("wide", (1280, 800)), ("narrow", (420, 900))] {
            self.client.set_window_size(width, height).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
            std::fs::write(dir.join(format!("{name}-{suffix}.png")), png).unwrap();
        }
        self.client.set_window_size(1280, 800).await.unwrap();
    }

    /// Closes the browser and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver takes its browser down with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go: `<target>/tmp/console-screenshots`.
pub fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

async fn connect(port: u16) -> Result<Client, fantoccini::error::NewSessionError> {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,800",
    ];
    let mut options = json!({ "args": args });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
}
