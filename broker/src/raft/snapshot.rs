//! Receiving a streamed snapshot without holding it in memory.
//!
//! A peer sends a snapshot as a stream of chunks of at most
//! [`SNAPSHOT_CHUNK_BYTES`] ([`super::network`]). [`SnapshotReceiver`]
//! writes each chunk, as it arrives, to a staging file in the receiving
//! replica's directory through the log's storage seam ([`Storage`]), so a
//! transfer holds one chunk in memory however large the snapshot; a chunk
//! over the chunk size or a total over [`SNAPSHOT_BYTES_MAX`] ends it with
//! a [`SnapshotError`]. A complete transfer is renamed atomically to its
//! final staging name ([`ReceivedSnapshot`]), so a half-written file is
//! never taken for a snapshot; an abandoned one is removed when the
//! receiver is dropped, and leftovers of a crash by [`remove_staged`] when
//! the replica opens.
//!
//! This module owns only the staging files. The state machine
//! ([`super::sm`]) decodes a received snapshot into its in-memory state and
//! saves it, durably, as the replica's current snapshot; so the staging
//! file needs no fsync, and is deleted once installed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::log::{Storage, StorageFile};

/// Snapshot data per message of the stream.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot a replica accepts. A partition's snapshot is a small
/// checkpoint (offsets and producer state); the metadata group's is its
/// whole image, which every node holds in memory anyway.
pub const SNAPSHOT_BYTES_MAX: u64 = 512 << 20;
const _: () = assert!(SNAPSHOT_CHUNK_BYTES as u64 <= SNAPSHOT_BYTES_MAX);

/// Name prefix of the staging files in a replica's directory.
const STAGING_PREFIX: &str = "raft-snapshot.incoming-";

/// Distinguishes concurrent transfers to one replica (a leader that timed
/// out a transfer may start the next before the first stream ends).
static NEXT_TRANSFER: AtomicU64 = AtomicU64::new(0);

/// Why a snapshot could not be received.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A message carried more than one chunk.
    #[error("snapshot chunk of {len} bytes exceeds the {max}-byte chunk size")]
    ChunkTooLarge {
        /// Bytes in the message.
        len: usize,
        /// [`SNAPSHOT_CHUNK_BYTES`].
        max: usize,
    },
    /// The snapshot grew past the limit.
    #[error("snapshot exceeds {max} bytes ({received} bytes with this chunk)")]
    TooLarge {
        /// Bytes received, this chunk included.
        received: u64,
        /// The limit.
        max: u64,
    },
    /// The staging file could not be written or read.
    #[error("staging the snapshot in {path}: {source}")]
    Io {
        /// The staging file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A snapshot being received: written to a staging file chunk by chunk.
#[derive(Debug)]
pub struct SnapshotReceiver {
    storage: Arc<dyn Storage>,
    /// Where the chunks go while the transfer runs.
    partial: PathBuf,
    /// The name it gets once complete.
    complete: PathBuf,
    file: Arc<dyn StorageFile>,
    received: u64,
    max: u64,
    finished: bool,
}

impl SnapshotReceiver {
    /// Starts receiving a snapshot of at most `max` bytes into a new
    /// staging file in `dir`.
    pub fn create(
        storage: Arc<dyn Storage>,
        dir: &Path,
        max: u64,
    ) -> Result<SnapshotReceiver, SnapshotError> {
        let n = NEXT_TRANSFER.fetch_add(1, Ordering::Relaxed);
        let complete = dir.join(format!("{STAGING_PREFIX}{n}"));
        let partial = dir.join(format!("{STAGING_PREFIX}{n}.tmp"));
        storage.remove(&partial).map_err(io_err(&partial))?;
        let file = storage.open(&partial, true).map_err(io_err(&partial))?;
        file.set_len(0).map_err(io_err(&partial))?;
        Ok(SnapshotReceiver {
            storage,
            partial,
            complete,
            file,
            received: 0,
            max,
            finished: false,
        })
    }

    /// Appends one chunk to the staging file; nothing is kept in memory.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        if chunk.len() > SNAPSHOT_CHUNK_BYTES {
            return Err(SnapshotError::ChunkTooLarge {
                len: chunk.len(),
                max: SNAPSHOT_CHUNK_BYTES,
            });
        }
        let received = self.received + chunk.len() as u64;
        if received > self.max {
            return Err(SnapshotError::TooLarge {
                received,
                max: self.max,
            });
        }
        self.file
            .write_all_at(chunk, self.received)
            .map_err(io_err(&self.partial))?;
        self.received = received;
        Ok(())
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Ends the transfer: the staging file gets its complete name.
    pub fn finish(mut self) -> Result<ReceivedSnapshot, SnapshotError> {
        let len = self.file.len().map_err(io_err(&self.partial))?;
        assert_eq!(len, self.received, "staging file length");
        self.storage
            .rename(&self.partial, &self.complete)
            .map_err(io_err(&self.complete))?;
        self.finished = true;
        Ok(ReceivedSnapshot {
            storage: self.storage.clone(),
            path: self.complete.clone(),
            len,
        })
    }
}

impl Drop for SnapshotReceiver {
    fn drop(&mut self) {
        if !self.finished
            && let Err(e) = self.storage.remove(&self.partial)
        {
            tracing::warn!(path = %self.partial.display(), error = %e, "could not remove an abandoned snapshot transfer");
        }
    }
}

/// A completely received snapshot in its staging file (removed on drop).
#[derive(Debug)]
pub struct ReceivedSnapshot {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    len: u64,
}

