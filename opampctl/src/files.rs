//! Files opampctl writes on this host: backups, their temporaries, restore
//! copies and probes.
//!
//! Every file is created owner-only (0600) and new: never through a symlink
//! and never over an existing file (`O_CREAT | O_EXCL | O_NOFOLLOW`), so a
//! file or symlink planted under the name makes the command fail instead of
//! writing elsewhere. Temporary files live in a [`PrivateDir`], a directory
//! created fresh (0700, unpredictable name) for this run and removed with
//! everything in it. A finished file moves to its final name with
//! [`rename_no_replace`], which refuses to replace whatever is there; a file
//! that may replace an earlier one (`opampctl man --dir`) is renamed over it
//! with [`write_replacing`].

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path` as a new file readable and writable by its owner only.
/// Fails with `AlreadyExists` when anything (a file, a symlink, even a
/// dangling one) has that name. opampd's helper, shared.
pub use opampd::files::create_private;

/// Copies `src` to the new owner-only file `dest` (see [`create_private`]);
/// returns the bytes copied. The copy is synced.
pub fn copy_private(src: &Path, dest: &Path) -> io::Result<u64> {
    let mut from = File::open(src)?;
    let mut to = create_private(dest)?;
    let bytes = io::copy(&mut from, &mut to)?;
    to.sync_all()?;
    Ok(bytes)
}

/// Renames `from` to `to` unless `to` exists (as anything, a symlink
/// included): then it fails with `AlreadyExists` and nothing moves.
#[allow(unsafe_code)]
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let (c_from, c_to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // A file system (or kernel) without RENAME_NOREPLACE: a hard link
        // refuses an existing name just the same.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(error),
    }
}

/// Writes `bytes` as the file `dest` with permissions `mode`, replacing
/// what has that name (a file, or a symlink itself, never what it points
/// to): the content goes to a new file in `scratch` first ([`create_private`]),
/// is synced, and is renamed over `dest`. `scratch` must be on `dest`'s file
/// system; a directory under the name makes it fail.
pub fn write_replacing(
    scratch: &PrivateDir,
    dest: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    use std::io::Write;
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a path without a file name"))?;
    let tmp = scratch.path().join(name);
    let mut file = create_private(&tmp)?;
    file.write_all(bytes)?;
    // On the open file: nothing else can be changed through a planted name.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dest)
}

/// A directory for one run's temporary files: created new, owner-only
/// (0700), under a name nobody can guess in advance that carries the
/// creating process's id; removed with its contents when dropped. A run that
/// is killed leaves it behind: [`remove_leftovers`] removes it later.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// A new private directory in `parent`, named `.opampctl-PURPOSE-PID-RANDOM`.
    /// Put it on the file system of the files' final place, so they can be
    /// renamed there.
    pub fn new_in(parent: &Path, purpose: &str) -> io::Result<PrivateDir> {
        let name = format!(
            ".opampctl-{purpose}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().as_simple()
        );
        let path = parent.join(name);
        // mkdir fails when the name exists, as a symlink too.
        DirBuilder::new().mode(0o700).create(&path)?;
        let dir = PrivateDir { path };
        // The umask may have taken bits away; it cannot have added any.
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    /// A new private directory in the system's temporary directory ($TMPDIR or /tmp).
    pub fn new_temp(purpose: &str) -> io::Result<PrivateDir> {
        PrivateDir::new_in(&std::env::temp_dir(), purpose)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // Does not follow symlinks inside: only the directory's own entries go.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A private directory that a killed run left behind.
#[derive(Debug)]
pub struct Leftover {
    pub path: PathBuf,
    /// The process that created it, which is gone.
    pub pid: u32,
    /// Whether removing it worked.
    pub removed: io::Result<()>,
}

/// Removes the [`PrivateDir`]s for `purpose` in `parent` whose process is
/// gone (a run killed mid-way), with everything in them. A directory whose
/// process still runs, whose name carries no process id (made by an older
/// opampctl), that is not a directory (a symlink), or that belongs to another
/// user is left alone. Returns what it found, each with the outcome of its
/// removal; nothing when `parent` cannot be listed.
pub fn remove_leftovers(parent: &Path, purpose: &str) -> Vec<Leftover> {
    let prefix = format!(".opampctl-{purpose}-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let me = crate::procfs::current_uid();
    let mut found = Vec::new();
    for entry in entries.filter_map(|entry| entry.ok()) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, random)| {
                random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Not followed: a symlink under such a name is not a leftover.
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me || crate::procfs::process_exists(pid) {
            continue;
        }
        let path = entry.path();
        // Removes the directory's own entries; symlinks in it are not followed.
        let removed = std::fs::remove_dir_all(&path);
        found.push(Leftover { path, pid, removed });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn private_files_refuse_planted_names_and_are_owner_only() {
        let dir = PrivateDir::new_temp("test").unwrap();
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o700);
        let outside = dir.join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        for planted in [&link, &dangling, &outside] {
            let e = create_private(planted).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{planted:?}");
        }
        assert!(!dir.join("nowhere").exists());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");

        let new = dir.join("new");
        create_private(&new).unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o777, 0o600);
        // The final name is taken (by a symlink): nothing moves.
        let e = rename_no_replace(&new, &link).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(new.exists());
        rename_no_replace(&new, &dir.join("final")).unwrap();
        assert!(!new.exists());

        let gone = dir.path().to_path_buf();
        drop(dir);
        assert!(!gone.exists());
    }

    #[test]
    fn leftovers_of_gone_processes_are_removed_and_others_kept() {
        let parent = PrivateDir::new_temp("test").unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let random = uuid::Uuid::new_v4().as_simple().to_string();
        let dead = parent.join(&format!(".opampctl-backup-{gone}-{random}"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("opamp_x.db.gz"), b"partial").unwrap();
        let live = PrivateDir::new_in(parent.path(), "backup").unwrap();
        let older = parent.join(&format!(".opampctl-backup-{random}"));
        std::fs::create_dir(&older).unwrap();
        let _other_purpose = PrivateDir::new_in(parent.path(), "restore").unwrap();
        let link = parent.join(&format!(".opampctl-backup-{gone}-{}", "0".repeat(32)));
        std::os::unix::fs::symlink(live.path(), &link).unwrap();

        let found = remove_leftovers(parent.path(), "backup");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((&found[0].path, found[0].pid), (&dead, gone));
        assert!(found[0].removed.is_ok());
        assert!(!dead.exists());
        for kept in [live.path(), older.as_path(), link.as_path()] {
            assert!(kept.symlink_metadata().is_ok(), "{kept:?} was removed");
        }
        assert!(remove_leftovers(parent.path(), "backup").is_empty());
    }

    #[test]
    fn replacing_writes_never_go_through_a_planted_symlink() {
        let dir = PrivateDir::new_temp("test").unwrap();
        let scratch = PrivateDir::new_in(dir.path(), "man").unwrap();
        let outside = dir.join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let planted = dir.join("page.1");
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        write_replacing(&scratch, &planted, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        let meta = planted.symlink_metadata().unwrap();
        assert!(meta.is_file() && meta.mode() & 0o777 == 0o644, "{meta:?}");
        assert_eq!(std::fs::read(&planted).unwrap(), b"new");
        // Its own earlier output is replaced.
        write_replacing(&scratch, &planted, b"newer", 0o644).unwrap();
        assert_eq!(std::fs::read(&planted).unwrap(), b"newer");
        std::fs::create_dir(dir.join("taken.1")).unwrap();
        assert!(write_replacing(&scratch, &dir.join("taken.1"), b"x", 0o644).is_err());
    }
}
