//! A real HAProxy in front of opampd processes, configured from
//! `deploy/haproxy/haproxy.cfg`: the same frontends, timeouts, health check
//! and balancing, with the replicas, listening ports and stats socket
//! replaced by the test's own (loopback ports, a temporary directory).
//!
//! [`haproxy`] finds the binary: without it a test prints a visible
//! `SKIPPED` line and returns, unless `OPAMP_REQUIRE_TOOLS=1` (then it fails).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The deploy file the balancer is built from.
pub fn deploy_config() -> PathBuf {
    crate::root().join("deploy/haproxy/haproxy.cfg")
}

/// The haproxy binary on PATH. When missing: panics under
/// `OPAMP_REQUIRE_TOOLS=1`, else prints `SKIPPED (...)` and returns None.
pub fn haproxy() -> Option<PathBuf> {
    // Debian installs it in /usr/sbin, which a user's PATH may lack.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("OPAMP_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "haproxy not installed and OPAMP_REQUIRE_TOOLS=1: run scripts/test-deps.sh"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (haproxy not installed: run scripts/test-deps.sh)"
        );
    }
    found
}

/// A running haproxy; stopped when dropped.
pub struct Balancer {
    child: Option<Child>,
    /// Deploy-file port (`8080`, `4320`) → the loopback address bound instead.
    frontends: BTreeMap<u16, SocketAddr>,
    socket: PathBuf,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// The check state of one replica as haproxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// `opampd-1`, `opampd-2`, … in the order of the given addresses.
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, `no check`, or a transition such as `DOWN 1/2`.
    pub status: String,
    /// Requests this replica has been sent (stats column `stot`).
    pub sessions_total: u64,
}

impl Balancer {
    /// Starts haproxy with the deploy file's settings in front of `replicas`
    /// (named `opampd-1`, `opampd-2`, … like the deploy file's servers), and
    /// waits until it accepts connections.
    pub fn start(haproxy: &Path, replicas: &[SocketAddr]) -> Balancer {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("admin.sock");
        let template =
            std::fs::read_to_string(deploy_config()).expect("deploy/haproxy/haproxy.cfg");
        let (config, frontends) = render(&template, replicas, &socket);
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();

        let mut child = Command::new(haproxy)
            // -db: foreground, no daemon; logs go to stdout (log stdout).
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn haproxy");
        let log: Arc<Mutex<String>> = Default::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let mut balancer = Balancer {
            child: Some(child),
            frontends,
            socket,
            log,
            _dir: dir,
        };
        balancer.wait_listening(&config);
        balancer
    }

