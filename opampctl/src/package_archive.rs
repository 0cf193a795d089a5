//! The hosted package files of a backup (`opampctl backup --with-packages`):
//! `opamp_YYYYmmdd_HHMMSS.packages.tar` beside the database backup of the
//! same name, with its own `.sha256`. A POSIX tar (ustar) of regular files
//! named as in opampd's `packages.dir`, by their SHA-256 (`ab/abcdef…`), so
//! `tar -xf FILE -C PACKAGES_DIR` also puts them back by hand. Every file's
//! bytes are checked against its name as it is written, by `--verify`, and
//! before a restore uses them.

use crate::files;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What follows `opamp_YYYYmmdd_HHMMSS` in an archive's name.
pub const SUFFIX: &str = ".packages.tar";

const BLOCK: usize = 512;
/// The largest file a ustar header's size field holds (11 octal digits).
const MAX_SIZE: u64 = 0o777_7777_7777;

/// The archive beside the backup `file` (`opamp_X.db.gz` or `.sql.gz`, or
/// either uncompressed → `opamp_X.packages.tar`), when `file` is named as a
/// backup.
pub fn beside(file: &Path) -> Option<PathBuf> {
    let name = file.file_name()?.to_str()?;
    let stem = [".db.gz", ".sql.gz", ".db", ".sql"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))?;
    Some(file.with_file_name(format!("{stem}{SUFFIX}")))
}

/// One file in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its SHA-256 (lowercase hex), which names it.
    pub sha256: String,
    pub size: u64,
    /// Where its bytes start in the archive.
    pub offset: u64,
}

/// An archive being written: [`Writer::begin`] a file, [`Writer::write`]
/// its bytes, [`Writer::end`] checks them against the SHA-256 given.
pub struct Writer {
    file: std::fs::File,
    path: PathBuf,
    hash: Sha256,
    bytes: u64,
    current: Option<Current>,
    pub files: u64,
    pub file_bytes: u64,
}

struct Current {
    sha256: String,
    size: u64,
    written: u64,
    hash: Sha256,
}

