//! Hosted package files over real sockets: uploaded with the real opampctl
//! to a real opampd (streamed, hashed, size-limited, signature rule, admin
//! only), served under /v1/packages/… with the agents' credentials, ETag and
//! Range; downloaded by the agent library (an interrupted transfer resumed
//! with Range, the SHA-256 checked, the simulated install reported); a file
//! altered on disk refused; files removed with the last version naming them.
//! On SQLite and on PostgreSQL.

use opamp_agent::agent::{Agent, AgentSettings, Download, Event};
use opamp_agent::download::{DownloadOptions, Downloader, Failure};
use opamp_proto::pb;
use opamp_tests::cli::{code, fails, json, ok};
use opamp_tests::client::new_uid;
use opamp_tests::{ctl_env, Opts, Server};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const AGENT_SECRET: &str = "hosted-files-agent-secret-1";
const LIMIT: u64 = 4 * 1024 * 1024;

fn server(postgres: bool) -> Server {
    Server::start_with(Opts {
        config: Some(format!(
            "opamp:\n  agent_secrets: [{AGENT_SECRET}]\npackages:\n  max_file_bytes: {LIMIT}\n"
        )),
        postgres,
        ..Opts::default()
    })
}

/// A file of `size` bytes that differs with `seed`.
fn release_file(dir: &Path, name: &str, size: usize, seed: u8) -> (PathBuf, Vec<u8>, String) {
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    let sha = hex(&Sha256::digest(&bytes));
    (path, bytes, sha)
}

/// opampctl exited with `exit` and said `needle`.
#[track_caller]
fn rejects(o: &std::process::Output, exit: i32, needle: &str) {
    let stderr = opamp_tests::stderr(o);
    assert_eq!(code(o), exit, "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn upload(server: &Server, version: &str, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "-o",
        "json",
        "packages",
        "upload",
        "otelcol",
        version,
        file.to_str().unwrap(),
        "--os",
        "linux",
        "--arch",
        "amd64",
    ];
    args.extend_from_slice(extra);
    server.ctl(&args)
}

