//! The package catalogue's records, and the rules every backend applies when
//! a version or its files are added.

use super::package_rollouts::PackageRolloutRow;
use super::users::AuditEntry;
use std::cmp::Ordering;

/// A package version as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageRow {
    pub name: String,
    pub version: String,
    pub top_level: bool,
    pub created_at: i64,
    pub created_by: String,
    pub files: Vec<FileRow>,
}

/// One file of a package version.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub os: String,
    pub arch: String,
    /// By reference; `None` when hosted.
    pub url: Option<String>,
    /// Lowercase hex.
    pub sha256: String,
    pub signature: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub hosted: bool,
    pub created_at: i64,
}

/// A version (or more files for one) to add.
#[derive(Debug, Clone)]
pub struct PackageAdd {
    pub name: String,
    pub version: String,
    pub top_level: bool,
    pub files: Vec<FileRow>,
    pub allow_downgrade: bool,
    pub actor: String,
    pub remote_addr: Option<String>,
}

/// What adding a package did.
#[derive(Debug, Clone, PartialEq)]
pub enum AddOutcome {
    /// Stored; `created` when the version is new.
    Added { package: PackageRow, created: bool },
    /// The version exists with the other type.
    TypeDiffers { top_level: bool },
    /// A platform already has another file.
    FileDiffers { os: String, arch: String },
    /// A newer version of the name is listed (and no downgrade was allowed).
    Downgrade { newest: String },
}

/// Why `add` cannot be stored, given the version as stored (if it is) and
/// every listed version of the name; `None` when it can.
pub fn refusal(
    existing: Option<&PackageRow>,
    versions: &[String],
    add: &PackageAdd,
) -> Option<AddOutcome> {
    match existing {
        Some(row) if row.top_level != add.top_level => Some(AddOutcome::TypeDiffers {
            top_level: row.top_level,
        }),
        Some(row) => add.files.iter().find_map(|file| {
            row.files
                .iter()
                .find(|old| old.os == file.os && old.arch == file.arch)
                .filter(|old| old.sha256 != file.sha256 || old.url != file.url)
                .map(|_| AddOutcome::FileDiffers {
                    os: file.os.clone(),
                    arch: file.arch.clone(),
                })
        }),
        None if add.allow_downgrade => None,
        None => versions
            .iter()
            .max_by(|a, b| crate::packages::compare_versions(a, b))
            .filter(|newest| {
                crate::packages::compare_versions(newest, &add.version) == Ordering::Greater
            })
            .map(|newest| AddOutcome::Downgrade {
                newest: newest.clone(),
            }),
    }
}

/// The audit entry of an add that stored `added` (`os/arch` of the new files).
pub fn add_audit(add: &PackageAdd, created: bool, added: &[String]) -> AuditEntry {
    AuditEntry::ok(
        &add.actor,
        if created {
            "package.create"
        } else {
            "package.update"
        },
        Some(&format!("{}/{}", add.name, add.version)),
        add.remote_addr.as_deref(),
        serde_json::json!({
            "type": if add.top_level { "top_level" } else { "addon" },
            "files": added,
            "hosted": add.files.iter().any(|f| f.hosted),
        }),
    )
}

/// The audit entry of a deleted version.
/// What deleting a version came to.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    Deleted,
    Missing,
    /// An active (running or paused) rollout of the package offers it.
    InRollout(Box<PackageRolloutRow>),
}

/// The package's latest rollout when it is active and offers `version`
/// (rolled out, or kept by the agents it has not released yet): the
/// version cannot be deleted meanwhile.
pub fn blocking_rollout(
    latest: Option<PackageRolloutRow>,
    version: &str,
) -> Option<PackageRolloutRow> {
    latest.filter(|r| {
        matches!(r.state.as_str(), "running" | "paused")
            && (r.version == version || r.previous_version.as_deref() == Some(version))
    })
}

pub fn delete_audit(
    name: &str,
    version: &str,
    actor: &str,
    remote_addr: Option<&str>,
) -> AuditEntry {
    AuditEntry::ok(
        actor,
        "package.delete",
        Some(&format!("{name}/{version}")),
        remote_addr,
        serde_json::json!({}),
    )
}