impl Writer {
    /// A new owner-only archive at `path`.
    pub fn create(path: &Path) -> std::io::Result<Writer> {
        Ok(Writer {
            file: files::create_private(path)?,
            path: path.to_path_buf(),
            hash: Sha256::new(),
            bytes: 0,
            current: None,
            files: 0,
            file_bytes: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.file
            .write_all(bytes)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Starts the file with `sha256` (lowercase hex) of `size` bytes.
    pub fn begin(&mut self, sha256: &str, size: u64) -> Result<(), String> {
        if !is_sha256(sha256) {
            return Err(format!(
                "{sha256:?} is not a SHA-256 (64 lowercase hex digits)"
            ));
        }
        if size > MAX_SIZE {
            return Err(format!(
                "package file {sha256} is {size} bytes; a backup archive holds files up to {MAX_SIZE} bytes"
            ));
        }
        let header = header(&name_of(sha256), size);
        self.put(&header)?;
        self.current = Some(Current {
            sha256: sha256.to_string(),
            size,
            written: 0,
            hash: Sha256::new(),
        });
        Ok(())
    }

    /// Bytes of the current file.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        let Some(current) = self.current.as_mut() else {
            return Err("no file begun".into());
        };
        current.written += chunk.len() as u64;
        if current.written > current.size {
            return Err(format!(
                "package file {} is larger than the {} bytes the server listed: it changed meanwhile; back up again",
                current.sha256, current.size
            ));
        }
        current.hash.update(chunk);
        self.put(chunk)
    }

    /// Ends the current file: its size and SHA-256 must be the ones given.
    pub fn end(&mut self) -> Result<(), String> {
        let Some(current) = self.current.take() else {
            return Err("no file begun".into());
        };
        if current.written != current.size {
            return Err(format!(
                "package file {} came with {} of its {} bytes; back up again",
                current.sha256, current.written, current.size
            ));
        }
        let computed = hex::encode(current.hash.finalize());
        if computed != current.sha256 {
            return Err(format!(
                "package file {} has SHA-256 {computed}: it is damaged on the server; upload it again (opampctl packages upload) and back up again",
                current.sha256
            ));
        }
        self.put(&vec![0u8; padding(current.size)])?;
        self.files += 1;
        self.file_bytes += current.size;
        Ok(())
    }

    /// Writes the end of the archive and syncs it; its SHA-256 and size.
    pub fn finish(mut self) -> Result<(String, u64), String> {
        self.put(&[0u8; 2 * BLOCK])?;
        self.file
            .sync_all()
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        Ok((hex::encode(self.hash.finalize()), self.bytes))
    }
}

/// Reads a whole archive: its structure, and each file's bytes against the
/// SHA-256 that names it. Its files, in order.
pub fn check(path: &Path) -> Result<Vec<Entry>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut entries = Vec::new();
    let mut offset = 0u64;
    let mut block = [0u8; BLOCK];
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        reader.read_exact(&mut block).map_err(|_| {
            format!(
                "it ends without the end-of-archive blocks after {offset} bytes: it is truncated"
            )
        })?;
        offset += BLOCK as u64;
        if block.iter().all(|b| *b == 0) {
            return Ok(entries);
        }
        let (name, size, regular) =
            parse_header(&block).map_err(|e| format!("at byte {}: {e}", offset - 512))?;
        let skip = size + padding(size) as u64;
        if !regular {
            // A directory (`tar` adds them when the archive is made by hand).
            reader
                .seek_relative(skip as i64)
                .map_err(|e| format!("cannot read it: {e}"))?;
            offset += skip;
            continue;
        }
        let sha256 = sha256_of_name(&name).ok_or_else(|| {
            format!(
                "its entry {name:?} is not named by a SHA-256 as opampd stores files (ab/abcdef…)"
            )
        })?;
        let mut hash = Sha256::new();
        let mut left = size;
        while left > 0 {
            let want = left.min(buffer.len() as u64) as usize;
            reader
                .read_exact(&mut buffer[..want])
                .map_err(|_| format!("its entry {name} is cut short: the archive is truncated"))?;
            hash.update(&buffer[..want]);
            left -= want as u64;
        }
        let computed = hex::encode(hash.finalize());
        if computed != sha256 {
            return Err(format!(
                "its file {name} has SHA-256 {computed}: the archive is damaged"
            ));
        }
        let mut pad = vec![0u8; padding(size)];
        reader
            .read_exact(&mut pad)
            .map_err(|_| format!("its entry {name} is cut short: the archive is truncated"))?;
        entries.push(Entry {
            sha256,
            size,
            offset,
        });
        offset += skip;
    }
}

/// Copies the bytes of `entry` from the archive at `path` to the new
/// owner-only file `dest`, checking them against its SHA-256 again.
pub fn extract(path: &Path, entry: &Entry, dest: &Path) -> Result<(), String> {
    let mut archive = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    archive
        .seek(SeekFrom::Start(entry.offset))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let mut from = archive.take(entry.size);
    let mut to = files::create_private(dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = from
            .read(&mut buffer)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
        to.write_all(&buffer[..n])
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    }
    to.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    if hex::encode(hash.finalize()) != entry.sha256 {
        let _ = std::fs::remove_file(dest);
        return Err(format!(
            "its file {} changed since it was checked",
            entry.sha256
        ));
    }
    Ok(())
}

/// `ab/abcdef…`: where opampd keeps the file with `sha256`.
pub fn name_of(sha256: &str) -> String {
    format!("{}/{sha256}", &sha256[..2])
}

fn sha256_of_name(name: &str) -> Option<String> {
    let name = name.strip_prefix("./").unwrap_or(name);
    let (dir, sha256) = name.split_once('/')?;
    (is_sha256(sha256) && sha256.starts_with(dir) && dir.len() == 2).then(|| sha256.to_string())
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

fn header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    block[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut block[100..108], 0o600);
    octal(&mut block[108..116], 0);
    octal(&mut block[116..124], 0);
    octal(&mut block[124..136], size);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    octal(&mut block[136..148], now);
    block[148..156].fill(b' ');
    block[156] = b'0';
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    octal(&mut block[148..155], sum);
    block[155] = b' ';
    block
}

