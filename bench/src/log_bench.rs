//! `strata-log-bench`: measures the partition log against the disk's own
//! limit, in one run.
//!
//! It appends records of a chosen size in batches, group-committing several
//! batches per fsync, then reads everything back sequentially, and in the
//! same run measures the raw limit: plain writes of the same bytes, in the
//! same chunk sizes, each followed by an fsync, alternating with the log's
//! rounds so both see the same machine. It prints records/s, MB/s
//! and the ratio to the raw limit.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use std::sync::Mutex;

use strata_log::{
    LogConfig, LogId, NewEntry, PartitionLog, PartitionWriter, Payload, WriterConfig,
};
use strata_proto::{BatchLimits, Compression, Record, encode_batch, verify_batch};

/// Benchmark the partition log: fsynced appends, sequential reads, and the
/// disk's raw fsynced write bandwidth measured in the same run.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Records to append (bounded run: the data is deleted afterwards).
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Records per batch (what one producer request carries).
    #[arg(long, default_value_t = 1000)]
    batch_records: usize,
    /// Batches appended per fsync (the group commit size).
    #[arg(long, default_value_t = 8)]
    batches_per_sync: usize,
    /// Compress batches with LZ4 (block format).
    #[arg(long)]
    lz4: bool,
    /// Directory for the data (a scratch directory is created inside and
    /// removed at the end). Put it on the disk you want to measure.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Rounds of (raw write, log append), alternated; medians are reported,
    /// since shared machines drift.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Append through the group-commit writer from this many producer
    /// threads (one batch per request; the writer forms the groups and
    /// --batches-per-sync only shapes the raw comparison). 0: append and
    /// fsync directly from one thread.
    #[arg(long, default_value_t = 0)]
    producers: usize,
    /// Requests each producer keeps in flight in --producers mode.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Writes `chunks` sequentially to fresh files of at most `file_bytes_max`
/// each (the log's segment size, so both allocate the same way), fsyncing
/// after each chunk; then removes them.
fn raw_fsynced_write(
    dir: &Path,
    chunks: &[usize],
    file_bytes_max: u64,
) -> anyhow::Result<Duration> {
    let max = chunks.iter().copied().max().unwrap_or(0);
    let buf: Vec<u8> = (0..max).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::create_dir_all(dir)?;
    let open = |n: usize| -> anyhow::Result<std::fs::File> {
        let path = dir.join(format!("raw-{n}"));
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))
    };
    let t = Instant::now();
    let mut files = 0;
    let mut f = open(files)?;
    let mut pos = 0u64;
    for &c in chunks {
        if pos > 0 && pos + c as u64 > file_bytes_max {
            files += 1;
            f = open(files)?;
            pos = 0;
        }
        f.write_all_at(&buf[..c], pos)?;
        f.sync_data()?;
        pos += c as u64;
    }
    let d = t.elapsed();
    drop(f);
    std::fs::remove_dir_all(dir)?;
    Ok(d)
}

/// Appends `batches_per_sync` batches, then fsyncs, from this thread.
fn append_direct(
    mut log: PartitionLog,
    args: &Args,
    batches: &[Payload],
    n_batches: u64,
    round: usize,
) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let mut index = 0u64;
    let mut group = Vec::with_capacity(args.batches_per_sync);
    while index < n_batches {
        group.clear();
        while group.len() < args.batches_per_sync && index < n_batches {
            group.push(NewEntry {
                log_id: LogId::new(1, 1, index),
                payload: batches[(index as usize + round) % batches.len()].clone(),
            });
            index += 1;
        }
        log.append(&group)?;
        log.sync()?;
    }
    Ok((t.elapsed(), log.segments().len()))
}

