//! The SQL of the package catalogue: package versions and their files.
//! Called through the typed methods on [`Store`] below (SQLite only, until
//! they move into `Backend`).

use crate::auth::insert_audit;
use crate::store::{now_ms, Store, WriteError};
use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension, Row};

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

/// What [`Store::add_package`] did.
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

impl Store {
    /// One package version with its files.
    pub async fn package(&self, name: &str, version: &str) -> Result<Option<PackageRow>> {
        let (name, version) = (name.to_string(), version.to_string());
        self.read("package_get", move |c| get(c, &name, &version))
            .await
    }

    /// Every version of `name` (every package when `None`), by name then version.
    pub async fn packages(&self, name: Option<String>) -> Result<Vec<PackageRow>> {
        self.read("package_list", move |c| list(c, name.as_deref()))
            .await
    }

    /// Adds a version or more files for it, audited, in one transaction.
    pub async fn add_package(&self, add: PackageAdd) -> Result<AddOutcome, WriteError> {
        self.write("package_add", move |c| insert(c, add)).await
    }

    /// Deletes a version and its files, audited; whether it existed.
    pub async fn delete_package(
        &self,
        name: &str,
        version: &str,
        actor: &str,
        remote_addr: Option<String>,
    ) -> Result<bool, WriteError> {
        let (name, version, actor) = (name.to_string(), version.to_string(), actor.to_string());
        self.write("package_delete", move |c| {
            let deleted = c.execute(
                "DELETE FROM packages WHERE name = ?1 AND version = ?2",
                params![name, version],
            )? > 0;
            c.execute(
                "DELETE FROM package_files WHERE name = ?1 AND version = ?2",
                params![name, version],
            )?;
            if deleted {
                insert_audit(
                    c,
                    &actor,
                    "package.delete",
                    Some(&format!("{name}/{version}")),
                    remote_addr.as_deref(),
                    "ok",
                    &serde_json::json!({}),
                )?;
            }
            Ok(deleted)
        })
        .await
    }
}

fn package_row(r: &Row<'_>) -> rusqlite::Result<PackageRow> {
    Ok(PackageRow {
        name: r.get(0)?,
        version: r.get(1)?,
        top_level: r.get(2)?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        files: Vec::new(),
    })
}

fn file_row(r: &Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        os: r.get(0)?,
        arch: r.get(1)?,
        url: r.get(2)?,
        sha256: r.get(3)?,
        signature: r.get(4)?,
        size: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
        hosted: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn files(c: &Connection, name: &str, version: &str) -> Result<Vec<FileRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT os, arch, url, sha256, signature, size, hosted, created_at FROM package_files
         WHERE name = ?1 AND version = ?2 ORDER BY os, arch",
    )?;
    let rows = stmt.query_map(params![name, version], file_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn get(c: &Connection, name: &str, version: &str) -> Result<Option<PackageRow>> {
    let row = c
        .query_row(
            "SELECT name, version, top_level, created_at, created_by FROM packages
             WHERE name = ?1 AND version = ?2",
            params![name, version],
            package_row,
        )
        .optional()?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    row.files = files(c, name, version)?;
    Ok(Some(row))
}

pub fn list(c: &Connection, name: Option<&str>) -> Result<Vec<PackageRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, version, top_level, created_at, created_by FROM packages
         WHERE ?1 IS NULL OR name = ?1 ORDER BY name, created_at, version",
    )?;
    let mut rows = stmt
        .query_map(params![name], package_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for row in &mut rows {
        row.files = files(c, &row.name, &row.version)?;
    }
    Ok(rows)
}

fn insert(c: &Connection, add: PackageAdd) -> Result<AddOutcome> {
    let now = now_ms();
    let existing = get(c, &add.name, &add.version)?;
    let created = existing.is_none();
    match &existing {
        Some(row) if row.top_level != add.top_level => {
            return Ok(AddOutcome::TypeDiffers {
                top_level: row.top_level,
            })
        }
        Some(row) => {
            for file in &add.files {
                if let Some(old) = row
                    .files
                    .iter()
                    .find(|f| f.os == file.os && f.arch == file.arch)
                {
                    if old.sha256 != file.sha256 || old.url != file.url {
                        return Ok(AddOutcome::FileDiffers {
                            os: file.os.clone(),
                            arch: file.arch.clone(),
                        });
                    }
                }
            }
        }
        None => {
            if !add.allow_downgrade {
                let newest = list(c, Some(&add.name))?
                    .into_iter()
                    .map(|row| row.version)
                    .max_by(|a, b| crate::packages::compare_versions(a, b));
                if let Some(newest) = newest.filter(|newest| {
                    crate::packages::compare_versions(newest, &add.version)
                        == std::cmp::Ordering::Greater
                }) {
                    return Ok(AddOutcome::Downgrade { newest });
                }
            }
            c.execute(
                "INSERT INTO packages (name, version, top_level, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![add.name, add.version, add.top_level, now, add.actor],
            )?;
        }
    }
    let mut stmt = c.prepare_cached(
        "INSERT OR IGNORE INTO package_files
             (name, version, os, arch, url, sha256, signature, size, hosted, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut added = Vec::new();
    for file in &add.files {
        let inserted = stmt.execute(params![
            add.name,
            add.version,
            file.os,
            file.arch,
            file.url,
            file.sha256,
            file.signature,
            file.size.map(|n| n as i64),
            file.hosted,
            now,
        ])?;
        if inserted > 0 {
            added.push(format!("{}/{}", file.os, file.arch));
        }
    }
    insert_audit(
        c,
        &add.actor,
        if created {
            "package.create"
        } else {
            "package.update"
        },
        Some(&format!("{}/{}", add.name, add.version)),
        add.remote_addr.as_deref(),
        "ok",
        &serde_json::json!({
            "type": if add.top_level { "top_level" } else { "addon" },
            "files": added,
            "hosted": add.files.iter().any(|f| f.hosted),
        }),
    )?;
    let package = get(c, &add.name, &add.version)?
        .ok_or_else(|| anyhow::anyhow!("package {}/{} vanished", add.name, add.version))?;
    Ok(AddOutcome::Added { package, created })
}