/// `value` in octal, zero-padded, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// (name, size, whether a regular file) of a header block.
fn parse_header(block: &[u8; BLOCK]) -> Result<(String, u64, bool), String> {
    if &block[257..262] != b"ustar" {
        return Err(
            "not a tar header (no ustar mark): this is not an archive opampctl wrote".into(),
        );
    }
    let stored = parse_octal(&block[148..156]).ok_or("a header with an unreadable checksum")?;
    let mut copy = *block;
    copy[148..156].fill(b' ');
    let sum: u64 = copy.iter().map(|b| u64::from(*b)).sum();
    if sum != stored {
        return Err("a header whose checksum does not match: the archive is damaged".into());
    }
    let text = |field: &[u8]| {
        String::from_utf8_lossy(&field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())])
            .into_owned()
    };
    let prefix = text(&block[345..500]);
    let name = match prefix.is_empty() {
        true => text(&block[..100]),
        false => format!("{prefix}/{}", text(&block[..100])),
    };
    let size = parse_octal(&block[124..136])
        .ok_or_else(|| format!("entry {name:?} has an unreadable size"))?;
    match block[156] {
        b'0' | 0 => Ok((name, size, true)),
        b'5' => Ok((name, size, false)),
        other => Err(format!(
            "entry {name:?} is not a regular file (type {:?})",
            other as char
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn archives_round_trip_and_damage_is_found() {
        let dir = files::PrivateDir::new_temp("archive-test").unwrap();
        let path = dir.join("opamp_20250101_000000.packages.tar");
        let files: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![7u8; 1500], Vec::new()];
        let mut writer = Writer::create(&path).unwrap();
        for bytes in &files {
            writer.begin(&sha(bytes), bytes.len() as u64).unwrap();
            for chunk in bytes.chunks(700) {
                writer.write(chunk).unwrap();
            }
            writer.end().unwrap();
        }
        let (_, size) = writer.finish().unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let entries = check(&path).unwrap();
        assert_eq!(entries.len(), 3);
        for (entry, bytes) in entries.iter().zip(&files) {
            assert_eq!(entry.sha256, sha(bytes));
            let out = dir.join(&entry.sha256);
            extract(&path, entry, &out).unwrap();
            assert_eq!(&std::fs::read(&out).unwrap(), bytes);
        }
        // tar reads it.
        let listed = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&path)
            .output()
            .unwrap();
        assert!(listed.status.success());
        assert!(String::from_utf8_lossy(&listed.stdout).contains(&name_of(&sha(b"hello"))));

        // A byte changed in a file, and a truncated archive, are refused.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[entries[0].offset as usize] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(check(&path).unwrap_err().contains("damaged"));
        bytes[entries[0].offset as usize] ^= 1;
        std::fs::write(&path, &bytes[..bytes.len() - 1024]).unwrap();
        assert!(check(&path).unwrap_err().contains("truncated"));

        // Bytes that are not the SHA-256 given are refused when written.
        let other = dir.join("other.tar");
        let mut writer = Writer::create(&other).unwrap();
        writer.begin(&sha(b"hello"), 5).unwrap();
        writer.write(b"HELLO").unwrap();
        assert!(writer.end().unwrap_err().contains("damaged"));
    }

    #[test]
    fn the_archive_is_named_after_its_backup() {
        for name in [
            "opamp_20250101_000000.db.gz",
            "opamp_20250101_000000.sql.gz",
        ] {
            assert_eq!(
                beside(Path::new(name)).unwrap(),
                Path::new("opamp_20250101_000000.packages.tar")
            );
        }
        assert!(beside(Path::new("backup.tar")).is_none());
    }
}
