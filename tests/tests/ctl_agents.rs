//! `opampctl agents list|show|label|delete|restart` against a real opampd
//! with real (plain-HTTP) OpAMP agents.

use opamp_tests::cli::{code, fails, json, ok};
use opamp_tests::client::{full_report, heartbeat, http_exchange, new_uid, uid_str};
use opamp_tests::{stderr, Server};

async fn register(s: &Server, service: &str) -> String {
    let uid = new_uid();
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, service)).await;
    assert_eq!(status, 200);
    uid_str(&uid)
}

async fn wait_total(s: &Server, n: u64) {
    opamp_tests::wait_for(
        "agents stored",
        std::time::Duration::from_secs(10),
        || async {
            let (_, v) = s.get("/api/v1/agents").await;
            (v["total"] == n).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn list_filters_pages_and_formats() {
    let s = Server::start();
    let a = register(&s, "checkout").await;
    let b = register(&s, "billing").await;
    let c = register(&s, "search").await;
    wait_total(&s, 3).await;

    let table = ok(&s.ctl(&["agents", "list"]));
    assert!(
        table.lines().next().unwrap().contains("INSTANCE UID"),
        "{table}"
    );
    for uid in [&a, &b, &c] {
        assert!(table.contains(uid.as_str()), "{table}");
    }
    assert!(
        table.contains("checkout") && table.contains("connected"),
        "{table}"
    );
    let wide = ok(&s.ctl(&["agents", "list", "-o", "wide"]));
    assert!(
        wide.contains("test-host") && wide.contains("1.0.0"),
        "{wide}"
    );

    let j = json(&s.ctl(&["agents", "list", "-o", "json"]));
    assert_eq!(j["total"], 3);
    assert_eq!(j["items"].as_array().unwrap().len(), 3);
    assert_eq!(j["items"][0]["status"], "connected");

    let j = json(&s.ctl(&["agents", "list", "-l", "service.name=billing", "-o", "json"]));
    assert_eq!(j["items"].as_array().unwrap().len(), 1);
    assert_eq!(j["items"][0]["instance_uid"], b.as_str());
    let j = json(&s.ctl(&[
        "agents",
        "list",
        "-l",
        "service.name!=billing",
        "-o",
        "json",
    ]));
    assert_eq!(j["items"].as_array().unwrap().len(), 2);

    let j = json(&s.ctl(&["agents", "list", "--status", "disconnected", "-o", "json"]));
    assert_eq!(j["items"].as_array().unwrap().len(), 0);

    // One page, then every page.
    let o = s.ctl(&["agents", "list", "--limit", "1"]);
    assert_eq!(ok(&o).lines().count(), 2, "header + one agent");
    assert!(stderr(&o).contains("showing 1 of 3"), "{}", stderr(&o));
    let j = json(&s.ctl(&["agents", "list", "--limit", "1", "-o", "json"]));
    assert!(j["next_cursor"].is_string());
    let j = json(&s.ctl(&["agents", "list", "--limit", "1", "--all", "-o", "json"]));
    assert_eq!(j["items"].as_array().unwrap().len(), 3);
    let y = ok(&s.ctl(&["agents", "list", "-o", "yaml"]));
    let y: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    assert_eq!(y["total"].as_u64(), Some(3));

    // A bad selector is the server's 400, with its explanation: a usage error.
    let o = s.ctl(&["agents", "list", "-l", "env="]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("bad selector"), "{}", stderr(&o));
}

#[tokio::test]
async fn show_label_restart_delete() {
    let s = Server::start();
    let uid = register(&s, "checkout").await;
    wait_total(&s, 1).await;

    let text = ok(&s.ctl(&["agents", "show", &uid]));
    assert!(
        text.contains(&uid) && text.contains("service.name: checkout"),
        "{text}"
    );
    let j = json(&s.ctl(&["agents", "show", &uid, "-o", "json"]));
    assert_eq!(j["instance_uid"], uid.as_str());
    assert_eq!(j["identifying_attributes"]["service.name"], "checkout");

    let o = s.ctl(&["agents", "label", &uid, "env=prod", "team=obs"]);
    ok(&o);
    assert!(stderr(&o).contains("env=prod,team=obs"), "{}", stderr(&o));
    let j = json(&s.ctl(&["agents", "label", &uid, "team-", "-o", "json"]));
    assert_eq!(j["labels"], serde_json::json!({"env": "prod"}));
    let j = json(&s.ctl(&["agents", "list", "-l", "env=prod", "-o", "json"]));
    assert_eq!(j["total"], 1);

    // Plain-HTTP agent: the restart goes out with the reply to its next poll.
    let o = s.ctl(&["agents", "restart", &uid]);
    ok(&o);
    assert!(stderr(&o).contains("queued"), "{}", stderr(&o));
    let raw = opamp_proto::parse_uid(&uid).unwrap();
    let (_, _, reply) = http_exchange(&s.opamp_url(), &heartbeat(raw, 1)).await;
    assert!(
        reply.unwrap().command.is_some(),
        "restart command delivered"
    );

    // A connected agent is only deleted with --force.
    fails(&s.ctl(&["agents", "delete", &uid]), "force");
    let o = s.ctl(&["agents", "delete", &uid, "--force"]);
    ok(&o);
    assert!(stderr(&o).contains("deleted"));
    fails(&s.ctl(&["agents", "show", &uid]), "no agent");
    let o = s.ctl(&["agents", "show", "not-a-uid"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("not an instance uid"), "{}", stderr(&o));
    fails(&s.ctl(&["agents", "restart", &uid]), "no agent");
    fails(&s.ctl(&["agents", "label", &uid, "a=b"]), "404");
}

/// Registers an agent with a uid of our choosing (to make prefixes collide).
async fn register_uid(s: &Server, uid: [u8; 16], service: &str) -> String {
    let (status, _, _) = http_exchange(&s.opamp_url(), &full_report(uid, 0, service)).await;
    assert_eq!(status, 200);
    uid_str(&uid)
}

fn uid_with(head: [u8; 3]) -> [u8; 16] {
    let mut uid = *uuid::Uuid::new_v4().as_bytes();
    uid[..3].copy_from_slice(&head);
    uid
}

#[tokio::test]
async fn unique_uid_prefixes_are_accepted_everywhere() {
    let s = Server::start();
    let a = register_uid(&s, uid_with([0xab, 0xcd, 0x01]), "checkout").await;
    let b = register_uid(&s, uid_with([0xab, 0xcd, 0x02]), "billing").await;
    wait_total(&s, 2).await;

    let j = json(&s.ctl(&["agents", "show", "abcd01", "-o", "json"]));
    assert_eq!(j["instance_uid"], a.as_str());
    // Upper case, and without the dashes past the first group.
    let hex: String = b.chars().filter(|c| *c != '-').take(12).collect();
    let j = json(&s.ctl(&["agents", "show", &hex.to_uppercase(), "-o", "json"]));
    assert_eq!(j["instance_uid"], b.as_str());
    let j = json(&s.ctl(&["agents", "label", "abcd02", "env=prod", "-o", "json"]));
    assert_eq!(j["instance_uid"], b.as_str());
    assert_eq!(j["labels"]["env"], "prod");
    let o = s.ctl(&["agents", "restart", "abcd01"]);
    assert!(stderr(&o).contains(&a), "{}", stderr(&o));

    // Ambiguous: a usage error naming the candidates.
    for command in [
        &["agents", "show", "abcd"][..],
        &["agents", "delete", "ab", "--force"],
    ] {
        let o = s.ctl(command);
        assert_eq!(code(&o), 2, "{command:?}: {}", stderr(&o));
        let text = stderr(&o);
        assert!(
            text.contains("ambiguous") && text.contains(&a) && text.contains(&b),
            "{text}"
        );
    }
    // No match: not found, as for a whole uid.
    fails(&s.ctl(&["agents", "show", "ffff"]), "no agent");
    let o = s.ctl(&["agents", "delete", "abcd02", "--force"]);
    ok(&o);
    assert!(stderr(&o).contains(&b), "{}", stderr(&o));
    let (_, v) = s.get("/api/v1/agents?uid_prefix=abcd").await;
    assert_eq!(v["total"], 1, "{v}");
    let (status, v) = s.get("/api/v1/agents?uid_prefix=xyz").await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn label_restart_and_delete_act_on_a_fleet() {
    let s = Server::start();
    let mut checkout = Vec::new();
    for _ in 0..3 {
        checkout.push(register(&s, "checkout").await);
    }
    let billing = register(&s, "billing").await;
    wait_total(&s, 4).await;

    // Not on a terminal: --yes is needed, and nothing changes without it.
    let o = s.ctl(&["agents", "label", "-l", "service.name=checkout", "env=prod"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 agents match") && stderr(&o).contains("--yes"),
        "{}",
        stderr(&o)
    );
    let j = json(&s.ctl(&["agents", "list", "-l", "env=prod", "-o", "json"]));
    assert_eq!(j["total"], 0);

    let o = s.ctl(&[
        "agents",
        "label",
        "-l",
        "service.name=checkout",
        "env=prod",
        "tier=web",
        "--yes",
    ]);
    ok(&o);
    assert!(
        stderr(&o).contains("labeled 3 of 3 agents"),
        "{}",
        stderr(&o)
    );
    let j = json(&s.ctl(&["agents", "list", "-l", "env=prod,tier=web", "-o", "json"]));
    assert_eq!(j["total"], 3);

    // Selector and status together; a machine-readable summary.
    let j = json(&s.ctl(&[
        "agents",
        "restart",
        "-l",
        "env=prod",
        "--status",
        "connected",
        "--yes",
        "-o",
        "json",
    ]));
    assert_eq!(j["action"], "restart");
    assert_eq!(
        (
            j["matched"].as_u64(),
            j["succeeded"].as_u64(),
            j["failed"].as_u64()
        ),
        (Some(3), Some(3), Some(0)),
        "{j}"
    );
    let mut restarted: Vec<&str> = j["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["instance_uid"].as_str().unwrap())
        .collect();
    restarted.sort_unstable();
    let mut expected: Vec<&str> = checkout.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(restarted, expected);

    // A failure on any agent: exit 1, and the summary says which and why.
    let o = s.ctl(&[
        "agents",
        "delete",
        "--status",
        "connected",
        "--yes",
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&opamp_tests::stdout(&o)).unwrap();
    assert_eq!(
        (j["matched"].as_u64(), j["failed"].as_u64()),
        (Some(4), Some(4)),
        "{j}"
    );
    assert!(
        j["results"][0]["error"].as_str().unwrap().contains("force"),
        "{j}"
    );
    assert!(stderr(&o).contains("4 failed"), "{}", stderr(&o));

    // -q: nothing at all on success.
    let o = s.ctl(&[
        "agents",
        "delete",
        "-l",
        "service.name=billing",
        "--force",
        "--yes",
        "-q",
    ]);
    assert_eq!(ok(&o), "");
    assert_eq!(stderr(&o), "");
    fails(&s.ctl(&["agents", "show", &billing]), "no agent");
    // Nothing matches: nothing to do, and no question.
    let o = s.ctl(&["agents", "restart", "-l", "service.name=billing"]);
    ok(&o);
    assert!(stderr(&o).contains("no agents match"), "{}", stderr(&o));

    // Usage errors: a uid and a selector, no labels, no uid at all.
    for args in [
        &["agents", "delete", &checkout[0], "-l", "env=prod"][..],
        &["agents", "label", "-l", "env=prod"],
        &["agents", "label", &checkout[0]],
        &["agents", "restart"],
    ] {
        let o = s.ctl(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
}

#[tokio::test]
async fn completion_lists_uids_and_configuration_names_from_the_server() {
    let s = Server::start();
    let uid = register(&s, "checkout").await;
    wait_total(&s, 1).await;
    let (status, _) = s
        .send_json(
            "POST",
            "/api/v1/configurations",
            serde_json::json!({"name": "otel-gateway", "body": "receivers: {}\n", "content_type": "text/yaml"}),
        )
        .await;
    assert_eq!(status, 201);

    assert_eq!(ok(&s.ctl(&["__complete", "agents"])).trim(), uid);
    assert_eq!(
        ok(&s.ctl(&["__complete", "configs"])).trim(),
        "otel-gateway"
    );
    // No server: nothing printed, no error, for a Tab press.
    let o = opamp_tests::ctl_env(
        &["__complete", "agents"],
        &[("OPAMPCTL_SERVER", "http://127.0.0.1:1")],
    );
    assert_eq!(ok(&o), "");
    assert_eq!(stderr(&o), "");

    // The scripts call it for the arguments that take a uid or a name.
    let bash = ok(&s.ctl(&["completions", "bash"]));
    assert!(bash.contains("__complete \"${kind}\""), "bash script");
    assert!(
        bash.contains("\" agents show\") kind=agents"),
        "bash script"
    );
    assert!(
        bash.contains("\" rollout start\") kind=configs"),
        "bash script"
    );
    assert!(
        bash.contains("complete -F _opampctl_server_values"),
        "bash script"
    );
    let committed =
        std::fs::read_to_string(opamp_tests::root().join("completions/opampctl.bash")).unwrap();
    assert_eq!(
        committed, bash,
        "completions/opampctl.bash is stale: run cargo xtask codegen"
    );
    let zsh = ok(&s.ctl(&["completions", "zsh"]));
    assert!(
        zsh.contains(":uid -- ") && zsh.contains(":_opampctl_server_values agents'"),
        "zsh script"
    );
    assert!(
        zsh.contains(":_opampctl_server_values configs'"),
        "zsh script"
    );
    let fish = ok(&s.ctl(&["completions", "fish"]));
    assert!(
        fish.contains(
            "__fish_seen_subcommand_from show\" -f -a \"(__fish_opampctl_server_values agents)\""
        ),
        "fish script"
    );
}

/// Runs opampctl on a pseudo-terminal (script(1)) against `s`, typing `answer`.
fn on_terminal(s: &Server, args: &[&str], answer: &str) -> (i32, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let command = format!(
        "{} {}",
        opamp_tests::bin("opampctl").display(),
        args.join(" ")
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("NO_COLOR", "1")
        .env("OPAMPCTL_SERVER", s.url())
        .env("OPAMPCTL_TOKEN", s.token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux runs a command on a terminal");
    let mut input = child.stdin.take().unwrap();
    input.write_all(answer.as_bytes()).unwrap();
    drop(input);
    let o = child.wait_with_output().unwrap();
    (code(&o), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[tokio::test]
async fn on_a_terminal_a_fleet_action_asks_first() {
    let s = Server::start();
    register(&s, "checkout").await;
    register(&s, "checkout").await;
    wait_total(&s, 2).await;
    let args = ["agents", "label", "-l", "service.name=checkout", "env=prod"];
    let (status, screen) = on_terminal(&s, &args, "n\n");
    assert_eq!(status, 1, "{screen}");
    assert!(
        screen.contains("2 agents match") && screen.contains("label 2 agents. Continue? [y/N]"),
        "{screen}"
    );
    assert!(screen.contains("nothing was changed"), "{screen}");
    let j = json(&s.ctl(&["agents", "list", "-l", "env=prod", "-o", "json"]));
    assert_eq!(j["total"], 0);
    let (status, screen) = on_terminal(&s, &args, "y\n");
    assert_eq!(status, 0, "{screen}");
    assert!(screen.contains("labeled 2 of 2 agents"), "{screen}");
    let j = json(&s.ctl(&["agents", "list", "-l", "env=prod", "-o", "json"]));
    assert_eq!(j["total"], 2);
}
