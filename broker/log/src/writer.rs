//! Group commit: one writer thread per partition log that turns many
//! append requests into one fsync.
//!
//! Requests queue on a bounded channel (a full queue blocks the caller:
//! backpressure). The writer takes every request waiting, up to a byte
//! budget, appends each under the log's write lock, releases the lock,
//! fsyncs once *without* holding it (readers keep reading), and only then
//! completes every request of the group. A request is therefore reported
//! durable only after the fsync that covers it; a request that fails its own
//! checks fails alone; a failed fsync fails the whole group (and poisons the
//! log, see [`PartitionLog`]).
//!
//! Requests carry their Raft log ids, so they must be submitted in index
//! order, as openraft's storage task does. The writer knows nothing about
//! Raft or the network.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use super::entry::NewEntry;
use super::error::{LogError, Result};
use super::partition::{Appended, PartitionLog};

/// Called once per request with its outcome, after the covering fsync.
pub type Completion = Box<dyn FnOnce(Result<Vec<Appended>>) + Send>;

/// Called with the duration of every group fsync (for metrics).
pub type SyncObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Limits of the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Requests that may wait in the queue; submitting beyond it blocks.
    /// Default 4096.
    pub queue_depth: usize,
    /// Payload bytes appended per fsync at most (the group closes once it
    /// is reached). Default 8 MiB.
    pub group_bytes_max: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_depth: 4096,
            group_bytes_max: 8 << 20,
        }
    }
}

/// Counters of the writer, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Requests completed (successfully or not).
    pub requests: u64,
    /// Groups committed, i.e. fsyncs issued.
    pub syncs: u64,
}

enum Request {
    Append(Vec<NewEntry>, Completion),
    Flush(Completion),
}

/// Handle to a partition's writer thread. Reads go through [`Self::read`].
#[derive(Debug)]
pub struct PartitionWriter {
    tx: Option<SyncSender<Request>>,
    log: Arc<RwLock<PartitionLog>>,
    stats: Arc<RwLock<WriterStats>>,
    thread: Option<JoinHandle<()>>,
}

fn read_lock(log: &RwLock<PartitionLog>) -> RwLockReadGuard<'_, PartitionLog> {
    // A panic while holding the lock is a broken invariant; the data on disk
    // is still what recovery would see, so keep serving.
    log.read()
}

fn write_lock(log: &RwLock<PartitionLog>) -> RwLockWriteGuard<'_, PartitionLog> {
    log.write()
}

impl PartitionWriter {
    /// Starts the writer thread for `log`.
    pub fn spawn(log: PartitionLog, config: WriterConfig) -> std::io::Result<Self> {
        Self::spawn_observed(log, config, None)
    }

    /// Starts the writer thread, reporting each fsync's duration to `observer`.
    pub fn spawn_observed(
        log: PartitionLog,
        config: WriterConfig,
        observer: Option<SyncObserver>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(config.queue_depth.max(1));
        let name = format!("strata-writer-{}", log.dir().display());
        let log = Arc::new(RwLock::new(log));
        let stats = Arc::new(RwLock::new(WriterStats::default()));
        let (l, s) = (log.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(l, s, rx, config, observer))?;
        Ok(PartitionWriter {
            tx: Some(tx),
            log,
            stats,
            thread: Some(thread),
        })
    }

    fn send(&self, request: Request) -> Result<()> {
        let tx = self.tx.as_ref().ok_or(LogError::WriterStopped)?;
        tx.send(request).map_err(|_| LogError::WriterStopped)
    }

    /// Queues an append; `done` runs on the writer thread once it is
    /// durable (or failed). Blocks while the queue is full.
    pub fn append(&self, entries: Vec<NewEntry>, done: Completion) -> Result<()> {
        self.send(Request::Append(entries, done))
    }

