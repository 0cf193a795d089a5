//! `opampctl logs`, `restart`, `doctor`, `troubleshoot`, `db`: against a real
//! opampd, and with fake systemctl / docker / kubectl / journalctl on PATH
//! that record their arguments.

use opamp_tests::cli::{code, json, ok};
use opamp_tests::client::{full_report, http_exchange, new_uid, uid_str};
use opamp_tests::{bin, ctl_env, stderr, stdout, Opts, Server};
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A directory of fake supervisor programs; each appends `name [arg][arg]…`
/// to `calls` (one line per run) and may print `output`.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new(programs: &[(&str, &str, i32)]) -> Fakes {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        for (name, output, status) in programs {
            let script = format!(
                "#!/bin/sh\nline='{name}'\nfor a in \"$@\"; do line=\"$line [$a]\"; done\necho \"$line\" >> '{}'\nprintf '{output}'\nexit {status}\n",
                calls.display()
            );
            let p = dir.path().join(name);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Fakes { dir }
    }

    /// The fakes first, then the usual PATH.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn link(&self, name: &str, target: &Path) {
        std::os::unix::fs::symlink(target, self.dir.path().join(name)).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn ctl_path(s: Option<&Server>, path: &str, args: &[&str]) -> Output {
    let url = s
        .map(|s| s.url())
        .unwrap_or_else(|| "http://127.0.0.1:9".into());
    let token = s.map(|s| s.token()).unwrap_or_default();
    ctl_env(
        args,
        &[
            ("PATH", path),
            ("OPAMPCTL_SERVER", &url),
            ("OPAMPCTL_TOKEN", &token),
        ],
    )
}

#[test]
fn logs_via_the_supervisors_run_the_runbook_commands() {
    let f = Fakes::new(&[
        (
            "journalctl",
            "a agent connected\\nb other\\nc agent connected\\n",
            0,
        ),
        ("docker", "", 0),
        ("kubectl", "", 0),
    ]);
    let p = f.path();
    ok(&ctl_path(
        None,
        &p,
        &[
            "logs", "--via", "journald", "-n", "20", "-f", "--level", "warn",
        ],
    ));
    ok(&ctl_path(
        None,
        &p,
        &["logs", "--via", "compose", "-n", "5"],
    ));
    // Following: `docker compose logs` takes --tail and -f before the service.
    ok(&ctl_path(
        None,
        &p,
        &["logs", "--via", "compose", "-n", "7", "-f"],
    ));
    ok(&ctl_path(None, &p, &["logs", "--via", "kubernetes", "-f"]));
    ok(&ctl_path(
        None,
        &p,
        &[
            "logs",
            "--via",
            "compose",
            "--compose-file",
            "deploy/docker-compose.yml",
        ],
    ));
    assert_eq!(
        f.calls(),
        [
            "journalctl [-u] [opampd] [-n] [20] [-f] [-p] [warning]",
            "docker [compose] [logs] [--tail] [5] [opamp-server]",
            "docker [compose] [logs] [--tail] [7] [-f] [opamp-server]",
            "kubectl [-n] [opamp-platform] [logs] [-l] [app.kubernetes.io/name=opampd] [--all-containers] [--prefix] [--tail] [100] [-f]",
            "docker [compose] [-f] [deploy/docker-compose.yml] [logs] [--tail] [100] [opamp-server]",
        ]
    );
    // --grep filters what the supervisor prints.
    let out = ok(&ctl_path(
        None,
        &p,
        &["logs", "--via", "journald", "--grep", "agent connected"],
    ));
    assert_eq!(out, "a agent connected\nc agent connected\n");
    // A failing or missing program is an error that names it.
    let f2 = Fakes::new(&[("journalctl", "", 4)]);
    let o = ctl_path(None, &f2.path(), &["logs", "--via", "journald"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("journalctl -u opampd -n 100"),
        "{}",
        stderr(&o)
    );
    let o = ctl_path(
        None,
        &f2.dir.path().display().to_string(),
        &["logs", "--via", "kubernetes"],
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("kubectl is not on PATH"),
        "{}",
        stderr(&o)
    );
}

async fn register(s: &Server, service: &str) -> String {
    let uid = new_uid();
    let (st, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, service)).await;
    assert_eq!(st, 200);
    uid_str(&uid)
}

