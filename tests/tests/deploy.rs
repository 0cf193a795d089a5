//! Checks of the deployment files in `deploy/`: the Prometheus rules and
//! their unit tests, the Alertmanager example, the systemd unit, the
//! Grafana dashboard, docker-compose and the Kubernetes manifests.
//!
//! External validators (promtool, amtool, systemd-analyze) are used when
//! installed (`scripts/test-deps.sh` installs them). A test whose tool is
//! missing says `SKIPPED (...)` on stderr and passes, unless
//! `OPAMP_REQUIRE_TOOLS=1` is set (as in CI), where a missing tool fails.
//!
//! Every metric name used by the alert rules or the dashboard must be one
//! opampd exports: [`EXPORTED_METRICS`] is the list, and
//! [`assert_names_exported`] checks names against a real `/metrics` scrape
//! of a running opampd.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts");

/// Metric families opampd exports on `/metrics`, and whether each is a
/// histogram (exposed as `_bucket`, `_sum` and `_count` series).
const EXPORTED_METRICS: &[(&str, bool)] = &[
    ("opamp_platform_http_requests_total", false),
    ("opamp_platform_http_request_duration_seconds", true),
    ("opamp_platform_http_request_size_bytes", true),
    ("opamp_platform_http_response_size_bytes", true),
    ("opamp_platform_agents_known", false),
    ("opamp_platform_agents_connected", false),
    ("opamp_platform_agents_disconnected", false),
    ("opamp_platform_agents_stale", false),
    ("opamp_platform_agent_connect_total", false),
    ("opamp_platform_agent_disconnect_total", false),
    ("opamp_platform_opamp_messages_total", false),
    ("opamp_platform_db_connections_open", false),
    ("opamp_platform_db_connections_idle", false),
    ("opamp_platform_db_connections_max", false),
    ("opamp_platform_db_queries_total", false),
    ("opamp_platform_db_query_duration_seconds", true),
    ("opamp_platform_db_slow_queries_total", false),
    ("opamp_platform_db_pool_waits_total", false),
    ("opamp_platform_machine_memory_bytes", false),
    ("opamp_platform_build_info", false),
    ("opamp_platform_replica_info", false),
    ("process_resident_memory_bytes", false),
    ("process_virtual_memory_bytes", false),
    ("process_cpu_seconds_total", false),
    ("process_open_fds", false),
    ("process_max_fds", false),
    ("process_start_time_seconds", false),
];

/// Series Prometheus itself creates for every target; allowed in rules.
const PROMETHEUS_SYNTHETIC: &[&str] = &["up"];

const METRIC_PREFIXES: &[&str] = &["opamp_platform_", "process_"];
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

// ---------------------------------------------------------------- helpers

fn deploy(rel: &str) -> PathBuf {
    Path::new(DEPLOY).join(rel)
}

fn read(rel: &str) -> String {
    let path = deploy(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// All documents of a (possibly multi-document) YAML file.
fn yaml_docs(text: &str, what: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Writes straight to the process's stderr: libtest's output capture only
/// hooks the print macros, so this stays visible for passing tests too.
fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn require_tools() -> bool {
    std::env::var("OPAMP_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Finds `name` on PATH. When it is missing: fails under
/// `OPAMP_REQUIRE_TOOLS=1`, else prints a visible SKIPPED line and returns None.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    });
    if found.is_none() {
        assert!(
            !require_tools(),
            "{name} not installed and OPAMP_REQUIRE_TOOLS=1: run scripts/test-deps.sh"
        );
        notice(&format!(
            "SKIPPED ({name} not installed: run scripts/test-deps.sh)"
        ));
    }
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "{cmd:?} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the command and fails the test, with its output, unless it exits 0.
fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{}", describe(cmd, &out));
    out
}

fn str_at<'a>(v: &'a serde_yaml::Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq_at<'a>(v: &'a serde_yaml::Value, what: &str) -> &'a Vec<serde_yaml::Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
}

// ---------------------------------------------------------------- metric names

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn histogram_base(name: &str) -> Option<&str> {
    HISTOGRAM_SUFFIXES.iter().find_map(|sfx| {
        let base = name.strip_suffix(sfx)?;
        EXPORTED_METRICS
            .iter()
            .any(|(n, hist)| *hist && *n == base)
            .then_some(base)
    })
}

/// Metric names (`opamp_platform_*`, `process_*`) referenced by a PromQL
/// expression, with histogram series suffixes folded into the family name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let at_boundary = i == 0 || !is_ident_byte(b[i - 1]);
        if at_boundary && METRIC_PREFIXES.iter().any(|p| expr[i..].starts_with(p)) {
            let mut j = i;
            // Take the whole identifier so that a stray digit or capital
            // yields an unknown name instead of a silently truncated one.
            while j < b.len() && is_ident_byte(b[j]) {
                j += 1;
            }
            let name = &expr[i..j];
            names.insert(histogram_base(name).unwrap_or(name).to_string());
            i = j;
        } else {
            i += 1;
        }
    }
    names
}

fn rule_exprs() -> Vec<(String, String)> {
    let rules = yaml("prometheus/rules.yml");
    let mut out = Vec::new();
    for group in seq_at(&rules["groups"], "rules.yml groups") {
        for rule in seq_at(&group["rules"], "rules.yml rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?")
                .to_string();
            out.push((name, str_at(&rule["expr"], "rule expr").to_string()));
        }
    }
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("grafana/opampd-dashboard.json"))
        .unwrap_or_else(|e| panic!("opampd-dashboard.json is not valid JSON: {e}"))
}

/// Every PromQL string of the dashboard: panel target `expr`s and the
/// template variables' queries.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    match (k.as_str(), child) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::String(s)) if s.contains('(') => {
                            out.push(s.clone())
                        }
                        _ => walk(child, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}

/// Fails unless every name in `names` is a metric family present in
/// `scrape_text` (Prometheus text exposition format, as served on
/// `/metrics`). Names Prometheus synthesises itself (`up`) are exempt.
pub fn assert_names_exported(names: &BTreeSet<String>, scrape_text: &str) {
    let mut families = BTreeSet::new();
    for line in scrape_text.lines().map(str::trim) {
        if let Some(rest) = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            if let Some(name) = rest.split_whitespace().next() {
                families.insert(name.to_string());
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .unwrap_or(line.len());
            let name = &line[..end];
            families.insert(name.to_string());
            for sfx in HISTOGRAM_SUFFIXES {
                if let Some(base) = name.strip_suffix(sfx) {
                    families.insert(base.to_string());
                }
            }
        }
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !PROMETHEUS_SYNTHETIC.contains(&n.as_str()) && !families.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/ but not in the scrape: {missing:?}\n(scrape has {} families)",
        families.len()
    );
}

