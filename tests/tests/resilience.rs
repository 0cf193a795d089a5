//! Crash safety and storage failures: kill -9 under load, a full disk and a
//! read-only data directory. Each test tries to break the property it proves.

use opamp_agent::ws;
use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::{wait_for, Opts, Server};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn integrity(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Agents that report APPLIED for ever-new hashes as fast as replies come back;
/// every acknowledged status is recorded (uid → last acknowledged hash).
async fn churn(url: String, agents: usize, acked: Arc<Mutex<HashMap<[u8; 16], Vec<u8>>>>) {
    let mut tasks = Vec::new();
    for i in 0..agents {
        let url = url.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut socket) = ws::connect(&url, &Default::default()).await else {
                return;
            };
            let uid = new_uid();
            if ws::send(&mut socket, &full_report(uid, 0, &format!("churn-{i}")))
                .await
                .is_err()
            {
                return;
            }
            let mut seq = 1;
            loop {
                let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(5), ws::recv(&mut socket)).await
                else {
                    return;
                };
                let hash = uuid::Uuid::new_v4().as_bytes().repeat(2);
                let msg = applied(uid, seq, &hash, pb::RemoteConfigStatuses::Applied, "");
                seq += 1;
                if ws::send(&mut socket, &msg).await.is_err() {
                    return;
                }
                // The reply to this message is the acknowledgement.
                let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(5), ws::recv(&mut socket)).await
                else {
                    return;
                };
                acked.lock().unwrap().insert(uid, hash.clone());
                if ws::send(&mut socket, &heartbeat(uid, seq)).await.is_err() {
                    return;
                }
                seq += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_status() {
    if opamp_tests::postgres::sqlite_only("kill_9_under_load_loses_no_acknowledged_status") {
        return;
    }
    let mut s = Server::start();
    let db = s.data_dir().join("opamp.db");
    for round in 0..3 {
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let load = tokio::spawn(churn(s.ws_url(), 30, acked.clone()));
        wait_for("acknowledged statuses", Duration::from_secs(20), || async {
            (acked.lock().unwrap().len() >= 20).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300 + round * 200)).await;
        s.kill9();
        let _ = load.await;
        assert_eq!(integrity(&db), "ok", "round {round}");
        let c = rusqlite::Connection::open(&db).unwrap();
        let acked = acked.lock().unwrap().clone();
        for (uid, hash) in &acked {
            let status: String = c
                .query_row(
                    "SELECT remote_status FROM agents WHERE uid = ?1",
                    [uid_str(uid)],
                    |r| r.get(0),
                )
                .unwrap_or_else(|e| panic!("round {round}: agent {} lost: {e}", uid_str(uid)));
            let v: Value = serde_json::from_str(&status).unwrap();
            // The stored hash is the acknowledged one or a later one the server also received.
            assert_eq!(v["status"], "applied");
            if v["hash"] != hex(hash) {
                let later = c
                    .query_row(
                        "SELECT sequence_num FROM agents WHERE uid = ?1",
                        [uid_str(uid)],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap();
                assert!(
                    later > 0,
                    "round {round}: acknowledged APPLIED of {} lost",
                    uid_str(uid)
                );
            }
        }
        drop(c);
        s.start_again();
        let (code, body) = s.get("/api/v1/agents?limit=1").await;
        assert_eq!(code, 200, "{body}");
        assert!(body["total"].as_u64().unwrap() >= acked.len() as u64);
    }
    // Agents reconnect by themselves: a client that comes back with its uid is known.
    let (_, page) = s.get("/api/v1/agents?limit=1").await;
    let uid: [u8; 16] =
        opamp_proto::parse_uid(page["items"][0]["instance_uid"].as_str().unwrap()).unwrap();
    let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
    let r = ws_exchange(&mut ws, &full_report(uid, 1000, "back")).await;
    assert!(r.error_response.is_none());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A small tmpfs for the data directory, when this machine allows mounting.
struct SmallFs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallFs { path, _dir: dir })
    }

    fn remount(&self, mode: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(st.success(), "remount {mode}");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn small_fs(size: &str) -> Option<SmallFs> {
    let fs = SmallFs::mount(size);
    if fs.is_none() {
        if std::env::var("OPAMP_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("cannot mount a tmpfs for the storage-failure tests (needs root)");
        }
        eprintln!("SKIPPED (cannot mount a tmpfs here: storage-failure test needs root)");
    }
    fs
}

async fn health(s: &Server) -> Value {
    reqwest::get(format!("{}/health", s.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn agent_listed(s: &Server, uid: &[u8; 16]) -> bool {
    s.get(&format!("/api/v1/agents/{}", uid_str(uid))).await.0 == 200
}

#[tokio::test]
async fn full_disk_degrades_then_recovers_without_corruption() {
    if opamp_tests::postgres::sqlite_only("full_disk_degrades_then_recovers_without_corruption") {
        return;
    }
    let Some(fs) = small_fs("6m") else { return };
    let data = fs.path.join("data");
    let mut s = Server::start_with(Opts {
        data_dir: Some(data.clone()),
        ..Default::default()
    });
    let first = new_uid();
    http_exchange(&s.opamp_url(), &full_report(first, 0, "before-full")).await;
    wait_for("first agent stored", Duration::from_secs(10), || async {
        agent_listed(&s, &first).await.then_some(())
    })
    .await;
    // Fill the file system.
    let filler = fs.path.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .status();
    // Writes now fail: agents are still answered, health says degraded, API writes say why.
    let mut late = Vec::new();
    for i in 0..20 {
        let uid = new_uid();
        let mut m = full_report(uid, 0, &format!("while-full-{i}"));
        m.agent_description
            .as_mut()
            .unwrap()
            .non_identifying_attributes
            .push(kv("padding", &"x".repeat(4000)));
        let (status, _, _) = http_exchange(&s.opamp_url(), &m).await;
        assert_eq!(
            status, 200,
            "agents are still served while the disk is full"
        );
        late.push(uid);
    }
    let h = wait_for("health degraded", Duration::from_secs(15), || async {
        let h = health(&s).await;
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    assert!(
        h["database"]["last_write_error"]
            .as_str()
            .unwrap()
            .contains("full"),
        "{h}"
    );
    let (code, body) = s
        .send_json(
            "PATCH",
            &format!("/api/v1/agents/{}/labels", uid_str(&first)),
            serde_json::json!({"labels": {"env": "prod"}}),
        )
        .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    // Space returns: the held-back changes are written, health is ok again.
    std::fs::remove_file(&filler).unwrap();
    wait_for("health ok", Duration::from_secs(20), || async {
        (health(&s).await["status"] == "ok").then_some(())
    })
    .await;
    for uid in &late {
        wait_for(
            "agent written after recovery",
            Duration::from_secs(20),
            || async { agent_listed(&s, uid).await.then_some(()) },
        )
        .await;
    }
    let (code, _) = s
        .send_json(
            "PATCH",
            &format!("/api/v1/agents/{}/labels", uid_str(&first)),
            serde_json::json!({"labels": {"env": "prod"}}),
        )
        .await;
    assert_eq!(code, 200);
    s.stop();
    assert_eq!(integrity(&data.join("opamp.db")), "ok");
}

#[tokio::test]
async fn read_only_data_dir_is_refused_clearly_and_left_intact() {
    if opamp_tests::postgres::sqlite_only("read_only_data_dir_is_refused_clearly_and_left_intact") {
        return;
    }
    // The kernel refuses to remount a file system read-only while SQLite holds
    // files open for writing, so a running daemon meets this as failing writes
    // (the full-disk test). What an operator meets is a start on a read-only
    // data directory: it must stop with a clear message and touch nothing.
    let Some(fs) = small_fs("16m") else { return };
    let data = fs.path.join("data");
    let mut s = Server::start_with(Opts {
        data_dir: Some(data.clone()),
        ..Default::default()
    });
    let uid = new_uid();
    http_exchange(&s.opamp_url(), &full_report(uid, 0, "before-ro")).await;
    wait_for("agent stored", Duration::from_secs(10), || async {
        agent_listed(&s, &uid).await.then_some(())
    })
    .await;
    s.stop();
    fs.remount("ro");
    let out = Command::new(opamp_tests::bin("opampd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not writable") && err.contains(&data.display().to_string()),
        "{err}"
    );
    fs.remount("rw");
    assert_eq!(integrity(&data.join("opamp.db")), "ok");
    s.start_again();
    assert!(
        agent_listed(&s, &uid).await,
        "data intact after the refused start"
    );
}

/// Makes the server's database large (agents with bulky attributes, written
/// straight into the file while the server is stopped), so that backups and
/// restores take long enough to be interrupted.
fn bulk_agents(db: &Path, n: usize) {
    let mut c = rusqlite::Connection::open(db).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO agents (uid, status, identifying, non_identifying, first_seen, last_seen, updated_at) VALUES (?1, 'disconnected', ?2, ?3, 1, 1, 1)")
            .unwrap();
        for i in 0..n {
            let uid = uid_str(&new_uid());
            let ident = serde_json::json!({"service.name": format!("bulk-{i}")}).to_string();
            let pad: String = (0..600)
                .map(|j| char::from(b'a' + ((i * 31 + j * 7) % 26) as u8))
                .collect();
            let non = serde_json::json!({"host.name": format!("host-{i}"), "pad": pad}).to_string();
            st.execute(rusqlite::params![uid, ident, non]).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn ctl_spawn(s: &Server, args: &[&str]) -> std::process::Child {
    Command::new(opamp_tests::bin("opampctl"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPAMPCTL_SERVER", s.url())
        .env("OPAMPCTL_TOKEN", s.token())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn final_backups(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("opamp_") && (n.ends_with(".db.gz") || n.ends_with(".sha256"))
        })
        .collect()
}

#[tokio::test]
async fn kill_during_backup_leaves_no_partial_file_under_the_final_name() {
    if opamp_tests::postgres::sqlite_only(
        "kill_during_backup_leaves_no_partial_file_under_the_final_name",
    ) {
        return;
    }
    let mut s = Server::start();
    s.stop();
    bulk_agents(&s.data_dir().join("opamp.db"), 60_000);
    s.start_again();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().display().to_string();
    for delay_ms in [50u64, 200, 500, 900] {
        let mut child = ctl_spawn(&s, &["-q", "backup", "--dir", &dir]);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.kill();
        let _ = child.wait();
        // Anything under a final name must be complete and match its checksum.
        for p in final_backups(out.path()) {
            let name = p.display().to_string();
            if name.ends_with(".db.gz") {
                let sha = std::fs::read_to_string(format!("{name}.sha256")).unwrap_or_else(|_| {
                    panic!("{name} exists without its checksum (killed after {delay_ms} ms)")
                });
                let data = std::fs::read(&p).unwrap();
                let digest = sha256_hex(&data);
                assert!(
                    sha.starts_with(&digest),
                    "{name} is partial (killed after {delay_ms} ms)"
                );
            }
        }
    }
    // A later backup succeeds and verifies, whatever the killed ones left behind.
    let done = s.ctl(&["-q", "backup", "--dir", &dir, "--verify"]);
    assert!(done.status.success(), "{}", opamp_tests::stderr(&done));
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut child = out.unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn kill_during_restore_leaves_a_whole_database_in_place() {
    if opamp_tests::postgres::sqlite_only("kill_during_restore_leaves_a_whole_database_in_place") {
        return;
    }
    let mut s = Server::start();
    s.stop();
    let db = s.data_dir().join("opamp.db");
    bulk_agents(&db, 40_000);
    s.start_again();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().display().to_string();
    let made = s.ctl(&["-q", "backup", "--dir", &dir]);
    assert!(made.status.success(), "{}", opamp_tests::stderr(&made));
    let backup = final_backups(out.path())
        .into_iter()
        .find(|p| p.display().to_string().ends_with(".db.gz"))
        .unwrap();
    // A marker agent that exists only after the backup: present means "old database".
    let marker = new_uid();
    http_exchange(&s.opamp_url(), &full_report(marker, 0, "marker")).await;
    wait_for("marker stored", Duration::from_secs(10), || async {
        agent_listed(&s, &marker).await.then_some(())
    })
    .await;
    let count = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM agents", [], |r| r.get(0))
            .unwrap()
    };
    // Online restore, with the server killed in the middle of it.
    for delay_ms in [100u64, 400] {
        let mut child = ctl_spawn(
            &s,
            &["-q", "restore", &backup.display().to_string(), "--yes"],
        );
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        s.kill9();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            integrity(&db),
            "ok",
            "online restore killed after {delay_ms} ms"
        );
        assert!(count(&db) >= 40_000, "a whole database, old or restored");
        s.start_again();
    }
    // Offline restore, with opampctl killed in the middle of it.
    s.stop();
    for delay_ms in [50u64, 300, 800] {
        let mut child = Command::new(opamp_tests::bin("opampctl"))
            .args([
                "-q",
                "--server",
                "http://127.0.0.1:1",
                "restore",
                &backup.display().to_string(),
                "--yes",
                "--data-dir",
            ])
            .arg(s.data_dir())
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            db.exists(),
            "the database is in place (killed after {delay_ms} ms)"
        );
        assert_eq!(
            integrity(&db),
            "ok",
            "offline restore killed after {delay_ms} ms"
        );
        assert!(count(&db) >= 40_000);
    }
    s.start_again();
    let (code, body) = s.get("/api/v1/agents?limit=1").await;
    assert_eq!(code, 200, "{body}");
}
