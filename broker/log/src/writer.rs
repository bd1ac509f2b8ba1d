//! Group commit: a fixed pool of writer threads shared by every partition
//! log of the process, each partition's append requests turned into one
//! fsync per group.
//!
//! Requests queue per partition, bounded (a full queue blocks the caller:
//! backpressure). A partition with work is scheduled on the pool; one
//! thread at a time serves it: it takes every request waiting, up to a
//! byte budget, appends each under the log's write lock, releases the lock,
//! fsyncs once *without* holding it (readers keep reading), and only then
//! completes every request of the group. A request is therefore reported
//! durable only after the fsync that covers it; a request that fails its own
//! checks fails alone; a failed fsync fails the whole group (and poisons the
//! log, see [`PartitionLog`]).
//!
//! The pool's threads are the node's fsync budget: partitions waiting for
//! the disk run their fsyncs concurrently on different threads (the file
//! system folds concurrent fsyncs into one journal commit), and a node's
//! thread count does not grow with its partitions. A partition that has
//! been served goes to the back of the pool's queue, so a busy partition
//! cannot starve the others.
//!
//! Requests carry their Raft log ids, so they must be submitted in index
//! order, as openraft's storage task does. The writer knows nothing about
//! Raft or the network.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

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

/// Threads of the process-wide pool [`WriterPool::shared`] uses.
pub const SHARED_POOL_THREADS: usize = 8;

/// A fixed set of writer threads serving any number of partition logs.
/// Cloning shares the pool; the threads stop once the last handle and the
/// last writer using it are gone and the queue is empty.
#[derive(Clone)]
pub struct WriterPool {
    inner: Arc<PoolInner>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for WriterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterPool")
            .field("threads", &self.inner.threads)
            .finish_non_exhaustive()
    }
}

struct PoolInner {
    threads: usize,
    ready: Mutex<Ready>,
    wake: Condvar,
}

impl PoolInner {
    fn schedule(&self, partition: Arc<Shared>) {
        self.ready.lock().queue.push_back(partition);
        self.wake.notify_one();
    }
}

/// Held by every handle; the last one dropped stops the threads.
struct Owner(Arc<PoolInner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.ready.lock().stopping = true;
        self.0.wake.notify_all();
    }
}

#[derive(Default)]
struct Ready {
    queue: VecDeque<Arc<Shared>>,
    stopping: bool,
}

thread_local! {
    /// Set on the pool's threads: a writer dropped from a completion must
    /// not wait for its own thread.
    static ON_POOL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl WriterPool {
    /// Starts a pool of `threads` writer threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let inner = Arc::new(PoolInner {
            threads,
            ready: Mutex::new(Ready::default()),
            wake: Condvar::new(),
        });
        let owner = Arc::new(Owner(inner.clone()));
        for i in 0..threads {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("strata-writer-{i}"))
                .spawn(move || pool_thread(&inner))?;
        }
        Ok(WriterPool {
            inner,
            _owner: owner,
        })
    }

    /// The process-wide pool of [`SHARED_POOL_THREADS`] threads, started on
    /// first use; what [`PartitionWriter::spawn`] uses.
    pub fn shared() -> std::io::Result<Self> {
        static SHARED: std::sync::OnceLock<WriterPool> = std::sync::OnceLock::new();
        if let Some(p) = SHARED.get() {
            return Ok(p.clone());
        }
        let pool = WriterPool::new(SHARED_POOL_THREADS)?;
        Ok(SHARED.get_or_init(|| pool).clone())
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }
}

fn pool_thread(pool: &PoolInner) {
    ON_POOL_THREAD.with(|f| f.set(true));
    loop {
        let partition = {
            let mut ready = pool.ready.lock();
            loop {
                if let Some(p) = ready.queue.pop_front() {
                    break p;
                }
                if ready.stopping {
                    return;
                }
                pool.wake.wait(&mut ready);
            }
        };
        if serve(&partition) {
            pool.schedule(partition);
        }
    }
}

/// One partition's writer state, shared by its handle and the pool.
struct Shared {
    log: Arc<RwLock<PartitionLog>>,
    stats: RwLock<WriterStats>,
    config: WriterConfig,
    observer: Option<SyncObserver>,
    queue: Mutex<Queue>,
    /// Signalled when requests leave the queue and when a group completes.
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// On the pool's ready queue or being served.
    scheduled: bool,
    /// No more requests are accepted.
    closed: bool,
}

enum Request {
    Append(Vec<NewEntry>, Completion),
    Flush(Completion),
}

/// Handle to a partition's writer. Reads go through [`Self::read`].
pub struct PartitionWriter {
    shared: Arc<Shared>,
    pool: WriterPool,
}