/// The hosted files kept in the server's packages directory.
fn stored_files(server: &Server) -> Vec<String> {
    let dir = server.data_dir().join("packages");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name() == "tmp" {
            assert_eq!(
                std::fs::read_dir(entry.path()).unwrap().count(),
                0,
                "no upload leftovers"
            );
            continue;
        }
        for file in std::fs::read_dir(entry.path()).unwrap().flatten() {
            names.push(file.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names
}

/// The offer of `url` as opampd makes it (one top-level package), handed to
/// `agent`; the download it asks for.
fn offer(agent: &mut Agent, url: &str, content_hash: &[u8]) -> Download {
    let mut offer = pb::PackagesAvailable {
        all_packages_hash: vec![9; 32],
        ..Default::default()
    };
    offer.packages.insert(
        "otelcol".into(),
        pb::PackageAvailable {
            r#type: pb::PackageType::TopLevel as i32,
            version: "1.0.0".into(),
            file: Some(pb::DownloadableFile {
                download_url: url.into(),
                content_hash: content_hash.to_vec(),
                signature: Vec::new(),
                headers: None,
            }),
            hash: content_hash.to_vec(),
        },
    );
    let reaction = agent.handle(&pb::ServerToAgent {
        instance_uid: agent.uid().to_vec(),
        packages_available: Some(offer),
        ..Default::default()
    });
    assert_eq!(reaction.downloads.len(), 1, "{:?}", reaction.events);
    reaction.downloads.into_iter().next().unwrap()
}

/// Fetches `download` to the end or the first failure.
async fn fetch(downloader: &mut Downloader, download: &Download) -> Result<Vec<u8>, Failure> {
    let mut transfer = downloader.start(download).await?;
    while transfer.next().await? {}
    Ok(transfer.finish())
}

fn packaged_agent() -> Agent {
    Agent::new(
        AgentSettings::new(new_uid())
            .identifying("service.name", "edge")
            .non_identifying("os.type", "linux")
            .non_identifying("host.arch", "amd64")
            .accepts_packages(),
    )
}

async fn hosted_files_round_trip(server: Server) {
    let dir = tempfile::tempdir().unwrap();
    let (file, bytes, sha) =
        release_file(dir.path(), "otelcol_1.0.0_linux_amd64.tar.gz", 3 << 20, 1);

    // The signature rule of files by reference holds for uploads too.
    rejects(&upload(&server, "1.0.0", &file, &[]), 2, "--unsigned");

    // A declared SHA-256 that the bytes do not have: refused, nothing kept.
    let zeros = "0".repeat(64);
    let refused = upload(&server, "1.0.0", &file, &["--sha256", &zeros, "--unsigned"]);
    fails(&refused, "not the declared");
    assert!(stored_files(&server).is_empty());

    // Larger than packages.max_file_bytes: 413, nothing kept.
    let (big, _, _) = release_file(dir.path(), "big.tar.gz", LIMIT as usize + 1, 2);
    rejects(
        &upload(&server, "1.0.0", &big, &["--unsigned"]),
        2,
        "packages.max_file_bytes",
    );
    assert!(stored_files(&server).is_empty());

    // Admin only.
    let (status, _) = server
        .send_json(
            "POST",
            "/api/v1/users",
            serde_json::json!({"username": "olga", "password": "operator-password-1", "role": "operator"}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, login) = server
        .send_json(
            "POST",
            "/api/v1/auth/login",
            serde_json::json!({"username": "olga", "password": "operator-password-1"}),
        )
        .await;
    let operator = login["token"].as_str().unwrap().to_string();
    // A small file: the refusal comes before the body is read.
    let (small, _, _) = release_file(dir.path(), "small.tar.gz", 100, 3);
    let refused = ctl_env(
        &[
            "packages",
            "upload",
            "otelcol",
            "1.0.0",
            small.to_str().unwrap(),
            "--platform",
            "linux/amd64",
            "--unsigned",
        ],
        &[
            ("OPAMPCTL_SERVER", &server.url()),
            ("OPAMPCTL_TOKEN", &operator),
        ],
    );
    fails(&refused, "403");

    // The upload: stored under its SHA-256, listed with opampd's URL.
    let signature = dir.path().join("otelcol.tar.gz.sigstore.json");
    std::fs::write(
        &signature,
        br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
    )
    .unwrap();
    let stored: Value = json(&upload(
        &server,
        "1.0.0",
        &file,
        &[
            "--sha256",
            &sha.to_uppercase(),
            "--signature-file",
            signature.to_str().unwrap(),
        ],
    ));
    assert_eq!(stored["result"], "created");
    let listed = &stored["files"][0];
    assert_eq!(listed["hosted"], true);
    assert_eq!(listed["signed"], true);
    assert_eq!(listed["sha256"], sha);
    assert_eq!(listed["size"], bytes.len() as u64);
    let url = listed["url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!(
            "{}/v1/packages/otelcol/1.0.0/files/linux/amd64",
            server.url()
        )
    );
    assert_eq!(stored_files(&server), vec![sha.clone()]);
    let text = ok(&server.ctl(&["packages", "show", "otelcol", "1.0.0"]));
    assert!(text.contains("hosted"), "{text}");

    // Served with the agents' credentials only, ETag = SHA-256, Range.
    let http = server.http();
    let get = |range: Option<&str>, secret: Option<&str>| {
        let mut request = http.get(&url);
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        request.send()
    };
    assert_eq!(get(None, None).await.unwrap().status(), 401);
    assert_eq!(get(None, Some("wrong-secret")).await.unwrap().status(), 401);
    let whole = get(None, Some(AGENT_SECRET)).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await.unwrap(), bytes);
    let part = get(Some("bytes=1000-1999"), Some(AGENT_SECRET))
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000-1999/{}", bytes.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), bytes[1000..2000]);
    let past = get(Some(&format!("bytes={}-", bytes.len())), Some(AGENT_SECRET))
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{}", bytes.len()).as_str()
    );
    let missing = http
        .get(format!(
            "{}/v1/packages/otelcol/9.9.9/files/linux/amd64",
            server.url()
        ))
        .bearer_auth(AGENT_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The agent library downloads it, interrupted after 1 MiB and resumed
    // with Range, checks the SHA-256 and installs it.
    let mut agent = packaged_agent();
    let download = offer(&mut agent, &url, &Sha256::digest(&bytes));
    let mut downloader = Downloader::new(
        DownloadOptions::default()
            .bearer(AGENT_SECRET)
            .interrupt_after(1 << 20),
    )
    .unwrap();
    match fetch(&mut downloader, &download).await {
        Err(Failure::Interrupted { received, .. }) => assert_eq!(received, 1 << 20),
        Err(other) => panic!("expected an interruption, got {other:?}"),
        Ok(_) => panic!("expected an interruption"),
    }
    let resumed = fetch(&mut downloader, &download).await.ok().unwrap();
    assert_eq!(resumed, bytes);
    let reaction = agent.download_finished(&download, Ok(resumed));
    assert!(
        reaction
            .events
            .iter()
            .any(|e| matches!(e, Event::PackageInstalled { name, version } if name == "otelcol" && version == "1.0.0")),
        "{:?}",
        reaction.events
    );

    // A file whose bytes are not the offered SHA-256 is refused by the agent.
    let mut agent = packaged_agent();
    let download = offer(&mut agent, &url, &[7; 32]);
    let mut downloader = Downloader::new(DownloadOptions::default().bearer(AGENT_SECRET)).unwrap();
    let fetched = fetch(&mut downloader, &download).await.ok().unwrap();
    let reaction = agent.download_finished(&download, Ok(fetched));
    assert!(
        reaction.events.iter().any(
            |e| matches!(e, Event::PackageFailed { message, .. } if message.contains("SHA-256"))
        ),
        "{:?}",
        reaction.events
    );

    // The same bytes as another version share one stored file.
    ok(&upload(&server, "1.0.1", &file, &["--unsigned"]));
    assert_eq!(stored_files(&server), vec![sha.clone()]);

    // Altered on disk: refused to agents (410), with an error in the log.
    let path = server
        .data_dir()
        .join("packages")
        .join(&sha[..2])
        .join(&sha);
    let mut altered = bytes.clone();
    altered[10] ^= 0xff;
    std::fs::write(&path, &altered).unwrap();
    let refused = get(None, Some(AGENT_SECRET)).await.unwrap();
    assert_eq!(refused.status(), 410);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("no longer matches its SHA-256"));
    opamp_tests::wait_for(
        "the error in the log",
        std::time::Duration::from_secs(10),
        || async {
            server
                .logs()
                .contains("no longer matches its SHA-256")
                .then_some(())
        },
    )
    .await;
    let mut agent = packaged_agent();
    let download = offer(&mut agent, &url, &Sha256::digest(&bytes));
    match fetch(&mut downloader, &download).await {
        Err(Failure::Final(reason)) => assert!(reason.contains("410"), "{reason}"),
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal"),
    }
    // Uploading it again heals it.
    ok(&upload(&server, "1.0.0", &file, &["--unsigned"]));
    let healed = get(None, Some(AGENT_SECRET)).await.unwrap();
    assert_eq!(healed.status(), 200);
    assert_eq!(healed.bytes().await.unwrap(), bytes);

    // Deleting a version keeps a file another version names; the last one removes it.
    ok(&server.ctl(&["packages", "delete", "otelcol", "1.0.0"]));
    assert_eq!(stored_files(&server), vec![sha.clone()]);
    ok(&server.ctl(&["packages", "delete", "otelcol", "1.0.1"]));
    assert!(stored_files(&server).is_empty());
    assert_eq!(get(None, Some(AGENT_SECRET)).await.unwrap().status(), 404);

    let audit = ok(&server.ctl(&["-o", "json", "audit"]));
    let compact: String = audit.split_whitespace().collect();
    assert!(compact.contains("\"hosted\":true"), "{audit}");
}

