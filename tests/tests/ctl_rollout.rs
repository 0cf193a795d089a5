//! `opampctl rollout`: every way forward it suggests works from the CLI,
//! `status` exits 1 on a pause, `--watch` stops there, and the agents a
//! rollout waits for are named.

mod common;

use common::*;
use opamp_proto::pb;
use opamp_tests::cli::{code, json, ok};
use opamp_tests::client::*;
use opamp_tests::{stderr, stdout, Server};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_failed_staged_rollout_goes_on_from_the_cli_and_names_whom_it_waits_for() {
    let s = Server::start();
    let ids = uids(2);
    let (first, second) = (ids[0], ids[1]);
    let (mut ws1, _) = ws_agent(&s, first, &[("env", "prod")]).await;
    let (mut ws2, _) = ws_agent(&s, second, &[("env", "prod")]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    ok(&s.ctl(&[
        "configs",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--selector",
        "env=prod",
    ]));

    let o = s.ctl(&["rollout", "start", "otel", "--batch-size", "1"]);
    ok(&o);
    let said = stderr(&o);
    assert!(
        said.contains("2 agents, in 2 batches of 1, pausing at the first failed agent"),
        "{said}"
    );

    // The first batch's agent has not answered: the rollout names it.
    let rc = recv_offer(&mut ws1).await;
    let st = json(&s.ctl(&["rollout", "status", "otel", "-o", "json"]));
    assert_eq!(st["waiting_total"], 1, "{st}");
    assert_eq!(st["waiting"][0]["instance_uid"], uid_str(&first), "{st}");
    assert_eq!(st["waiting"][0]["status"], "connected", "{st}");
    let table = ok(&s.ctl(&["rollout", "status", "otel"]));
    assert!(
        table.contains(&format!("waiting: {} ", uid_str(&first))),
        "{table}"
    );
    let wide = ok(&s.ctl(&["rollout", "status", "otel", "-o", "wide"]));
    assert!(wide.contains(&uid_str(&first)), "{wide}");

    // It fails: the rollout pauses; status exits 1 and says how to go on.
    ws_exchange(
        &mut ws1,
        &applied(
            first,
            1,
            &rc.config_hash,
            pb::RemoteConfigStatuses::Failed,
            "bad receiver",
        ),
    )
    .await;
    wait_rollout(&s, "otel", "paused", |v| v["state"] == "paused").await;
    let o = s.ctl(&["rollout", "status", "otel"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(
        stderr(&o).contains("opampctl rollout resume otel --max-failures 1"),
        "{}",
        stderr(&o)
    );
    let started = Instant::now();
    let o = s.ctl(&["rollout", "status", "otel", "--watch", "-q"]);
    assert_eq!(code(&o), 1);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Resuming without a larger allowance is refused in flags, not REST.
    let o = s.ctl(&["rollout", "resume", "otel"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(
        stderr(&o).contains("--max-failures 1") && !stderr(&o).contains("{"),
        "{}",
        stderr(&o)
    );
    let st = json(&s.ctl(&[
        "rollout",
        "resume",
        "otel",
        "--max-failures",
        "1",
        "-o",
        "json",
    ]));
    assert_eq!(
        (&st["state"], &st["max_failures"]),
        (&"running".into(), &1.into()),
        "{st}"
    );
    // The next batch goes out.
    let rc = recv_offer(&mut ws2).await;
    ws_exchange(
        &mut ws2,
        &applied(
            second,
            1,
            &rc.config_hash,
            pb::RemoteConfigStatuses::Applied,
            "",
        ),
    )
    .await;
    wait_rollout(&s, "otel", "completed", |v| v["state"] == "completed").await;
    let o = s.ctl(&["rollout", "status", "otel", "--watch"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[tokio::test]
async fn a_paused_rollout_exits_1_and_watch_stops_on_the_pause() {
    let s = Server::start();
    let uid = new_uid();
    let (mut ws, _) = ws_agent(&s, uid, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.yaml");
    std::fs::write(&file, "receivers: {otlp: {}}\n").unwrap();
    ok(&s.ctl(&["configs", "apply", "-f", file.to_str().unwrap()]));
    let o = s.ctl(&["rollout", "start", "otel", "--max-failures", "2"]);
    assert!(
        stderr(&o).contains("1 agent, in one batch, pausing when more than 2 agents fail"),
        "{}",
        stderr(&o)
    );
    recv_offer(&mut ws).await;
    // Running: exit 0.
    ok(&s.ctl(&["rollout", "status", "otel"]));
    ok(&s.ctl(&["rollout", "pause", "otel"]));
    let o = s.ctl(&["rollout", "status", "otel"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(
        stderr(&o).contains("go on with `opampctl rollout resume otel`"),
        "{}",
        stderr(&o)
    );
    let started = Instant::now();
    let o = s.ctl(&["rollout", "status", "otel", "--watch", "--interval", "1s"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(10));
    let st = json(&s.ctl(&["rollout", "resume", "otel", "-o", "json"]));
    assert_eq!(st["state"], "running");
}