/// `--producers` threads each keep up to `--in-flight` one-batch requests
/// queued at the group-commit writer, which decides the group sizes.
fn append_through_writer(
    log: PartitionLog,
    args: &Args,
    batches: &[Payload],
    n_batches: u64,
    round: usize,
) -> anyhow::Result<(Duration, usize, u64)> {
    let writer = PartitionWriter::spawn(log, WriterConfig::default())?;
    // Raft assigns indexes in order; a lock stands in for it here.
    let next = Mutex::new(0u64);
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..args.producers)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let mut in_flight = 0;
                    loop {
                        {
                            let mut i = next
                                .lock()
                                .map_err(|_| anyhow::anyhow!("producer panicked"))?;
                            if *i >= n_batches {
                                break;
                            }
                            let e = NewEntry {
                                log_id: LogId::new(1, 1, *i),
                                payload: batches[(*i as usize + round) % batches.len()].clone(),
                            };
                            let tx = tx.clone();
                            writer.append(vec![e], Box::new(move |r| drop(tx.send(r))))?;
                            *i += 1;
                        }
                        in_flight += 1;
                        if in_flight >= args.in_flight {
                            rx.recv()??;
                            in_flight -= 1;
                        }
                    }
                    for _ in 0..in_flight {
                        rx.recv()??;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = t.elapsed();
    let syncs = writer.stats().syncs;
    let segments = writer.read().segments().len();
    writer.close()?;
    Ok((elapsed, segments, syncs))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.records == 0
        || args.batch_records == 0
        || args.batches_per_sync == 0
        || args.rounds == 0
    {
        bail!("--records, --batch-records, --batches-per-sync and --rounds must be positive");
    }
    let scratch = Scratch(
        args.dir
            .join(format!("strata-log-bench-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("create {}", scratch.0.display()))?;

    // Producer side (not timed): encode every distinct batch once. Batches
    // are reused round-robin so memory stays bounded.
    let t = Instant::now();
    let distinct = 64usize;
    let batches: Vec<Payload> = (0..distinct)
        .map(|b| {
            let records: Vec<Record> = (0..args.batch_records)
                .map(|i| Record {
                    key: None,
                    value: Bytes::from(
                        (0..args.record_bytes)
                            .map(|j| ((b * 131 + i * 31 + j) % 251) as u8)
                            .collect::<Vec<u8>>(),
                    ),
                    headers: vec![],
                    timestamp_ms: 1_700_000_000_000 + i as i64,
                })
                .collect();
            let mut out = Vec::new();
            let c = if args.lz4 {
                Compression::Lz4
            } else {
                Compression::None
            };
            encode_batch(&records, c, None, &mut out)?;
            Ok(Payload::Batch(verify_batch(
                Bytes::from(out),
                &BatchLimits::UNLIMITED,
            )?))
        })
        .collect::<anyhow::Result<_>>()?;
    let encode_time = t.elapsed() / distinct as u32;
    let batch_bytes = batches[0].bytes().len();
    let n_batches = args.records.div_ceil(args.batch_records as u64);
    let total_records = n_batches * args.batch_records as u64;

    let config = LogConfig {
        batch_bytes_max: (batch_bytes as u32).max(LogConfig::default().batch_bytes_max),
        retention_ms: None,
        ..LogConfig::default()
    };
    let log_dir = scratch.0.join("p0");

    // Group sizes in bytes as the log writes them (entry header included),
    // so the raw run writes the same bytes in the same chunks.
    let entry_bytes = batch_bytes + strata_log::entry::ENTRY_HEADER_LEN;
    let groups: Vec<usize> = (0..n_batches)
        .step_by(args.batches_per_sync)
        .map(|g| ((n_batches - g) as usize).min(args.batches_per_sync) * entry_bytes)
        .collect();
    let file_bytes: u64 = groups.iter().map(|&g| g as u64).sum();

    let mut raw_times = Vec::new();
    let mut append_times = Vec::new();
    let mut segments = 0;
    let mut syncs = 0;
    for round in 0..args.rounds {
        // Alternate which goes first, so neither always inherits the other's
        // write-back.
        if round % 2 == 0 {
            raw_times.push(raw_fsynced_write(
                &scratch.0.join("raw"),
                &groups,
                config.segment_bytes_max,
            )?);
        }
        if log_dir.exists() {
            std::fs::remove_dir_all(&log_dir)?;
        }
        let log = PartitionLog::open_dir(&log_dir, config.clone())?;
        let (elapsed, segs, groups_committed) = if args.producers == 0 {
            let (e, s) = append_direct(log, &args, &batches, n_batches, round)?;
            (e, s, n_batches.div_ceil(args.batches_per_sync as u64))
        } else {
            append_through_writer(log, &args, &batches, n_batches, round)?
        };
        append_times.push(elapsed);
        segments = segs;
        syncs = groups_committed;
        if round % 2 == 1 {
            raw_times.push(raw_fsynced_write(
                &scratch.0.join("raw"),
                &groups,
                config.segment_bytes_max,
            )?);
        }
    }
    raw_times.sort();
    append_times.sort();
    let raw_time = raw_times[raw_times.len() / 2];
    let append_time = append_times[append_times.len() / 2];

    let t = Instant::now();
    let log = PartitionLog::open_dir(&log_dir, config)?;
    let open_time = t.elapsed();
    let t = Instant::now();
    let mut offset = 0;
    let mut read_bytes = 0u64;
    while offset < log.next_offset() {
        let r = log.read(offset, 4 << 20, None)?;
        for b in &r {
            read_bytes += b.bytes.len() as u64;
            offset = b.last_offset() + 1;
        }
    }
    let read_time = t.elapsed();
    if offset != total_records {
        bail!("read back {offset} records, appended {total_records}");
    }

    let append_mbs = mb_per_s(file_bytes, append_time);
    let raw_mbs = mb_per_s(file_bytes, raw_time);
    let append_rps = total_records as f64 / append_time.as_secs_f64();
    let read_rps = total_records as f64 / read_time.as_secs_f64();
    let read_mbs = mb_per_s(read_bytes, read_time);
    let ratio = append_mbs / raw_mbs;
    let best_ratio = raw_times[0].as_secs_f64() / append_times[0].as_secs_f64();
    if args.json {
        println!(
            "{{\"records\":{total_records},\"record_bytes\":{},\"batch_records\":{},\"batches_per_sync\":{},\"lz4\":{},\"batch_bytes\":{batch_bytes},\"file_bytes\":{file_bytes},\"segments\":{segments},\"producers\":{},\"fsyncs\":{syncs},\"append_records_per_s\":{append_rps:.0},\"append_mb_per_s\":{append_mbs:.1},\"raw_fsync_write_mb_per_s\":{raw_mbs:.1},\"rounds\":{},\"append_to_raw_ratio\":{ratio:.3},\"best_append_to_best_raw_ratio\":{best_ratio:.3},\"read_records_per_s\":{read_rps:.0},\"read_mb_per_s\":{read_mbs:.1},\"open_ms\":{:.2},\"encode_us_per_batch\":{:.1}}}",
            args.record_bytes,
            args.batch_records,
            args.batches_per_sync,
            args.lz4,
            args.producers,
            args.rounds,
            open_time.as_secs_f64() * 1e3,
            encode_time.as_secs_f64() * 1e6,
        );
    } else {
        println!(
            "strata-log-bench: {total_records} records of {} bytes, {} per batch ({batch_bytes} bytes{}), {} batches per fsync, {:.1} MB in {segments} segments",
            args.record_bytes,
            args.batch_records,
            if args.lz4 { ", lz4" } else { "" },
            args.batches_per_sync,
            file_bytes as f64 / 1e6
        );
        println!("{:<34} {:>14} {:>10}", "measurement", "records/s", "MB/s");
        println!(
            "{:<34} {:>14} {:>10.1}",
            "raw fsynced write (median)", "-", raw_mbs
        );
        println!(
            "{:<34} {:>14.0} {:>10.1}",
            "log append + group fsync (median)", append_rps, append_mbs
        );
        println!(
            "{:<34} {:>14.0} {:>10.1}",
            "log sequential read (page cache)", read_rps, read_mbs
        );
        let each = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.0}", mb_per_s(file_bytes, *d)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "rounds (sorted, MB/s): raw [{}], log [{}]",
            each(&raw_times),
            each(&append_times)
        );
        println!(
            "append / raw fsynced write: {ratio:.2} (medians), {best_ratio:.2} (best rounds: the raw limit is the best it reached)"
        );
        if args.producers > 0 {
            println!(
                "{} producers x {} in flight through the writer: {syncs} fsyncs, {:.1} batches per fsync (last round)",
                args.producers,
                args.in_flight,
                n_batches as f64 / syncs.max(1) as f64
            );
        }
        println!(
            "open with {segments} segments: {:.2} ms",
            open_time.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