#[tokio::test]
async fn hosted_files_are_uploaded_served_resumed_and_checked() {
    hosted_files_round_trip(server(false)).await;
}

#[tokio::test]
async fn hosted_files_on_postgresql() {
    if opamp_tests::postgres::available("hosted_files_on_postgresql").is_none() {
        return;
    }
    hosted_files_round_trip(server(true)).await;
}

/// Backups and the hosted files: without --with-packages the catalogue is
/// backed up and the output counts the files left out; with it they go in
/// `opamp_*.packages.tar` (checked by --verify), and a restore puts them
/// back (a damaged archive is refused first), after which agents download
/// them again.
async fn backups_with_hosted_files(server: Server, postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let backups_arg = backups.to_str().unwrap();
    let (one, one_bytes, one_sha) = release_file(dir.path(), "one.tar.gz", 300_000, 4);
    let (two, two_bytes, two_sha) = release_file(dir.path(), "two.tar.gz", 1000, 5);
    ok(&upload(&server, "1.0.0", &one, &["--unsigned"]));
    ok(&upload(&server, "1.0.1", &two, &["--unsigned"]));
    // A third version with the bytes of the first: one file, counted once.
    ok(&upload(&server, "1.0.2", &one, &["--unsigned"]));
    let total = (one_bytes.len() + two_bytes.len()) as u64;

    // Without the flag: no archive, and the output says what was left out.
    let plain = server.ctl(&["backup", "--dir", backups_arg]);
    ok(&plain);
    assert!(
        opamp_tests::stderr(&plain)
            .contains("2 hosted package files (293.9 KiB) not included: use --with-packages"),
        "{}",
        opamp_tests::stderr(&plain)
    );
    let first = PathBuf::from(String::from_utf8_lossy(&plain.stdout).trim());
    assert!(archive_of(&first).symlink_metadata().is_err());
    // The next backup must be in another second: names carry the time.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let report = json(&server.ctl(&[
        "-o",
        "json",
        "backup",
        "--dir",
        backups_arg,
        "--with-packages",
        "--verify",
    ]));
    assert_eq!(report["verified"], true, "{report:#}");
    let packages = &report["packages"];
    assert_eq!(
        (
            &packages["included"],
            &packages["files"],
            &packages["bytes"]
        ),
        (&Value::Bool(true), &Value::from(2), &Value::from(total)),
        "{report:#}"
    );
    let file = PathBuf::from(report["file"].as_str().unwrap());
    let archive = archive_of(&file);
    assert_eq!(packages["file"], archive.to_str().unwrap());
    let sum = std::fs::read_to_string(format!("{}.sha256", archive.display())).unwrap();
    assert!(
        sum.starts_with(packages["sha256"].as_str().unwrap()),
        "{sum}"
    );
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for sha in [&one_sha, &two_sha] {
        assert!(listed.contains(&format!("{}/{sha}", &sha[..2])), "{listed}");
    }

    // On the server's host, from the data directory (SQLite only).
    if !postgres && !opamp_tests::postgres::is_default_backend() {
        let local = dir.path().join("local");
        let report = json(&server.ctl(&[
            "-o",
            "json",
            "backup",
            "--dir",
            local.to_str().unwrap(),
            "--create-dir",
            "--data-dir",
            server.data_dir().to_str().unwrap(),
            "--with-packages",
            "--verify",
        ]));
        assert_eq!(report["packages"]["files"], 2, "{report:#}");
        assert!(Path::new(report["packages"]["file"].as_str().unwrap()).is_file());
    }

    // Everything goes.
    for version in ["1.0.0", "1.0.1", "1.0.2"] {
        ok(&server.ctl(&["packages", "delete", "otelcol", version]));
    }
    assert!(stored_files(&server).is_empty());

    // A damaged archive is refused before anything changes.
    let good = std::fs::read(&archive).unwrap();
    let mut bad = good.clone();
    bad[600] ^= 1;
    std::fs::write(&archive, &bad).unwrap();
    let refused = server.ctl(&["restore", file.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&refused), 1);
    assert!(
        opamp_tests::stderr(&refused).contains("does not match its checksum file"),
        "{}",
        opamp_tests::stderr(&refused)
    );
    assert!(stored_files(&server).is_empty());
    let (_, catalogue) = server.get("/api/v1/packages").await;
    assert_eq!(catalogue, serde_json::json!([]));

    // The restore puts the files back, checked, and the catalogue naming them.
    std::fs::write(&archive, &good).unwrap();
    let restored = json(&server.ctl(&["-o", "json", "restore", file.to_str().unwrap(), "--yes"]));
    assert_eq!(restored["package_files_restored"], 2, "{restored:#}");
    let mut want = vec![one_sha.clone(), two_sha.clone()];
    want.sort();
    assert_eq!(stored_files(&server), want);
    let (_, catalogue) = server.get("/api/v1/packages").await;
    assert_eq!(catalogue.as_array().unwrap().len(), 3, "{catalogue:#}");
    let url = format!(
        "{}/v1/packages/otelcol/1.0.1/files/linux/amd64",
        server.url()
    );
    let mut agent = packaged_agent();
    let download = offer(&mut agent, &url, &Sha256::digest(&two_bytes));
    let mut downloader = Downloader::new(DownloadOptions::default().bearer(AGENT_SECRET)).unwrap();
    let fetched = fetch(&mut downloader, &download).await.ok().unwrap();
    assert_eq!(fetched, two_bytes);

    // The backup without the files restores the catalogue alone.
    let restored = json(&server.ctl(&["-o", "json", "restore", first.to_str().unwrap(), "--yes"]));
    assert_eq!(restored["package_files_restored"], 0, "{restored:#}");
}