fn used_metric_names() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (rule, expr) in rule_exprs() {
        for n in metric_names(&expr) {
            used.entry(n).or_default().push(format!("rules.yml {rule}"));
        }
        if expr.contains("up{") || expr.starts_with("up") {
            used.entry("up".into())
                .or_default()
                .push(format!("rules.yml {rule}"));
        }
    }
    for expr in dashboard_exprs() {
        for n in metric_names(&expr) {
            used.entry(n)
                .or_default()
                .push("opampd-dashboard.json".into());
        }
    }
    used
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le) (rate(opamp_platform_http_request_duration_seconds_bucket{path="/x"}[5m])))
           / process_open_fds + xprocess_open_fds + opamp_platform_db_query_duration_seconds_count"#,
    );
    let want: BTreeSet<String> = [
        "opamp_platform_http_request_duration_seconds",
        "opamp_platform_db_query_duration_seconds",
        "process_open_fds",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
    // A counter ending in _count-like text is not folded unless it is a histogram.
    assert_eq!(
        metric_names("rate(opamp_platform_agent_connect_total[5m])"),
        BTreeSet::from(["opamp_platform_agent_connect_total".to_string()])
    );
}

#[test]
fn assert_names_exported_reads_the_exposition_format() {
    let scrape = "# HELP opamp_platform_agents_connected Connected agents\n\
                  # TYPE opamp_platform_agents_connected gauge\n\
                  opamp_platform_agents_connected 3\n\
                  opamp_platform_db_query_duration_seconds_bucket{operation=\"x\",le=\"+Inf\"} 1\n\
                  process_open_fds 12\n";
    let ok: BTreeSet<String> = [
        "opamp_platform_agents_connected",
        "opamp_platform_db_query_duration_seconds",
        "process_open_fds",
        "up",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_names_exported(&ok, scrape);
    let missing = BTreeSet::from(["process_max_fds".to_string()]);
    let r = std::panic::catch_unwind(|| assert_names_exported(&missing, scrape));
    assert!(r.is_err(), "a name absent from the scrape must fail");
}

#[test]
fn rules_and_dashboard_use_only_exported_metrics() {
    let exported: BTreeSet<&str> = EXPORTED_METRICS.iter().map(|(n, _)| *n).collect();
    let used = used_metric_names();
    let unknown: Vec<String> = used
        .iter()
        .filter(|(n, _)| {
            !exported.contains(n.as_str()) && !PROMETHEUS_SYNTHETIC.contains(&n.as_str())
        })
        .map(|(n, whr)| format!("{n} (in {})", whr.join(", ")))
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names opampd does not export: {unknown:#?}"
    );
    // Guard against the extraction silently finding nothing.
    for must in [
        "opamp_platform_http_requests_total",
        "opamp_platform_http_request_duration_seconds",
        "opamp_platform_db_query_duration_seconds",
        "opamp_platform_agents_connected",
        "process_resident_memory_bytes",
        "opamp_platform_machine_memory_bytes",
        "up",
    ] {
        assert!(
            used.contains_key(must),
            "{must} is expected to be used by the rules or the dashboard"
        );
    }
}

/// Starts a real opampd, gives it agent and API traffic, scrapes `/metrics`
/// and checks that every name the rules and dashboard use, and every name of
/// [`EXPORTED_METRICS`], really is exported; then `promtool check metrics`
/// on the same scrape.
#[tokio::test]
async fn used_metrics_are_in_a_live_scrape() {
    use opamp_tests::client::{full_report, http_exchange, new_uid};
    let server = opamp_tests::Server::start();
    http_exchange(&server.opamp_url(), &full_report(new_uid(), 0, "metrics")).await;
    server.get("/api/v1/agents").await;
    let scrape = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut names: BTreeSet<String> = used_metric_names().into_keys().collect();
    names.extend(EXPORTED_METRICS.iter().map(|(n, _)| n.to_string()));
    assert_names_exported(&names, &scrape);
    assert!(
        scrape.contains("path=\"/api/v1/agents\"") && !scrape.contains("path=\"/api/v1/agents/0"),
        "route templates, never raw paths"
    );
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- Prometheus

#[test]
fn promtool_check_rules() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let out = run_ok(
        Command::new(promtool)
            .args(["check", "rules"])
            .arg(deploy("prometheus/rules.yml")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SUCCESS"),
        "unexpected promtool output: {text}"
    );
}

#[test]
fn promtool_test_rules() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    // rule_files in the test file are resolved relative to the test file.
    let out = run_ok(
        Command::new(promtool)
            .current_dir(deploy("prometheus"))
            .args(["test", "rules", "rules_test.yml"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SUCCESS"),
        "unexpected promtool output: {text}"
    );
}

#[test]
fn promtool_check_prometheus_config() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    run_ok(
        Command::new(promtool)
            .args(["check", "config"])
            .arg(deploy("prometheus/prometheus.yml")),
    );
}

/// Every alert has a unit test where it fires and one where it stays
/// silent, and the expected annotations name an opampctl command.
#[test]
fn every_alert_has_firing_and_silent_tests() {
    let alerts: Vec<String> = rule_exprs().into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        alerts,
        [
            "OpAMPServerDown",
            "OpAMPReplicaDown",
            "HighErrorRate",
            "HighResponseTime",
            "ManyAgentsDisconnected",
            "DatabaseConnectionPoolExhausted",
            "HighMemoryUsage"
        ],
        "the runbook's alert names (operators' routes and silences key on them) and the \
         replica alert: update rules_test.yml and this list together"
    );
    // The pool alert reads the pool gauges every backend fills.
    let pool_rule = rule_exprs()
        .into_iter()
        .find(|(name, _)| name == "DatabaseConnectionPoolExhausted")
        .map(|(_, expr)| expr)
        .unwrap();
    for gauge in ["open", "idle", "max"] {
        assert!(
            pool_rule.contains(&format!("opamp_platform_db_connections_{gauge}")),
            "DatabaseConnectionPoolExhausted does not use db_connections_{gauge}"
        );
    }
    let rules = yaml("prometheus/rules.yml");
    for group in seq_at(&rules["groups"], "groups") {
        assert_eq!(group["name"].as_str(), Some("opampd"));
        for rule in seq_at(&group["rules"], "rules") {
            let name = str_at(&rule["alert"], "alert");
            let sev = str_at(&rule["labels"]["severity"], &format!("{name} severity"));
            assert!(
                matches!(sev, "critical" | "warning"),
                "{name}: severity {sev}"
            );
            str_at(&rule["annotations"]["summary"], &format!("{name} summary"));
            let desc = str_at(
                &rule["annotations"]["description"],
                &format!("{name} description"),
            );
            assert!(
                desc.contains("`opampctl "),
                "{name}: description names no opampctl command"
            );
        }
    }

    let tests = yaml("prometheus/rules_test.yml");
    let mut firing: BTreeSet<String> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    for group in seq_at(&tests["tests"], "tests") {
        for case in seq_at(&group["alert_rule_test"], "alert_rule_test") {
            let name = str_at(&case["alertname"], "alertname").to_string();
            match case["exp_alerts"].as_sequence() {
                Some(exp) if !exp.is_empty() => {
                    for alert in exp {
                        assert!(
                            alert["exp_labels"]["severity"].is_string(),
                            "{name}: firing case without the severity label"
                        );
                        let d = str_at(&alert["exp_annotations"]["description"], "description");
                        assert!(
                            d.contains("`opampctl "),
                            "{name}: expected description without runbook"
                        );
                    }
                    firing.insert(name);
                }
                _ => {
                    silent.insert(name);
                }
            }
        }
    }
    for a in &alerts {
        assert!(
            firing.contains(a),
            "rules_test.yml has no case where {a} fires"
        );
        assert!(
            silent.contains(a),
            "rules_test.yml has no case where {a} stays silent"
        );
    }
}

/// The dashboard's queries are valid PromQL: each becomes a recording rule
/// in a scratch rule file that promtool parses.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let exprs: Vec<String> = dashboard_exprs()
        .into_iter()
        .filter(|e| !e.starts_with("label_values("))
        .collect();
    assert!(
        exprs.len() >= 20,
        "expected the dashboard's queries, found {}",
        exprs.len()
    );
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$job", "opampd")
            .replace("$instance", ".+");
        assert!(
            !e.contains('$'),
            "unexpected variable in dashboard query: {e}"
        );
        // A JSON string literal is a valid YAML double-quoted scalar.
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::json!(e)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard_rules.yml");
    std::fs::write(&path, file).unwrap();
    run_ok(Command::new(promtool).args(["check", "rules"]).arg(&path));
}

