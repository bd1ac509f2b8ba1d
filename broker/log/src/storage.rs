//! The one seam for the log's file I/O.
//!
//! Every byte the log reads or writes goes through [`Storage`] and
//! [`StorageFile`], so tests can swap the real file system ([`FileStorage`])
//! for the fault-injecting one in [`super::fault`]. The seam is deliberately
//! small: positional reads and writes, `fsync`, `set_len`, and the handful of
//! directory operations the log needs (list, remove, rename, sync the
//! directory). It knows nothing about segments or entries.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open file. All methods take `&self`: positional I/O needs no cursor,
/// so readers and the writer can share a handle.
pub trait StorageFile: Send + Sync + std::fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `position`.
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
    /// Writes all of `buf` at `position` (not durable until [`Self::sync_data`]).
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Makes every write so far, and the file length, durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file (not durable until [`Self::sync_data`]).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A directory tree of files.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Opens a file for reading and writing, creating it if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of a directory, files and
    /// subdirectories, in no order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Whether `path` is a directory (false if it does not exist).
    fn is_dir(&self, path: &Path) -> io::Result<bool>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

#[derive(Debug)]
struct RealFile(File);

impl StorageFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.0.write_all_at(buf, position)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Storage for FileStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        match fs::metadata(path) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file is
/// written and fsynced, renamed over `path`, and the directory fsynced. A
/// crash leaves either the old content or the new, never a mix.
pub fn write_atomic(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    storage.remove(&tmp)?;
    let f = storage.open(&tmp, true)?;
    f.set_len(0)?;
    f.write_all_at(bytes, 0)?;
    f.sync_data()?;
    drop(f);
    storage.rename(&tmp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    storage.sync_dir(dir)
}

/// Reads a whole file; `Ok(None)` if it does not exist.
pub fn read_all(storage: &dyn Storage, path: &Path) -> io::Result<Option<Vec<u8>>> {
    if !storage.exists(path)? {
        return Ok(None);
    }
    let f = storage.open(path, false)?;
    let len = usize::try_from(f.len()?).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0)?;
    Ok(Some(buf))
}

/// The temporary name used by [`write_atomic`] for `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}