    fn wait_listening(&mut self, config: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "haproxy exited with {status}; log:\n{}\nconfig:\n{config}",
                    self.logs()
                );
            }
            let all_bound = self
                .frontends
                .values()
                .all(|a| std::net::TcpStream::connect(a).is_ok());
            if all_bound && self.socket.exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen within 10 s; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The operators' frontend (the deploy file's `:8080`): API, health, OpAMP.
    pub fn url(&self) -> String {
        format!("http://{}", self.frontend(8080))
    }

    /// The agents' frontend (the deploy file's `:4320`), plain HTTP OpAMP.
    pub fn opamp_url(&self) -> String {
        format!("http://{}/v1/opamp", self.frontend(4320))
    }

    /// The agents' frontend, WebSocket OpAMP.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/opamp", self.frontend(4320))
    }

    /// The loopback address standing for the deploy file's `bind :PORT`.
    pub fn frontend(&self, deploy_port: u16) -> SocketAddr {
        *self
            .frontends
            .get(&deploy_port)
            .unwrap_or_else(|| panic!("deploy/haproxy/haproxy.cfg binds no :{deploy_port}"))
    }

    /// Everything haproxy logged (requests, check results, warnings).
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The replicas of backend `opampd` as the stats socket reports them.
    pub fn replicas(&self) -> Vec<ReplicaState> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("no {name} column in show stat:\n{csv}"))
        };
        let (proxy, server, status, total) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("stot"),
        );
        lines
            .map(|l| l.split(',').collect::<Vec<&str>>())
            .filter(|f| f.len() > status && f[proxy] == "opampd")
            .filter(|f| f[server] != "BACKEND" && f[server] != "FRONTEND")
            .map(|f| ReplicaState {
                name: f[server].to_string(),
                status: f[status].to_string(),
                sessions_total: f[total].parse().unwrap_or(0),
            })
            .collect()
    }

    /// Waits until replica `name` has check status `status` (`UP`, `DOWN`).
    pub fn wait_replica(&self, name: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.replicas();
            if states.iter().any(|r| r.name == name && r.status == status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {name} not {status} within {timeout:?}: {states:?}\nhaproxy log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One command on the stats socket; its whole answer.
    pub fn command(&self, command: &str) -> String {
        let mut stream = UnixStream::connect(&self.socket).expect("haproxy stats socket");
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The deploy file with the test's ports, replicas and stats socket: each
/// `bind :PORT` gets a free loopback port, the template's `server` lines
/// become one per replica with the first one's options, the stats socket
/// moves to `socket`, the global maxconn drops to what a test needs (no
/// raised file limit), and the Docker DNS resolver is left out.
fn render(
    template: &str,
    replicas: &[SocketAddr],
    socket: &Path,
) -> (String, BTreeMap<u16, SocketAddr>) {
    let mut out = String::new();
    let mut frontends = BTreeMap::new();
    let mut servers_written = false;
    let mut in_resolvers = false;
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if !line.starts_with(' ') && !trimmed.is_empty() && !trimmed.starts_with('#') {
            in_resolvers = words.first() == Some(&"resolvers");
        }
        if in_resolvers {
            continue;
        }
        match words.as_slice() {
            ["bind", address, ..] => {
                let port: u16 = address
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("bind without a port: {line}"));
                let bound: SocketAddr = crate::free_addr().parse().unwrap();
                frontends.insert(port, bound);
                out.push_str(&format!("{indent}bind {bound}\n"));
            }
            ["server", _name, _address, options @ ..] => {
                if !servers_written {
                    for (i, replica) in replicas.iter().enumerate() {
                        out.push_str(&format!(
                            "{indent}server opampd-{} {replica} {}\n",
                            i + 1,
                            options.join(" ")
                        ));
                    }
                    servers_written = true;
                }
            }
            ["stats", "socket", _path, rest @ ..] => {
                out.push_str(&format!(
                    "{indent}stats socket {} {}\n",
                    socket.display(),
                    rest.join(" ")
                ));
            }
            ["maxconn", _] => out.push_str(&format!("{indent}maxconn 1000\n")),
            ["default-server", options @ ..] => {
                let kept: Vec<&str> = options
                    .iter()
                    .copied()
                    .scan(false, |skip_next, word| {
                        let drop = *skip_next || word == "resolvers";
                        *skip_next = word == "resolvers";
                        Some((!drop).then_some(word))
                    })
                    .flatten()
                    .collect();
                out.push_str(&format!("{indent}default-server {}\n", kept.join(" ")));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(
        servers_written,
        "deploy/haproxy/haproxy.cfg has no server line to take the options from"
    );
    (out, frontends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_file_becomes_a_loopback_config() {
        let template = std::fs::read_to_string(deploy_config()).unwrap();
        let replicas: Vec<SocketAddr> = vec![
            "127.0.0.1:1001".parse().unwrap(),
            "127.0.0.1:1002".parse().unwrap(),
        ];
        let (config, frontends) = render(&template, &replicas, Path::new("/tmp/x/admin.sock"));
        assert_eq!(frontends.keys().copied().collect::<Vec<_>>(), [4320, 8080]);
        let servers: Vec<&str> = config
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("server "))
            .collect();
        assert_eq!(
            servers,
            [
                "server opampd-1 127.0.0.1:1001 check",
                "server opampd-2 127.0.0.1:1002 check"
            ]
        );
        assert!(config.contains("stats socket /tmp/x/admin.sock mode 600 level admin"));
        assert!(!config.contains("resolvers"), "{config}");
        for kept in [
            "option httpchk GET /health/ready",
            "balance roundrobin",
            "timeout tunnel 1h",
            "option forwardfor",
        ] {
            assert!(config.contains(kept), "{kept} kept");
        }
    }
}
