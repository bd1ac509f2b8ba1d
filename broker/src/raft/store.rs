//! `RaftLogStorage` on the partition log: the Raft log *is* the segment log.
//!
//! An append goes straight into the log under its write lock (so the
//! entries are readable the moment `append` returns, as openraft requires)
//! and then queues a flush at the partition's group-commit thread; the
//! `IOFlushed` callback fires from that thread after the covering fsync,
//! so many appends (and many groups' worth of batches) share one fsync.
//!
//! Beside the segments, the store keeps two small files in the log's
//! directory: `raft-vote` (written atomically and fsynced before
//! `save_vote` returns) and `raft-committed` (written without fsync: it is
//! only a hint that lets a restarted node apply its committed prefix
//! before it hears from a leader; losing it costs nothing but time, and an
//! unreadable one after a power cut, or one naming an entry the log does
//! not hold, is ignored). Both go through the log's storage seam, so the
//! fault-injecting crash tests cover them (`tests/raft_crash.rs`).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use openraft::entry::RaftEntry as _;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};

use super::{Cmd, RaftEntry, RaftLogId, RaftVote, Tc, decode, encode, from_log_id, to_log_id};
use crate::log::storage::{read_all, tmp_path, write_atomic};
use crate::log::{Entry, EntryKind, LogError, NewEntry, PartitionWriter, Payload, Storage};

const VOTE_FILE: &str = "raft-vote";
const COMMITTED_FILE: &str = "raft-committed";
/// Payload bytes handed to one replication request at most.
const REPLICATION_BYTES_MAX: usize = 4 << 20;

/// Where the next offset comes from when a purge lands beyond the log's
/// tail (a snapshot install): the state machine sets it before openraft
/// calls `purge`.
#[derive(Debug, Default)]
pub struct InstallHint {
    /// (Raft index of the snapshot, offset after it).
    pub at: Option<(u64, u64)>,
}

/// Shared between the log store and its readers.
#[derive(Debug)]
struct Shared {
    writer: Arc<PartitionWriter>,
    vote: Mutex<Option<RaftVote>>,
}

/// The log store of one Raft group.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    committed: Arc<Mutex<Option<RaftLogId>>>,
    hint: Arc<Mutex<InstallHint>>,
    committed_file: Arc<CommittedFile>,
}

/// The committed hint file and its debouncing: a write at most every
/// [`COMMITTED_HINT_EVERY`], and a trailing write of the latest value
/// after the last commit of a burst, so an idle group's file ends up
/// naming its last commit (a restarted node applies everything it
/// committed before it hears from a leader; without the trailing write a
/// node restarted after a quiet spell forgot the last metadata commands,
/// such as a topic's creation, until the leader told it again).
#[derive(Debug)]
struct CommittedFile {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    state: Mutex<HintFileState>,
    /// Held across a write, so two writes never share the temporary file.
    io: Mutex<()>,
}

#[derive(Debug, Default)]
struct HintFileState {
    latest: Option<RaftLogId>,
    written_at: Option<std::time::Instant>,
    trailing_scheduled: bool,
}

impl CommittedFile {
    /// Writes the latest value (read under the write lock, so the last
    /// write to finish holds the newest value). A hint only (see the
    /// module docs): no fsync.
    fn write_latest(&self) -> io::Result<()> {
        let _io = self.io.lock();
        let value = self.state.lock().latest;
        let bytes = encode(&value)?;
        let tmp = tmp_path(&self.path);
        let f = self.storage.open(&tmp, true)?;
        f.set_len(0)?;
        f.write_all_at(&bytes, 0)?;
        drop(f);
        self.storage.rename(&tmp, &self.path)
    }

