//! Group commit through the partition writer: many requests, one fsync;
//! completions only after the fsync; readers not blocked by it; a bad
//! request fails alone; a failed fsync fails its group and poisons the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{batch, entry, small_config};
use strata_log::fault::FaultStorage;
use strata_log::{
    Appended, LogConfig, LogError, ManualClock, PartitionLog, PartitionWriter, Payload, Result,
    Storage, StorageFile, WriterConfig, WriterPool,
};

/// A storage whose file fsyncs wait at a gate the test opens, and can be
/// told to fail.
#[derive(Debug, Clone)]
struct Gated {
    inner: FaultStorage,
    state: Arc<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    closed: Mutex<bool>,
    cv: Condvar,
    waiting: AtomicU64,
    syncs: AtomicU64,
    fail: AtomicBool,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn StorageFile>,
    state: Arc<GateState>,
}

impl StorageFile for GatedFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, position)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.state.waiting.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.state.closed.lock().unwrap();
        while *closed {
            closed = self.state.cv.wait(closed).unwrap();
        }
        drop(closed);
        self.state.waiting.fetch_sub(1, Ordering::SeqCst);
        self.state.syncs.fetch_add(1, Ordering::SeqCst);
        if self.state.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl Storage for Gated {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(GatedFile {
            inner: self.inner.open(path, create)?,
            state: self.state.clone(),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        self.inner.is_dir(path)
    }
}

impl Gated {
    fn new() -> Self {
        Gated {
            inner: FaultStorage::new(),
            state: Arc::new(GateState::default()),
        }
    }
    fn set_closed(&self, closed: bool) {
        *self.state.closed.lock().unwrap() = closed;
        self.state.cv.notify_all();
    }
}

fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// Segments large enough that no test here rolls one (a roll fsyncs too).
fn open(storage: &Gated) -> PartitionLog {
    open_at(storage, "/w/p0")
}

fn open_at(storage: &Gated, dir: &str) -> PartitionLog {
    let config = LogConfig {
        segment_bytes_max: 1 << 20,
        ..small_config()
    };
    PartitionLog::open(
        Arc::new(storage.clone()),
        Path::new(dir),
        config,
        Arc::new(ManualClock::new(0)),
    )
    .unwrap()
}

type Done = (u64, Result<Vec<Appended>>);

fn submit(w: &PartitionWriter, index: u64, payload: Payload, tx: &std::sync::mpsc::Sender<Done>) {
    let tx = tx.clone();
    w.append(
        vec![entry(1, index, payload)],
        Box::new(move |r| tx.send((index, r)).unwrap()),
    )
    .unwrap();
}

fn collect(rx: &Receiver<Done>, n: usize) -> Vec<Done> {
    let mut out: Vec<Done> = (0..n)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("completion")
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out
}

#[test]
fn queued_requests_share_one_fsync_and_complete_only_after_it() {
    let storage = Gated::new();
    let w = PartitionWriter::spawn(open(&storage), WriterConfig::default()).unwrap();
    let (tx, rx) = channel();
    storage.set_closed(true);
    submit(&w, 0, batch(2, 10, 0, 0, false), &tx);
    poll_until("the first fsync to start", || {
        storage.state.waiting.load(Ordering::SeqCst) == 1
    });
    for i in 1..=50 {
        submit(&w, i, batch(2, 10, 0, i, false), &tx);
    }
    // The fsync runs outside the log's lock: readers see the appended (not
    // yet durable) entry while it is in progress.
    {
        let log = w.read();
        assert_eq!(log.next_offset(), 2);
        assert_eq!(log.durable_next_offset(), 0);
    }
    assert!(
        rx.try_recv().is_err(),
        "nothing may complete before its fsync"
    );
    storage.set_closed(false);
    let done = collect(&rx, 51);
    for (i, r) in &done {
        assert_eq!(r.as_ref().unwrap()[0].base_offset, i * 2);
    }
    let stats = w.stats();
    assert_eq!(
        (stats.requests, stats.syncs),
        (51, 2),
        "the 50 queued requests formed one group"
    );
    assert_eq!(storage.state.syncs.load(Ordering::SeqCst), 2);
    assert_eq!(w.read().durable_next_offset(), 102);
    w.close().unwrap();
}

#[test]
fn a_bad_request_fails_alone() {
    let storage = Gated::new();
    let w = PartitionWriter::spawn(open(&storage), WriterConfig::default()).unwrap();
    let (tx, rx) = channel();
    submit(&w, 0, batch(1, 10, 0, 0, false), &tx);
    submit(&w, 7, batch(1, 10, 0, 1, false), &tx); // not contiguous
    submit(&w, 1, batch(1, 10, 0, 2, false), &tx);
    let done = collect(&rx, 3);
    assert!(done[0].1.is_ok());
    assert!(done[1].1.is_ok(), "index 1 follows index 0");
    assert!(
        matches!(done[2].1, Err(LogError::NonContiguous { expected: 1, .. })),
        "index 7 did not"
    );
    w.close().unwrap();
}

#[test]
fn failed_fsync_fails_the_group_and_poisons_the_log() {
    let storage = Gated::new();
    let w = PartitionWriter::spawn(open(&storage), WriterConfig::default()).unwrap();
    w.append_and_wait(vec![entry(1, 0, batch(1, 10, 0, 0, false))])
        .unwrap();
    storage.state.fail.store(true, Ordering::SeqCst);
    let err = w
        .append_and_wait(vec![entry(1, 1, batch(1, 10, 0, 1, false))])
        .unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
    storage.state.fail.store(false, Ordering::SeqCst);
    let err = w
        .append_and_wait(vec![entry(1, 2, batch(1, 10, 0, 2, false))])
        .unwrap_err();
    assert!(
        matches!(err, LogError::Poisoned(_)),
        "the log stays poisoned until reopened: {err}"
    );
    drop(w);
    storage.inner.power_cut(None);
    let log = open(&storage);
    assert_eq!(
        log.last_log_id().map(|l| l.index),
        Some(0),
        "only the acknowledged entry survives"
    );
}

#[test]
fn concurrent_producers_get_dense_offsets_and_durable_acks() {
    let storage = Gated::new();
    let w = Arc::new(PartitionWriter::spawn(open(&storage), WriterConfig::default()).unwrap());
    // Raft assigns indexes in order; here a lock stands in for it.
    let next_index = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (w, next_index) = (w.clone(), next_index.clone());
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for k in 0..200u64 {
                    let (tx, rx) = channel();
                    {
                        let mut i = next_index.lock().unwrap();
                        let e = entry(
                            1,
                            *i,
                            batch(1 + (k % 3) as usize, 20, 0, t * 1000 + k, false),
                        );
                        w.append(vec![e], Box::new(move |r| tx.send(r).unwrap()))
                            .unwrap();
                        *i += 1;
                    }
                    acks.push(rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap()[0]);
                }
                acks
            })
        })
        .collect();
    let mut acks: Vec<Appended> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acks.sort_by_key(|a| a.log_id.index);
    let mut next = 0;
    for a in &acks {
        assert_eq!(a.base_offset, next, "offsets are dense in index order");
        next += u64::from(a.record_count);
    }
    let stats = w.stats();
    assert_eq!(stats.requests, 800);
    assert!(stats.syncs <= 800);
    Arc::try_unwrap(w).unwrap().close().unwrap();
    storage.inner.power_cut(None);
    let log = open(&storage);
    assert_eq!(
        log.next_offset(),
        next,
        "every acknowledged record survives a power cut"
    );
}

