//! The store's boundary: database drivers are used only inside their
//! backend's folder. Reads every `.rs` file of the workspace and names each
//! file and line that breaks the rule.

use std::path::{Path, PathBuf};

/// A driver crate and the folders (or files) allowed to use it.
struct Rule {
    /// The crate's name as Rust code writes it.
    name: String,
    allowed: &'static [&'static str],
}

/// The PostgreSQL backend, and the replicas' coordination over the same
/// database (leases, LISTEN/NOTIFY, the rollout leader's advisory lock).
const POSTGRES_FOLDERS: &[&str] = &["opampd/src/store/postgres/", "opampd/src/cluster/postgres/"];

fn rules() -> Vec<Rule> {
    // Built from pieces, so this file does not name the drivers itself.
    vec![
        Rule {
            name: ["rus", "qlite"].concat(),
            allowed: &[
                "opampd/src/store/sqlite/",
                // Checks backup files offline, on the server's host.
                "opampctl/src/localdb.rs",
                // Tests inspect and damage database files directly.
                "tests/",
            ],
        },
        Rule {
            name: ["tokio", "_postgres"].concat(),
            allowed: POSTGRES_FOLDERS,
        },
        Rule {
            name: ["deadpool", "_postgres"].concat(),
            allowed: POSTGRES_FOLDERS,
        },
    ]
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn drivers_are_used_only_inside_their_backend() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("opampd lives in the workspace");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(
        files.len() > 50,
        "found only {} .rs files under {}",
        files.len(),
        root.display()
    );
    let rules = rules();
    let mut broken = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for rule in &rules {
            if rule.allowed.iter().any(|a| relative.starts_with(a)) {
                continue;
            }
            for (n, line) in text.lines().enumerate() {
                if line.contains(&rule.name) {
                    broken.push(format!(
                        "{relative}:{}: uses {} outside {}",
                        n + 1,
                        rule.name,
                        rule.allowed.join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "database drivers belong inside their backend's folder (opampd/src/store/BACKEND/); \
         add a typed method to store::Backend instead:\n{}",
        broken.join("\n")
    );
}
