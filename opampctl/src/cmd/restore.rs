//! `opampctl restore FILE [--data-dir DIR] [--yes]`.
//!
//! Checks come first and touch nothing: the checksum (FILE.sha256 beside the
//! file, when present), decompression, SQLite integrity and schema version
//! (or, for a PostgreSQL dump, opampd's dump check). Then either the running
//! server restores it (POST /api/v1/admin/restore), or, with --data-dir and
//! the daemon stopped, the current database is kept aside and the restored
//! file renamed into place (SQLite only).
//!
//! The hosted package files in `opamp_*.packages.tar` beside the backup
//! (`opampctl backup --with-packages`) are checked first too (their
//! checksum file, every file's SHA-256), then put back before the database:
//! through the server (`PUT /api/v1/admin/packages/files/{sha256}`, which
//! checks the SHA-256 again), or into `DATA_DIR/packages`.

use super::backup::{check_dump, gunzip_to, sync_dir, BackupKind};
use crate::cli::RestoreArgs;
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::files::{self, PrivateDir};
use crate::localdb;
use crate::output;
use crate::package_archive::{self, Entry};
use opamp_proto::api::RestoreReport;
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Reads the expected sha256 from `FILE.sha256` (sha256sum format), if present.
fn expected_checksum(file: &Path) -> Result<Option<String>> {
    let sum = PathBuf::from(format!("{}.sha256", file.display()));
    let text = match std::fs::read_to_string(&sum) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CtlError::usage(format!(
                "cannot read the checksum file {}: {e}",
                sum.display()
            )))
        }
    };
    let hex = text.split_whitespace().next().unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CtlError::usage(format!(
            "{} is not a sha256sum line (\"<64 hex digits>  FILE\"): fix or remove it",
            sum.display()
        )));
    }
    Ok(Some(hex.to_ascii_lowercase()))
}