    /// Records `committed`; writes it now, or schedules the trailing write.
    fn save(self: &Arc<Self>, committed: Option<RaftLogId>) -> io::Result<()> {
        let wait = {
            let mut st = self.state.lock();
            st.latest = committed;
            if st.trailing_scheduled {
                return Ok(());
            }
            match st.written_at.map(|t| t.elapsed()) {
                Some(e) if e < COMMITTED_HINT_EVERY => {
                    st.trailing_scheduled = true;
                    Some(COMMITTED_HINT_EVERY - e)
                }
                _ => {
                    st.written_at = Some(std::time::Instant::now());
                    None
                }
            }
        };
        let Some(wait) = wait else {
            return super::blocking(|| self.write_latest());
        };
        let file = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            {
                let mut st = file.state.lock();
                st.trailing_scheduled = false;
                st.written_at = Some(std::time::Instant::now());
            }
            let path = file.path.clone();
            let written = tokio::task::spawn_blocking(move || file.write_latest()).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "committed hint not written")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "committed hint writer failed")
                }
            }
        });
        Ok(())
    }
}

/// The committed hint file is rewritten at most this often: commits come
/// per batch, and a stale hint is still a true one (it only makes a
/// restarted node apply a little less before it hears from a leader).
const COMMITTED_HINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A reader of the log store (replication and apply read through it).
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

fn io_err(e: LogError) -> io::Error {
    io::Error::other(e)
}

fn read_opt<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    path: &Path,
) -> io::Result<Option<T>> {
    match read_all(storage, path)? {
        Some(b) => decode(&b).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        None => Ok(None),
    }
}

impl LogStore {
    /// Wraps the writer of an open partition log; reads the vote and the
    /// committed hint from its directory.
    pub fn open(writer: Arc<PartitionWriter>, hint: Arc<Mutex<InstallHint>>) -> io::Result<Self> {
        let (storage, dir) = {
            let log = writer.read();
            (log.storage().clone(), log.dir().to_path_buf())
        };
        let vote = read_opt::<RaftVote>(storage.as_ref(), &dir.join(VOTE_FILE))?;
        // The committed index is a hint written without fsync: after a
        // power cut its file may hold anything, and is then ignored.
        let committed =
            match read_opt::<Option<RaftLogId>>(storage.as_ref(), &dir.join(COMMITTED_FILE)) {
                Ok(c) => c.flatten(),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(error = %e, "committed hint unreadable; ignored");
                    None
                }
                Err(e) => return Err(e),
            };
        let committed = committed.filter(|c| {
            let log = writer.read();
            let held = in_log(&log, c);
            if !held {
                tracing::warn!(
                    dir = %dir.display(),
                    committed = %c,
                    last = ?log.last_log_id(),
                    "committed hint names an entry this log does not hold; ignored"
                );
            }
            held
        });
        Ok(LogStore {
            shared: Arc::new(Shared {
                writer,
                vote: Mutex::new(vote),
            }),
            committed_file: Arc::new(CommittedFile {
                storage: storage.clone(),
                path: dir.join(COMMITTED_FILE),
                state: Mutex::new(HintFileState {
                    latest: committed,
                    ..HintFileState::default()
                }),
                io: Mutex::new(()),
            }),
            storage,
            dir,
            committed: Arc::new(Mutex::new(committed)),
            hint,
        })
    }

    /// The partition writer underneath.
    pub fn writer(&self) -> &Arc<PartitionWriter> {
        &self.shared.writer
    }
}

/// Whether `log` holds the entry `id` names (the same log id at its
/// index), or has purged it behind a snapshot. The committed hint is
/// trusted only then: it is written without fsync, so after a power cut it
/// may name an entry whose bytes were lost with the log's unsynced tail.
fn in_log(log: &crate::log::PartitionLog, id: &RaftLogId) -> bool {
    log.last_purged().is_some_and(|p| p.index >= id.index) || log.holds(to_log_id(id))
}

/// Converts an openraft entry into a log entry.
fn to_new_entry(e: RaftEntry) -> io::Result<NewEntry> {
    let log_id = to_log_id(&e.log_id);
    let payload = match e.payload {
        EntryPayload::Blank => Payload::Blank,
        EntryPayload::Normal(Cmd::Batch(b)) => Payload::Batch(b),
        EntryPayload::Normal(c) => Payload::Command(encode(&c)?.into()),
        EntryPayload::Membership(m) => Payload::Membership(encode(&m)?.into()),
    };
    Ok(NewEntry { log_id, payload })
}

