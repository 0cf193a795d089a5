//! PostgreSQL for the tests: the throwaway cluster scripts/test.sh starts
//! (scripts/pg-throwaway.sh) is named by `OPAMP_TEST_POSTGRES_URL`; every
//! server gets a fresh database of its own in it, created with `psql`.
//!
//! With `OPAMP_TEST_BACKEND=postgres` every [`crate::Server`] runs on
//! PostgreSQL, so the behaviour tests run a second time against it. Tests
//! that read the SQLite file itself call [`sqlite_only`] and skip there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the cluster (a superuser URL).
pub const URL_VAR: &str = "OPAMP_TEST_POSTGRES_URL";

/// Whether `OPAMP_TEST_BACKEND=postgres` asks every server to use PostgreSQL.
pub fn is_default_backend() -> bool {
    std::env::var("OPAMP_TEST_BACKEND").is_ok_and(|b| b.eq_ignore_ascii_case("postgres"))
}

/// The cluster's URL when one is reachable. Otherwise prints a visible
/// `SKIPPED: PostgreSQL not available (…)` line for `test` and returns None,
/// or panics when `OPAMP_REQUIRE_TOOLS=1` (CI) asks for every tool.
pub fn available(test: &str) -> Option<String> {
    let problem = match std::env::var(URL_VAR) {
        Err(_) => format!(
            "{URL_VAR} is not set: run scripts/test.sh, or start one with \
             `scripts/pg-throwaway.sh start` and export its URL"
        ),
        Ok(url) => {
            // Asked once per test process: every server start passes here.
            static ANSWERED: OnceLock<String> = OnceLock::new();
            if ANSWERED.get() == Some(&url) {
                return Some(url);
            }
            match psql(&url, "SELECT 1") {
                Ok(_) => {
                    let _ = ANSWERED.set(url.clone());
                    return Some(url);
                }
                Err(e) => format!("{URL_VAR} does not answer: {e}"),
            }
        }
    };
    if std::env::var("OPAMP_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{test}: PostgreSQL is required (OPAMP_REQUIRE_TOOLS=1) but {problem}");
    }
    eprintln!("SKIPPED: PostgreSQL not available ({problem}): {test}");
    None
}

/// True (after printing `SKIPPED (sqlite only): …`) when servers run on
/// PostgreSQL: the caller inspects the SQLite file itself and must return.
pub fn sqlite_only(test: &str) -> bool {
    if is_default_backend() {
        eprintln!("SKIPPED (sqlite only): {test} reads or replaces the SQLite file itself");
        return true;
    }
    false
}

/// Creates an empty database with a unique name; returns its URL.
pub fn fresh_database(cluster: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "opamp_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    psql(cluster, &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    with_database(cluster, &name)
}

/// The database of a server on `data_dir`: the one an earlier server of this
/// test process used on that directory (a restart on the same data keeps its
/// state, as with the SQLite file in it), else a fresh one. `None`: a fresh
/// database for a server with a temporary directory of its own.
pub fn database_for(cluster: &str, data_dir: Option<&Path>) -> String {
    static BY_DATA_DIR: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let Some(dir) = data_dir else {
        return fresh_database(cluster);
    };
    let mut known = BY_DATA_DIR.lock().unwrap_or_else(|e| e.into_inner());
    known
        .get_or_insert_with(HashMap::new)
        .entry(dir.to_path_buf())
        .or_insert_with(|| fresh_database(cluster))
        .clone()
}

/// Drops the database of `url` (made by [`fresh_database`]) in the
/// background, closing its remaining connections: its server is gone.
pub fn drop_database(url: &str) {
    let Ok(cluster) = std::env::var(URL_VAR) else {
        return;
    };
    let Some(name) = database_name(url) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = psql(
            &cluster,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
    });
}

/// The database named in `url`, when it is one of the tests' own.
fn database_name(url: &str) -> Option<String> {
    let base = url.split('?').next()?;
    let name = base.rsplit('/').next()?;
    (name.starts_with("opamp_test_")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then(|| name.to_string())
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs one SQL statement with `psql`; returns its unaligned output.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["--no-psqlrc", "--quiet", "--tuples-only", "--no-align"])
        .args(["--set", "ON_ERROR_STOP=1", "--command", sql])
        .arg(url)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| {
            format!("cannot run psql ({e}): install the Debian package postgresql-client")
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}