fn sha256_of(file: &Path) -> Result<String> {
    let mut f = std::fs::File::open(file)
        .map_err(|e| CtlError::usage(format!("cannot read {}: {e}", file.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| CtlError::failed(format!("reading {}: {e}", file.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn is_gzip(file: &Path) -> Result<bool> {
    let mut head = [0u8; 2];
    let n = std::fs::File::open(file)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| CtlError::usage(format!("cannot read {}: {e}", file.display())))?;
    Ok(n == 2 && head == [0x1f, 0x8b])
}

/// Checks the backup and writes the plain database (or dump) to `dest` (a
/// new owner-only file, in a private directory); returns its schema version
/// and kind.
pub fn prepare(settings: &Settings, file: &Path, dest: &Path) -> Result<(u32, BackupKind)> {
    if !file.is_file() {
        return Err(CtlError::usage(format!(
            "backup file {} does not exist",
            file.display()
        )));
    }
    match expected_checksum(file)? {
        Some(expected) => {
            let got = sha256_of(file)?;
            if got != expected {
                return Err(CtlError::failed(format!(
                    "{} does not match its checksum file {}.sha256 (sha256 {got}, expected {expected}): the backup is damaged or incomplete; nothing was changed",
                    file.display(),
                    file.display()
                )));
            }
            output::info(settings, format!("checksum ok: {}", file.display()));
        }
        None => output::warn(format!(
            "no {}.sha256 beside the backup: the checksum cannot be checked (integrity is still checked)",
            file.display()
        )),
    }
    if is_gzip(file)? {
        gunzip_to(file, dest)
            .map_err(|e| CtlError::failed(format!("{}; nothing was changed", e.message)))?;
    } else {
        files::copy_private(file, dest).map_err(|e| {
            CtlError::failed(format!(
                "cannot copy {} to {}: {e}",
                file.display(),
                dest.display()
            ))
        })?;
    }
    let mut head = [0u8; 64];
    let n = std::fs::File::open(dest)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", dest.display())))?;
    let kind = if head[..n].starts_with(opampd::store::dump::MAGIC.as_bytes()) {
        BackupKind::PostgresDump
    } else {
        BackupKind::Sqlite
    };
    let checked = match kind {
        BackupKind::Sqlite => localdb::check_db(dest),
        BackupKind::PostgresDump => check_dump(dest),
    };
    let v = checked.map_err(|e| {
        CtlError::failed(format!(
            "{} cannot be restored: {e}; nothing was changed",
            file.display()
        ))
    })?;
    output::info(
        settings,
        match kind {
            BackupKind::Sqlite => format!("integrity ok, schema version {v}: {}", file.display()),
            BackupKind::PostgresDump => format!(
                "PostgreSQL dump complete, schema version {v}: {}",
                file.display()
            ),
        },
    );
    Ok((v, kind))
}

/// The package archive beside the backup `file`, checked (its checksum
/// file, every file's SHA-256), with its files; `None` when there is none.
pub fn packaged(settings: &Settings, file: &Path) -> Result<Option<(PathBuf, Vec<Entry>)>> {
    let Some(archive) = package_archive::beside(file).filter(|a| a.is_file()) else {
        return Ok(None);
    };
    match expected_checksum(&archive)? {
        Some(expected) => {
            let got = sha256_of(&archive)?;
            if got != expected {
                return Err(CtlError::failed(format!(
                    "{} does not match its checksum file {}.sha256 (sha256 {got}, expected {expected}): the package files' archive is damaged or incomplete; nothing was changed",
                    archive.display(),
                    archive.display()
                )));
            }
        }
        None => output::warn(format!(
            "no {}.sha256 beside the package archive: its checksum cannot be checked (each file's SHA-256 is still checked)",
            archive.display()
        )),
    }
    let entries = package_archive::check(&archive).map_err(|e| {
        CtlError::failed(format!(
            "{} cannot be restored: {e}; nothing was changed",
            archive.display()
        ))
    })?;
    output::info(
        settings,
        format!(
            "package files ok: {} files, each matching its SHA-256: {}",
            entries.len(),
            archive.display()
        ),
    );
    Ok(Some((archive, entries)))
}

/// Sends every file of the archive to the server, which checks its SHA-256.
async fn put_back(client: &Client, archive: &Path, entries: &[Entry]) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    for entry in entries {
        let mut file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", archive.display())))?;
        file.seek(std::io::SeekFrom::Start(entry.offset))
            .await
            .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", archive.display())))?;
        let body = futures_util::stream::unfold(file.take(entry.size), |mut part| async move {
            let mut buffer = vec![0u8; 256 * 1024];
            match part.read(&mut buffer).await {
                Ok(0) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok::<_, std::io::Error>(buffer), part))
                }
                Err(e) => Some((Err(e), part)),
            }
        });
        let route = format!("{}/{}", super::backup::packages::LIST_PATH, entry.sha256);
        client
            .send(
                client
                    .stream_request(Method::PUT, &route)
                    .header(reqwest::header::CONTENT_LENGTH, entry.size)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(reqwest::Body::wrap_stream(body)),
            )
            .await
            .map_err(|e| {
                CtlError::failed(format!(
                    "putting back the package file {} failed: {}; the database was not restored",
                    entry.sha256, e.message
                ))
            })?;
    }
    Ok(entries.len() as u64)
}

/// Copies every file of the archive into `packages` (a stopped opampd's
/// `DATA_DIR/packages`), owned like `owner_of`.
fn extract_into(
    archive: &Path,
    entries: &[Entry],
    packages: &Path,
    scratch: &PrivateDir,
    owner_of: &Path,
) -> Result<u64> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let owner = std::fs::metadata(owner_of).ok();
    let chown = |path: &Path| {
        if let Some(meta) = &owner {
            let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
        }
    };
    for entry in entries {
        let dir = packages.join(&entry.sha256[..2]);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| CtlError::failed(format!("cannot create {}: {e}", dir.display())))?;
        chown(packages);
        chown(&dir);
        let temp = scratch.join(&entry.sha256);
        package_archive::extract(archive, entry, &temp).map_err(|e| {
            CtlError::failed(format!(
                "{}: {e}; the database was not restored",
                archive.display()
            ))
        })?;
        chown(&temp);
        let dest = dir.join(&entry.sha256);
        std::fs::rename(&temp, &dest).map_err(|e| {
            CtlError::failed(format!(
                "cannot move the package file into {}: {e}",
                dest.display()
            ))
        })?;
    }
    sync_dir(packages);
    Ok(entries.len() as u64)
}