#[tokio::test]
async fn restart_validates_runs_the_supervisor_and_counts_agents() {
    let s = Server::start();
    register(&s, "a").await;
    register(&s, "b").await;
    opamp_tests::wait_for("2 agents", Duration::from_secs(10), || async {
        let (_, v) = s.get("/api/v1/agents?status=connected").await;
        (v["total"] == 2).then_some(())
    })
    .await;
    let f = Fakes::new(&[("systemctl", "", 0), ("docker", "", 0), ("kubectl", "", 0)]);
    f.link("opampd", &bin("opampd"));
    let p = f.path();

    let out = ok(&ctl_path(Some(&s), &p, &["restart", "--via", "systemd"]));
    assert!(
        out.contains("ready") && out.contains("2 of 2 agents reconnected"),
        "{out}"
    );
    ok(&ctl_path(
        Some(&s),
        &p,
        &["restart", "--via", "compose", "-q"],
    ));
    let j = json(&ctl_path(
        Some(&s),
        &p,
        &["restart", "--via", "kubernetes", "-o", "json"],
    ));
    assert_eq!(
        (j["agents_before"].as_u64(), j["agents_after"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        f.calls(),
        [
            "systemctl [restart] [opampd]",
            "docker [compose] [restart] [opamp-server]",
            "kubectl [-n] [opamp-platform] [rollout] [restart] [deploy/opamp-server]",
            "kubectl [-n] [opamp-platform] [rollout] [status] [deploy/opamp-server]",
        ]
    );

    // --dry-run runs nothing, prints everything.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "database:\n  max_open_conns: 2\n").unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "database:\n  max_open_con: 2\n").unwrap();
    let out = ok(&ctl_path(
        Some(&s),
        &p,
        &["restart", "--dry-run", "--config", good.to_str().unwrap()],
    ));
    assert!(
        out.contains(&format!("opampd check-config --config {}", good.display())),
        "{out}"
    );
    assert!(out.contains("systemctl restart opampd"), "{out}");
    assert_eq!(f.calls().len(), 4, "dry run ran nothing");

    // An invalid configuration stops the restart before the supervisor runs.
    let o = ctl_path(
        Some(&s),
        &p,
        &["restart", "--config", bad.to_str().unwrap()],
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("max_open_con") && stderr(&o).contains("not restarted"),
        "{}",
        stderr(&o)
    );
    assert_eq!(f.calls().len(), 4);
    // A valid one lets it go ahead (a file config names a key source for check-config).
    let good_key = dir.path().join("good-key.yaml");
    std::fs::write(&good_key, "auth:\n  generate_jwt_secret: true\n").unwrap();
    ok(&ctl_path(
        Some(&s),
        &p,
        &["restart", "--config", good_key.to_str().unwrap(), "-q"],
    ));
    assert_eq!(f.calls().last().unwrap(), "systemctl [restart] [opampd]");

    // The supervisor failing is a failure.
    let f2 = Fakes::new(&[("systemctl", "", 1)]);
    let o = ctl_path(Some(&s), &f2.path(), &["restart"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("systemctl restart opampd"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn logs_from_the_api_tail_filter_and_follow() {
    let s = Server::start();
    let all = ok(&s.ctl(&["logs", "-n", "200"]));
    assert!(all.contains("opampd listening"), "{all}");
    let warn = ok(&s.ctl(&["logs", "-n", "200", "--level", "warn"]));
    assert!(!warn.contains("opampd listening"), "{warn}");
    assert!(warn.contains("agent_secrets"), "{warn}");
    let grep = ok(&s.ctl(&["logs", "-n", "200", "--grep", "listening"]));
    assert!(grep.lines().all(|l| l.contains("listening")), "{grep}");
    let one = ok(&s.ctl(&["logs", "-n", "1"]));
    assert_eq!(one.lines().count(), 1, "{one}");
    let lines = ok(&s.ctl(&["logs", "-n", "200", "-o", "json"]));
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }

    // Follow: a new agent's connect line arrives while opampctl streams.
    let mut child = Command::new(bin("opampctl"))
        .env_clear()
        .env("OPAMPCTL_SERVER", s.url())
        .env("OPAMPCTL_TOKEN", s.token())
        .args(["logs", "-f", "-n", "0", "--grep", "agent connected"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uid = register(&s, "followed").await;
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a followed line");
    assert!(
        line.contains("agent connected") && line.contains(&uid),
        "{line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let o = s.ctl(&["logs", "--level", "loud"]);
    assert_eq!(code(&o), 2);
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

/// A check's verdict and detail.
fn verdict<'a>(report: &'a Value, name: &str) -> (&'a str, &'a str) {
    let check = check(report, name);
    (
        check["verdict"].as_str().unwrap(),
        check["detail"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn doctor_checks_everything_and_registers_no_probe_agent() {
    let s = Server::start();
    let data = s.data_dir();
    // The old fixed name of the write probe, planted as a symlink to a file
    // outside: the probe neither follows nor removes it.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let planted = data.join(".opampctl-doctor-probe");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let r = json(&s.ctl(&["doctor", "--data-dir", data.to_str().unwrap(), "-o", "json"]));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(planted.symlink_metadata().is_ok());
    let probes: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".opampctl"))
        .collect();
    assert_eq!(probes, [".opampctl-doctor-probe"], "no probe file left");
    // The database check looks at the SQLite file; its PostgreSQL form
    // (reachability, pool, long queries) is tested with the doctor's
    // PostgreSQL checks.
    let on_sqlite = s.database_url().is_none();
    for name in [
        "data-dir",
        "database",
        "port",
        "server",
        "token",
        "opamp-http",
        "opamp-ws",
        "db-pool",
        "memory",
    ]
    .into_iter()
    .filter(|name| on_sqlite || *name != "database")
    {
        assert_eq!(check(&r, name)["verdict"], "ok", "{name}: {r}");
    }
    assert!(
        check(&r, "port")["detail"]
            .as_str()
            .unwrap()
            .contains("opampd"),
        "{r}"
    );
    assert_eq!(check(&r, "agent-secret")["verdict"], "warn");
    assert!(check(&r, "agent-secret")["remedy"]
        .as_str()
        .unwrap()
        .contains("agent_secrets"));
    assert_eq!(r["server_reachable"], true);
    assert!(
        check(&r, "opamp-ws")["detail"]
            .as_str()
            .unwrap()
            .contains("no agent was recorded"),
        "{r}"
    );
    // Without an operator token too (nothing could delete a probe agent):
    // the probes registered none, and deleted none.
    let r = json(&ctl_env(
        &["troubleshoot", "agent-connect", "-o", "json"],
        &[("OPAMPCTL_SERVER", &s.url())],
    ));
    assert_eq!(check(&r, "opamp-http")["verdict"], "ok", "{r}");
    assert_eq!(check(&r, "opamp-ws")["verdict"], "ok", "{r}");
    let agents = json(&s.ctl(&["agents", "list", "-o", "json"]));
    assert_eq!(agents["total"], 0, "{agents}");
    let (_, audit) = s.get("/api/v1/audit?action=agent.delete").await;
    assert!(!audit.to_string().contains("agent.delete"), "{audit}");
    let table = ok(&s.ctl(&["doctor"]));
    assert!(
        table.contains("VERDICT") && table.contains("What to do"),
        "{table}"
    );
}

#[test]
fn doctor_tests_agent_secrets() {
    let s = Server::start_with(Opts {
        config: Some("opamp:\n  agent_secrets: [\"right-secret-1\"]\n".into()),
        ..Default::default()
    });
    let o = s.ctl(&["doctor", "--agent-secret", "wrong-secret", "-o", "json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(check(&r, "agent-secret")["verdict"], "fail");
    assert_eq!(check(&r, "opamp-http")["verdict"], "fail");
    let r = json(&s.ctl(&[
        "troubleshoot",
        "agent-connect",
        "--agent-secret",
        "right-secret-1",
        "-o",
        "json",
    ]));
    assert_eq!(check(&r, "agent-secret")["verdict"], "ok");
    assert_eq!(check(&r, "opamp-http")["verdict"], "ok");
    assert_eq!(check(&r, "opamp-ws")["verdict"], "ok");
    // Without a secret: a warning that says to pass one, not a failure.
    let r = json(&s.ctl(&["troubleshoot", "agent-connect", "-o", "json"]));
    assert_eq!(check(&r, "opamp-http")["verdict"], "warn");
}

#[test]
fn troubleshoot_startup_finds_who_holds_the_port_and_bad_config() {
    // Something that is not opampd holds the port: this test process.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:8080\nopamp:\n  agent_secret: x\n").unwrap();
    let fakes = Fakes::new(&[]);
    fakes.link("opampd", &bin("opampd"));
    let o = ctl_env(
        &[
            "troubleshoot",
            "startup",
            "--server",
            &url,
            "--request-timeout",
            "1s",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "-o",
            "json",
        ],
        &[("PATH", &fakes.path())],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let port = check(&r, "port");
    assert_eq!(port["verdict"], "fail");
    assert!(
        port["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", std::process::id())),
        "{port}"
    );
    let config = check(&r, "config");
    assert_eq!(config["verdict"], "fail");
    assert!(
        config["detail"]
            .as_str()
            .unwrap()
            .contains("opamp.agent_secret"),
        "{config}"
    );
    assert_eq!(check(&r, "data-dir")["verdict"], "fail");
    drop(l);
}

#[test]
fn doctor_takes_the_server_address_from_the_opampd_config_file() {
    let addr = opamp_tests::free_addr();
    let s = Server::start_with(Opts {
        config: Some(format!("listen: {addr}\nopamp:\n  path: /v1/opamp\n")),
        listen: Some(addr.clone()),
        ..Default::default()
    });
    let config = s.dir.join("config.yaml");
    let config = config.to_str().unwrap();
    let token = s.token();
    let r = json(&ctl_env(
        &["doctor", "--config", config, "-o", "json"],
        &[("OPAMPCTL_TOKEN", &token)],
    ));
    assert_eq!(r["server"], format!("http://{addr}"), "{r}");
    for name in ["server", "token", "opamp-http", "opamp-ws"] {
        assert_eq!(check(&r, name)["verdict"], "ok", "{name}: {r}");
    }
    assert!(
        check(&r, "config")["detail"]
            .as_str()
            .unwrap()
            .contains("comes from this file"),
        "{r}"
    );
    // --server says otherwise: it wins.
    let o = ctl_env(
        &[
            "doctor",
            "--config",
            config,
            "--server",
            "http://127.0.0.1:9",
            "-o",
            "json",
        ],
        &[("OPAMPCTL_TOKEN", &token)],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["server"], "http://127.0.0.1:9");
}

#[test]
fn doctor_takes_the_data_dir_and_token_from_the_opampd_config_file() {
    let addr = opamp_tests::free_addr();
    let outside = tempfile::tempdir().unwrap();
    let data = outside.path().join("data");
    let s = Server::start_with(Opts {
        config: Some(format!("listen: {addr}\ndata_dir: {}\n", data.display())),
        listen: Some(addr.clone()),
        data_dir: Some(data.clone()),
        ..Default::default()
    });
    let config = s.dir.join("config.yaml");
    let config = config.to_str().unwrap();
    // No token given: the data directory's admin.token is used.
    let r = json(&ctl_env(&["doctor", "--config", config, "-o", "json"], &[]));
    let (token, detail) = verdict(&r, "token");
    assert_eq!(token, "ok", "{r}");
    assert!(
        detail.contains(data.join("admin.token").to_str().unwrap()),
        "{r}"
    );
    let (data_dir, detail) = verdict(&r, "data-dir");
    assert_eq!(data_dir, "ok", "{r}");
    assert!(
        detail.contains(data.to_str().unwrap()) && detail.contains("data_dir of"),
        "{r}"
    );
    if s.database_url().is_none() {
        // The SQLite file; the PostgreSQL form is tested with the doctor's PostgreSQL checks.
        assert_eq!(verdict(&r, "database").0, "ok", "{r}");
    }
    // --token and --data-dir say otherwise: they win.
    let elsewhere = s.dir.join("elsewhere");
    let args = [
        "doctor",
        "--config",
        config,
        "--token",
        "not-the-token",
        "--data-dir",
        elsewhere.to_str().unwrap(),
        "-o",
        "json",
    ];
    let o = ctl_env(&args, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(verdict(&r, "token").0, "fail", "{r}");
    let (data_dir, detail) = verdict(&r, "data-dir");
    assert_eq!(data_dir, "fail", "{r}");
    assert!(detail.contains(elsewhere.to_str().unwrap()), "{r}");
    // A file without data_dir: nothing to check there, and it says why.
    let bare = s.dir.join("bare.yaml");
    std::fs::write(&bare, format!("listen: {addr}\n")).unwrap();
    let args = ["doctor", "--config", bare.to_str().unwrap(), "-o", "json"];
    let r: Value = serde_json::from_str(&stdout(&ctl_env(&args, &[]))).unwrap();
    let (data_dir, detail) = verdict(&r, "data-dir");
    assert_eq!(data_dir, "skip", "{r}");
    assert!(detail.contains("sets no data_dir"), "{r}");
    assert_eq!(verdict(&r, "token").0, "skip", "{r}");
}

/// A loopback HTTP server that is not opampd: every request gets a 503
/// (what a not-ready opampd would answer on /health/ready).
fn impostor() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy",
            );
        }
    });
    addr
}

#[test]
fn a_port_held_by_another_program_is_reported_as_not_opampd() {
    let addr = impostor();
    let o = ctl_env(
        &[
            "doctor",
            "--server",
            &format!("http://{addr}"),
            "--request-timeout",
            "2s",
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let text = stdout(&o);
    let r: Value = serde_json::from_str(&text).unwrap();
    let port = check(&r, "port");
    assert_eq!(port["verdict"], "fail", "{r}");
    assert!(
        port["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", std::process::id())),
        "{port}"
    );
    let server = check(&r, "server");
    assert_eq!(server["verdict"], "fail", "{r}");
    assert!(
        server["detail"].as_str().unwrap().contains("not as opampd"),
        "{server}"
    );
    assert!(
        server["remedy"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", std::process::id())),
        "{server}"
    );
    assert!(!text.contains("starting or draining"), "{text}");
    assert_eq!(check(&r, "opamp-http")["verdict"], "skip", "{r}");
}

#[test]
fn troubleshoot_startup_does_not_recommend_itself() {
    let url = format!("http://{}", opamp_tests::free_addr());
    let run = |command: &[&str]| {
        let mut args = command.to_vec();
        args.extend(["--server", &url, "-o", "json"]);
        let o = ctl_env(&args, &[]);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
        r["checks"].to_string()
    };
    let startup = run(&["troubleshoot", "startup"]);
    assert!(startup.contains("nothing listens"), "{startup}");
    assert!(!startup.contains("troubleshoot startup"), "{startup}");
    // doctor does send the operator there.
    let doctor = run(&["doctor"]);
    assert!(doctor.contains("troubleshoot startup"), "{doctor}");
}

#[test]
fn local_servers_are_told_by_their_address_not_a_prefix() {
    let port = opamp_tests::free_addr()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    for (host, local) in [
        ("127.0.0.2", true),
        ("[::1]", true),
        ("localhost", true),
        ("127.example.com", false),
    ] {
        let url = format!("http://{host}:{port}");
        let o = ctl_env(
            &[
                "troubleshoot",
                "startup",
                "--server",
                &url,
                "--request-timeout",
                "2s",
                "-o",
                "json",
            ],
            &[],
        );
        let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let verdict = check(&r, "port")["verdict"].clone();
        assert_eq!(verdict != "skip", local, "{url}: {r}");
    }
}

#[tokio::test]
async fn troubleshoot_db_pool_memory_and_db_maintenance() {
    let s = Server::start();
    register(&s, "a").await;
    let r = json(&s.ctl(&[
        "troubleshoot",
        "db-pool",
        "--data-dir",
        s.data_dir().to_str().unwrap(),
        "-o",
        "json",
    ]));
    for name in ["server", "db-pool", "slow-queries", "db-size", "database"] {
        assert_ne!(check(&r, name)["verdict"], "fail", "{name}: {r}");
    }
    if s.backend() == "postgresql" {
        // No SQLite file to look for; the size comes from PostgreSQL.
        assert_eq!(check(&r, "database")["verdict"], "skip", "{r}");
        assert!(check(&r, "db-size")["detail"]
            .as_str()
            .unwrap()
            .contains("largest tables"));
    } else {
        assert_eq!(check(&r, "database")["verdict"], "ok", "{r}");
    }
    let r = json(&s.ctl(&[
        "troubleshoot",
        "memory",
        "--samples",
        "2",
        "--duration",
        "1s",
        "-o",
        "json",
    ]));
    assert_eq!(r["memory_samples"].as_array().unwrap().len(), 2);
    assert!(r["memory_samples"][0]["rss_bytes"].as_u64().unwrap() > 0);
    assert!(check(&r, "memory-trend")["detail"]
        .as_str()
        .unwrap()
        .contains("RSS"));

    // db stats and optimize of the SQLite file; on PostgreSQL they have tests of their own.
    if opamp_tests::postgres::sqlite_only("troubleshoot_db_pool_memory_and_db_maintenance: db") {
        return;
    }
    let st = json(&s.ctl(&["db", "stats", "-o", "json"]));
    assert_eq!(st["schema_version"], opamp_proto::api::DB_SCHEMA_VERSION);
    assert!(st["tables"]["agents"].as_u64().unwrap() >= 1);
    let st = json(&s.ctl(&["db", "stats", "--integrity", "-o", "json"]));
    assert_eq!(st["integrity"], "ok");
    let st = json(&s.ctl(&[
        "db",
        "stats",
        "--data-dir",
        s.data_dir().to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert!(st["tables"]["agents"].as_u64().unwrap() >= 1);
    assert!(ok(&s.ctl(&["db", "stats"])).contains("TABLE"));
    let opt = json(&s.ctl(&["db", "optimize", "-o", "json"]));
    let steps: Vec<&str> = opt["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"VACUUM") && steps.contains(&"ANALYZE"),
        "{steps:?}"
    );
    let o = s.ctl(&["db", "stats", "--data-dir", "/nonexistent"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // Maintenance is audited.
    let (_, audit) = s.get("/api/v1/audit?action=db.optimize").await;
    assert!(audit.to_string().contains("db.optimize"), "{audit}");
}

fn write_cert(dir: &Path, days_valid: i64) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86400);
    if days_valid < 0 {
        p.not_before = (now - day * 30).into();
        p.not_after = (now - day * (-days_valid) as u32).into();
    } else {
        p.not_before = (now - day).into();
        p.not_after = (now + day * days_valid as u32).into();
    }
    let cert = p.self_signed(&key).unwrap();
    let path = dir.join(format!("cert{days_valid}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("key{days_valid}.pem")),
        key.serialize_pem(),
    )
    .unwrap();
    path
}

#[test]
fn tls_certificates_are_checked_for_expiry_and_trust() {
    let dir = tempfile::tempdir().unwrap();
    let valid = write_cert(dir.path(), 365);
    let soon = write_cert(dir.path(), 5);
    let expired = write_cert(dir.path(), -2);
    let s = Server::start_with(Opts {
        config: Some(format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            valid.display(),
            dir.path().join("key365.pem").display()
        )),
        ..Default::default()
    });
    let https = format!("https://localhost:{}", s.addr.port());
    let token = s.token();
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--server", &https, "-o", "json"]);
        ctl_env(&a, &[("OPAMPCTL_TOKEN", &token)])
    };
    for (file, verdict) in [(&valid, "ok"), (&soon, "warn"), (&expired, "fail")] {
        let o = run(&[
            "troubleshoot",
            "agent-connect",
            "--tls-cert",
            file.to_str().unwrap(),
            "--ca-file",
            valid.to_str().unwrap(),
        ]);
        let r: Value =
            serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
        let tls: Vec<&Value> = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "tls")
            .collect();
        assert_eq!(tls[0]["verdict"], verdict, "{file:?}: {r}");
        // The server's own certificate: valid, and trusted with --ca-file.
        assert_eq!(tls[1]["verdict"], "ok", "{r}");
        assert_eq!(check(&r, "opamp-ws")["verdict"], "ok", "{r}");
    }
    // Not trusted without the CA: the handshake check says so.
    let o = run(&["troubleshoot", "agent-connect"]);
    let r: Value =
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
    assert_ne!(code(&o), 0);
    let _ = r;
    let o = run(&["health"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("--ca-file"), "{}", stderr(&o));
    let o = run(&["health", "--ca-file", valid.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}
