use super::*;

fn load(file: &str, env: &[(&str, &str)], flags: Overrides) -> Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, file).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    Config::load(Some(&path), &env, &flags)
}

#[test]
fn defaults_apply_without_a_file() {
    let c = Config::load(None, &[], &Overrides::default()).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080");
    assert_eq!(c.db_path(), PathBuf::from("./data/opamp.db"));
}

#[test]
fn precedence_is_flag_env_file_default() {
    let file = "listen: 127.0.0.1:1000\ndatabase:\n  max_open_conns: 2\n";
    let c = load(file, &[], Overrides::default()).unwrap();
    assert_eq!(
        (c.listen.as_str(), c.database.max_open_conns),
        ("127.0.0.1:1000", 2)
    );
    let c = load(
        file,
        &[
            ("OPAMPD_LISTEN", "127.0.0.1:2000"),
            ("OPAMPD_DATABASE_MAX_OPEN_CONNS", "3"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        (c.listen.as_str(), c.database.max_open_conns),
        ("127.0.0.1:2000", 3)
    );
    let flags = Overrides {
        listen: Some("127.0.0.1:3000".into()),
        ..Default::default()
    };
    let c = load(file, &[("OPAMPD_LISTEN", "127.0.0.1:2000")], flags).unwrap();
    assert_eq!(c.listen, "127.0.0.1:3000");
}

#[test]
fn unknown_file_key_is_named() {
    let err = load("database:\n  max_open_con: 2\n", &[], Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown key `database.max_open_con`"),
        "{err}"
    );
}

#[test]
fn unknown_env_key_is_named() {
    let err = load("", &[("OPAMPD_NOPE", "1")], Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("OPAMPD_NOPE"), "{err}");
}

#[test]
fn env_lists_are_comma_separated() {
    let c = load(
        "",
        &[("OPAMPD_OPAMP_AGENT_SECRETS", "secret-one-1, secret-two-2")],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.opamp.agent_secrets, vec!["secret-one-1", "secret-two-2"]);
}

#[test]
fn bad_values_are_explained() {
    let err = load("listen: nowhere\n", &[], Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("listen \"nowhere\""), "{err}");
    let err = load(
        "",
        &[("OPAMPD_DATABASE_MAX_OPEN_CONNS", "many")],
        Overrides::default(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("expected a whole number"),
        "{err:#}"
    );
    let err = load("tls:\n  cert_file: a.pem\n", &[], Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("go together"), "{err}");
}

#[test]
fn connection_settings_are_read_and_checked() {
    let file = "opamp:\n  public_url: wss://opamp.example.net/v1/opamp\ntelemetry:\n  own_metrics:\n    endpoint: https://otlp.example.net/v1/metrics\n    headers:\n      X-Api-Key: k1\n";
    let c = load(file, &[], Overrides::default()).unwrap();
    assert_eq!(
        c.opamp.public_url.as_deref(),
        Some("wss://opamp.example.net/v1/opamp")
    );
    assert_eq!(c.telemetry.own_metrics.headers["X-Api-Key"], "k1");
    let c = load(
        "",
        &[
            (
                "OPAMPD_TELEMETRY_OWN_LOGS_ENDPOINT",
                "http://otlp:4318/v1/logs",
            ),
            ("OPAMPD_TELEMETRY_OWN_LOGS_HEADERS", "A=1, B = 2"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.telemetry.own_logs.headers,
        [("A".to_string(), "1".to_string()), ("B".into(), "2".into())].into()
    );
    let err = load(
        "opamp:\n  public_url: ftp://x/\n",
        &[],
        Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("opamp.public_url \"ftp://x/\" must start with one of ws://"),
        "{err}"
    );
    let err = load(
        "opamp:\n  public_url: /v1/opamp\n",
        &[],
        Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("opamp.public_url"), "{err}");
    let err = load(
        "telemetry:\n  own_traces:\n    headers:\n      A: b\n",
        &[],
        Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("telemetry.own_traces.endpoint is not"),
        "{err}"
    );
    let err = load(
        "telemetry:\n  own_traces:\n    endpoint: https://o/v1/traces\n    headers:\n      \"bad name\": b\n",
        &[],
        Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not a valid HTTP header name"),
        "{err}"
    );
}