/// Converts a log entry back into an openraft entry. Batches are verified
/// again (the segment reader checks entry CRCs; this checks the batch's).
fn to_raft_entry(e: Entry) -> io::Result<RaftEntry> {
    let log_id = from_log_id(e.log_id);
    let payload = match e.kind {
        EntryKind::Blank => EntryPayload::Blank,
        EntryKind::Batch => EntryPayload::Normal(Cmd::Batch(
            strata_proto::batch::verify_batch(
                e.payload,
                &strata_proto::batch::BatchLimits::UNLIMITED,
            )
            .map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("entry {}: {err}", e.log_id),
                )
            })?,
        )),
        EntryKind::Command => EntryPayload::Normal(decode(&e.payload)?),
        EntryKind::Membership => EntryPayload::Membership(decode(&e.payload)?),
    };
    Ok(RaftEntry::new(log_id, payload))
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogReader {
    fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<RaftEntry>> {
        let entries = self
            .shared
            .writer
            .read()
            .entries(start..end, max_bytes)
            .map_err(io_err)?;
        entries.into_iter().map(to_raft_entry).collect()
    }
}

impl RaftLogReader<Tc> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, io::Error> {
        let (mut start, end) = bounds(&range);
        let mut out = Vec::new();
        while start < end {
            let part = self.read(start, end, REPLICATION_BYTES_MAX)?;
            let Some(last) = part.last() else { break };
            start = last.log_id.index + 1;
            out.extend(part);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<RaftVote>, io::Error> {
        Ok(*self.shared.vote.lock())
    }

    /// Replication reads through here: capped by bytes, never empty when
    /// the range holds an entry.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<RaftEntry>, io::Error> {
        self.read(start, end, REPLICATION_BYTES_MAX)
    }
}

impl RaftLogReader<Tc> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, io::Error> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<RaftVote>, io::Error> {
        Ok(*self.shared.vote.lock())
    }
}

impl RaftLogStorage<Tc> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<Tc>, io::Error> {
        let log = self.shared.writer.read();
        Ok(LogState {
            last_purged_log_id: log.last_purged().map(from_log_id),
            last_log_id: log.last_log_id().map(from_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &RaftVote) -> Result<(), io::Error> {
        let bytes = encode(vote)?;
        super::blocking(|| write_atomic(self.storage.as_ref(), &self.dir.join(VOTE_FILE), &bytes))?;
        *self.shared.vote.lock() = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<RaftLogId>) -> Result<(), io::Error> {
        *self.committed.lock() = committed;
        self.committed_file.save(committed)
    }

    async fn read_committed(&mut self) -> Result<Option<RaftLogId>, io::Error> {
        Ok(*self.committed.lock())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Tc>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries
            .into_iter()
            .map(to_new_entry)
            .collect::<io::Result<Vec<_>>>()?;
        let writer = &self.shared.writer;
        // Inline: an append is a copy into the active segment's buffer,
        // and handing the worker off on every one (`blocking`) cost a fifth
        // of the throughput spread over 100 partitions. A roll (its fsync)
        // or a full writer queue still blocks here.
        writer.write().append(&entries).map_err(io_err)?;
        writer
            .flush_async(Box::new(move |r| {
                callback.io_completed(r.map(|_| ()).map_err(io_err));
            }))
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last: Option<RaftLogId>) -> Result<(), io::Error> {
        super::blocking(|| {
            self.shared
                .writer
                .write()
                .truncate_after(last.map(|l| l.index))
                .map_err(io_err)
        })
    }

    async fn purge(&mut self, upto: RaftLogId) -> Result<(), io::Error> {
        let hint = self
            .hint
            .lock()
            .at
            .filter(|(index, _)| *index == upto.index)
            .map(|(_, next_offset)| next_offset);
        super::blocking(|| {
            self.shared
                .writer
                .write()
                .purge(to_log_id(&upto), hint)
                .map_err(io_err)
        })
    }
}
