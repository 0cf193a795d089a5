//! `opampctl backup [--dir DIR [--create-dir]] [--retention-days N] [--verify] [--data-dir DIR] [--with-packages]`.
//!
//! The backup is `opamp_YYYYmmdd_HHMMSS.db.gz` (UTC; a SQLite database), or
//! `opamp_YYYYmmdd_HHMMSS.sql.gz` from a server on PostgreSQL (opampd's SQL
//! dump, which `psql` loads too), plus `FILE.sha256` in sha256sum format;
//! with `--with-packages` also `opamp_YYYYmmdd_HHMMSS.packages.tar` and its
//! `.sha256`, the hosted package files the catalogue names ([`packages`]).
//! Without it the catalogue is backed up but not the files' bytes, and the
//! output says how many were left out. Every file is written
//! owner-only (0600) in a private temporary directory inside --dir, synced,
//! then renamed to their final names, never over an existing file or
//! symlink: a file under a final name is always complete. Any error removes
//! the temporary directory and exits non-zero. A backup that was killed
//! leaves its temporary directory behind; the next backup in --dir removes
//! it once the process that made it is gone.

pub mod packages;

use crate::cli::BackupArgs;
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::files::{self, PrivateDir};
use crate::localdb;
use crate::output;
use flate2::write::GzEncoder;
use reqwest::Method;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Result of a backup; the JSON of `-o json`.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub file: String,
    pub sha256_file: String,
    pub sha256: String,
    /// Size of the compressed file.
    pub bytes: u64,
    /// Size of the database snapshot before compression.
    pub database_bytes: u64,
    pub schema_version: Option<u32>,
    /// `server` (through the API) or `local` (--data-dir).
    pub source: String,
    pub verified: bool,
    pub pruned: Vec<String>,
    /// Temporary directories of killed backups, removed.
    pub leftovers_removed: Vec<String>,
    /// The hosted package files: included or not, how many.
    pub packages: packages::PackagesReport,
}

/// Removes the listed files when dropped, unless disarmed.
pub struct Cleanup(pub Vec<PathBuf>);