    /// Queues an append unless the queue is full; on `Err` nothing was queued.
    pub fn try_append(
        &self,
        entries: Vec<NewEntry>,
        done: Completion,
    ) -> Result<(), (Vec<NewEntry>, Completion)> {
        let Some(tx) = self.tx.as_ref() else {
            return Err((entries, done));
        };
        match tx.try_send(Request::Append(entries, done)) {
            Ok(()) => Ok(()),
            Err(
                TrySendError::Full(Request::Append(e, d))
                | TrySendError::Disconnected(Request::Append(e, d)),
            ) => Err((e, d)),
            Err(_) => unreachable!("only appends are sent here"),
        }
    }

    /// Appends and waits until the entries are durable.
    pub fn append_and_wait(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>> {
        let (tx, rx) = sync_channel(1);
        self.append(
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv().map_err(|_| LogError::WriterStopped)?
    }

    /// Queues a flush without waiting: `done` runs on the writer thread
    /// once everything appended before this call is durable, including
    /// entries appended directly through [`Self::write`] (the Raft log
    /// store appends that way, so entries are readable at once, and lets
    /// this thread group the fsyncs).
    pub fn flush_async(&self, done: Completion) -> Result<()> {
        self.send(Request::Flush(done))
    }

    /// Waits until everything queued before this call is durable.
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.send(Request::Flush(Box::new(move |r| {
            let _ = tx.send(r);
        })))?;
        rx.recv().map_err(|_| LogError::WriterStopped)?.map(|_| ())
    }

    /// Shared access to the log for reads (and for operations the writer
    /// does not serialize, like retention, which must not run concurrently
    /// with appends of the same indexes).
    pub fn read(&self) -> RwLockReadGuard<'_, PartitionLog> {
        read_lock(&self.log)
    }

    /// Exclusive access to the log, for truncation, purge and retention.
    /// The writer thread waits while it is held.
    pub fn write(&self) -> RwLockWriteGuard<'_, PartitionLog> {
        write_lock(&self.log)
    }

    /// The writer's counters.
    pub fn stats(&self) -> WriterStats {
        *self.stats.read()
    }

    /// Completes every queued request and stops the thread.
    pub fn close(mut self) -> Result<()> {
        let r = self.flush();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish the queue and exit.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    log: Arc<RwLock<PartitionLog>>,
    stats: Arc<RwLock<WriterStats>>,
    rx: Receiver<Request>,
    config: WriterConfig,
    observer: Option<SyncObserver>,
) {
    let mut group: Vec<(Completion, Result<Vec<Appended>>)> = Vec::new();
    loop {
        // Block for the first request, then take whatever else is waiting.
        let first = match rx.recv() {
            Ok(r) => r,
            Err(_) => return,
        };
        let mut bytes = 0usize;
        let mut next = Some(first);
        {
            let mut l = write_lock(&log);
            while let Some(request) = next.take() {
                match request {
                    Request::Append(entries, done) => {
                        bytes += entries
                            .iter()
                            .map(|e| e.payload.bytes().len())
                            .sum::<usize>();
                        let r = l.append(&entries);
                        group.push((done, r));
                    }
                    Request::Flush(done) => group.push((done, Ok(Vec::new()))),
                }
                if bytes >= config.group_bytes_max {
                    break;
                }
                // Whatever is already queued joins the group; nothing is awaited.
                next = rx.try_recv().ok();
            }
        }
        // One fsync for the whole group, outside the lock.
        let pending = write_lock(&log).prepare_sync();
        let synced = match pending {
            Ok(p) => {
                let started = std::time::Instant::now();
                let r = p.run();
                if let Some(observe) = &observer {
                    observe(started.elapsed());
                }
                write_lock(&log).finish_sync(p, r).map(|_| ())
            }
            Err(e) => Err(e),
        };
        {
            let mut s = stats.write();
            s.syncs += 1;
            s.requests += group.len() as u64;
        }
        for (done, r) in group.drain(..) {
            let r = match (&synced, r) {
                (Ok(()), r) => r,
                (Err(e), Ok(_)) => {
                    Err(LogError::Poisoned(format!("the group's fsync failed: {e}")))
                }
                (Err(_), Err(e)) => Err(e),
            };
            done(r);
        }
    }
}
