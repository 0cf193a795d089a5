//! opampctl over TLS with a self-signed server certificate given as its own CA
//! (`--ca-file cert.pem`), the kind `openssl req -x509` makes (CA:TRUE).

use opamp_tests::cli::code;
use opamp_tests::{ctl_env, stderr, stdout, Opts, Server};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A self-signed certificate marked CA:TRUE, as `openssl req -x509` makes it,
/// for `names`; writes NAME.pem and NAME.key.
fn self_signed_ca(dir: &Path, name: &str, names: &[&str], valid_days: i64) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    if valid_days < 0 {
        params.not_before = (now - day * 30).into();
        params.not_after = (now - day * (-valid_days) as u32).into();
    } else {
        params.not_before = (now - day).into();
        params.not_after = (now + day * valid_days as u32).into();
    }
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    path
}

fn tls_server(cert: &Path) -> Server {
    Server::start_with(Opts {
        config: Some(format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            cert.with_extension("key").display()
        )),
        ..Default::default()
    })
}

fn tls_check(report: &Value) -> Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|c| c["name"] == "tls")
        .unwrap_or_else(|| panic!("no tls check: {report}"))
        .clone()
}

#[test]
fn a_self_signed_certificate_is_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed_ca(dir.path(), "server", &["localhost", "127.0.0.1"], 365);
    let other = self_signed_ca(dir.path(), "other", &["localhost", "127.0.0.1"], 365);
    let s = tls_server(&cert);
    let token = s.token();
    let run = |server: &str, ca: &Path, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", server, "--ca-file", ca.to_str().unwrap()]);
        ctl_env(&all, &[("OPAMPCTL_TOKEN", &token)])
    };
    for host in ["localhost", "127.0.0.1"] {
        let server = format!("https://{host}:{}", s.addr.port());
        let o = run(&server, &cert, &["health"]);
        assert_eq!(code(&o), 0, "{host}: {}", stderr(&o));
        let o = run(&server, &cert, &["agents", "list", "-o", "json"]);
        assert_eq!(code(&o), 0, "{host}: {}", stderr(&o));
        let o = run(&server, &cert, &["doctor", "-o", "json"]);
        let report: Value =
            serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
        assert_eq!(tls_check(&report)["verdict"], "ok", "{report}");
    }
    // Another self-signed certificate in the CA file is no trust for this one.
    let server = format!("https://localhost:{}", s.addr.port());
    let o = run(&server, &other, &["health"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("--ca-file"), "{}", stderr(&o));
    let o = run(&server, &other, &["doctor", "-o", "json"]);
    let report: Value =
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
    assert_ne!(code(&o), 0, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["verdict"] == "fail" && c["detail"].as_str().unwrap().contains("--ca-file")),
        "{report}"
    );
    assert!(
        !checks
            .iter()
            .any(|c| c["name"] == "tls" && c["verdict"] == "ok"),
        "{report}"
    );
}

#[test]
fn a_self_signed_certificate_still_needs_the_right_name_and_dates() {
    let dir = tempfile::tempdir().unwrap();
    let misnamed = self_signed_ca(dir.path(), "misnamed", &["opamp.example.com"], 365);
    let s = tls_server(&misnamed);
    let token = s.token();
    let server = format!("https://localhost:{}", s.addr.port());
    let o = ctl_env(
        &[
            "health",
            "--server",
            &server,
            "--ca-file",
            misnamed.to_str().unwrap(),
        ],
        &[("OPAMPCTL_TOKEN", &token)],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).to_lowercase().contains("name"), "{}", stderr(&o));
    drop(s);

    let expired = self_signed_ca(dir.path(), "expired", &["localhost"], -2);
    let s = tls_server(&expired);
    let server = format!("https://localhost:{}", s.addr.port());
    let o = ctl_env(
        &[
            "health",
            "--server",
            &server,
            "--ca-file",
            expired.to_str().unwrap(),
        ],
        &[("OPAMPCTL_TOKEN", &s.token())],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).to_lowercase().contains("expired"),
        "{}",
        stderr(&o)
    );
}
