//! `opampctl backup` and `opampctl restore`: consistent snapshots while agents
//! write, checksums, retention, a full disk, damaged backups, and restores
//! through the API and offline.

use opamp_tests::cli::{code, fails, json, ok};
use opamp_tests::client::{
    full_report, heartbeat, http_exchange, new_uid, uid_str, ws_connect, ws_exchange,
};
use opamp_tests::{bin, stderr, stdout, Server};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

async fn register(s: &Server, service: &str) -> [u8; 16] {
    let uid = new_uid();
    let (st, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, service)).await;
    assert_eq!(st, 200);
    uid
}

async fn wait_total(s: &Server, n: u64) {
    opamp_tests::wait_for("agents stored", Duration::from_secs(10), || async {
        let (_, v) = s.get("/api/v1/agents").await;
        (v["total"].as_u64() >= Some(n)).then_some(())
    })
    .await;
}

/// Gunzips a backup into a plain database file next to it.
fn gunzip(gz: &Path) -> PathBuf {
    let mut dec = flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap());
    let mut bytes = Vec::new();
    dec.read_to_end(&mut bytes).unwrap();
    let out = gz.with_extension("plain");
    std::fs::write(&out, bytes).unwrap();
    out
}

fn gzip(bytes: &[u8], to: &Path) {
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::default(),
    );
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn agents_in(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT uid FROM agents ORDER BY uid").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn backup_is_compressed_checksummed_and_verified() {
    if opamp_tests::postgres::sqlite_only("backup_is_compressed_checksummed_and_verified") {
        return;
    }
    let s = Server::start();
    let a = register(&s, "checkout").await;
    wait_total(&s, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    let r = json(&s.ctl(&["backup", "--dir", d, "--verify", "-o", "json"]));
    assert_eq!(r["verified"], true);
    assert_eq!(r["source"], "server");
    assert_eq!(r["schema_version"], opamp_proto::api::DB_SCHEMA_VERSION);
    let file = PathBuf::from(r["file"].as_str().unwrap());
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("opamp_")
            && name.ends_with(".db.gz")
            && name.len() == "opamp_20240101_000000.db.gz".len(),
        "{name}"
    );
    assert_eq!(names(dir.path()), [name.clone(), format!("{name}.sha256")]);
    // sha256sum format: `sha256sum -c` in the backup directory accepts it.
    let sum = std::fs::read_to_string(format!("{}.sha256", file.display())).unwrap();
    assert_eq!(sum, format!("{}  {name}\n", r["sha256"].as_str().unwrap()));
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{name}.sha256"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stdout(&check));
    let plain = gunzip(&file);
    assert_eq!(agents_in(&plain), [uid_str(&a)]);

    // Quiet: nothing on stdout or stderr; the path on stdout otherwise.
    let q = s.ctl(&["backup", "--dir", d, "-q"]);
    assert_eq!(code(&q), 0, "{}", stderr(&q));
    assert!(q.stdout.is_empty() && q.stderr.is_empty(), "{q:?}");
    let o = s.ctl(&["backup", "--dir", d]);
    let path = ok(&o);
    assert!(Path::new(path.trim()).is_file(), "{path}");

    // Local: the online backup API on the daemon's file, while it runs.
    let local = dir.path().join("local");
    let r = json(&s.ctl(&[
        "backup",
        "--dir",
        local.to_str().unwrap(),
        "--create-dir",
        "--data-dir",
        s.data_dir().to_str().unwrap(),
        "--verify",
        "-o",
        "json",
    ]));
    assert_eq!(r["source"], "local");
    assert_eq!(
        agents_in(&gunzip(Path::new(r["file"].as_str().unwrap()))),
        [uid_str(&a)]
    );
    let o = s.ctl(&["backup", "--dir", d, "--data-dir", "/nonexistent"]);
    fails(&o, "does not exist");
}

