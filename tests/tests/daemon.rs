//! The opampd binary itself: `check-config`, the zero-config start, layering of
//! flags over environment over file, and bad input named clearly.

use opamp_tests::{bin, free_addr};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn opampd(dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin("opampd"));
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn check_config_accepts_good_files_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "listen: 127.0.0.1:9999\nopamp:\n  agent_secrets: [\"a-long-secret\"]\nauth:\n  generate_jwt_secret: true\n").unwrap();
    let out = opampd(dir.path())
        .args(["check-config", "--print", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("127.0.0.1:9999") && !printed.contains("a-long-secret"),
        "secrets masked:\n{printed}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "opamp:\n  max_agent: 5\n").unwrap();
    let out = opampd(dir.path())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `opamp.max_agent`"), "{err}");

    let out = opampd(dir.path())
        .args(["check-config", "--config"])
        .arg(&good)
        .env("OPAMPD_DATABASE_MAX_OPEN_CONNS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPAMPD_DATABASE_MAX_OPEN_CONNS"));

    // With a config file and no JWT key source, start-up (and check-config) refuse.
    let nokey = dir.path().join("nokey.yaml");
    std::fs::write(&nokey, "listen: 127.0.0.1:9999\n").unwrap();
    let out = opampd(dir.path())
        .args(["check-config", "--config"])
        .arg(&nokey)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET_KEY"));
    let out = opampd(dir.path())
        .args(["check-config", "--config"])
        .arg(&nokey)
        .env("JWT_SECRET_KEY", "short")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("too weak"));

    let out = opampd(dir.path())
        .args(["check-config", "--print-defaults"])
        .output()
        .unwrap();
    let defaults = String::from_utf8_lossy(&out.stdout);
    assert!(
        defaults.contains("max_open_conns: 4") && defaults.contains("path: /v1/opamp"),
        "{defaults}"
    );
}

#[test]
fn zero_config_start_uses_data_in_the_working_dir_with_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // The flag beats the environment, which beats the default.
    let child = opampd(dir.path())
        .args(["--listen", &addr])
        .env("OPAMPD_LISTEN", "127.0.0.1:1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave opampd holding the test's output pipe.
    let mut child = KillOnDrop(Some(child));
    let token = dir.path().join("data/admin.token");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !token.exists() {
        assert!(Instant::now() < deadline, "no admin.token");
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in ["admin.token", "admin.password", "jwt.key"] {
        let mode = std::fs::metadata(dir.path().join("data").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let mode = std::fs::metadata(dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            break buf;
        }
        assert!(
            Instant::now() < deadline,
            "not listening on the flag's address"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let mut child = child.0.take().unwrap();
    opamp_tests::signal(child.id(), libc::SIGTERM);
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM drains and exits 0"
    );
}

/// Kills and reaps the child when a test fails before it could stop it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