// ---------------------------------------------------------------- Grafana

#[test]
fn dashboard_structure() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(d["uid"].is_string() && d["title"].is_string());
    assert_eq!(
        d["id"],
        serde_json::Value::Null,
        "an importable dashboard has no id"
    );

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "the dashboard needs a DS_PROMETHEUS data source variable"
    );

    let panels = d["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(rows, ["Overview", "Database", "Resources"]);

    let mut ids = BTreeSet::new();
    let mut row = "";
    let mut titles_by_row: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no numeric id"));
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{title}: bad gridPos {g}"
        );
        if p["type"] == "row" {
            row = title;
            assert_eq!(
                p["collapsed"], false,
                "rows are expanded so their panels stay top-level"
            );
            continue;
        }
        titles_by_row.entry(row).or_default().push(title);
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: panel data source"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{title}: target data source"
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: empty query"
            );
        }
    }

    let queries_of = |row: &str| -> String {
        panels
            .iter()
            .skip_while(|p| !(p["type"] == "row" && p["title"] == row))
            .skip(1)
            .take_while(|p| p["type"] != "row")
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t["expr"].as_str().map(String::from))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let overview = queries_of("Overview");
    for m in [
        "opamp_platform_agents_connected",
        "opamp_platform_agents_known",
        "opamp_platform_agents_disconnected",
        "opamp_platform_agents_stale",
        "opamp_platform_http_requests_total",
        "opamp_platform_http_request_duration_seconds_sum",
        "opamp_platform_http_request_duration_seconds_count",
        "status=~\"5..\"",
    ] {
        assert!(overview.contains(m), "Overview row does not query {m}");
    }
    let database = queries_of("Database");
    for m in [
        "opamp_platform_db_connections_open",
        "opamp_platform_db_connections_idle",
        "opamp_platform_db_connections_max",
        "opamp_platform_db_query_duration_seconds_bucket",
        "opamp_platform_db_slow_queries_total",
        "opamp_platform_db_queries_total",
        "by (operation)",
    ] {
        assert!(database.contains(m), "Database row does not query {m}");
    }
    let resources = queries_of("Resources");
    for m in [
        "rate(process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "opamp_platform_machine_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(resources.contains(m), "Resources row does not query {m}");
    }
    assert!(
        panels.iter().any(|p| p["type"] == "heatmap"),
        "the query latency distribution is a heatmap"
    );
}

// ---------------------------------------------------------------- Alertmanager