pub async fn run(settings: &Settings, client: &Client, args: &RestoreArgs) -> Result<()> {
    match &args.data_dir {
        Some(dir) => offline(settings, client, args, dir).await,
        None => online(settings, client, args).await,
    }
}

async fn online(settings: &Settings, client: &Client, args: &RestoreArgs) -> Result<()> {
    let scratch = PrivateDir::new_temp("restore").map_err(|e| {
        CtlError::failed(format!(
            "cannot create a private temporary directory in {}: {e} (set TMPDIR to a writable directory)",
            std::env::temp_dir().display()
        ))
    })?;
    let tmp = scratch.join("restore.db");
    let (_, kind) = prepare(settings, &args.file, &tmp)?;
    let packaged = packaged(settings, &args.file)?;
    crate::prompt::confirm(
        args.yes,
        &format!(
            "this replaces the database of {} with {} (the current one is kept aside on the server)",
            client.base,
            args.file.display()
        ),
    )?;
    // The files first: once the database names them they are there.
    let restored_files = match &packaged {
        Some((archive, entries)) => put_back(client, archive, entries).await?,
        None => 0,
    };
    let f = tokio::fs::File::open(&tmp)
        .await
        .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", tmp.display())))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let req = client
        .stream_request(Method::POST, "/api/v1/admin/restore")
        .header(
            reqwest::header::CONTENT_TYPE,
            match kind {
                BackupKind::Sqlite => "application/vnd.sqlite3",
                BackupKind::PostgresDump => "application/sql",
            },
        )
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::from(f));
    let resp = client.send(req).await?;
    let mut report: RestoreReport = resp.json().await.map_err(|e| {
        CtlError::failed(format!(
            "the server restored the database but its reply is unexpected ({e}); check `opampctl health`"
        ))
    })?;
    report.package_files_restored = restored_files;
    if settings.quiet {
        return Ok(());
    }
    if settings.human() {
        output::out(&format!(
            "restored {} into {}: schema version {}, previous database kept as {} (on the server); {} connected agents asked to report their full state{}{}",
            args.file.display(),
            client.base,
            report.schema_version,
            report.kept_aside,
            report.agents_notified,
            match report.live_agents_added {
                0 => String::new(),
                n => format!("; {n} connected agents the backup did not contain are kept in the inventory"),
            },
            files_restored(report.package_files_restored),
        ));
        Ok(())
    } else {
        output::machine(settings, &report)
    }
}

