//! No route can ship unprotected. The router is built from opampd's one route
//! table (`opampd::api::routes()`, which this test walks, so a new route is
//! picked up without editing it): every path in it is tried with every method
//! and no token against a real opampd. Each answer must be 401 for a protected
//! (method, path) pair and 405 for a method the path does not serve. Open
//! routes are named here, on purpose: opening one means editing this list.

use opamp_tests::Server;
use opampd::api::Access;
use std::collections::{BTreeMap, BTreeSet};

/// Routes served without an operator token, and why.
const OPEN: &[(&str, &str)] = &[
    ("POST", "/api/v1/auth/login"), // it is how a token is obtained
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/health/live"),
    ("GET", "/metrics"),
];

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
    let table = opampd::api::routes();
    assert!(table.len() >= 30, "too few routes in the table");
    let open: BTreeSet<(&str, &str)> = table
        .iter()
        .filter(|r| r.access == Access::Open)
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        open,
        OPEN.iter().copied().collect(),
        "the open routes are exactly the ones named here"
    );
    // Path → the methods it serves and whether each is protected.
    let mut paths: BTreeMap<&str, BTreeMap<&str, bool>> = BTreeMap::new();
    for route in &table {
        paths
            .entry(route.path)
            .or_default()
            .insert(route.method, route.least_role().is_some());
    }
    let client = reqwest::Client::new();
    let mut checked = 0;
    for (path, served) in &paths {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let expected = match served.get(method) {
                Some(true) => 401,
                Some(false) => continue,
                None => 405,
            };
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
            assert_eq!(
                r.status().as_u16(),
                expected,
                "{method} {path} without a token"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 30 * 2,
        "checked only {checked} (method, path) pairs"
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