#[test]
fn amtool_check_config() {
    let Some(amtool) = tool("amtool") else { return };
    let config = deploy("alertmanager/alertmanager.yml");
    run_ok(Command::new(&amtool).arg("check-config").arg(&config));

    // Routing: critical alerts reach the receiver with both email and
    // webhook, warnings the webhook only.
    let route = |labels: &[&str]| -> String {
        let out = run_ok(
            Command::new(&amtool)
                .args(["config", "routes", "test"])
                .arg(format!("--config.file={}", config.display()))
                .args(labels),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let critical = route(&["alertname=OpAMPServerDown", "severity=critical"]);
    let warning = route(&["alertname=HighMemoryUsage", "severity=warning"]);

    let am = yaml("alertmanager/alertmanager.yml");
    let receiver = |name: &str| -> serde_yaml::Value {
        seq_at(&am["receivers"], "receivers")
            .iter()
            .find(|r| r["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no receiver {name:?}"))
            .clone()
    };
    let crit = receiver(&critical);
    assert!(
        crit["email_configs"]
            .as_sequence()
            .is_some_and(|s| !s.is_empty()),
        "critical alerts go to {critical}, which has no email_configs"
    );
    assert!(
        crit["webhook_configs"]
            .as_sequence()
            .is_some_and(|s| !s.is_empty()),
        "critical alerts go to {critical}, which has no webhook_configs"
    );
    let warn = receiver(&warning);
    assert!(warn["webhook_configs"]
        .as_sequence()
        .is_some_and(|s| !s.is_empty()));
}

#[test]
fn alertmanager_example_has_no_secrets() {
    let am = yaml("alertmanager/alertmanager.yml");
    let global = &am["global"];
    assert!(
        global["smtp_auth_password"].is_null(),
        "use smtp_auth_password_file, not an inline password"
    );
    assert!(str_at(
        &global["smtp_auth_password_file"],
        "smtp_auth_password_file"
    )
    .starts_with('/'));
    assert!(str_at(&global["smtp_smarthost"], "smtp_smarthost").ends_with("example.com:587"));
    let text = read("alertmanager/alertmanager.yml");
    assert!(text.contains("http://127.0.0.1:5001/alerts"));
}

// ---------------------------------------------------------------- systemd

fn unit_directives(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            map.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    map
}

#[test]
fn systemd_unit_directives() {
    let unit = unit_directives(&read("systemd/opampd.service"));
    let one = |k: &str| -> &str {
        let v = unit
            .get(k)
            .unwrap_or_else(|| panic!("opampd.service lacks {k}="));
        v.last().unwrap()
    };
    for (k, want) in [
        ("User", "opampd"),
        ("Group", "opampd"),
        ("StateDirectory", "opampd"),
        (
            "ExecStart",
            "/usr/local/bin/opampd --config /etc/opampd/config.yaml --data-dir /var/lib/opampd",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LimitNOFILE", "65536"),
        ("EnvironmentFile", "-/etc/opampd/opampd.env"),
        ("TimeoutStopSec", "30"),
        ("KillSignal", "SIGTERM"),
        ("StateDirectoryMode", "0700"),
        ("MemoryMax", "2G"),
        ("TasksMax", "512"),
    ] {
        assert_eq!(one(k), want, "opampd.service {k}=");
    }
    assert!(!unit.contains_key("DynamicUser") || one("DynamicUser") == "no");
    // The install steps generate both secrets instead of shipping any.
    let text = read("systemd/opampd.service");
    assert!(
        text.contains("OPAMPD_OPAMP_AGENT_SECRETS=%s")
            && text.contains("JWT_SECRET_KEY=%s")
            && text.matches("\"$(openssl rand -base64 48)\"").count() == 2,
        "opampd.service install steps generate JWT_SECRET_KEY and OPAMPD_OPAMP_AGENT_SECRETS"
    );
}

#[test]
fn systemd_analyze_verify() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    // verify checks that ExecStart's binary exists. The unit names the
    // installed path (/usr/local/bin/opampd), absent on a build machine, so
    // verify a copy whose ExecStart points at a stand-in executable with the
    // same arguments; everything else is verified as written. Man pages
    // from Documentation= are not installed here either (--man=no).
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("opampd");
    std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let original = read("systemd/opampd.service");
    let needle = "ExecStart=/usr/local/bin/opampd ";
    assert!(
        original.contains(needle),
        "ExecStart must run /usr/local/bin/opampd"
    );
    let unit = dir.path().join("opampd.service");
    std::fs::write(
        &unit,
        original.replace(needle, &format!("ExecStart={} ", stub.display())),
    )
    .unwrap();

    let mut cmd = Command::new(&analyze);
    cmd.args(["verify", "--man=no"]).arg(&unit);
    let out = run(&mut cmd);
    let report = describe(&cmd, &out);
    // verify prints problems (unknown keys, bad values, missing binaries)
    // prefixed with the unit's name, sometimes while still exiting 0.
    let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or_default()
        .lines()
        .chain(std::str::from_utf8(&out.stdout).unwrap_or_default().lines())
        .filter(|l| l.contains("opampd.service"))
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{report}");

    // Exposure score of the sandboxing: 0 (locked down) .. 100 (none);
    // shown as 0.0..10.0. Hold the unit to "OK" (<= 3.0). --offline needs
    // systemd >= 250.
    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=true", "--threshold=30", "--no-pager"])
        .arg(&unit);
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unrecognized option") || stderr.contains("Unknown option") {
        notice("SKIPPED (systemd-analyze security --offline needs systemd >= 250)");
        return;
    }
    assert!(
        out.status.success(),
        "sandboxing exposure above 3.0:\n{}",
        describe(&cmd, &out)
    );
}

#[test]
fn systemd_example_config() {
    let c = yaml("systemd/config.yaml");
    // Only keys opampd knows (it refuses unknown ones at start-up).
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("listen", &[][..]),
        ("data_dir", &[][..]),
        ("log", &["level", "format"][..]),
        (
            "opamp",
            &["agent_secrets", "max_agents", "heartbeat_interval_seconds"][..],
        ),
        (
            "database",
            &["max_open_conns", "max_idle_conns", "conn_max_lifetime"][..],
        ),
    ]);
    let top = c.as_mapping().expect("config.yaml is a mapping");
    for (k, v) in top {
        let k = str_at(k, "key");
        let sub = allowed
            .get(k)
            .unwrap_or_else(|| panic!("config.yaml: unexpected key {k}"));
        if let Some(m) = v.as_mapping() {
            for sk in m.keys() {
                let sk = str_at(sk, "key");
                assert!(sub.contains(&sk), "config.yaml: unexpected key {k}.{sk}");
            }
        }
    }
    for k in allowed.keys() {
        assert!(top.contains_key(*k), "config.yaml: missing example for {k}");
    }
    str_at(&c["listen"], "listen")
        .parse::<std::net::SocketAddr>()
        .expect("listen is an address");
    assert!(matches!(
        c["log"]["format"].as_str(),
        Some("auto" | "text" | "json")
    ));
    assert!(
        seq_at(&c["opamp"]["agent_secrets"], "agent_secrets").is_empty(),
        "the example ships no agent secret: the install steps generate one into opampd.env"
    );
    let db = &c["database"];
    let (open, idle) = (
        db["max_open_conns"].as_u64().unwrap(),
        db["max_idle_conns"].as_u64().unwrap(),
    );
    assert!(
        (1..=64).contains(&open) && idle <= open,
        "max_open_conns {open}, max_idle_conns {idle}"
    );
    assert!(
        db["conn_max_lifetime"].as_u64().is_some(),
        "conn_max_lifetime is in seconds"
    );
    assert!(c["opamp"]["heartbeat_interval_seconds"]
        .as_u64()
        .is_some_and(|s| s > 0));
}

// ---------------------------------------------------------------- Docker

