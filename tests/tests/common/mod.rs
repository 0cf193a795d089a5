//! Helpers shared by the configuration, rollout and auth suites.
#![allow(dead_code)]

use opamp_proto::pb;
use opamp_tests::client::*;
use opamp_tests::{wait_for, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// A full first report with extra non-identifying attributes.
pub fn report_with(
    uid: [u8; 16],
    seq: u64,
    service: &str,
    attrs: &[(&str, &str)],
) -> pb::AgentToServer {
    let mut m = full_report(uid, seq, service);
    if let Some(d) = m.agent_description.as_mut() {
        for (k, v) in attrs {
            d.non_identifying_attributes.push(kv(k, v));
        }
    }
    m
}

/// A uid whose canonical string sorts after every uid made before it.
pub fn uids(n: usize) -> Vec<[u8; 16]> {
    let mut v: Vec<[u8; 16]> = (0..n).map(|_| new_uid()).collect();
    v.sort_by_key(uid_str);
    v
}

/// Saves a configuration; returns status and reply.
pub async fn save(s: &Server, name: &str, body: &str, selector: &str) -> (u16, Value) {
    s.send_json(
        "POST",
        "/api/v1/configurations",
        json!({"name": name, "body": body, "selector": selector}),
    )
    .await
}

pub async fn start_rollout(s: &Server, name: &str, req: Value) -> Value {
    let (code, v) = s
        .send_json(
            "POST",
            &format!("/api/v1/configurations/{name}/rollout"),
            req,
        )
        .await;
    assert_eq!(code, 202, "rollout of {name}: {v}");
    v
}

pub async fn rollout_status(s: &Server, name: &str) -> Value {
    let (code, v) = s
        .get(&format!("/api/v1/configurations/{name}/rollout"))
        .await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Waits until the rollout of `name` satisfies `pred`.
pub async fn wait_rollout(
    s: &Server,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, Duration::from_secs(15), || async {
        let v = rollout_status(s, name).await;
        pred(&v).then_some(v)
    })
    .await
}

/// The files of an offered remote config, name → body.
pub fn files(rc: &pb::AgentRemoteConfig) -> BTreeMap<String, String> {
    rc.config
        .as_ref()
        .map(|m| {
            m.config_map
                .iter()
                .map(|(k, f)| (k.clone(), String::from_utf8_lossy(&f.body).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The next message that carries a remote config (skipping acknowledgements).
pub async fn recv_offer(ws: &mut Ws) -> pb::AgentRemoteConfig {
    loop {
        let m = ws_recv(ws).await;
        if let Some(rc) = m.remote_config {
            return rc;
        }
    }
}

/// Asserts that nothing arrives on the WebSocket for a while.
pub async fn assert_quiet(ws: &mut Ws, what: &str) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => continue,
            Ok(other) => panic!("{what}: expected no message, got {other:?}"),
        }
    }
}

/// Connects a WebSocket agent and sends its first report; returns the socket
/// and the first reply.
pub async fn ws_agent(
    s: &Server,
    uid: [u8; 16],
    attrs: &[(&str, &str)],
) -> (Ws, pb::ServerToAgent) {
    let mut ws = ws_connect(&s.ws_url(), &[]).await.expect("ws connect");
    let r = ws_exchange(&mut ws, &report_with(uid, 0, "svc", attrs)).await;
    (ws, r)
}

/// The agent as the API shows it, once it is stored.
pub async fn agent(s: &Server, uid: &[u8; 16]) -> Value {
    wait_for("agent stored", Duration::from_secs(10), || async {
        let (code, v) = s.get(&format!("/api/v1/agents/{}", uid_str(uid))).await;
        (code == 200).then_some(v)
    })
    .await
}

/// Names of the configurations offered to an agent, per the API.
pub async fn offered_names(s: &Server, uid: &[u8; 16]) -> Vec<String> {
    let v = agent(s, uid).await;
    v["remote_config"]["configs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A request with an explicit bearer token (or none).
pub async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = s.http().request(m, format!("{}{path}", s.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// Creates a user with the admin token.
pub async fn create_user(s: &Server, name: &str, password: &str, role: &str) {
    let (code, v) = s
        .send_json(
            "POST",
            "/api/v1/users",
            json!({"username": name, "password": password, "role": role}),
        )
        .await;
    assert_eq!(code, 201, "create user {name}: {v}");
}

/// Logs in; returns the JWT.
pub async fn login(s: &Server, name: &str, password: &str) -> String {
    let (code, _, v) = call(
        s,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": name, "password": password})),
    )
    .await;
    assert_eq!(code, 200, "login {name}: {v}");
    v["token"].as_str().unwrap().to_string()
}

/// The audit entries (newest first), all of them.
pub async fn audit(s: &Server, query: &str) -> Vec<Value> {
    let (code, v) = s.get(&format!("/api/v1/audit?limit=1000{query}")).await;
    assert_eq!(code, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

/// A test certificate authority, its certificate as a PEM file in `dir`.
pub struct TestCa {
    pub file: String,
    dir: std::path::PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub fingerprint: String,
}

impl TestCa {
    pub fn new(dir: &std::path::Path, name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, cert.pem()).unwrap();
        TestCa {
            file: file.display().to_string(),
            dir: dir.to_path_buf(),
            cert,
            key,
        }
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self, name: &str) -> Leaf {
        self.leaf(name, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(name, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, name: &str, purpose: rcgen::ExtendedKeyUsagePurpose) -> Leaf {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let write = |file: String, text: String| {
            let path = self.dir.join(file);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        Leaf {
            cert: write(format!("{name}.pem"), cert.pem()),
            key: write(format!("{name}.key"), key.serialize_pem()),
            fingerprint: opampd::server::ClientCertificate::of(cert.der())
                .0
                .to_string(),
        }
    }
}