/// `opamp_X.packages.tar` beside the backup `opamp_X.db.gz` (or `.sql.gz`).
fn archive_of(backup: &Path) -> PathBuf {
    let name = backup.file_name().unwrap().to_str().unwrap();
    let stem = name.split('.').next().unwrap();
    backup.with_file_name(format!("{stem}.packages.tar"))
}

#[tokio::test]
async fn backups_carry_the_hosted_files_with_packages() {
    backups_with_hosted_files(server(false), false).await;
}

#[tokio::test]
async fn backups_carry_the_hosted_files_on_postgresql() {
    if opamp_tests::postgres::available("backups_carry_the_hosted_files_on_postgresql").is_none() {
        return;
    }
    backups_with_hosted_files(server(true), true).await;
}

/// Files in packages.dir that no catalogue entry names are swept once past
/// the grace period (at start and on the verify schedule); files named by a
/// version and recent ones stay.
#[tokio::test]
async fn orphaned_hosted_files_are_swept_after_the_grace_period() {
    let server = Server::start_with(Opts {
        config: Some(format!(
            "opamp:\n  agent_secrets: [{AGENT_SECRET}]\npackages:\n  verify_interval_seconds: 1\n"
        )),
        ..Opts::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (file, _, named) = release_file(dir.path(), "named.tar.gz", 1000, 6);
    ok(&upload(&server, "1.0.0", &file, &["--unsigned"]));
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let packages = server.data_dir().join("packages");
    let plant = |sha: &str, old: bool| {
        let path = packages.join(&sha[..2]).join(sha);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        if old {
            file.set_modified(two_hours_ago).unwrap();
        }
        path
    };
    let kept = plant(&named, true);
    let orphan = plant(&"ab".repeat(32), true);
    let fresh = plant(&"cd".repeat(32), false);
    opamp_tests::wait_for(
        "the orphan to be swept",
        std::time::Duration::from_secs(15),
        || async { (!orphan.exists()).then_some(()) },
    )
    .await;
    assert!(kept.exists() && fresh.exists());
    let logs = server.logs();
    assert!(
        logs.contains("removed an orphaned package file") && logs.contains(&"ab".repeat(32)),
        "{logs}"
    );
}