/// Says why the daemon is considered running, if it is.
async fn daemon_running(client: &Client, db: &Path) -> Result<Option<String>> {
    let mut reasons = Vec::new();
    match localdb::held_by_another_process(db) {
        Ok(true) => reasons.push(format!(
            "{} is open in another process (a running opampd holds it)",
            db.display()
        )),
        Ok(false) => {}
        Err(e) => {
            return Err(CtlError::failed(format!(
                "cannot tell whether opampd holds the database: {e}"
            )))
        }
    }
    if crate::context::is_local_url(&client.base) {
        let live = client
            .send_any(client.request(Method::GET, "/health/live"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if live {
            reasons.push(format!("opampd answers at {}/health/live", client.base));
        }
    }
    Ok((!reasons.is_empty()).then(|| reasons.join("; and ")))
}

async fn offline(
    settings: &Settings,
    client: &Client,
    args: &RestoreArgs,
    dir: &Path,
) -> Result<()> {
    if !dir.is_dir() {
        return Err(CtlError::usage(format!(
            "--data-dir {} is not a directory",
            dir.display()
        )));
    }
    let db = dir.join("opamp.db");
    // In the data directory, so the restored file is renamed within one file system.
    let scratch = PrivateDir::new_in(dir, "restore").map_err(|e| {
        CtlError::failed(format!(
            "cannot create a private temporary directory in {}: {e}",
            dir.display()
        ))
    })?;
    let incoming = scratch.join("opamp.db");
    let (_, kind) = prepare(settings, &args.file, &incoming)?;
    let packaged = packaged(settings, &args.file)?;
    if kind == BackupKind::PostgresDump {
        return Err(CtlError::usage(format!(
            "{} is a PostgreSQL dump: restore it through a server on PostgreSQL (leave out --data-dir), or load it into an empty database with `gunzip -c FILE | psql -v ON_ERROR_STOP=1 URL`; nothing was changed",
            args.file.display()
        )));
    }
    if let Some(why) = daemon_running(client, &db).await? {
        return Err(CtlError::failed(format!(
            "opampd is running: {why}. Stop it first (e.g. `systemctl stop opampd`), or restore through the API by leaving out --data-dir; nothing was changed"
        )));
    }
    crate::prompt::confirm(
        args.yes,
        &format!(
            "this replaces {} with {}",
            db.display(),
            args.file.display()
        ),
    )?;
    // A free name, whatever earlier restores left; the file is still
    // created new below, so a link planted meanwhile is never written through.
    let aside = opampd::store::sqlite::dbfile::keep_aside_path(dir, chrono::Utc::now());
    if db.exists() {
        // The WAL goes into the file first, so the kept copy is the whole database.
        localdb::checkpoint_and_close(&db)
            .map_err(|e| CtlError::failed(format!("{e}; nothing was changed")))?;
        for ext in ["-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{ext}", db.display()));
            if p.exists() {
                std::fs::remove_file(&p)
                    .map_err(|e| CtlError::failed(format!("cannot remove {}: {e}", p.display())))?;
            }
        }
        // Keep the current database: a hard link (or a copy), never a move,
        // so opamp.db exists at every moment.
        if std::fs::hard_link(&db, &aside).is_err() {
            files::copy_private(&db, &aside).map_err(|e| {
                CtlError::failed(format!(
                    "cannot keep the current database as {}: {e}; nothing was changed",
                    aside.display()
                ))
            })?;
        }
        // The restored file gets the owner and mode of the one it replaces.
        if let Ok(meta) = std::fs::metadata(&db) {
            use std::os::unix::fs::MetadataExt;
            let _ = std::os::unix::fs::chown(&incoming, Some(meta.uid()), Some(meta.gid()));
            let _ = std::fs::set_permissions(&incoming, meta.permissions());
        }
    }
    let restored_files = match &packaged {
        Some((archive, entries)) => {
            extract_into(archive, entries, &dir.join("packages"), &scratch, dir)?
        }
        None => 0,
    };
    std::fs::rename(&incoming, &db).map_err(|e| {
        CtlError::failed(format!(
            "cannot move the restored database into {}: {e}",
            db.display()
        ))
    })?;
    sync_dir(dir);
    drop(scratch);
    let report = RestoreReport {
        kept_aside: if aside.exists() {
            aside.display().to_string()
        } else {
            String::new()
        },
        schema_version: localdb::check_db(&db).unwrap_or(0),
        restored_schema_version: localdb::check_db(&db).unwrap_or(0),
        bytes: std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0),
        agents_notified: 0,
        live_agents_added: 0,
        package_files_restored: restored_files,
    };
    if settings.quiet {
        return Ok(());
    }
    if settings.human() {
        output::out(&format!(
            "restored {} into {}{}{}; start opampd (e.g. `systemctl start opampd`): agents reconnect and report their full state",
            args.file.display(),
            db.display(),
            if report.kept_aside.is_empty() {
                String::new()
            } else {
                format!(", previous database kept as {}", report.kept_aside)
            },
            files_restored(report.package_files_restored),
        ));
        Ok(())
    } else {
        output::machine(settings, &report)
    }
}

/// The words of a restore's output about package files put back.
fn files_restored(count: u64) -> String {
    match count {
        0 => String::new(),
        1 => "; 1 hosted package file put back".into(),
        n => format!("; {n} hosted package files put back"),
    }
}