#[test]
fn dockerfile_contents() {
    let text = read("docker/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(has("FROM rust:1-bookworm AS builder"));
    assert!(has("FROM debian:bookworm-slim"));
    assert!(text.contains("cargo build --release --locked -p opampd -p opampctl"));
    assert!(has("EXPOSE 8080 4320"));
    assert!(has("VOLUME [\"/var/lib/opampd\"]"));
    assert!(lines
        .iter()
        .any(|l| l
            .contains(r#"CMD ["opampctl", "health", "-q", "--server", "http://127.0.0.1:8080"]"#)));
    assert!(has(
        r#"ENTRYPOINT ["opampd", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/opampd"]"#
    ));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "run as a numeric non-root uid, got {user}"
    );
}

#[test]
fn compose_file() {
    let c = yaml("docker-compose.yml");
    let svc = &c["services"]["opamp-server"];
    assert!(svc.is_mapping(), "service opamp-server");
    let build = &svc["build"];
    assert_eq!(build["context"].as_str(), Some(".."));
    let dockerfile = str_at(&build["dockerfile"], "build.dockerfile");
    assert!(
        deploy("..").join(dockerfile).is_file(),
        "{dockerfile} does not exist relative to the context"
    );

    let test = seq_at(&svc["healthcheck"]["test"], "healthcheck.test");
    let test: Vec<&str> = test.iter().map(|v| str_at(v, "healthcheck")).collect();
    assert!(
        test.contains(&"opampctl") && test.contains(&"health"),
        "healthcheck {test:?}"
    );
    assert_eq!(svc["restart"].as_str(), Some("unless-stopped"));

    let ports: Vec<&str> = seq_at(&svc["ports"], "ports")
        .iter()
        .map(|p| str_at(p, "port"))
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with("8080:8080")),
        "port 8080 published: {ports:?}"
    );
    let vols: Vec<&str> = seq_at(&svc["volumes"], "volumes")
        .iter()
        .map(|v| str_at(v, "volume"))
        .collect();
    assert!(
        vols.contains(&"opamp-data:/var/lib/opampd"),
        "volumes {vols:?}"
    );
    assert!(
        c["volumes"].get("opamp-data").is_some(),
        "named volume opamp-data declared"
    );

    // The secret the service uses is declared, and the env names a file.
    let secrets: Vec<&str> = seq_at(&svc["secrets"], "secrets")
        .iter()
        .map(|s| str_at(s, "secret"))
        .collect();
    for s in &secrets {
        assert!(
            c["secrets"].get(*s).is_some(),
            "secret {s} not declared at the top level"
        );
    }
    let env = &svc["environment"];
    let jwt_file = env["OPAMPD_AUTH_JWT_SECRET_FILE"]
        .as_str()
        .or(env["JWT_SECRET_KEY_FILE"].as_str());
    assert!(
        jwt_file.is_some_and(|f| f.starts_with("/run/secrets/")),
        "the JWT key comes from a secret file"
    );
    assert!(
        env.get("JWT_SECRET_KEY").is_none(),
        "no JWT secret inline in the compose file"
    );
    assert!(
        env["OPAMPD_OPAMP_AGENT_SECRETS"]
            .as_str()
            .is_some_and(|v| v.starts_with("${OPAMP_AGENT_SECRETS:?")),
        "the agent secret comes from the operator's environment, required, without a default"
    );

    // Prometheus, if present, mounts the files from deploy/prometheus.
    let prom = &c["services"]["prometheus"];
    assert!(prom.is_mapping(), "optional prometheus service");
    for v in seq_at(&prom["volumes"], "prometheus volumes") {
        let v = str_at(v, "volume");
        if let Some(src) = v.strip_prefix("./") {
            let src = src.split(':').next().unwrap();
            assert!(
                deploy(src).is_file(),
                "prometheus mounts missing file deploy/{src}"
            );
        }
    }
}

// ---------------------------------------------------------------- Kubernetes

fn k8s_objects() -> Vec<(String, serde_yaml::Value)> {
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in yaml_docs(&text, &name) {
            out.push((name.clone(), doc));
        }
    }
    out
}

fn find_obj<'a>(
    objs: &'a [(String, serde_yaml::Value)],
    kind: &str,
    name: &str,
) -> &'a serde_yaml::Value {
    objs.iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name:?} in deploy/kubernetes"))
}

