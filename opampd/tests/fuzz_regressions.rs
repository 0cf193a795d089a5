//! Replays every fuzz corpus and saved crasher (fuzz/corpus/<target>,
//! fuzz/regressions/<target>) through the same entry points the fuzz targets
//! use, so a bug once found stays fixed in the normal test run.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            let path = e.path();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{} panics on {}", target, path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn ws_message() {
    replay("ws_message", opampd::fuzzing::ws_message);
}

#[test]
fn agent_to_server() {
    replay("agent_to_server", opampd::fuzzing::agent_to_server);
}

#[test]
fn http_body() {
    replay("http_body", opampd::fuzzing::http_body);
}

#[test]
fn selector() {
    replay("selector", opampd::fuzzing::selector);
}

#[test]
fn config_file() {
    replay("config_file", opampd::fuzzing::config_file);
}
