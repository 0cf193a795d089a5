//! Harness for the workspace integration tests: real `opampd` processes on
//! port 0 with temporary data directories, the real `opampctl` binary, and
//! small real OpAMP clients (WebSocket and plain HTTP).
//!
//! The binaries are those of the current `cargo build` (see the README's test
//! command, which builds them first).

pub mod balancer;
pub mod client;
pub mod postgres;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// How to start an opampd.
#[derive(Default, Clone)]
pub struct Opts {
    /// YAML written to `config.yaml` and passed with `--config`.
    pub config: Option<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Data directory; default `<temp dir>/data`.
    pub data_dir: Option<PathBuf>,
    /// Listen address; default `127.0.0.1:0`. Use [`free_addr`] to keep one across restarts.
    pub listen: Option<String>,
    /// Run on a fresh PostgreSQL database of the test cluster (always so with
    /// `OPAMP_TEST_BACKEND=postgres`); see [`postgres`].
    pub postgres: bool,
    /// Run on this PostgreSQL database (e.g. another server's, to share it).
    pub database_url: Option<String>,
    /// Run on SQLite even with `OPAMP_TEST_BACKEND=postgres`: for a test that
    /// needs the SQLite file itself (e.g. a backup to hand to another command).
    pub sqlite: bool,
}

/// A free loopback address (bind port 0, read it, release it).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The Python interpreter of the interop venv (made by scripts/test-deps.sh).
pub fn interop_python() -> Option<PathBuf> {
    let p = root().join(".venv/bin/python");
    p.exists().then_some(p)
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    log: Arc<Mutex<String>>,
    opts: Opts,
    /// The PostgreSQL database this server keeps its state in, across restarts.
    database_url: Option<String>,
    /// Whether the database is this server's alone, dropped with it.
    owns_database: bool,
}

/// The JWT key test servers with a config file use: random per test
/// process, since opampd refuses any key written in this repository.
pub fn jwt_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut raw = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
            &mut raw,
        )
        .expect("random bytes");
        raw.iter().map(|b| format!("{b:02x}")).collect()
    })
}

impl Server {
    /// Starts opampd with defaults in a new temporary data directory.
    pub fn start() -> Server {
        Server::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let on_postgres = opts.postgres || (postgres::is_default_backend() && !opts.sqlite);
        let database_url = opts.database_url.clone().or_else(|| {
            on_postgres.then(|| {
                let cluster = postgres::available("Server::start").expect(
                    "this server runs on PostgreSQL: start a cluster (scripts/test.sh does)",
                );
                postgres::database_for(&cluster, opts.data_dir.as_deref())
            })
        });
        // Shared or kept across servers on one data directory: never dropped.
        let owns_database =
            database_url.is_some() && opts.database_url.is_none() && opts.data_dir.is_none();
        let mut s = Server {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            _tmp: Some(tmp),
            log: Default::default(),
            opts,
            owns_database,
            database_url,
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.opts
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("data"))
    }

    /// The PostgreSQL URL this server uses; None on SQLite.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(bin("opampd"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg("--listen")
            .arg(self.opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--log-format")
            .arg("json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(cfg) = &self.opts.config {
            let path = self.dir.join("config.yaml");
            std::fs::write(&path, cfg).unwrap();
            cmd.arg("--config").arg(path);
            cmd.env("JWT_SECRET_KEY", jwt_key());
        }
        if let Some(url) = &self.database_url {
            cmd.env("OPAMPD_DATABASE_URL", url);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.args(&self.opts.args);
        let mut child = cmd.spawn().expect("spawn opampd");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    // Logged before the start is reported, so `logs()` after
                    // `start()` always holds the listening line.
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
                if line.contains("opampd listening") {
                    let v: Value = serde_json::from_str(&line).unwrap_or_default();
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("opampd did not start; log:\n{}", self.log.lock().unwrap()));
        self.addr = addr.parse().expect("listening address");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn opamp_url(&self) -> String {
        format!("http://{}/v1/opamp", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/opamp", self.addr)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "opampd did not stop within 20 s of SIGTERM; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The rows of `sql`, one read-only statement in SQL that both backends
    /// understand, on this server's database (its SQLite file or its
    /// PostgreSQL database), as JSON objects by column name: for assertions
    /// on what is stored where no API shows it.
    pub fn query(&self, sql: &str) -> Vec<Value> {
        if let Some(url) = &self.database_url {
            let json = postgres::psql(
                url,
                &format!("SELECT COALESCE(json_agg(q), '[]') FROM ({sql}) q"),
            )
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
            return serde_json::from_str(&json).unwrap_or_else(|e| panic!("{sql}: {e}: {json}"));
        }
        let db = rusqlite::Connection::open_with_flags(
            self.data_dir().join("opamp.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", self.data_dir().display()));
        let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
        let rows = stmt
            .query_map([], |row| {
                let mut object = serde_json::Map::new();
                for (i, name) in names.iter().enumerate() {
                    use rusqlite::types::ValueRef;
                    let value = match row.get_ref(i)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(n) => n.into(),
                        ValueRef::Real(x) => x.into(),
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            String::from_utf8_lossy(t).into_owned().into()
                        }
                    };
                    object.insert(name.clone(), value);
                }
                Ok(Value::Object(object))
            })
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.map(|r| r.unwrap_or_else(|e| panic!("{sql}: {e}")))
            .collect()
    }

    /// The storage backend this server runs on, as `/health` names it:
    /// `sqlite` or `postgresql`.
    pub fn backend(&self) -> &'static str {
        if self.database_url.is_some() {
            "postgresql"
        } else {
            "sqlite"
        }
    }

    /// Starts again on the same data directory (a new port).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// GET an API path with the admin token; returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http()
            .get(format!("{}{path}", self.url()))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send_json(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .http()
            .request(m, format!("{}{path}", self.url()))
            .bearer_auth(self.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Runs opampctl against this server with the admin token.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let token = self.token();
        ctl_env(
            args,
            &[("OPAMPCTL_SERVER", &self.url()), ("OPAMPCTL_TOKEN", &token)],
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let (true, Some(url)) = (self.owns_database, &self.database_url) {
            postgres::drop_database(url);
        }
    }
}

#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; a stale pid only yields ESRCH.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Runs opampctl with a scrubbed environment plus `env`.
pub fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("opampctl"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run opampctl")
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stdout of a finished command as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assertions on finished opampctl runs.
pub mod cli {
    use super::{stderr, stdout};
    use serde_json::Value;
    use std::process::Output;

    /// The exit status (-1 when killed by a signal).
    pub fn code(o: &Output) -> i32 {
        o.status.code().unwrap_or(-1)
    }

    /// Exit 0; returns stdout.
    #[track_caller]
    pub fn ok(o: &Output) -> String {
        assert_eq!(code(o), 0, "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
        stdout(o)
    }

    /// Exit 0 with JSON on stdout.
    #[track_caller]
    pub fn json(o: &Output) -> Value {
        serde_json::from_str(&ok(o)).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(o)))
    }

    /// Exit 1 with `needle` on stderr.
    #[track_caller]
    pub fn fails(o: &Output, needle: &str) {
        assert_eq!(code(o), 1, "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
        assert!(
            stderr(o).contains(needle),
            "expected {needle:?} in:\n{}",
            stderr(o)
        );
    }
}