impl ReceivedSnapshot {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads it whole, for the state machine to install.
    pub fn read(&self) -> Result<Vec<u8>, SnapshotError> {
        let file = self
            .storage
            .open(&self.path, false)
            .map_err(io_err(&self.path))?;
        let len = usize::try_from(self.len).map_err(|e| io_err(&self.path)(io::Error::other(e)))?;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, 0)
            .map_err(io_err(&self.path))?;
        Ok(data)
    }
}

impl Drop for ReceivedSnapshot {
    fn drop(&mut self) {
        if let Err(e) = self.storage.remove(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a received snapshot");
        }
    }
}

/// Removes the staging files a crash left in a replica's directory.
pub fn remove_staged(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    if !storage.is_dir(dir)? {
        return Ok(());
    }
    for name in storage.list(dir)? {
        if name.starts_with(STAGING_PREFIX) {
            storage.remove(&dir.join(name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::log::fault::FaultStorage;

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn staged(fs: &FaultStorage, dir: &Path) -> Vec<PathBuf> {
        fs.files()
            .into_iter()
            .filter(|p| p.parent() == Some(dir))
            .collect()
    }

    /// A snapshot of several chunks (the last one short) arrives whole, and
    /// after every chunk the staging file already holds everything
    /// received: the receiver buffers nothing beyond the chunk in hand.
    #[test]
    fn a_snapshot_of_many_chunks_is_staged_chunk_by_chunk() {
        let fs = FaultStorage::new();
        let dir = Path::new("/r/t/0");
        fs.create_dir_all(dir).unwrap();
        let want = data(5 * SNAPSHOT_CHUNK_BYTES + 12_345);
        let mut rx =
            SnapshotReceiver::create(Arc::new(fs.clone()), dir, SNAPSHOT_BYTES_MAX).unwrap();
        let partial = staged(&fs, dir);
        assert_eq!(partial.len(), 1, "{partial:?}");
        for (i, chunk) in want.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
            rx.push(chunk).unwrap();
            let on_disk = fs.file_len(&partial[0]).unwrap();
            assert_eq!(on_disk, rx.received(), "after chunk {i}");
        }
        assert_eq!(rx.received(), want.len() as u64);
        let got = rx.finish().unwrap();
        assert_eq!(got.len(), want.len() as u64);
        let complete = staged(&fs, dir);
        assert_eq!(complete.len(), 1);
        assert_ne!(complete, partial, "renamed when complete");
        assert!(got.read().unwrap() == want, "snapshot bytes differ");
        drop(got);
        assert!(
            staged(&fs, dir).is_empty(),
            "installed snapshot not removed"
        );
    }

    /// A stream past the limit, or a message over the chunk size, ends the
    /// transfer with an error naming the limit, and leaves no file behind.
    #[test]
    fn oversized_snapshots_and_chunks_are_refused_and_cleaned_up() {
        let fs = FaultStorage::new();
        let dir = Path::new("/r/t/1");
        fs.create_dir_all(dir).unwrap();
        let storage: Arc<dyn Storage> = Arc::new(fs.clone());
        let chunk = data(SNAPSHOT_CHUNK_BYTES);
        let max = 2 * SNAPSHOT_CHUNK_BYTES as u64 + 10;
        let mut rx = SnapshotReceiver::create(storage.clone(), dir, max).unwrap();
        rx.push(&chunk).unwrap();
        rx.push(&chunk).unwrap();
        let e = rx.push(&chunk[..11]).unwrap_err();
        assert!(
            matches!(e, SnapshotError::TooLarge { received, max: m } if received == max + 1 && m == max),
            "{e}"
        );
        assert!(e.to_string().contains(&max.to_string()), "{e}");
        drop(rx);
        assert!(staged(&fs, dir).is_empty());

        let mut rx = SnapshotReceiver::create(storage, dir, SNAPSHOT_BYTES_MAX).unwrap();
        let big = data(SNAPSHOT_CHUNK_BYTES + 1);
        let e = rx.push(&big).unwrap_err();
        assert!(matches!(e, SnapshotError::ChunkTooLarge { .. }), "{e}");
        assert_eq!(rx.received(), 0);
        drop(rx);
        assert!(staged(&fs, dir).is_empty());
    }

    /// What a crash leaves (a partial and a complete staging file) goes
    /// when the replica opens; its other files stay.
    #[test]
    fn staging_leftovers_are_removed_on_open() {
        let fs = FaultStorage::new();
        let dir = Path::new("/r/t/2");
        fs.create_dir_all(dir).unwrap();
        let storage: Arc<dyn Storage> = Arc::new(fs.clone());
        let keep = dir.join("raft-snapshot");
        storage
            .open(&keep, true)
            .unwrap()
            .write_all_at(b"x", 0)
            .unwrap();
        let mut done = SnapshotReceiver::create(storage.clone(), dir, SNAPSHOT_BYTES_MAX).unwrap();
        done.push(b"complete").unwrap();
        let done = done.finish().unwrap();
        let mut partial =
            SnapshotReceiver::create(storage.clone(), dir, SNAPSHOT_BYTES_MAX).unwrap();
        partial.push(b"partial").unwrap();
        // A crash: neither is dropped.
        std::mem::forget(done);
        std::mem::forget(partial);
        assert_eq!(staged(&fs, dir).len(), 3);
        remove_staged(storage.as_ref(), dir).unwrap();
        assert_eq!(staged(&fs, dir), vec![keep]);
    }
}