#[test]
fn kubernetes_manifests() {
    let objs = k8s_objects();
    const NS: &str = "opamp-platform";

    find_obj(&objs, "Namespace", NS);
    for (file, o) in &objs {
        let kind = o["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: object without kind"));
        assert!(
            o["apiVersion"].is_string(),
            "{file}: {kind} without apiVersion"
        );
        if !matches!(kind, "Namespace" | "Kustomization") {
            assert_eq!(
                o["metadata"]["namespace"].as_str(),
                Some(NS),
                "{file}: {kind} namespace"
            );
        }
    }

    // kustomization.yaml lists every other manifest, and only existing ones.
    let kust = find_kustomization(&objs);
    assert_eq!(kust["namespace"].as_str(), Some(NS));
    let listed: BTreeSet<&str> = seq_at(&kust["resources"], "kustomization resources")
        .iter()
        .map(|r| str_at(r, "resource"))
        .collect();
    let present: BTreeSet<&str> = objs
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs files in deploy/kubernetes"
    );

    // No Secret ships with a value: it is created by the documented command.
    assert!(
        !objs
            .iter()
            .any(|(_, o)| o["kind"].as_str() == Some("Secret")),
        "deploy/kubernetes must not ship a Secret (a value in a file is a value anyone can read)"
    );
    let kust_text = read("kubernetes/kustomization.yaml");
    for needle in [
        "create secret generic opamp-secrets",
        "--from-literal=jwt-secret-key=\"$(openssl rand -base64 48)\"",
        "--from-literal=agent-secrets=\"$(openssl rand -base64 48)\"",
    ] {
        assert!(
            kust_text.contains(needle),
            "kustomization.yaml documents `{needle}`"
        );
    }

    let pvc = find_obj(&objs, "PersistentVolumeClaim", "opamp-data");
    assert_eq!(
        seq_at(&pvc["spec"]["accessModes"], "accessModes")[0].as_str(),
        Some("ReadWriteOnce")
    );
    assert_eq!(
        pvc["spec"]["resources"]["requests"]["storage"].as_str(),
        Some("5Gi")
    );

    let dep = find_obj(&objs, "Deployment", "opamp-server");
    let spec = &dep["spec"];
    assert_eq!(
        spec["replicas"].as_u64(),
        Some(1),
        "SQLite has one writer: one replica"
    );
    assert_eq!(
        spec["strategy"]["type"].as_str(),
        Some("Recreate"),
        "no overlap of two writers"
    );
    let pod = &spec["template"]["spec"];
    let pod_labels = spec["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels");
    for (k, v) in spec["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector")
    {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "selector label {k:?} not on the pod template"
        );
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    let containers = seq_at(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let port_of = |name: &str| -> u64 {
        seq_at(&c["ports"], "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    assert_eq!(port_of("http"), 8080);
    assert_eq!(port_of("opamp"), 4320);
    let probe_path = |probe: &str| -> (&str, &serde_yaml::Value) {
        let g = &c[probe]["httpGet"];
        (str_at(&g["path"], probe), &g["port"])
    };
    let (ready, ready_port) = probe_path("readinessProbe");
    let (live, live_port) = probe_path("livenessProbe");
    assert_eq!(ready, "/health/ready");
    assert_eq!(live, "/health/live");
    for port in [ready_port, live_port] {
        assert!(
            port.as_str() == Some("http") || port.as_u64() == Some(8080),
            "probe port {port:?}"
        );
    }
    assert!(c["resources"]["requests"].is_mapping(), "resource requests");
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "a memory limit"
    );

    let env = seq_at(&c["env"], "env");
    for (name, key) in [
        ("JWT_SECRET_KEY", "jwt-secret-key"),
        ("OPAMPD_OPAMP_AGENT_SECRETS", "agent-secrets"),
    ] {
        let var = env
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("env {name}"));
        let key_ref = &var["valueFrom"]["secretKeyRef"];
        assert_eq!(key_ref["name"].as_str(), Some("opamp-secrets"), "{name}");
        assert_eq!(key_ref["key"].as_str(), Some(key), "{name}");
    }

    // The PVC is a pod volume mounted at the data directory.
    let volume = seq_at(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some("opamp-data"))
        .expect("a volume from PVC opamp-data");
    let vol_name = str_at(&volume["name"], "volume name");
    let mount = seq_at(&c["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(vol_name))
        .expect("the PVC volume is mounted");
    assert_eq!(mount["mountPath"].as_str(), Some("/var/lib/opampd"));

    let svc = find_obj(&objs, "Service", "opamp-server");
    for (k, v) in svc["spec"]["selector"]
        .as_mapping()
        .expect("service selector")
    {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "service selector label {k:?} not on the pods"
        );
    }
    let sports: BTreeMap<&str, (u64, &serde_yaml::Value)> =
        seq_at(&svc["spec"]["ports"], "service ports")
            .iter()
            .map(|p| {
                (
                    str_at(&p["name"], "port name"),
                    (p["port"].as_u64().unwrap(), &p["targetPort"]),
                )
            })
            .collect();
    assert_eq!(sports.get("http").map(|p| p.0), Some(8080));
    assert_eq!(sports.get("opamp").map(|p| p.0), Some(4320));
    for (name, (port, target)) in &sports {
        let ok = target.as_str().is_some_and(|t| port_of(t) == *port)
            || target.as_u64() == Some(port_of(name));
        assert!(
            ok,
            "service port {name} targets {target:?}, not a container port"
        );
    }
}

fn find_kustomization(objs: &[(String, serde_yaml::Value)]) -> &serde_yaml::Value {
    objs.iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .map(|(_, o)| o)
        .expect("deploy/kubernetes/kustomization.yaml")
}

/// `kubectl kustomize` renders the whole set offline, when kubectl is
/// around (it is not one of the required tools).
#[test]
fn kustomize_build() {
    let Some(kubectl) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| is_executable(p))
    }) else {
        notice("SKIPPED (kubectl not installed: kustomize rendering not checked)");
        return;
    };
    let out = run_ok(
        Command::new(kubectl)
            .arg("kustomize")
            .arg(deploy("kubernetes")),
    );
    let rendered = yaml_docs(
        &String::from_utf8_lossy(&out.stdout),
        "kubectl kustomize output",
    );
    assert_eq!(rendered.len(), 4, "namespace, pvc, deployment, service");
}

// ---------------------------------------------------------------- scripts

#[test]
fn test_deps_script_parses() {
    let script = Path::new(SCRIPTS).join("test-deps.sh");
    run_ok(Command::new("bash").arg("-n").arg(&script));
    let text = std::fs::read_to_string(&script).unwrap();
    for pin in [
        "opentelemetry-opamp-client==0.5b0",
        "opentelemetry-api==1.45.2",
        "protobuf==7.36.2",
        "requests==2.34.2",
        "urllib3==2.8.0",
        "idna==3.20",
        "charset-normalizer==3.5.3",
        "certifi==2026.10.19.post1",
        "typing_extensions==4.16.0",
    ] {
        assert!(
            text.contains(pin),
            "scripts/test-deps.sh does not pin {pin}"
        );
    }
}

// ---------------------------------------------------------------- HAProxy

/// `haproxy -c` accepts the balancer's configuration; the only warnings
/// allowed are the replicas' names, which resolve inside Compose only.
#[test]
fn haproxy_check_config() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let out = run_ok(
        Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(deploy("haproxy/haproxy.cfg")),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Configuration file is valid"), "{text}");
    for line in text.lines().filter(|l| l.contains("[WARNING]")) {
        assert!(
            line.contains("could not resolve address 'opampd-"),
            "unexpected haproxy warning: {line}"
        );
    }
}

/// The balancer settings README "Running several replicas" explains:
/// readiness checks, request-level balancing without stickiness,
/// connection reuse, WebSocket-safe timeouts, the client's address, and an
/// agents' frontend serving the OpAMP path only.
#[test]
fn haproxy_balances_requests_on_readiness() {
    let text = read("haproxy/haproxy.cfg");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    for needed in [
        "option httpchk GET /health/ready",
        "http-check expect status 200",
        "balance roundrobin",
        "http-reuse safe",
        "option forwardfor",
        "http-request deny deny_status 404 unless { path /v1/opamp } || { path_beg /v1/packages/ }",
    ] {
        assert!(lines.contains(&needed), "haproxy.cfg lacks `{needed}`");
    }
    for sticky in ["stick-table", "stick on", "cookie ", "balance source"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(sticky)),
            "no stickiness: `{sticky}`"
        );
    }
    let seconds = |key: &str| -> u64 {
        let value = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("timeout {key} ")))
            .unwrap_or_else(|| panic!("timeout {key}"));
        let (number, unit) = value.split_at(value.trim_end_matches(char::is_alphabetic).len());
        number.parse::<u64>().unwrap()
            * match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                other => panic!("unit {other}"),
            }
    };
    let defaults = opampd::config::Config::default();
    let heartbeat = defaults.opamp.heartbeat_interval_seconds;
    for key in ["client", "server", "http-keep-alive"] {
        assert!(
            seconds(key) > heartbeat,
            "timeout {key} must outlast a heartbeat interval ({heartbeat}s)"
        );
    }
    assert!(
        seconds("tunnel") >= defaults.opamp.ws_read_timeout_seconds,
        "timeout tunnel must outlast opamp.ws_read_timeout_seconds"
    );
    let servers = lines.iter().filter(|l| l.starts_with("server ")).count();
    assert!(servers >= 2, "several replicas, got {servers}");
}

