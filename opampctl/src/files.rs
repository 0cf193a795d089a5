//! Files opampctl writes on this host: backups, their temporaries, restore
//! copies and probes.
//!
//! Every file is created owner-only (0600) and new: never through a symlink
//! and never over an existing file (`O_CREAT | O_EXCL | O_NOFOLLOW`), so a
//! file or symlink planted under the name makes the command fail instead of
//! writing elsewhere. Temporary files live in a [`PrivateDir`], a directory
//! created fresh (0700, unpredictable name) for this run and removed with
//! everything in it. A finished file moves to its final name with
//! [`rename_no_replace`], which refuses to replace whatever is there.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path` as a new file readable and writable by its owner only.
/// Fails with `AlreadyExists` when anything (a file, a symlink, even a
/// dangling one) has that name.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

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

/// A directory for one run's temporary files: created new, owner-only
/// (0700), under a name nobody can guess in advance; removed with its
/// contents when dropped.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// A new private directory in `parent`, named `.opampctl-PURPOSE-RANDOM`.
    /// Put it on the file system of the files' final place, so they can be
    /// renamed there.
    pub fn new_in(parent: &Path, purpose: &str) -> io::Result<PrivateDir> {
        let name = format!(".opampctl-{purpose}-{}", uuid::Uuid::new_v4().as_simple());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

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
}
