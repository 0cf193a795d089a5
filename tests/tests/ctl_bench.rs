//! `opampctl bench`: a tiny run of every mode against a real opampd, so the
//! sizing tool keeps working. The benchmarks themselves are not tests: these
//! runs only check that agents connect, exchange, and that every number the
//! mode promises is reported.

use opamp_tests::{bin, ctl_env, free_addr, postgres, signal, stderr, stdout, Opts, Server};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[track_caller]
fn json(o: &Output) -> Value {
    assert_eq!(code(o), 0, "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(o)))
}

#[track_caller]
fn has(v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(
            v.get(f).is_some_and(|x| !x.is_null()),
            "{f} missing in {v:#}"
        );
    }
}

#[track_caller]
fn lacks(v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(
            v.get(f).is_none(),
            "{f} does not belong to {} in {v:#}",
            v["mode"]
        );
    }
}

#[track_caller]
fn all_connected(v: &Value, agents: u64) {
    assert_eq!(v["agents"], agents, "{v:#}");
    assert_eq!(v["connected"], agents, "{v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");
    has(
        v,
        &["connect_p50_ms", "connect_p99_ms", "duration_s", "run_id"],
    );
}

#[test]
fn hold_reports_connect_times_memory_and_cpu() {
    let server = Server::start();
    let pid = server.pid().to_string();
    let o = server.ctl(&[
        "bench",
        "hold",
        "--agents",
        "50",
        "--duration",
        "2s",
        "--heartbeat",
        "1s",
        "--server-pid",
        &pid,
        "--source-ips",
        "127.0.0.1-127.0.0.2",
        "-o",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(v["mode"], "hold");
    assert_eq!(v["transport"], "ws");
    all_connected(&v, 50);
    has(
        &v,
        &[
            "server_rss_before_kib",
            "server_rss_after_kib",
            "server_rss_end_kib",
            "rss_per_agent_kib",
            "rss_samples_kib",
            "rss_flat",
            "server_cpu_s",
            "cpu_per_heartbeat_us",
            "latency_p50_ms",
            "latency_p99_ms",
        ],
    );
    // One heartbeat per agent and second, for about two seconds.
    let beats = v["messages"].as_u64().unwrap();
    assert!((50..=200).contains(&beats), "{v:#}");
    lacks(
        &v,
        &["rollout_received_s", "reconnect_s", "cpu_per_1000_msgs_s"],
    );
}

#[test]
fn status_runs_in_two_worker_processes() {
    let server = Server::start();
    let pid = server.pid().to_string();
    let o = server.ctl(&[
        "bench",
        "status",
        "--agents",
        "20",
        "--processes",
        "2",
        "--duration",
        "2s",
        "--server-pid",
        &pid,
        "-o",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(v["mode"], "status");
    assert_eq!(v["processes"], 2);
    all_connected(&v, 20);
    has(
        &v,
        &[
            "msgs_per_s",
            "latency_p50_ms",
            "latency_p99_ms",
            "server_cpu_s",
            "cpu_per_1000_msgs_s",
        ],
    );
    assert!(v["messages"].as_u64().unwrap() > 20, "{v:#}");
    assert!(
        v["latency_p50_ms"].as_f64() <= v["latency_p99_ms"].as_f64(),
        "{v:#}"
    );
    lacks(&v, &["server_rss_before_kib", "rss_per_agent_kib"]);
}

#[test]
fn http_polls_over_a_few_keep_alive_connections() {
    let server = Server::start();
    let pid = server.pid().to_string();
    let o = server.ctl(&[
        "bench",
        "http",
        "--agents",
        "60",
        "--connections",
        "4",
        "--duration",
        "2s",
        "--gzip",
        "--server-pid",
        &pid,
        "-o",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(
        (v["mode"].as_str(), v["transport"].as_str()),
        (Some("http"), Some("http"))
    );
    all_connected(&v, 60);
    assert_eq!(v["connections"], 4);
    assert_eq!(v["gzip"], true);
    has(
        &v,
        &[
            "msgs_per_s",
            "latency_p50_ms",
            "latency_p99_ms",
            "cpu_per_1000_msgs_s",
        ],
    );
    assert!(v["messages"].as_u64().unwrap() > 60, "{v:#}");
    // The table names the same numbers for people.
    let o = server.ctl(&["bench", "http", "--agents", "5", "--duration", "1s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("requests/s") && text.contains("latency p99"),
        "{text}"
    );
}

#[test]
fn rollout_reaches_every_agent_and_leaves_nothing_behind() {
    let server = Server::start();
    let o = server.ctl(&[
        "bench",
        "rollout",
        "--agents",
        "30",
        "--duration",
        "20s",
        "--config-bytes",
        "512",
        "-o",
        "json",
    ]);
    let v = json(&o);
    all_connected(&v, 30);
    assert_eq!(v["rollout_received"], 30, "{v:#}");
    assert_eq!(v["rollout_applied"], 30, "{v:#}");
    has(
        &v,
        &["rollout_received_s", "rollout_applied_s", "configuration"],
    );
    let name = v["configuration"].as_str().unwrap();
    assert!(name.starts_with("bench-"), "{name}");
    // The configuration is deleted, and so are the agents.
    let o = server.ctl(&["configs", "show", name]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let selector = format!("bench.run={}", v["run_id"].as_str().unwrap());
    let o = server.ctl(&["agents", "list", "-l", &selector, "-o", "json"]);
    let page = json(&o);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "{page:#}");
}

/// How many agents the inventory holds, once the writer has stored them.
fn inventory(server: &Server) -> u64 {
    let page = json(&server.ctl(&["agents", "list", "-o", "json"]));
    page["total"].as_u64().unwrap()
}

#[test]
fn the_simulated_agents_are_removed_unless_keep() {
    let server = Server::start();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "hold",
            "--agents",
            "5",
            "--duration",
            "1s",
            "--heartbeat",
            "1s",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let o = server.ctl(&args);
        all_connected(&json(&o), 5);
        o
    };
    run(&[]);
    assert_eq!(inventory(&server), 0, "a finished bench leaves no agents");
    run(&["--keep"]);
    assert_eq!(inventory(&server), 5, "--keep leaves them");
    // Without a token nothing can be deleted: the run says so, and how to later.
    let o = ctl_env(
        &[
            "bench",
            "hold",
            "--agents",
            "2",
            "--duration",
            "1s",
            "-o",
            "json",
        ],
        &[("OPAMPCTL_SERVER", &server.url())],
    );
    all_connected(&json(&o), 2);
    assert!(
        stderr(&o).contains("stay in the inventory")
            && stderr(&o).contains("agents delete -l bench.run="),
        "{}",
        stderr(&o)
    );
    assert_eq!(inventory(&server), 7);
}

/// An opampd this test starts and restarts itself, on a fixed address, as a
/// supervisor would.
struct Restartable {
    dir: tempfile::TempDir,
    addr: String,
}

impl Restartable {
    fn pid_file(&self) -> std::path::PathBuf {
        self.dir.path().join("opampd.pid")
    }

    fn start(&self) {
        let data = self.dir.path().join("data");
        let mut child = Command::new(bin("opampd"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["--listen", &self.addr, "--data-dir"])
            .arg(&data)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn opampd");
        std::fs::write(self.pid_file(), child.id().to_string()).unwrap();
        // Reap it when the restart script stops it.
        std::thread::spawn(move || child.wait());
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "opampd did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A script that stops opampd and starts it again on the same address.
    fn restart_script(&self) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("restart.sh");
        let data = self.dir.path().join("data");
        let script = format!(
            "#!/bin/sh\nold=$(cat '{pid}')\nkill -TERM \"$old\"\nwhile kill -0 \"$old\" 2>/dev/null; do sleep 0.05; done\n\
             '{bin}' --listen '{addr}' --data-dir '{data}' --log-format json >/dev/null 2>&1 </dev/null &\n\
             echo $! > '{pid}'\n",
            pid = self.pid_file().display(),
            bin = bin("opampd").display(),
            addr = self.addr,
            data = data.display(),
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            return;
        };
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if running(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn reconnect_measures_the_way_back_after_a_restart() {
    let server = Restartable {
        dir: tempfile::tempdir().unwrap(),
        addr: free_addr(),
    };
    server.start();
    let script = server.restart_script();
    let url = format!("http://{}", server.addr);
    let o = ctl_env(
        &[
            "bench",
            "reconnect",
            "--agents",
            "40",
            "--duration",
            "20s",
            "--jitter",
            "200ms",
            "--restart-cmd",
            &script,
            "-o",
            "json",
        ],
        &[("OPAMPCTL_SERVER", &url)],
    );
    let v = json(&o);
    assert_eq!(v["mode"], "reconnect");
    all_connected(&v, 40);
    assert_eq!(v["back"], 40, "{v:#}");
    has(
        &v,
        &[
            "reconnect_s",
            "live_max_ms",
            "live_probes",
            "reconnect_attempts",
        ],
    );
    assert!(v["reconnect_s"].as_f64().unwrap() > 0.0, "{v:#}");
    lacks(&v, &["msgs_per_s", "server_rss_before_kib"]);
}

#[test]
fn bad_flags_are_usage_errors_and_a_missing_server_is_unreachable() {
    let server = [("OPAMPCTL_SERVER", "http://127.0.0.1:1")];
    for args in [
        &["bench", "hold", "--agents", "0"][..],
        &["bench", "http", "--transport", "ws"],
        &["bench", "hold", "--source-ips", "127.0.0.9-127.0.0.1"],
        &["bench", "hold", "--ramp", "0/s"],
        &["bench", "status", "--restart-cmd", "true"],
        &["bench", "rollout"],
        &["bench", "hold", "--agents", "2", "--processes", "3"],
    ] {
        let o = ctl_env(args, &server);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    let o = ctl_env(
        &["bench", "hold", "--agents", "1", "--duration", "1s"],
        &server,
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    // A server that takes no WebSocket agents: errors, exit 1.
    let s = Server::start();
    let o = s.ctl(&[
        "bench",
        "hold",
        "--agents",
        "3",
        "--duration",
        "1s",
        "--opamp-url",
        &format!("{}/not-opamp", s.url()),
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["errors"], 3, "{v:#}");
    assert!(
        v["error_samples"][0]
            .as_str()
            .unwrap()
            .contains("WebSocket"),
        "{v:#}"
    );
}

#[test]
fn compare_runs_the_load_against_both_servers_alternately_with_ratios() {
    let a = Server::start();
    let b = Server::start();
    let (pid_a, pid_b) = (a.pid().to_string(), b.pid().to_string());
    // The bare address gets /v1/opamp; the other side is named in full.
    let server_a = format!("ws://{}", a.addr);
    let server_b = format!("{}/v1/opamp", b.url());
    let o = a.ctl(&[
        "bench",
        "compare",
        "--load",
        "status",
        "--agents",
        "5",
        "--duration",
        "1s",
        "--rounds",
        "2",
        "--server-a",
        &server_a,
        "--pid-a",
        &pid_a,
        "--server-b",
        &server_b,
        "--pid-b",
        &pid_b,
        "-o",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(v["load"], "status", "{v:#}");
    assert_eq!(v["server_a"], format!("{server_a}/v1/opamp"));
    let runs = v["runs"].as_array().unwrap();
    let order: Vec<(&str, u64)> = runs
        .iter()
        .map(|run| {
            (
                run["server"].as_str().unwrap(),
                run["round"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, [("A", 1), ("B", 1), ("B", 2), ("A", 2)], "{v:#}");
    for run in runs {
        all_connected(&run["report"], 5);
        let pid = if run["server"] == "A" { &pid_a } else { &pid_b };
        assert_eq!(run["report"]["server_pid"].to_string(), *pid, "{run:#}");
    }
    let cpu = v["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "cpu_per_1000_msgs_s")
        .unwrap_or_else(|| panic!("no CPU figure in {v:#}"));
    let (fa, fb) = (cpu["a"].as_f64().unwrap(), cpu["b"].as_f64().unwrap());
    assert!(fa > 0.0 && fb > 0.0, "{cpu:#}");
    let ratio = cpu["ratio"].as_f64().unwrap();
    // a and b are shown rounded to 3 decimals, the ratio is of the exact figures.
    let rounding = (fb / fa) * (0.0005 / fa + 0.0005 / fb) + 0.001;
    assert!((ratio - fb / fa).abs() <= rounding, "{cpu:#}");
    // The agents stay in both inventories (--keep), as the help says.
    let agents = a.ctl(&["agents", "list", "-o", "json"]);
    assert_eq!(
        json(&agents)["total"].as_u64(),
        Some(10),
        "two runs of 5 against A"
    );

    // Table output names both servers and the ratio column.
    let o = a.ctl(&[
        "bench",
        "compare",
        "--agents",
        "2",
        "--duration",
        "1s",
        "--heartbeat",
        "200ms",
        "--rounds",
        "1",
        "--server-a",
        &server_a,
        "--pid-a",
        &pid_a,
        "--server-b",
        &server_b,
        "--pid-b",
        &pid_b,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("B/A") && text.contains("server CPU per heartbeat"),
        "{text}"
    );
    assert!(stderr(&o).contains("round 1 of 1"), "{}", stderr(&o));
}

#[test]
fn compare_flags_are_checked_before_anything_runs() {
    let s = Server::start();
    let pid = s.pid().to_string();
    let url = format!("ws://{}", s.addr);
    for (args, needle) in [
        (
            vec!["bench", "compare", "--server-a", &url, "--pid-a", &pid],
            "--server-b URL and --pid-b PID",
        ),
        (
            vec![
                "bench",
                "compare",
                "--load",
                "rollout",
                "--server-a",
                &url,
                "--pid-a",
                &pid,
                "--server-b",
                &url,
                "--pid-b",
                &pid,
            ],
            "--load rollout",
        ),
        (
            vec![
                "bench",
                "compare",
                "--server-a",
                "https://127.0.0.1:1",
                "--pid-a",
                &pid,
                "--server-b",
                &url,
                "--pid-b",
                &pid,
            ],
            "--server-a https://127.0.0.1:1",
        ),
        (
            vec![
                "bench",
                "compare",
                "--server-a",
                &url,
                "--pid-a",
                "999999999",
                "--server-b",
                &url,
                "--pid-b",
                &pid,
            ],
            "no process 999999999",
        ),
        (
            vec!["bench", "hold", "--server-a", &url],
            "--server-a is for bench compare",
        ),
    ] {
        let o = s.ctl(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

/// Two replicas on one fresh PostgreSQL database, the first driving
/// rollouts (the second gets its admin token); None (SKIPPED line printed)
/// without PostgreSQL.
fn two_replicas(test: &str) -> Option<(Server, Server)> {
    postgres::available(test)?;
    let replica = |id: &str, first: Option<&Server>| {
        Server::start_with(Opts {
            postgres: first.is_none(),
            database_url: first.map(|f| f.database_url().expect("on PostgreSQL").to_string()),
            env: vec![("OPAMPD_CLUSTER_REPLICA_ID".into(), id.into())],
            ..Opts::default()
        })
    };
    let a = replica("a", None);
    let started = Instant::now();
    while !a
        .logs()
        .contains("this replica now drives rollout progress")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica a does not drive rollouts:\n{}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = replica("b", Some(&a));
    std::fs::write(b.data_dir().join("admin.token"), a.token()).expect("token written");
    Some((a, b))
}

#[test]
fn several_replicas_get_their_share_of_agents_and_their_own_figures() {
    let Some((a, b)) =
        two_replicas("several_replicas_get_their_share_of_agents_and_their_own_figures")
    else {
        return;
    };
    let (url_a, url_b) = (a.url(), b.url());
    let pids = format!("{},{}", a.pid(), b.pid());
    let o = a.ctl(&[
        "bench",
        "hold",
        "--agents",
        "20",
        "--duration",
        "2s",
        "--heartbeat",
        "1s",
        "--server",
        &url_a,
        "--server",
        &url_b,
        "--server-pid",
        &pids,
        "--processes",
        "2",
        "-o",
        "json",
    ]);
    let v = json(&o);
    all_connected(&v, 20);
    // The totals are there; one pid is not: each replica has its own.
    has(
        &v,
        &[
            "server_rss_after_kib",
            "rss_per_agent_kib",
            "server_cpu_s",
            "cpu_per_heartbeat_us",
            "server_fds",
        ],
    );
    lacks(&v, &["server_pid"]);
    let replicas = v["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "{v:#}");
    let mut messages = 0;
    for (replica, (url, pid)) in replicas.iter().zip([(&url_a, a.pid()), (&url_b, b.pid())]) {
        assert_eq!(replica["server"], url.as_str(), "{v:#}");
        assert_eq!(replica["pid"], pid, "{v:#}");
        assert_eq!(replica["connected"], 10, "round-robin: {v:#}");
        has(
            replica,
            &[
                "rss_before_kib",
                "rss_after_kib",
                "rss_per_agent_kib",
                "fds",
                "cpu_s",
                "cpu_per_heartbeat_us",
            ],
        );
        // Its agents' sockets are among its open files.
        assert!(replica["fds"].as_u64().unwrap() >= 10, "{v:#}");
        messages += replica["messages"].as_u64().unwrap();
    }
    assert_eq!(messages, v["messages"].as_u64().unwrap(), "{v:#}");
    // Each agent was deleted through its replica; the other one (same
    // database) lists none either.
    assert_eq!(inventory(&b), 0, "{v:#}");

    // Through one OpAMP URL (a balancer; here replica a itself): each
    // replica's agents come from its /metrics.
    let o = b.ctl(&[
        "bench",
        "hold",
        "--agents",
        "6",
        "--duration",
        "1s",
        "--heartbeat",
        "1s",
        "--server",
        &format!("{url_a},{url_b}"),
        "--server-pid",
        &a.pid().to_string(),
        "--server-pid",
        &b.pid().to_string(),
        "--opamp-url",
        &format!("{url_a}/v1/opamp"),
        "-o",
        "json",
    ]);
    let v = json(&o);
    all_connected(&v, 6);
    assert_eq!(v["replicas"][0]["connected"], 6, "{v:#}");
    assert_eq!(v["replicas"][1]["connected"], 0, "{v:#}");
}

#[test]
fn a_rollout_started_on_one_replica_is_timed_to_the_agents_of_all() {
    let Some((a, b)) =
        two_replicas("a_rollout_started_on_one_replica_is_timed_to_the_agents_of_all")
    else {
        return;
    };
    // Started on b (the first --server); a drives the rollout's progress.
    let servers = format!("{},{}", b.url(), a.url());
    let o = a.ctl(&[
        "bench",
        "rollout",
        "--agents",
        "10",
        "--duration",
        "30s",
        "--config-bytes",
        "512",
        "--server",
        &servers,
        "-o",
        "json",
    ]);
    let v = json(&o);
    all_connected(&v, 10);
    assert_eq!(v["rollout_received"], 10, "{v:#}");
    assert_eq!(v["rollout_applied"], 10, "{v:#}");
    has(&v, &["rollout_received_s", "rollout_applied_s"]);
    let replicas = v["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "{v:#}");
    for replica in replicas {
        assert_eq!(replica["connected"], 5, "{v:#}");
        assert_eq!(replica["rollout_received"], 5, "{v:#}");
        assert!(
            replica["rollout_received_s"].as_f64().unwrap()
                <= v["rollout_received_s"].as_f64().unwrap(),
            "{v:#}"
        );
    }
}

#[test]
fn several_servers_are_checked_and_only_for_bench() {
    let one = Server::start();
    let url = one.url();
    let two = format!("{url},{url}");
    // One pid for two servers.
    let o = one.ctl(&[
        "bench",
        "hold",
        "--agents",
        "2",
        "--server",
        &two,
        "--server-pid",
        &one.pid().to_string(),
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("one pid per --server"),
        "{}",
        stderr(&o)
    );
    // A bad URL in the list is named.
    let o = one.ctl(&["bench", "hold", "--server", &format!("{url},ftp://x")]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("ftp://x"), "{}", stderr(&o));
    // Other commands talk to one server.
    let o = one.ctl(&["agents", "list", "--server", &url, "--server", &url]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("only opampctl bench drives several replicas"),
        "{}",
        stderr(&o)
    );
}
