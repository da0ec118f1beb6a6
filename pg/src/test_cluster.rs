//! A real, throwaway PostgreSQL server for tests: `initdb` in a temporary folder, a free
//! loopback port, password authentication, run as the `postgres` user when the tests run as
//! root (PostgreSQL refuses to run as root). No mocks.
//!
//! The server binaries are found in `$IMPRESARIO_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package), else `PATH`. Each server is
//! watched by a small shell process that stops it and deletes its folder once the test process
//! is gone, so a test that panics, or a [`shared`] server that is never dropped, leaves nothing
//! running.
//!
//! ```no_run
//! let pg = impresario_pg::test_cluster::TestCluster::start();
//! let url = pg.create_database("journal_test");
//! assert!(url.starts_with("postgres://"));
//! pg.restart(); // connections drop; the data stays
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A PostgreSQL server of its own, stopped and deleted on drop.
pub struct TestCluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    as_postgres: bool,
}

/// One server for the whole test process, started on first use: cheaper than one per test.
/// Give each test a database of its own ([`TestCluster::create_database`]).
pub fn shared() -> &'static TestCluster {
    static SHARED: OnceLock<TestCluster> = OnceLock::new();
    SHARED.get_or_init(TestCluster::start)
}

impl TestCluster {
    /// Initialises and starts a server. Panics, saying what to install, when PostgreSQL's
    /// server binaries are missing (`apt-get install postgresql`; `.ci/run` installs it).
    pub fn start() -> TestCluster {
        let bin = server_bin();
        let as_postgres = running_as_root();
        let root = fresh_dir();
        let password = random_token();
        std::fs::write(root.join("pwfile"), format!("{password}\n")).expect("write pwfile");
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(&root));
        }
        let cluster = TestCluster {
            root,
            bin,
            port: 0,
            password,
            as_postgres,
        };
        cluster.initdb();
        cluster.start_on_free_port()
    }

    /// `postgres://postgres:…@127.0.0.1:PORT/DATABASE`: a URL to `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Creates an empty database named `name` (letters, digits, `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?}: use letters, digits and _"
        );
        self.psql(&self.url("postgres"), &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.url(name)
    }

    /// Runs `sql` with the server's own `psql` client at `url`: its output (unaligned, tuples
    /// only), or its error message.
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([url, "-qtA", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (to check that it never appears in errors or logs).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Restarts the server (`pg_ctl restart -m fast`): every connection is dropped, committed
    /// data stays. Returns once the server accepts connections again.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-o", &self.server_options()]);
    }

    /// Stops the server (`pg_ctl stop -m fast`) until [`TestCluster::resume`].
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
    }

    /// Starts a server stopped with [`TestCluster::stop`] again, on the same port.
    pub fn resume(&self) {
        self.pg_ctl(&["start", "-w", "-o", &self.server_options()]);
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn initdb(&self) {
        let mut cmd = self.as_server_user(&self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(self.data())
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", self.root.join("pwfile").display()));
        run(&mut cmd);
    }

    fn start_on_free_port(mut self) -> TestCluster {
        for _ in 0..5 {
            self.port = free_port();
            let log = self.root.join("server.log");
            let started = self
                .as_server_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-l"])
                .arg(&log)
                .args(["-o", &self.server_options(), "start"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if started {
                self.watch();
                return self;
            }
        }
        panic!(
            "PostgreSQL did not start; see {}",
            self.root.join("server.log").display()
        );
    }

    fn server_options(&self) -> String {
        format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data().display()
        )
    }

    /// Stops the server and deletes its folder once this process is gone, however it ends.
    fn watch(&self) {
        let stop = format!(
            "{} {} -D {} stop -m immediate",
            if self.as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        // `( … ) &`: the watcher outlives the shell that starts it, so nothing is left to reap.
        let script = format!(
            "(while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {root}) &",
            pid = std::process::id(),
            root = self.root.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the server's watcher");
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = self.as_server_user(&self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.data()).args(["-l"]);
        cmd.arg(self.root.join("server.log")).args(args);
        run(cmd.stdout(Stdio::null()));
    }

    fn as_server_user(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self
            .as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn server_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMPRESARIO_PG_BIN") {
        return PathBuf::from(dir);
    }
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .max()
                .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
        });
    match debian {
        Some(dir) if dir.join("initdb").exists() => dir,
        _ => which("initdb").unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: \
                 apt-get install postgresql, or set IMPRESARIO_PG_BIN to their folder"
            )
        }),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| dir.join(program).exists())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "impresario-pg-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("create the server's temporary folder");
    dir
}

/// 32 hex digits from the standard library's per-process random hash keys.
fn random_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    format!(
        "{:016x}{:016x}",
        state.hash_one(1u8),
        state.hash_one(std::process::id())
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