impl Cleanup {
    pub fn disarm(&mut self) {
        self.0.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The gzip file being written and its checksum.
struct GzOut {
    enc: GzEncoder<Hashing<std::fs::File>>,
    raw: u64,
    head: Vec<u8>,
}

impl GzOut {
    /// A new owner-only file (a backup holds password hashes, token digests
    /// and every agent's data).
    fn create(path: &Path) -> std::io::Result<GzOut> {
        let f = files::create_private(path)?;
        Ok(GzOut {
            enc: GzEncoder::new(
                Hashing {
                    inner: f,
                    hash: Sha256::new(),
                    bytes: 0,
                },
                // Level 1: several times the throughput of the default level
                // for a little more size; backups must not take minutes.
                flate2::Compression::fast(),
            ),
            raw: 0,
            head: Vec::with_capacity(16),
        })
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if self.head.len() < 16 {
            let take = (16 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.raw += chunk.len() as u64;
        self.enc.write_all(chunk)
    }

    /// Finishes the stream and syncs the file; returns (sha256 hex, compressed bytes).
    fn finish(self) -> std::io::Result<(String, u64, u64, Vec<u8>)> {
        let mut h = self.enc.finish()?;
        h.flush()?;
        h.inner.sync_all()?;
        Ok((hex::encode(h.hash.finalize()), h.bytes, self.raw, self.head))
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CtlError {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT) => {
            " (the disk or the file size limit is full: free space or choose another --dir)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (no permission: run as the user that owns the directory, or choose another --dir)"
        }
        Some(libc::EEXIST) | Some(libc::ELOOP) => {
            " (something, perhaps a symlink, already has that name: opampctl never writes through or over it; remove it or choose another --dir)"
        }
        _ => "",
    };
    CtlError::failed(format!("{what} {} failed: {e}{hint}", path.display()))
}

/// Syncs a directory, so renames in it survive a crash.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// What a backup file holds, told by the server (`x-opampd-backup-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// A SQLite database: `.db.gz`.
    Sqlite,
    /// opampd's PostgreSQL dump: `.sql.gz`.
    PostgresDump,
}

impl BackupKind {
    /// The kind a backup response carries.
    fn of_response(response: &reqwest::Response) -> BackupKind {
        match response
            .headers()
            .get("x-opampd-backup-format")
            .and_then(|v| v.to_str().ok())
        {
            Some("postgresql-dump") => BackupKind::PostgresDump,
            _ => BackupKind::Sqlite,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            BackupKind::Sqlite => "db.gz",
            BackupKind::PostgresDump => "sql.gz",
        }
    }

    /// Whether the first bytes of a snapshot are what this kind starts with.
    fn starts_right(self, head: &[u8]) -> bool {
        match self {
            BackupKind::Sqlite => head == localdb::SQLITE_MAGIC.as_slice(),
            BackupKind::PostgresDump => {
                opampd::store::dump::MAGIC.as_bytes().starts_with(head) && !head.is_empty()
            }
        }
    }
}

/// Where the snapshot comes from.
enum Snapshot<'a> {
    /// The database file in this data directory (SQLite's online backup).
    Local(&'a Path),
    /// The server's answer to GET /api/v1/admin/backup.
    Server(reqwest::Response),
}

/// Whether `name` is a backup file name (or its checksum) this tool writes;
/// returns the timestamp in it.
pub fn backup_time(name: &str) -> Option<chrono::NaiveDateTime> {
    let name = name.strip_suffix(".sha256").unwrap_or(name);
    let stem = name.strip_prefix("opamp_")?;
    let stem = stem
        .strip_suffix(".db.gz")
        .or_else(|| stem.strip_suffix(".sql.gz"))
        .or_else(|| stem.strip_suffix(crate::package_archive::SUFFIX))?;
    let bytes = stem.as_bytes();
    if bytes.len() != 15
        || bytes[8] != b'_'
        || !bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 8 || b.is_ascii_digit())
    {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(stem, "%Y%m%d_%H%M%S").ok()
}

/// Deletes backups (and their .sha256) in `dir` older than `days`, judged
/// by the time in their names; never `keep`.
pub fn prune(dir: &Path, days: u64, keep: &[&str]) -> Result<Vec<String>> {
    let cutoff = chrono::Utc::now().naive_utc() - chrono::Duration::days(days as i64);
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        if keep.contains(&name.as_str()) {
            continue;
        }
        let Some(t) = backup_time(&name) else {
            continue;
        };
        if t < cutoff {
            let p = dir.join(&name);
            std::fs::remove_file(&p).map_err(|e| io_err("removing old backup", &p, e))?;
            removed.push(p.display().to_string());
        }
    }
    Ok(removed)
}

/// Checks a written backup: checksum, decompression, integrity, schema (a
/// dump: [`opampd::store::dump::check`]). The decompressed copy of a SQLite
/// backup goes to a new private directory in `scratch_parent`.
pub fn verify(
    file: &Path,
    kind: BackupKind,
    expected_sha: &str,
    scratch_parent: &Path,
) -> Result<u32> {
    let got = sha256_of(file)?;
    if got != expected_sha {
        return Err(CtlError::failed(format!(
            "verification of {} failed: its sha256 is {got}, expected {expected_sha}",
            file.display()
        )));
    }
    if kind == BackupKind::PostgresDump {
        return check_dump(file).map_err(|e| {
            CtlError::failed(format!("verification of {} failed: {e}", file.display()))
        });
    }
    let scratch = PrivateDir::new_in(scratch_parent, "verify").map_err(|e| {
        io_err(
            "creating a private temporary directory in",
            scratch_parent,
            e,
        )
    })?;
    let tmp = scratch.join("verify.db");
    gunzip_to(file, &tmp)?;
    localdb::check_db(&tmp)
        .map_err(|e| CtlError::failed(format!("verification of {} failed: {e}", file.display())))
}

/// Checks a package archive: its checksum, then every file's bytes against
/// its SHA-256; returns its files.
pub fn verify_archive(
    file: &Path,
    expected_sha: &str,
) -> Result<Vec<crate::package_archive::Entry>> {
    let got = sha256_of(file)?;
    if got != expected_sha {
        return Err(CtlError::failed(format!(
            "verification of {} failed: its sha256 is {got}, expected {expected_sha}",
            file.display()
        )));
    }
    crate::package_archive::check(file)
        .map_err(|e| CtlError::failed(format!("verification of {} failed: {e}", file.display())))
}

/// SHA-256 (hex) of a file.
fn sha256_of(file: &Path) -> Result<String> {
    let mut f = std::fs::File::open(file).map_err(|e| io_err("reading", file, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err("reading", file, e))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Checks a dump (gzip-compressed or not) with opampd's own reader; returns
/// its schema version.
pub fn check_dump(file: &Path) -> std::result::Result<u32, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("cannot read it: {e}"))?;
    let mut reader = std::io::BufReader::new(f);
    let gzip = std::io::BufRead::fill_buf(&mut reader)
        .map(|head| head.starts_with(&[0x1f, 0x8b]))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let summary = if gzip {
        opampd::store::dump::check(std::io::BufReader::new(flate2::read::GzDecoder::new(
            reader,
        )))
    } else {
        opampd::store::dump::check(reader)
    };
    summary
        .map(|s| s.schema_version)
        .map_err(|refused| refused.0)
}

/// Decompresses a .gz file to `dest` (a new owner-only file).
pub fn gunzip_to(src: &Path, dest: &Path) -> Result<u64> {
    let f = std::fs::File::open(src).map_err(|e| io_err("reading", src, e))?;
    let mut dec = flate2::read::GzDecoder::new(std::io::BufReader::new(f));
    let mut out = files::create_private(dest).map_err(|e| io_err("creating", dest, e))?;
    let n = std::io::copy(&mut dec, &mut out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput
            || e.kind() == std::io::ErrorKind::InvalidData
            || e.kind() == std::io::ErrorKind::UnexpectedEof
        {
            CtlError::failed(format!(
                "{} is not a complete gzip file ({e}): it is truncated or damaged",
                src.display()
            ))
        } else {
            io_err("decompressing to", dest, e)
        }
    })?;
    out.sync_all().map_err(|e| io_err("writing", dest, e))?;
    Ok(n)
}

/// Removes the temporary directories that killed backups left in `dir` (see
/// [`files::remove_leftovers`]), saying so on stderr; returns those removed.
fn remove_leftovers(settings: &Settings, dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for leftover in files::remove_leftovers(dir, "backup") {
        let path = leftover.path.display().to_string();
        match leftover.removed {
            Ok(()) => {
                if settings.human() && !settings.quiet {
                    eprintln!(
                        "removed {path}: the temporary directory of a backup that was stopped (its process {} is gone)",
                        leftover.pid
                    );
                }
                removed.push(path);
            }
            Err(e) => eprintln!(
                "warning: cannot remove {path}, the temporary directory of a backup that was stopped (process {}): {e}; remove it by hand",
                leftover.pid
            ),
        }
    }
    removed
}

pub async fn run(settings: &Settings, client: &Client, args: &BackupArgs) -> Result<()> {
    let dir = &args.dir;
    if args.retention_days == Some(0) {
        return Err(CtlError::usage(
            "--retention-days 0 would delete every earlier backup, even one made a minute ago: pass 1 or more",
        ));
    }
    if !dir.exists() {
        if !args.create_dir {
            return Err(CtlError::usage(format!(
                "--dir {} does not exist: create it, check the path for a typo, or pass --create-dir",
                dir.display()
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err("creating --dir", dir, e))?;
    } else if !dir.is_dir() {
        return Err(CtlError::usage(format!(
            "--dir {} is not a directory",
            dir.display()
        )));
    }
    let leftovers_removed = remove_leftovers(settings, dir);
    // The server's snapshot starts now; its format decides the file name.
    let snapshot = match &args.data_dir {
        Some(data_dir) => Snapshot::Local(data_dir),
        None => Snapshot::Server(
            client
                .send(client.stream_request(Method::GET, "/api/v1/admin/backup"))
                .await?,
        ),
    };
    let kind = match &snapshot {
        Snapshot::Local(_) => BackupKind::Sqlite,
        Snapshot::Server(response) => BackupKind::of_response(response),
    };
    // A backup in the same second as the previous one waits for the next second.
    let mut tries = 0;
    let (stamp, name, final_path, sha_name, sha_path) = loop {
        let stamp = chrono::Utc::now().format("%Y%m%d_%H%M%S").to_string();
        let name = format!("opamp_{stamp}.{}", kind.extension());
        let final_path = dir.join(&name);
        let sha_name = format!("{name}.sha256");
        let sha_path = dir.join(&sha_name);
        // symlink_metadata: a dangling symlink counts as taken too.
        if final_path.symlink_metadata().is_err() && sha_path.symlink_metadata().is_err() {
            break (stamp, name, final_path, sha_name, sha_path);
        }
        tries += 1;
        if tries > 3 {
            return Err(CtlError::failed(format!(
                "{} already exists (as a file or a symlink), and opampctl never writes over one: is another backup writing to {}? Otherwise remove it",
                final_path.display(),
                dir.display()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    };
    // In --dir, so the finished files are renamed within one file system.
    let scratch = PrivateDir::new_in(dir, "backup")
        .map_err(|e| io_err("creating a private temporary directory in", dir, e))?;
    let tmp = scratch.join(&name);
    let sha_tmp = scratch.join(&sha_name);
    let raw_tmp = scratch.join(&format!("opamp_{stamp}.db"));
    let mut cleanup = Cleanup(Vec::new());

    let mut out = GzOut::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
    let mut local_hosted = None;
    let (source, server_schema) = match snapshot {
        Snapshot::Local(data_dir) => {
            let db = data_dir.join("opamp.db");
            if !db.is_file() {
                return Err(CtlError::failed(format!(
                    "{} does not exist: is --data-dir the opampd data directory?",
                    db.display()
                )));
            }
            opampd::store::sqlite::maintenance::backup_to(&db, &raw_tmp)
                .map_err(|e| CtlError::failed(format!("{e:#}")))?;
            local_hosted = Some(localdb::hosted_files(&raw_tmp).map_err(CtlError::failed)?);
            let mut f =
                std::fs::File::open(&raw_tmp).map_err(|e| io_err("reading", &raw_tmp, e))?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| io_err("reading", &raw_tmp, e))?;
                if n == 0 {
                    break;
                }
                out.write(&buf[..n])
                    .map_err(|e| io_err("writing", &tmp, e))?;
            }
            let _ = std::fs::remove_file(&raw_tmp);
            ("local", None)
        }
        Snapshot::Server(mut resp) => {
            let expected = resp.content_length();
            let schema = resp
                .headers()
                .get("x-opampd-schema-version")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            let bar = settings.progress().then(|| {
                let b = indicatif::ProgressBar::new(expected.unwrap_or(0));
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "backup {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            let mut got = 0u64;
            loop {
                let chunk = resp.chunk().await.map_err(|e| {
                    CtlError::failed(format!(
                        "the backup stream from {} broke off after {got} bytes: {e}",
                        client.base
                    ))
                })?;
                let Some(chunk) = chunk else { break };
                got += chunk.len() as u64;
                out.write(&chunk).map_err(|e| io_err("writing", &tmp, e))?;
                if let Some(b) = &bar {
                    b.set_position(got);
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if let Some(exp) = expected {
                if exp != got {
                    return Err(CtlError::failed(format!(
                        "the backup stream from {} ended after {got} of {exp} bytes; nothing was kept",
                        client.base
                    )));
                }
            }
            ("server", schema)
        }
    };
    let (sha, bytes, raw, head) = out.finish().map_err(|e| io_err("writing", &tmp, e))?;
    if !kind.starts_right(&head) {
        return Err(CtlError::failed(match kind {
            BackupKind::Sqlite => {
                "the snapshot is not a SQLite database (wrong header); nothing was kept"
            }
            BackupKind::PostgresDump => {
                "the snapshot is not an opampd PostgreSQL dump (wrong header); nothing was kept"
            }
        }));
    }
    // The hosted package files the snapshot's catalogue names.
    let hosted = match (&args.data_dir, local_hosted) {
        (Some(_), listed) => listed,
        (None, _) => packages::listed(client).await?,
    };
    if args.with_packages && hosted.is_none() {
        return Err(CtlError::failed(format!(
            "{} does not list its hosted package files (an opampd older than this opampctl): upgrade it, or back up without --with-packages; nothing was kept",
            client.base
        )));
    }
    let hosted = hosted.unwrap_or_default();
    let mut packages_report = packages::PackagesReport::of(&hosted);
    let archive_name = format!("opamp_{stamp}{}", crate::package_archive::SUFFIX);
    let archive_sha_name = format!("{archive_name}.sha256");
    let archive = dir.join(&archive_name);
    let archive_sha = dir.join(&archive_sha_name);
    packages_report.included = args.with_packages;
    if args.with_packages && !hosted.is_empty() {
        if archive.symlink_metadata().is_ok() || archive_sha.symlink_metadata().is_ok() {
            return Err(CtlError::failed(format!(
                "{} already exists (as a file or a symlink), and opampctl never writes over one: remove it",
                archive.display()
            )));
        }
        let archive_tmp = scratch.join(&archive_name);
        let local_dir = args.data_dir.as_ref().map(|d| d.join("packages"));
        let (archive_hash, _) = packages::write_archive(
            settings,
            client,
            local_dir.as_deref(),
            &hosted,
            &archive_tmp,
        )
        .await?;
        let sum_tmp = scratch.join(&archive_sha_name);
        let mut f = files::create_private(&sum_tmp).map_err(|e| io_err("creating", &sum_tmp, e))?;
        f.write_all(format!("{archive_hash}  {archive_name}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("writing", &sum_tmp, e))?;
        files::rename_no_replace(&archive_tmp, &archive)
            .map_err(|e| io_err("renaming to", &archive, e))?;
        cleanup.0.push(archive.clone());
        files::rename_no_replace(&sum_tmp, &archive_sha)
            .map_err(|e| io_err("renaming to", &archive_sha, e))?;
        cleanup.0.push(archive_sha.clone());
        packages_report.file = Some(archive.display().to_string());
        packages_report.sha256_file = Some(archive_sha.display().to_string());
        packages_report.sha256 = Some(archive_hash);
    }
    // The checksum file first (under its temporary name), then both renames.
    {
        let mut f = files::create_private(&sha_tmp).map_err(|e| io_err("creating", &sha_tmp, e))?;
        f.write_all(format!("{sha}  {name}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("writing", &sha_tmp, e))?;
    }
    files::rename_no_replace(&tmp, &final_path)
        .map_err(|e| io_err("renaming to", &final_path, e))?;
    cleanup.0.push(final_path.clone());
    files::rename_no_replace(&sha_tmp, &sha_path)
        .map_err(|e| io_err("renaming to", &sha_path, e))?;
    sync_dir(dir);
    cleanup.disarm();

    let mut schema_version = server_schema;
    let mut verified = false;
    if args.verify {
        // A backup that fails verification is not kept under the backup name.
        let mut written = vec![&final_path, &sha_path];
        if packages_report.file.is_some() {
            written.extend([&archive, &archive_sha]);
        }
        let discard = |e: CtlError| {
            for path in &written {
                let _ = std::fs::remove_file(path);
            }
            e
        };
        let v = verify(&final_path, kind, &sha, scratch.path()).map_err(discard)?;
        if let Some(sv) = server_schema {
            if sv != v {
                return Err(CtlError::failed(format!(
                    "verification of {}: schema version {v} differs from the server's {sv}",
                    final_path.display()
                )));
            }
        }
        if let (Some(file), Some(expected)) = (&packages_report.file, &packages_report.sha256) {
            let entries = verify_archive(Path::new(file), expected).map_err(discard)?;
            if entries.len() as u64 != packages_report.files {
                return Err(discard(CtlError::failed(format!(
                    "verification of {file} failed: it holds {} package files, not {}",
                    entries.len(),
                    packages_report.files
                ))));
            }
        }
        schema_version = Some(v);
        verified = true;
    }
    let pruned = match args.retention_days {
        Some(days) => prune(
            dir,
            days,
            &[
                name.as_str(),
                sha_name.as_str(),
                archive_name.as_str(),
                archive_sha_name.as_str(),
            ],
        )?,
        None => Vec::new(),
    };
    let report = BackupReport {
        file: final_path.display().to_string(),
        sha256_file: sha_path.display().to_string(),
        sha256: sha,
        bytes,
        database_bytes: raw,
        schema_version,
        source: source.into(),
        verified,
        pruned,
        leftovers_removed,
        packages: packages_report,
    };
    if settings.quiet {
        return Ok(());
    }
    if settings.human() {
        output::out(&report.file);
        eprintln!(
            "backup written: {} ({} compressed from {}{}), checksum in {}",
            report.file,
            output::bytes(report.bytes),
            output::bytes(report.database_bytes),
            if verified { ", verified" } else { "" },
            report.sha256_file
        );
        if let Some(line) = report.packages.line() {
            eprintln!("{line}");
        }
        for p in &report.pruned {
            eprintln!("pruned {p}");
        }
        Ok(())
    } else {
        output::machine(settings, &report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_backup_names_match() {
        assert!(backup_time("opamp_20240102_030405.db.gz").is_some());
        assert!(backup_time("opamp_20240102_030405.db.gz.sha256").is_some());
        assert!(backup_time("opamp_20240102_030405.sql.gz").is_some());
        assert!(backup_time("opamp_20240102_030405.sql.gz.sha256").is_some());
        assert!(backup_time("opamp_20240102_030405.packages.tar").is_some());
        assert!(backup_time("opamp_20240102_030405.packages.tar.sha256").is_some());
        for bad in [
            "opamp_20240102_030405.db",
            "opamp_20240102_030405.sql",
            "opamp_20240102_030405.db.gz.bak",
            "xopamp_20240102_030405.db.gz",
            "opamp_2024010_030405.db.gz",
            "opamp_20241399_030405.db.gz",
            ".opamp_20240102_030405.db.gz.tmp-1",
            "opamp_latest.db.gz",
        ] {
            assert!(backup_time(bad).is_none(), "{bad}");
        }
    }
}