impl std::fmt::Debug for PartitionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWriter")
            .field("dir", &self.shared.log.read().dir())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl PartitionWriter {
    /// Starts writing `log` on the process-wide pool ([`WriterPool::shared`]).
    pub fn spawn(log: PartitionLog, config: WriterConfig) -> std::io::Result<Self> {
        Self::spawn_observed(log, config, None)
    }

    /// Starts writing `log` on the process-wide pool, reporting each
    /// fsync's duration to `observer`.
    pub fn spawn_observed(
        log: PartitionLog,
        config: WriterConfig,
        observer: Option<SyncObserver>,
    ) -> std::io::Result<Self> {
        Ok(Self::spawn_in(
            &WriterPool::shared()?,
            log,
            config,
            observer,
        ))
    }

    /// Starts writing `log` on `pool`.
    pub fn spawn_in(
        pool: &WriterPool,
        log: PartitionLog,
        config: WriterConfig,
        observer: Option<SyncObserver>,
    ) -> Self {
        PartitionWriter {
            shared: Arc::new(Shared {
                log: Arc::new(RwLock::new(log)),
                stats: RwLock::new(WriterStats::default()),
                config,
                observer,
                queue: Mutex::new(Queue::default()),
                changed: Condvar::new(),
            }),
            pool: pool.clone(),
        }
    }

    /// Queues `request`, waiting for room if `block`; gives it back if it
    /// cannot be queued.
    fn submit(&self, request: Request, block: bool) -> Result<(), Request> {
        let depth = self.shared.config.queue_depth.max(1);
        let mut q = self.shared.queue.lock();
        while !q.closed && q.requests.len() >= depth {
            if !block {
                return Err(request);
            }
            self.shared.changed.wait(&mut q);
        }
        if q.closed {
            return Err(request);
        }
        q.requests.push_back(request);
        if !q.scheduled {
            q.scheduled = true;
            drop(q);
            self.pool.inner.schedule(self.shared.clone());
        }
        Ok(())
    }

    fn send(&self, request: Request) -> Result<()> {
        self.submit(request, true)
            .map_err(|_| LogError::WriterStopped)
    }

    /// Queues an append; `done` runs on a writer thread once it is
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
        match self.submit(Request::Append(entries, done), false) {
            Ok(()) => Ok(()),
            Err(Request::Append(e, d)) => Err((e, d)),
            Err(Request::Flush(_)) => unreachable!("only an append was submitted"),
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

    /// Queues a flush without waiting: `done` runs on a writer thread
    /// once everything appended before this call is durable, including
    /// entries appended directly through [`Self::write`] (the Raft log
    /// store appends that way, so entries are readable at once, and lets
    /// the writer group the fsyncs).
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
        self.shared.log.read()
    }

    /// Exclusive access to the log, for truncation, purge and retention.
    /// The writer waits while it is held.
    pub fn write(&self) -> RwLockWriteGuard<'_, PartitionLog> {
        self.shared.log.write()
    }

    /// The writer's counters.
    pub fn stats(&self) -> WriterStats {
        *self.shared.stats.read()
    }

    /// Completes every queued request and refuses new ones.
    pub fn close(self) -> Result<()> {
        let r = self.flush();
        self.stop();
        r
    }

    /// Refuses new requests and waits until the queued ones completed
    /// (unless called from a completion, on a writer thread: the queue is
    /// then finished after it returns).
    fn stop(&self) {
        let mut q = self.shared.queue.lock();
        q.closed = true;
        self.shared.changed.notify_all();
        if ON_POOL_THREAD.with(|f| f.get()) {
            return;
        }
        while q.scheduled {
            self.shared.changed.wait(&mut q);
        }
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves one group of `partition`'s requests; answers whether more wait
/// (the partition then stays scheduled and goes to the back of the queue).
fn serve(partition: &Shared) -> bool {
    let mut group: Vec<(Completion, Result<Vec<Appended>>)> = Vec::new();
    let mut bytes = 0usize;
    {
        let mut l = partition.log.write();
        loop {
            let Some(request) = partition.queue.lock().requests.pop_front() else {
                break;
            };
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
            if bytes >= partition.config.group_bytes_max {
                break;
            }
        }
    }
    // Room in the queue again.
    partition.changed.notify_all();
    if !group.is_empty() {
        // One fsync for the whole group, outside the lock.
        let pending = partition.log.write().prepare_sync();
        let synced = match pending {
            Ok(p) => {
                let started = std::time::Instant::now();
                let r = p.run();
                if let Some(observe) = &partition.observer {
                    observe(started.elapsed());
                }
                partition.log.write().finish_sync(p, r).map(|_| ())
            }
            Err(e) => Err(e),
        };
        {
            let mut s = partition.stats.write();
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
    let mut q = partition.queue.lock();
    let more = !q.requests.is_empty();
    if !more {
        q.scheduled = false;
        partition.changed.notify_all();
    }
    more
}
