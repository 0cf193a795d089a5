//! Files holding the database's content (backups, copies set aside): created
//! owner-only and new, never through a symlink. opampctl writes its files
//! with the same helper.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates `path` as a new file readable and writable by its owner only.
/// Fails with `AlreadyExists` when anything (a file, a symlink, even a
/// dangling one) has that name (`O_CREAT | O_EXCL | O_NOFOLLOW`).
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}
