//! `cargo xtask codegen`: the files generated from the clap definitions.
//!
//! - `man/opampctl.1` and one `man/opampctl-*.1` per subcommand, from
//!   `opampctl::cli::command` (the same pages `opampctl man` prints);
//! - `man/opampd.8`, from `opampd::cli::command` and the other sections
//!   kept in `opampd::cli`;
//! - `completions/` for bash, zsh and fish, from `opampctl::cli::command`.
//!
//! `man/` and `completions/` hold only generated files: [`write`] removes
//! any other file there, and [`stale`] reports it.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Directories that hold only generated files.
pub const GENERATED_DIRS: &[&str] = &["man", "completions"];

/// What to run when a generated file is stale.
pub const REGENERATE: &str = "run `cargo xtask codegen` and commit the result";

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the repository root, with `/` separators.
    pub path: String,
    pub content: Vec<u8>,
}

/// The repository root (the parent of the xtask crate).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Renders every generated file, man pages first.
pub fn generate() -> Result<Vec<GeneratedFile>> {
    let mut files = Vec::new();
    for (name, content) in opampctl::docs::man_pages().context("rendering opampctl's man pages")? {
        files.push(GeneratedFile {
            path: format!("man/{name}"),
            content,
        });
    }
    let (name, content) = crate::opampd_page::render().context("rendering opampd's man page")?;
    files.push(GeneratedFile {
        path: format!("man/{name}"),
        content,
    });
    for (name, shell) in opampctl::docs::COMPLETION_FILES {
        files.push(GeneratedFile {
            path: format!("completions/{name}"),
            content: opampctl::docs::completion(*shell),
        });
    }
    Ok(files)
}

/// A difference between the generated files and those under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Generated, but absent from the repository.
    Missing(String),
    /// Present with other content than generated.
    Stale(String),
    /// In a generated directory, but not generated.
    Extra(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing(path) => write!(f, "{path} is missing"),
            Difference::Stale(path) => write!(f, "{path} is stale"),
            Difference::Extra(path) => write!(f, "{path} is not generated"),
        }
    }
}

/// Compares `generated` with the files under `root`.
fn differences(root: &Path, generated: &[GeneratedFile]) -> Result<Vec<Difference>> {
    let mut found = Vec::new();
    for file in generated {
        match std::fs::read(root.join(&file.path)) {
            Ok(content) if content == file.content => {}
            Ok(_) => found.push(Difference::Stale(file.path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                found.push(Difference::Missing(file.path.clone()))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.path)),
        }
    }
    for dir in GENERATED_DIRS {
        let entries = match std::fs::read_dir(root.join(dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {dir}/")),
        };
        let mut extra = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {dir}/"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{dir}/{name}");
            if !name.starts_with('.') && !generated.iter().any(|file| file.path == path) {
                extra.push(Difference::Extra(path));
            }
        }
        extra.sort_by_key(|difference| difference.to_string());
        found.extend(extra);
    }
    Ok(found)
}

/// What differs between the committed files under `root` and what the
/// generator produces now (empty when everything is fresh).
pub fn stale(root: &Path) -> Result<Vec<Difference>> {
    differences(root, &generate()?)
}

/// Brings the files under `root` up to date; returns what changed.
pub fn write(root: &Path) -> Result<Vec<String>> {
    let generated = generate()?;
    let mut changes = Vec::new();
    for difference in differences(root, &generated)? {
        match &difference {
            Difference::Missing(path) | Difference::Stale(path) => {
                let file = generated
                    .iter()
                    .find(|file| &file.path == path)
                    .context("a difference names a file that was not generated")?;
                let target = root.join(path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::fs::write(&target, &file.content)
                    .with_context(|| format!("cannot write {path}"))?;
                changes.push(format!("wrote {path}"));
            }
            Difference::Extra(path) => {
                std::fs::remove_file(root.join(path))
                    .with_context(|| format!("cannot remove {path}"))?;
                changes.push(format!("removed {path}"));
            }
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_brings_a_tree_up_to_date_and_stale_then_finds_nothing() {
        let root = std::env::temp_dir().join(format!("xtask-codegen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("man")).unwrap();
        std::fs::write(root.join("man/opampctl-gone.1"), b"old").unwrap();
        std::fs::write(root.join("man/opampctl.1"), b"old").unwrap();
        let before = stale(&root).unwrap();
        assert!(before.contains(&Difference::Stale("man/opampctl.1".into())));
        assert!(before.contains(&Difference::Extra("man/opampctl-gone.1".into())));
        assert!(before.contains(&Difference::Missing("man/opampd.8".into())));
        assert!(before.contains(&Difference::Missing("completions/_opampctl".into())));
        let changes = write(&root).unwrap();
        assert!(changes.contains(&"removed man/opampctl-gone.1".to_string()));
        assert_eq!(stale(&root).unwrap(), Vec::new());
        let _ = std::fs::remove_dir_all(&root);
    }
}