#[test]
fn retention_prunes_only_old_files_of_the_exact_pattern() {
    if opamp_tests::postgres::sqlite_only("retention_prunes_only_old_files_of_the_exact_pattern") {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let recent = Command::new("date")
        .args(["-u", "-d", "2 days ago", "+opamp_%Y%m%d_%H%M%S.db.gz"])
        .output()
        .unwrap();
    let recent = stdout(&recent).trim().to_string();
    let keep = [
        "opamp_20000101_000000.db",
        "opamp_20000101_000000.db.gz.bak",
        "notes.txt",
        "opamp_latest.db.gz",
        "xopamp_20000101_000000.db.gz",
        recent.as_str(),
    ];
    let old = [
        "opamp_20000101_000000.db.gz",
        "opamp_20000101_000000.db.gz.sha256",
        "opamp_20010203_040506.db.gz",
    ];
    for n in keep.iter().chain(old.iter()) {
        std::fs::write(dir.path().join(n), b"x").unwrap();
    }
    let r = json(&s.ctl(&[
        "backup",
        "--dir",
        dir.path().to_str().unwrap(),
        "--retention-days",
        "7",
        "-o",
        "json",
    ]));
    let pruned: Vec<String> = r["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            Path::new(p.as_str().unwrap())
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut expected: Vec<String> = old.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(pruned, expected);
    let left = names(dir.path());
    for n in keep {
        assert!(left.contains(&n.to_string()), "{n} was kept: {left:?}");
    }
    for n in old {
        assert!(!left.contains(&n.to_string()), "{n} was pruned: {left:?}");
    }
    let new = Path::new(r["file"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(left.contains(&new) && left.contains(&format!("{new}.sha256")));
}

/// Runs opampctl with a file size limit: writes past it fail with EFBIG
/// (SIGXFSZ ignored), as on a full disk.
#[allow(unsafe_code)]
fn ctl_with_file_limit(s: &Server, args: &[&str], limit: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin("opampctl"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPAMPCTL_SERVER", s.url())
        .env("OPAMPCTL_TOKEN", s.token())
        .args(args)
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn a_full_disk_during_backup_leaves_no_partial_file() {
    if opamp_tests::postgres::sqlite_only("a_full_disk_during_backup_leaves_no_partial_file") {
        return;
    }
    let s = Server::start();
    for i in 0..20 {
        register(&s, &format!("svc-{i}")).await;
    }
    wait_total(&s, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = ctl_with_file_limit(&s, &["backup", "--dir", d], 1024);
    assert_ne!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("File too large") && stderr(&o).contains("free space"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        names(dir.path()),
        Vec::<String>::new(),
        "no partial or temporary file"
    );
    let o = ctl_with_file_limit(
        &s,
        &[
            "backup",
            "--dir",
            d,
            "--data-dir",
            s.data_dir().to_str().unwrap(),
        ],
        1024,
    );
    assert_ne!(code(&o), 0);
    assert_eq!(names(dir.path()), Vec::<String>::new());
    // With room, the same backup works.
    ok(&s.ctl(&["backup", "--dir", d, "-q"]));
    assert_eq!(names(dir.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_while_agents_connect_and_write_are_consistent() {
    if opamp_tests::postgres::sqlite_only("backups_while_agents_connect_and_write_are_consistent") {
        return;
    }
    let s = std::sync::Arc::new(Server::start());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (s, stop) = (s.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let uid = new_uid();
            let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
            ws_exchange(&mut ws, &full_report(uid, 0, &format!("ws-{i}"))).await;
            let mut seq = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ws_exchange(&mut ws, &heartbeat(uid, seq)).await;
                seq += 1;
                if seq % 10 == 0 {
                    // A full report now and then: real row writes, not just heartbeats.
                    ws_exchange(&mut ws, &full_report(uid, seq, &format!("ws-{i}-{seq}"))).await;
                    seq += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            uid
        }));
    }
    // HTTP agents keep arriving during the backups too.
    let s2 = s.clone();
    let stop2 = stop.clone();
    let arrivals = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            register(&s2, "late").await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        n
    });
    wait_total(&s, 10).await;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let (s, d) = (s.clone(), dir.path().to_path_buf());
        let r = tokio::task::spawn_blocking(move || {
            json(&s.ctl(&[
                "backup",
                "--dir",
                d.to_str().unwrap(),
                "--verify",
                "-o",
                "json",
            ]))
        })
        .await
        .unwrap();
        assert_eq!(r["verified"], true);
        let db = gunzip(Path::new(r["file"].as_str().unwrap()));
        let c = rusqlite::Connection::open(&db).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM agents WHERE identifying LIKE '%ws-%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 10, "every WebSocket agent is in the snapshot");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(arrivals.await.unwrap() > 0);
}

/// A backup file of `s`, with its .sha256.
fn backup_of(s: &Server, dir: &Path) -> PathBuf {
    let r = json(&s.ctl(&["backup", "--dir", dir.to_str().unwrap(), "-o", "json"]));
    PathBuf::from(r["file"].as_str().unwrap())
}

#[tokio::test]
async fn restore_through_the_api_brings_back_deleted_agents() {
    if opamp_tests::postgres::sqlite_only("restore_through_the_api_brings_back_deleted_agents") {
        return;
    }
    let s = Server::start();
    let a = register(&s, "checkout").await;
    let b = register(&s, "billing").await;
    wait_total(&s, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = backup_of(&s, dir.path());
    let (st, _) = s
        .send_json(
            "DELETE",
            &format!("/api/v1/agents/{}?force=true", uid_str(&a)),
            Value::Null,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = s.get(&format!("/api/v1/agents/{}", uid_str(&a))).await;
    assert_eq!(st, 404);

    // Without --yes and without a terminal to ask: refused, nothing changed.
    let o = s.ctl(&["restore", file.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--yes"));

    let r = json(&s.ctl(&["restore", file.to_str().unwrap(), "--yes", "-o", "json"]));
    assert_eq!(r["schema_version"], opamp_proto::api::DB_SCHEMA_VERSION);
    let kept = PathBuf::from(r["kept_aside"].as_str().unwrap());
    assert!(kept.is_file(), "{kept:?}");
    assert!(kept
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("opamp.db.before-restore-"));
    // The kept copy is the database before the restore: without agent a.
    assert_eq!(agents_in(&kept), [uid_str(&b)]);
    let (st, v) = s.get(&format!("/api/v1/agents/{}", uid_str(&a))).await;
    assert_eq!(st, 200, "{v}");
    // The restore is audited (in the restored database).
    let (_, audit) = s.get("/api/v1/audit?action=db.restore").await;
    assert!(audit.to_string().contains("db.restore"), "{audit}");
    // The agent keeps working after the restore; it is asked for its full state.
    let (_, _, reply) = http_exchange(&s.opamp_url(), &heartbeat(b, 1)).await;
    assert_eq!(
        reply.unwrap().flags & opamp_proto::caps::FLAG_REPORT_FULL_STATE,
        1
    );
}

#[tokio::test]
async fn damaged_backups_are_refused_before_anything_changes() {
    if opamp_tests::postgres::sqlite_only("damaged_backups_are_refused_before_anything_changes") {
        return;
    }
    let s = Server::start();
    register(&s, "checkout").await;
    wait_total(&s, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let good = backup_of(&s, dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let plain = std::fs::read(gunzip(&good)).unwrap();
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = bad.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };

    let truncated = write("truncated.db.gz", &bytes[..bytes.len() / 2]);
    fails(
        &s.ctl(&["restore", truncated.to_str().unwrap(), "--yes"]),
        "truncated",
    );

    let mismatch = write("mismatch.db.gz", &bytes[..bytes.len() / 2]);
    std::fs::copy(
        format!("{}.sha256", good.display()),
        format!("{}.sha256", mismatch.display()),
    )
    .unwrap();
    fails(
        &s.ctl(&["restore", mismatch.to_str().unwrap(), "--yes"]),
        "does not match its checksum",
    );

    let garbage = bad.join("garbage.db.gz");
    gzip(&[7u8; 8192], &garbage);
    fails(
        &s.ctl(&["restore", garbage.to_str().unwrap(), "--yes"]),
        "not a SQLite database",
    );

    let mut damaged = plain.clone();
    let page = 4096;
    for b in damaged.iter_mut().skip(page).take(page * 3) {
        *b = 0x5a;
    }
    let damaged_gz = bad.join("damaged.db.gz");
    gzip(&damaged, &damaged_gz);
    fails(
        &s.ctl(&["restore", damaged_gz.to_str().unwrap(), "--yes"]),
        "cannot be restored",
    );

    let other = bad.join("other.db");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE notes (t TEXT); PRAGMA user_version = 1;")
            .unwrap();
    }
    fails(
        &s.ctl(&["restore", other.to_str().unwrap(), "--yes"]),
        "not an opampd database",
    );

    let newer = bad.join("newer.db");
    std::fs::write(&newer, &plain).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 999;")
        .unwrap();
    fails(
        &s.ctl(&["restore", newer.to_str().unwrap(), "--yes"]),
        "newer",
    );

    let o = s.ctl(&["restore", "/nonexistent.db.gz", "--yes"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"));

    // Nothing was touched: no kept-aside copy, the agent still there.
    assert!(!names(&s.data_dir())
        .iter()
        .any(|n| n.contains("before-restore")));
    let (_, v) = s.get("/api/v1/agents").await;
    assert_eq!(v["total"], 1);

    // The server checks uploads itself too.
    let client = s.http();
    let r = client
        .post(format!("{}/api/v1/admin/restore", s.url()))
        .bearer_auth(s.token())
        .body(vec![1u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_backup", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{v}"
    );
    let r = client
        .post(format!("{}/api/v1/admin/restore", s.url()))
        .bearer_auth(s.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn offline_restore_refuses_a_running_daemon_and_works_when_stopped() {
    if opamp_tests::postgres::sqlite_only(
        "offline_restore_refuses_a_running_daemon_and_works_when_stopped",
    ) {
        return;
    }
    let mut s = Server::start();
    let a = register(&s, "checkout").await;
    wait_total(&s, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = backup_of(&s, dir.path());
    let (st, _) = s
        .send_json(
            "DELETE",
            &format!("/api/v1/agents/{}?force=true", uid_str(&a)),
            Value::Null,
        )
        .await;
    assert_eq!(st, 204);
    let data = s.data_dir();
    let d = data.to_str().unwrap().to_string();
    let token = s.token();
    let url = s.url();

    let o = s.ctl(&["restore", file.to_str().unwrap(), "--data-dir", &d, "--yes"]);
    fails(&o, "opampd is running");
    assert!(
        stderr(&o).contains("open in another process") && stderr(&o).contains("/health/live"),
        "{}",
        stderr(&o)
    );

    assert_eq!(s.stop(), Some(0));
    let o = opamp_tests::ctl_env(
        &["restore", file.to_str().unwrap(), "--data-dir", &d, "--yes"],
        &[("OPAMPCTL_SERVER", &url), ("OPAMPCTL_TOKEN", &token)],
    );
    let out = ok(&o);
    assert!(out.contains("previous database kept as"), "{out}");
    let left = names(&data);
    assert!(
        left.iter()
            .any(|n| n.starts_with("opamp.db.before-restore-")),
        "{left:?}"
    );
    assert!(
        !left.contains(&"opamp.db-wal".to_string()),
        "no stale WAL next to the restored file: {left:?}"
    );
    s.start_again();
    let (st, v) = s.get(&format!("/api/v1/agents/{}", uid_str(&a))).await;
    assert_eq!(st, 200, "{v}");
}

#[test]
fn a_missing_backup_dir_and_zero_retention_are_usage_errors() {
    if opamp_tests::postgres::sqlite_only(
        "a_missing_backup_dir_and_zero_retention_are_usage_errors",
    ) {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo").join("backups");
    let m = missing.to_str().unwrap();
    let o = s.ctl(&["backup", "--dir", m]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not exist") && stderr(&o).contains("--create-dir"),
        "{}",
        stderr(&o)
    );
    assert!(!missing.exists());
    let d = dir.path().to_str().unwrap();
    let o = s.ctl(&["backup", "--dir", d, "--retention-days", "0"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--retention-days 0"), "{}", stderr(&o));
    assert!(names(dir.path()).iter().all(|n| n == "typo") || names(dir.path()).is_empty());
    let o = s.ctl(&["backup", "--dir", m, "--create-dir", "-q"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(names(&missing).len(), 2, "the backup and its checksum");
    // Owner-only, whatever the umask: a backup holds password hashes and tokens.
    for n in names(&missing) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(missing.join(&n))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{n}: {mode:o}");
    }
}

/// `YYYYmmdd_HHMMSS` (UTC) of the Unix time `secs`: the stamp in backup names.
fn utc_stamp(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}_{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Dangling symlinks to `target` under `name(stamp)` in `dir`, for the
/// stamps of the next few seconds: the names a command is about to write
/// (a name already taken is left as it is).
fn plant(dir: &Path, name: impl Fn(&str) -> String, target: &Path) -> Vec<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (0..8)
        .map(|ahead| dir.join(name(&utc_stamp(now + ahead))))
        .filter(|link| link.symlink_metadata().is_err())
        .inspect(|link| std::os::unix::fs::symlink(target, link).unwrap())
        .collect()
}

/// The regular files restores kept aside in `data` (symlinks excluded).
fn kept_aside(data: &Path) -> Vec<String> {
    names(data)
        .into_iter()
        .filter(|n| n.starts_with("opamp.db.before-restore-"))
        .filter(|n| {
            data.join(n)
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_file())
        })
        .collect()
}

#[tokio::test]
async fn backups_and_restores_never_write_through_a_planted_symlink() {
    if opamp_tests::postgres::sqlite_only(
        "backups_and_restores_never_write_through_a_planted_symlink",
    ) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(utc_stamp(0), "19700101_000000");
    assert_eq!(utc_stamp(1_709_251_199), "20240229_235959");
    let mut s = Server::start();
    register(&s, "checkout").await;
    wait_total(&s, 1).await;
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    // Symlinks where the backup is about to go: refused, nothing written.
    let links = plant(dir.path(), |stamp| format!("opamp_{stamp}.db.gz"), &victim);
    let o = s.ctl(&["backup", "--dir", d]);
    fails(&o, "already exists");
    assert!(!victim.exists(), "nothing written through the symlink");
    assert_eq!(names(dir.path()).len(), links.len(), "no temporary left");
    for link in &links {
        std::fs::remove_file(link).unwrap();
    }

    // Backups (from the server, and a local snapshot) are owner-only and
    // leave no temporary file or directory.
    let data = s.data_dir();
    let file = backup_of(&s, dir.path());
    let local = tempfile::tempdir().unwrap();
    ok(&s.ctl(&[
        "backup",
        "--dir",
        local.path().to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--verify",
        "-q",
    ]));
    for backups in [dir.path(), local.path()] {
        assert_eq!(names(backups).len(), 2, "{:?}", names(backups));
        for n in names(backups) {
            let mode = std::fs::metadata(backups.join(&n))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{n}: {mode:o}");
        }
    }

    // An online restore stages its copy in a private directory under
    // TMPDIR, and removes it; an unusable TMPDIR is a clear error.
    let tmp = tempfile::tempdir().unwrap();
    let (url, token) = (s.url(), s.token());
    let env = |tmpdir: &str| {
        [
            ("OPAMPCTL_SERVER", url.clone()),
            ("OPAMPCTL_TOKEN", token.clone()),
            ("TMPDIR", tmpdir.to_string()),
        ]
    };
    let restore = |tmpdir: &str, extra: &[&str]| {
        let env = env(tmpdir);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut args = vec!["restore", file.to_str().unwrap(), "--yes"];
        args.extend(extra);
        opamp_tests::ctl_env(&args, &env)
    };
    ok(&restore(tmp.path().to_str().unwrap(), &["-q"]));
    assert_eq!(names(tmp.path()), Vec::<String>::new());
    let missing = tmp.path().join("missing");
    fails(
        &restore(missing.to_str().unwrap(), &[]),
        "private temporary directory",
    );

    // Offline: a symlink where the current database would be kept aside.
    assert_eq!(s.stop(), Some(0));
    let links = plant(
        &data,
        |stamp| format!("opamp.db.before-restore-{stamp}"),
        &victim,
    );
    // The restore keeps the database under the next free name instead, and
    // leaves the links as they were.
    let kept_before = kept_aside(&data);
    ok(&restore(
        tmp.path().to_str().unwrap(),
        &["--data-dir", data.to_str().unwrap(), "-q"],
    ));
    assert!(!victim.exists(), "nothing written through the symlink");
    for link in &links {
        assert!(
            link.symlink_metadata().unwrap().file_type().is_symlink(),
            "{} left as it was",
            link.display()
        );
        std::fs::remove_file(link).unwrap();
    }
    let left = names(&data);
    assert!(
        !left.iter().any(|n| n.starts_with(".opampctl")),
        "no temporary left: {left:?}"
    );
    let kept_after = kept_aside(&data);
    assert_eq!(kept_after.len(), kept_before.len() + 1, "{kept_after:?}");
    // Restores within one second (the server's earlier one included) each
    // keep their own copy.
    ok(&restore(
        tmp.path().to_str().unwrap(),
        &["--data-dir", data.to_str().unwrap(), "-q"],
    ));
    ok(&restore(
        tmp.path().to_str().unwrap(),
        &["--data-dir", data.to_str().unwrap(), "-q"],
    ));
    assert_eq!(kept_aside(&data).len(), kept_after.len() + 2);
    s.start_again();
    wait_total(&s, 1).await;
}

#[test]
fn a_killed_backups_temporary_directory_is_removed_by_the_next_backup() {
    if opamp_tests::postgres::sqlite_only(
        "a_killed_backups_temporary_directory_is_removed_by_the_next_backup",
    ) {
        return;
    }
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // What a backup killed mid-way leaves: its private directory, named
    // with its process id, holding a partial file.
    let leftover = |pid: u32| {
        let path = dir.path().join(format!(
            ".opampctl-backup-{pid}-{}",
            uid_str(&new_uid()).replace('-', "")
        ));
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("opamp_20000101_000000.db.gz"), b"partial").unwrap();
        path
    };
    let gone_pid = || {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    // One of a live process (this test) is another backup still running.
    let live = leftover(std::process::id());
    let dead = leftover(gone_pid());
    let o = s.ctl(&["backup", "--dir", d]);
    ok(&o);
    assert!(
        stderr(&o).contains(&format!("removed {}", dead.display()))
            && stderr(&o).contains("is gone"),
        "{}",
        stderr(&o)
    );
    assert!(!dead.exists(), "the dead process's directory is removed");
    assert!(
        live.join("opamp_20000101_000000.db.gz").exists(),
        "the live one is kept"
    );

    let dead = leftover(gone_pid());
    let r = json(&s.ctl(&["backup", "--dir", d, "-o", "json"]));
    assert_eq!(
        r["leftovers_removed"],
        serde_json::json!([dead.display().to_string()]),
        "{r}"
    );
    assert!(!dead.exists() && live.exists());
    let backups = names(dir.path())
        .into_iter()
        .filter(|name| name.starts_with("opamp_"))
        .count();
    assert_eq!(backups, 4, "{:?}", names(dir.path()));
}
