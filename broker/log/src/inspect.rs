//! Offline, read-only inspection of partition directories (`strata log
//! dump|verify`): walks every segment file entry by entry, checking every
//! CRC and the index and offset chains, without recovery and without
//! writing anything — unlike [`super::PartitionLog::open`], which repairs.

use std::path::{Path, PathBuf};

use super::config::ENTRY_READ_LIMIT;
use super::entry::{self, EntryError, EntryMeta};
use super::error::{LogError, Result};
use super::segment::{SEGMENT_HEADER_LEN, parse_file_name};
use super::storage::{FileStorage, Storage};

/// One problem found in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Byte position in the file.
    pub position: u64,
    /// What is wrong.
    pub reason: String,
}

/// What one segment file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    /// The `.log` file.
    pub path: PathBuf,
    /// File size.
    pub size_bytes: u64,
    /// Entries that verified.
    pub entries: u64,
    /// Batch entries among them.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// First and last offset of its records.
    pub offsets: Option<(u64, u64)>,
    /// First and last Raft index.
    pub indexes: Option<(u64, u64)>,
    /// Whether `.index` and `.timeindex` exist (sealed).
    pub sealed: bool,
    /// Problems; the scan stops at the first damaged entry.
    pub problems: Vec<Problem>,
}

/// Partition directories under `dir`: `dir` itself if it holds segments,
/// else `dir/topics/*/*` (a data directory) or `dir/*` (a topic directory).
pub fn partition_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    partition_dirs_in(&FileStorage, dir)
}

/// [`partition_dirs`] through any storage.
pub fn partition_dirs_in(st: &dyn Storage, dir: &Path) -> Result<Vec<PathBuf>> {
    let has_segments = |d: &Path| -> bool {
        st.list(d)
            .map(|names| names.iter().any(|n| n.ends_with(".log")))
            .unwrap_or(false)
    };
    if has_segments(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let topics = dir.join("topics");
    let is_dir = |p: &Path| st.is_dir(p).map_err(LogError::io("stat", p));
    let base = if is_dir(&topics)? {
        topics
    } else {
        dir.to_path_buf()
    };
    let mut out = Vec::new();
    let mut stack = vec![base];
    while let Some(d) = stack.pop() {
        for name in st.list(&d).map_err(LogError::io("list directory", &d))? {
            let p = d.join(name);
            if is_dir(&p)? {
                if has_segments(&p) {
                    out.push(p);
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Inspects every segment of one partition directory; `visit` sees each
/// verified entry with its payload (for `dump`).
pub fn inspect_partition(
    dir: &Path,
    visit: impl FnMut(&Path, &EntryMeta, &[u8]),
) -> Result<Vec<SegmentReport>> {
    inspect_partition_in(&FileStorage, dir, visit)
}

/// [`inspect_partition`] through any storage.
pub fn inspect_partition_in(
    st: &dyn Storage,
    dir: &Path,
    mut visit: impl FnMut(&Path, &EntryMeta, &[u8]),
) -> Result<Vec<SegmentReport>> {
    let names = st.list(dir).map_err(LogError::io("list directory", dir))?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| {
            parse_file_name(n)
                .filter(|(_, ext)| *ext == "log")
                .map(|(b, _)| b)
        })
        .collect();
    bases.sort_unstable();
    let mut reports = Vec::new();
    for base in bases {
        let path = dir.join(super::segment::log_file_name(base));
        let file = st
            .open(&path, false)
            .map_err(LogError::io("open segment", &path))?;
        let size = file.len().map_err(LogError::io("stat segment", &path))?;
        let mut data = vec![0u8; size as usize];
        file.read_exact_at(&mut data, 0)
            .map_err(LogError::io("read segment", &path))?;
        let exists = |p: PathBuf| st.exists(&p).map_err(LogError::io("stat", p));
        let sealed = exists(dir.join(super::segment::index_file_name(base)))?
            && exists(dir.join(super::segment::time_index_file_name(base)))?;
        let mut r = SegmentReport {
            path: path.clone(),
            size_bytes: size,
            entries: 0,
            batches: 0,
            records: 0,
            offsets: None,
            indexes: None,
            sealed,
            problems: Vec::new(),
        };
        if data.len() < SEGMENT_HEADER_LEN {
            r.problems.push(Problem {
                position: 0,
                reason: "file is shorter than a segment header".into(),
            });
            reports.push(r);
            continue;
        }
        let mut pos = SEGMENT_HEADER_LEN;
        let mut prev: Option<EntryMeta> = None;
        while pos < data.len() {
            let meta = match entry::decode(&data[pos..], ENTRY_READ_LIMIT) {
                Ok(m) => m,
                Err(EntryError::Incomplete { .. }) => {
                    r.problems.push(Problem {
                        position: pos as u64,
                        reason: "torn entry at the end of the file".into(),
                    });
                    break;
                }
                Err(e) => {
                    r.problems.push(Problem {
                        position: pos as u64,
                        reason: e.to_string(),
                    });
                    break;
                }
            };
            if let Some(p) = prev
                && (meta.log_id.index != p.log_id.index + 1 || meta.base_offset != p.next_offset())
            {
                r.problems.push(Problem {
                    position: pos as u64,
                    reason: format!(
                        "entry {} at offset {} does not follow {} (next offset {})",
                        meta.log_id,
                        meta.base_offset,
                        p.log_id,
                        p.next_offset()
                    ),
                });
                break;
            }
            r.entries += 1;
            r.indexes = Some((
                r.indexes.map_or(meta.log_id.index, |i| i.0),
                meta.log_id.index,
            ));
            if meta.record_count > 0 {
                r.batches += 1;
                r.records += u64::from(meta.record_count);
                r.offsets = Some((
                    r.offsets.map_or(meta.base_offset, |o| o.0),
                    meta.next_offset() - 1,
                ));
            }
            visit(
                &path,
                &meta,
                &data[pos + entry::ENTRY_HEADER_LEN..pos + meta.len as usize],
            );
            pos += meta.len as usize;
            prev = Some(meta);
        }
        reports.push(r);
    }
    Ok(reports)
}
