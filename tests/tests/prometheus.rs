//! A real Prometheus server (Debian's `prometheus`, installed by
//! scripts/test-deps.sh) scrapes a real opampd with agents connected.

use opamp_tests::client::*;
use opamp_tests::{free_addr, wait_for, Server};
use std::process::{Command, Stdio};
use std::time::Duration;

fn prometheus() -> Option<String> {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        if std::env::var("OPAMP_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("prometheus is not installed: run scripts/test-deps.sh");
        }
        eprintln!("SKIPPED (prometheus not installed: run scripts/test-deps.sh)");
    }
    found.map(str::to_owned)
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_connected_agent_count() {
    let Some(bin) = prometheus() else { return };
    let s = Server::start();
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = ws_connect(&s.ws_url(), &[]).await.unwrap();
        ws_exchange(&mut ws, &full_report(new_uid(), 0, &format!("scraped-{i}"))).await;
        sockets.push(ws);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: opampd\n    static_configs:\n      - targets: ['{}']\n",
        s.addr
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let web = free_addr();
    let _prom = Kill(
        Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let client = reqwest::Client::new();
    let value = wait_for(
        "Prometheus to report 3 connected agents",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let url = format!("http://{web}/api/v1/query?query=opamp_platform_agents_connected");
            async move {
                let v: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
                let result = v["data"]["result"].as_array()?.first()?.clone();
                let value = result["value"][1].as_str()?.to_string();
                (value == "3").then_some(result)
            }
        },
    )
    .await;
    assert_eq!(value["metric"]["job"], "opampd");
    // The target is healthy from Prometheus' point of view.
    let up: serde_json::Value = client
        .get(format!("http://{web}/api/v1/query?query=up"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1");
    drop(sockets);
}
