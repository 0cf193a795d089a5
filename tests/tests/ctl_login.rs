//! `opampctl login` and `logout`: a password login against a real opampd,
//! the session token kept owner-only in a context of the config file and
//! used by later commands, and its end on the server.

use opamp_tests::cli::{code, ok};
use opamp_tests::{bin, stderr, Server};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs opampctl with only the config file (and maybe a server) set, `input` on stdin.
fn run(config: &Path, server: Option<&str>, args: &[&str], input: &str) -> Output {
    let mut cmd = Command::new(bin("opampctl"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", config.parent().unwrap())
        .env("NO_COLOR", "1")
        .env("OPAMPCTL_CONFIG", config);
    if let Some(server) = server {
        cmd.env("OPAMPCTL_SERVER", server);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run opampctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stored(config: &Path) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap()
}

#[tokio::test]
async fn login_stores_a_session_that_later_commands_use_and_logout_ends() {
    let s = Server::start();
    let (status, body) = s
        .send_json(
            "POST",
            "/api/v1/users",
            serde_json::json!({"username": "alice", "password": "correct horse 1", "role": "operator"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("opampctl/config.yaml");
    let url = s.url();
    let login = ["login", "--username", "alice", "--password-stdin"];

    // A wrong password: exit 1, a clear message, nothing stored.
    let o = run(&config, Some(&url), &login, "wrong\n");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrong user name or password"),
        "{}",
        stderr(&o)
    );
    assert!(!config.exists());
    // Neither a terminal nor --password-stdin: a usage error naming the flag.
    let o = run(&config, Some(&url), &["login", "--username", "alice"], "");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--password-stdin"), "{}", stderr(&o));

    let o = run(&config, Some(&url), &login, "correct horse 1\n");
    ok(&o);
    let said = stderr(&o);
    assert!(
        said.contains("as alice (operator)")
            && said.contains("context default")
            && said.contains(config.to_str().unwrap()),
        "{said}"
    );
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the config file holds a token");
    let file = stored(&config);
    assert_eq!(file["current-context"], "default");
    assert_eq!(
        file["contexts"]["default"]["server"].as_str(),
        Some(url.as_str())
    );
    let token = file["contexts"]["default"]["token"]
        .as_str()
        .unwrap()
        .to_string();

    // Later commands use the session (no server, no token given): alice is
    // an operator, so she lists agents but may not list users.
    let o = run(&config, None, &["agents", "list", "-o", "json"], "");
    ok(&o);
    let o = run(&config, None, &["users", "list"], "");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));

    // A second context, for the same server: the current one stays.
    let o = run(
        &config,
        Some(&url),
        &[&login[..], &["--context", "second", "-o", "json"]].concat(),
        "correct horse 1\n",
    );
    let reply: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(reply["context"], "second");
    assert_eq!(reply["role"], "operator");
    let file = stored(&config);
    assert_eq!(file["current-context"], "default");
    assert!(file["contexts"]["second"]["token"].is_string());

    // Logout ends the session on the server and forgets the token.
    let o = run(&config, None, &["logout"], "");
    ok(&o);
    assert!(stderr(&o).contains("logged out"), "{}", stderr(&o));
    let file = stored(&config);
    assert!(
        file["contexts"]["default"].get("token").is_none(),
        "{file:?}"
    );
    assert_eq!(
        file["contexts"]["default"]["server"].as_str(),
        Some(url.as_str())
    );
    let refused = s
        .http()
        .get(format!("{url}/api/v1/agents"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401, "the session has ended");
    let o = run(&config, None, &["agents", "list"], "");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    // Nothing left to end: says so, and succeeds.
    let o = run(&config, None, &["logout"], "");
    ok(&o);
    assert!(stderr(&o).contains("no login session"), "{}", stderr(&o));
    // The other context's session is untouched.
    let o = run(
        &config,
        None,
        &["agents", "list", "--context", "second"],
        "",
    );
    ok(&o);
}

#[tokio::test]
async fn on_a_terminal_login_asks_and_does_not_echo_the_password() {
    let s = Server::start();
    let (status, body) = s
        .send_json(
            "POST",
            "/api/v1/users",
            serde_json::json!({"username": "bob", "password": "battery staple 2", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    // script(1) runs opampctl on a pseudo-terminal fed from our stdin.
    let command = format!("{} login", bin("opampctl").display());
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("NO_COLOR", "1")
        .env("OPAMPCTL_CONFIG", &config)
        .env("OPAMPCTL_SERVER", s.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux runs a command on a terminal");
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"bob\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    input.write_all(b"battery staple 2\n").unwrap();
    drop(input);
    let o = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(code(&o), 0, "{screen}");
    assert!(screen.contains("Username: "), "{screen}");
    // Whatever the terminal echoed before the question, nothing after it.
    let (_, after) = screen
        .split_once("Password of bob at ")
        .unwrap_or_else(|| panic!("no password question: {screen}"));
    assert!(!after.contains("battery staple"), "{screen}");
    assert!(after.contains("as bob (viewer)"), "{screen}");
    assert!(stored(&config)["contexts"]["default"]["token"].is_string());
}