// ---------------------------------------------------------------- replicas

/// The OPAMPD_* (and other) environment variables opampd reads: every
/// configuration key of CONFIGURATION as `OPAMPD_KEY_PATH`, plus ENVIRONMENT.
fn opampd_variables() -> BTreeSet<String> {
    let keys = opampd::cli::CONFIGURATION
        .iter()
        .flat_map(|(names, _)| names.split(", "))
        .map(|key| format!("OPAMPD_{}", key.replace('.', "_").to_ascii_uppercase()));
    let extra = opampd::cli::ENVIRONMENT
        .iter()
        .flat_map(|(names, _)| names.split(", "))
        .filter(|name| !name.ends_with('*'))
        .map(String::from);
    keys.chain(extra).collect()
}

/// Every file of deploy/, recursively, as (path relative to deploy/, text).
fn deploy_texts() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(DEPLOY), &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let rel = p.strip_prefix(DEPLOY).unwrap().display().to_string();
            Some((rel, text))
        })
        .collect()
}

/// Every `OPAMPD_*` variable any deploy file sets is a real opampd setting,
/// and every flag the image and the unit pass to opampd is one of its flags.
#[test]
fn deploy_files_use_only_real_settings() {
    let known = opampd_variables();
    let mut unknown = Vec::new();
    let mut seen = BTreeSet::new();
    for (file, text) in deploy_texts() {
        let bytes = text.as_bytes();
        let mut at = 0;
        while let Some(found) = text[at..].find("OPAMPD_") {
            let start = at + found;
            let mut end = start + "OPAMPD_".len();
            while end < bytes.len()
                && (bytes[end].is_ascii_uppercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_')
            {
                end += 1;
            }
            let name = &text[start..end];
            // `OPAMPD_*` and `OPAMPD_<KEY>` in comments name the pattern.
            let pattern = name == "OPAMPD_";
            if !pattern && (start == 0 || !is_ident_byte(bytes[start - 1])) {
                seen.insert(name.to_string());
                if !known.contains(name) {
                    unknown.push(format!("{file}: {name}"));
                }
            }
            at = end;
        }
    }
    assert!(
        unknown.is_empty(),
        "variables that are no opampd setting: {unknown:#?}"
    );
    for must in [
        "OPAMPD_DATABASE_URL",
        "OPAMPD_CLUSTER_REPLICA_ID",
        "OPAMPD_OPAMP_AGENT_SECRETS",
    ] {
        assert!(seen.contains(must), "{must} is expected in deploy/");
    }

    let flags: BTreeSet<String> = opampd::cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let dockerfile = read("docker/Dockerfile");
    let unit = read("systemd/opampd.service");
    let command_lines = dockerfile
        .lines()
        .filter(|l| l.starts_with("ENTRYPOINT"))
        .chain(unit.lines().filter(|l| l.starts_with("ExecStart=")));
    let mut checked = 0;
    for line in command_lines {
        for word in line.split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '[' | ']')) {
            if let Some(flag) = word
                .strip_prefix("--")
                .map(|f| format!("--{}", f.split('=').next().unwrap()))
            {
                assert!(
                    flags.contains(&flag),
                    "{line}: {flag} is not an opampd flag"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3,
        "expected the flags of ENTRYPOINT and ExecStart"
    );
}

#[test]
fn compose_replicas_file() {
    let c = yaml("docker-compose.replicas.yml");
    let services = c["services"].as_mapping().expect("services");
    let replicas: Vec<(&str, &serde_yaml::Value)> = services
        .iter()
        .map(|(k, v)| (str_at(k, "service name"), v))
        .filter(|(name, _)| name.starts_with("opampd-"))
        .collect();
    assert!(replicas.len() >= 2, "several opampd replicas");

    let postgres = &c["services"]["postgres"];
    assert!(
        str_at(&postgres["image"], "postgres image").starts_with("postgres:"),
        "a PostgreSQL service"
    );
    assert!(
        postgres["environment"]["POSTGRES_PASSWORD"]
            .as_str()
            .is_some_and(|v| v.starts_with("${POSTGRES_PASSWORD:?")),
        "the database password comes from the operator's environment, required"
    );
    assert!(postgres["ports"].is_null(), "PostgreSQL is not published");

    let env_of = |svc: &serde_yaml::Value, name: &str| -> String {
        str_at(&svc["environment"][name], name).to_string()
    };
    let (_, first) = replicas[0];
    for (name, svc) in &replicas {
        // The same build, database, JWT key and agent secrets everywhere.
        assert_eq!(svc["build"], first["build"], "{name} build");
        for shared in [
            "OPAMPD_DATABASE_URL",
            "OPAMPD_AUTH_JWT_SECRET_FILE",
            "OPAMPD_OPAMP_AGENT_SECRETS",
        ] {
            assert_eq!(
                env_of(svc, shared),
                env_of(first, shared),
                "{name} {shared}"
            );
        }
        let url = env_of(svc, "OPAMPD_DATABASE_URL");
        assert!(
            url.starts_with("postgres://opampd:${POSTGRES_PASSWORD:?")
                && url.ends_with("@postgres:5432/opampd"),
            "{name}: database URL {url}"
        );
        assert!(env_of(svc, "OPAMPD_AUTH_JWT_SECRET_FILE").starts_with("/run/secrets/"));
        assert!(
            svc["environment"].get("JWT_SECRET_KEY").is_none(),
            "no inline JWT key"
        );
        assert_eq!(
            env_of(svc, "OPAMPD_CLUSTER_REPLICA_ID"),
            *name,
            "replica id"
        );
        let haproxy_address = c["services"]["haproxy"]["networks"]["default"]["ipv4_address"]
            .as_str()
            .expect("haproxy has a fixed address");
        assert_eq!(
            env_of(svc, "OPAMPD_HTTP_TRUSTED_PROXIES"),
            haproxy_address,
            "{name} believes X-Forwarded-For from haproxy only"
        );
        assert_eq!(
            svc["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{name} waits for PostgreSQL"
        );
        assert!(
            svc["ports"].is_null(),
            "{name}: reached through HAProxy only"
        );
        let test: Vec<&str> = seq_at(&svc["healthcheck"]["test"], "healthcheck")
            .iter()
            .map(|v| str_at(v, "healthcheck"))
            .collect();
        assert!(test.contains(&"health"), "{name} healthcheck {test:?}");
        for s in seq_at(&svc["secrets"], "secrets") {
            assert!(
                c["secrets"].get(str_at(s, "secret")).is_some(),
                "{name}: secret declared"
            );
        }
    }

    let haproxy = &c["services"]["haproxy"];
    assert!(str_at(&haproxy["image"], "haproxy image").starts_with("haproxy:"));
    let mounts: Vec<&str> = seq_at(&haproxy["volumes"], "haproxy volumes")
        .iter()
        .map(|v| str_at(v, "volume"))
        .collect();
    assert!(
        mounts.contains(&"./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"),
        "{mounts:?}"
    );
    let ports: Vec<&str> = seq_at(&haproxy["ports"], "haproxy ports")
        .iter()
        .map(|p| str_at(p, "port"))
        .collect();
    assert!(
        ports.contains(&"8080:8080") && ports.contains(&"4320:4320"),
        "{ports:?}"
    );

    // haproxy.cfg's servers are exactly the replica services, on 8080.
    let servers: BTreeSet<String> = read("haproxy/haproxy.cfg")
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("server "))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = replicas.iter().map(|(n, _)| format!("{n}:8080")).collect();
    assert_eq!(servers, expected, "haproxy.cfg servers vs compose replicas");
    let depends: BTreeSet<&str> = seq_at(&haproxy["depends_on"], "haproxy depends_on")
        .iter()
        .map(|d| str_at(d, "depends_on"))
        .collect();
    assert_eq!(depends, replicas.iter().map(|(n, _)| *n).collect());
}

fn overlay_objects() -> Vec<(String, serde_yaml::Value)> {
    let dir = deploy("kubernetes-replicas");
    let mut out = Vec::new();
    for name in ["kustomization.yaml", "deployment.yaml", "pdb.yaml"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        for doc in yaml_docs(&text, name) {
            out.push((name.to_string(), doc));
        }
    }
    out
}

/// The replicas overlay: 3 rolling replicas spread over nodes, the database
/// URL from the Secret, no volume claim, a PodDisruptionBudget; rendered by
/// `kubectl kustomize` when kubectl is around.
#[test]
fn kubernetes_replicas_overlay() {
    let objs = overlay_objects();
    let kust = find_kustomization(&objs);
    let resources: Vec<&str> = seq_at(&kust["resources"], "resources")
        .iter()
        .map(|r| str_at(r, "resource"))
        .collect();
    assert_eq!(resources, ["../kubernetes", "pdb.yaml"]);
    let kust_text = read("kubernetes-replicas/kustomization.yaml");
    assert!(
        kust_text.contains("--from-literal=database-url=\"postgres://"),
        "the overlay documents the database-url key of the Secret"
    );

    let patch = find_obj(&objs, "Deployment", "opamp-server");
    check_replicas_deployment(patch);
    let pdb = find_obj(&objs, "PodDisruptionBudget", "opamp-server");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1));
    let base = k8s_objects();
    let pod_labels =
        &find_obj(&base, "Deployment", "opamp-server")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pdb["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("pdb selector")
    {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "PDB selector label {k:?} not on the pods"
        );
    }

    let Some(kubectl) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| is_executable(p))
    }) else {
        notice("SKIPPED (kubectl not installed: the replicas overlay is not rendered)");
        return;
    };
    let out = run_ok(
        Command::new(kubectl)
            .arg("kustomize")
            .arg(deploy("kubernetes-replicas")),
    );
    let rendered: Vec<(String, serde_yaml::Value)> = yaml_docs(
        &String::from_utf8_lossy(&out.stdout),
        "kubectl kustomize output",
    )
    .into_iter()
    .map(|o| ("rendered".to_string(), o))
    .collect();
    let kinds: BTreeSet<&str> = rendered
        .iter()
        .filter_map(|(_, o)| o["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["Namespace", "Service", "Deployment", "PodDisruptionBudget"]),
        "no PersistentVolumeClaim: the state is in PostgreSQL"
    );
    let dep = find_obj(&rendered, "Deployment", "opamp-server");
    check_replicas_deployment(dep);
    let pod = &dep["spec"]["template"]["spec"];
    let data = seq_at(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some("data"))
        .expect("the data volume");
    assert!(
        data["emptyDir"].is_mapping() && data["persistentVolumeClaim"].is_null(),
        "{data:?}"
    );
    let c = &seq_at(&pod["containers"], "containers")[0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/health/ready")
    );
    let env_names: Vec<&str> = seq_at(&c["env"], "env")
        .iter()
        .map(|e| str_at(&e["name"], "env name"))
        .collect();
    for name in [
        "OPAMPD_DATABASE_URL",
        "JWT_SECRET_KEY",
        "OPAMPD_OPAMP_AGENT_SECRETS",
    ] {
        assert!(env_names.contains(&name), "{name} in {env_names:?}");
    }
}

fn check_replicas_deployment(dep: &serde_yaml::Value) {
    let spec = &dep["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    assert_eq!(spec["strategy"]["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(0)
    );
    let pod = &spec["template"]["spec"];
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    let term = &seq_at(anti, "podAntiAffinity")[0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"].as_str(), Some("kubernetes.io/hostname"));
    let c = seq_at(&pod["containers"], "containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("opampd"))
        .expect("container opampd");
    let url = seq_at(&c["env"], "env")
        .iter()
        .find(|e| e["name"].as_str() == Some("OPAMPD_DATABASE_URL"))
        .expect("OPAMPD_DATABASE_URL");
    let key_ref = &url["valueFrom"]["secretKeyRef"];
    assert_eq!(key_ref["name"].as_str(), Some("opamp-secrets"));
    assert_eq!(key_ref["key"].as_str(), Some("database-url"));
}
