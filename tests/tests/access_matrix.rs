//! No route can ship unprotected: every path the router registers (read from
//! its source, so a new `.route(...)` is picked up without editing this test)
//! is tried with every method and no token against a real opampd. Each
//! answer must be 401 (and then the pair must be listed in `ROUTES` with a
//! role) or 405 (method not routed). Open paths are named here, on purpose.

use opamp_tests::Server;
use std::collections::BTreeSet;

/// Paths served without an operator token, and why.
const OPEN: &[&str] = &[
    "/api/v1/auth/login", // it is how a token is obtained
    "/health",
    "/health/ready",
    "/health/live",
    "/metrics",
];

fn router_paths() -> BTreeSet<String> {
    let src = include_str!("../../opampd/src/api/mod.rs");
    let mut paths = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let arg = rest.trim_start();
        if let Some(stripped) = arg.strip_prefix('"') {
            let end = stripped.find('"').expect("closing quote");
            paths.insert(stripped[..end].to_string());
        }
    }
    paths
}

fn concrete(template: &str) -> String {
    template
        .replace("{uid}", "0190c1e2-7dec-71d0-a765-00a0c91e6bf6")
        .replace("{name}", "some-config")
        .replace("{n}", "1")
        .replace("{id}", "some-token")
}

#[tokio::test]
async fn every_route_demands_a_token_or_is_knowingly_open() {
    let s = Server::start();
    let paths = router_paths();
    assert!(
        paths.len() >= 30,
        "parsed too few routes from the router source: {paths:?}"
    );
    let declared: BTreeSet<(String, String)> = opampd::api::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let client = reqwest::Client::new();
    let mut protected = BTreeSet::new();
    for path in &paths {
        if OPEN.contains(&path.as_str()) {
            continue;
        }
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let r = client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{}", s.url(), concrete(path)),
                )
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                401 => {
                    assert!(
                        declared.contains(&(method.to_string(), path.clone())),
                        "{method} {path} is protected but missing from opampd::api::ROUTES"
                    );
                    protected.insert((method.to_string(), path.clone()));
                }
                405 => {}
                other => panic!("{method} {path} answered {other} without a token"),
            }
        }
    }
    assert_eq!(
        protected, declared,
        "ROUTES lists exactly the protected (method, path) pairs"
    );
    // The open paths really are open, and health never needs a token.
    for path in ["/health", "/health/ready", "/health/live", "/metrics"] {
        let r = client
            .get(format!("{}{path}", s.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
}