#[test]
fn many_partitions_share_a_fixed_pool_whose_threads_fsync_concurrently() {
    let storage = Gated::new();
    let pool = WriterPool::new(2).unwrap();
    let writers: Vec<PartitionWriter> = (0..40)
        .map(|p| {
            PartitionWriter::spawn_in(
                &pool,
                open_at(&storage, &format!("/w/p{p}")),
                WriterConfig::default(),
                None,
            )
        })
        .collect();
    let (tx, rx) = channel();
    storage.set_closed(true);
    for (p, w) in writers.iter().enumerate() {
        submit(w, 0, batch(1, 10, 0, p as u64, false), &tx);
    }
    poll_until("both pool threads to be in an fsync", || {
        storage.state.waiting.load(Ordering::SeqCst) == 2
    });
    // Give a third fsync every chance to start: it must not, the pool has
    // two threads whatever the number of partitions.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(storage.state.waiting.load(Ordering::SeqCst), 2);
    assert!(rx.try_recv().is_err(), "nothing completes before its fsync");
    storage.set_closed(false);
    let done: Vec<Done> = (0..40)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("completion")
        })
        .collect();
    assert!(done.iter().all(|(_, r)| r.is_ok()));
    for w in &writers {
        assert_eq!(w.stats().syncs, 1);
        assert_eq!(w.read().durable_next_offset(), 1);
    }
}

#[test]
fn a_writer_dropped_from_its_own_completion_does_not_stall_the_pool() {
    let storage = Gated::new();
    let pool = WriterPool::new(1).unwrap();
    let doomed = Arc::new(Mutex::new(Some(PartitionWriter::spawn_in(
        &pool,
        open_at(&storage, "/w/a"),
        WriterConfig::default(),
        None,
    ))));
    let (tx, rx) = channel();
    {
        let guard = doomed.lock().unwrap();
        let w = guard.as_ref().unwrap();
        let d = doomed.clone();
        w.append(
            vec![entry(1, 0, batch(1, 10, 0, 0, false))],
            Box::new(move |r| {
                // The last handle goes away on the pool's only thread.
                drop(d.lock().unwrap().take());
                tx.send(r.is_ok()).unwrap();
            }),
        )
        .unwrap();
    }
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    let other = PartitionWriter::spawn_in(
        &pool,
        open_at(&storage, "/w/b"),
        WriterConfig::default(),
        None,
    );
    other
        .append_and_wait(vec![entry(1, 0, batch(1, 10, 0, 1, false))])
        .expect("the pool still serves other partitions");
}
