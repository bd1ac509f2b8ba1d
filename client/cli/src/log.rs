//! `strata log dump|verify`: offline, read-only inspection of a data,
//! topic or partition directory through the storage engine's inspector
//! (`strata_log::inspect`); no broker is needed. `verify` exits 6 when it
//! finds damage. This is the only module that runs the storage engine's
//! code (`render` only formats its reports).

use std::path::PathBuf;

use anyhow::bail;
use bytes::Bytes;
use clap::Subcommand;
use strata_log::inspect;

use crate::render;

#[derive(Subcommand, Debug)]
pub enum LogCmd {
    /// Print every segment and entry of a data, topic or partition directory.
    Dump {
        /// Directory.
        dir: PathBuf,
        /// Also print each record.
        #[arg(long)]
        records: bool,
    },
    /// Verify every CRC and the offset and index chains; exit 6 on damage.
    Verify {
        /// Directory.
        dir: PathBuf,
    },
}

/// Damage found by `log dump|verify` (exit code 6).
#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) found")]
pub struct Corruption(usize);

pub fn run(json: bool, cmd: LogCmd) -> anyhow::Result<()> {
    let (dir, dump, records) = match &cmd {
        LogCmd::Dump { dir, records } => (dir.clone(), true, *records),
        LogCmd::Verify { dir } => (dir.clone(), false, false),
    };
    let partitions = inspect::partition_dirs(&dir)?;
    if partitions.is_empty() {
        bail!(
            "no partition directories (with .log segments) under {}",
            dir.display()
        );
    }
    let mut problems = 0;
    let mut all = Vec::new();
    for p in partitions {
        let reports = inspect::inspect_partition(&p, |_, meta, payload| {
            if !dump || json {
                return;
            }
            render::print_log_entry(meta);
            if records && meta.record_count > 0 {
                let decoded = strata_proto::decode_records(
                    Bytes::copy_from_slice(payload),
                    &strata_proto::BatchLimits::UNLIMITED,
                );
                render::print_log_records(meta.base_offset, decoded);
            }
        })?;
        for r in reports {
            problems += r.problems.len();
            if json {
                all.push(render::segment_report_json(&r));
            } else {
                render::print_segment_report(&r);
            }
        }
    }
    if json {
        render::print_json(&serde_json::json!(all));
    }
    if problems > 0 {
        return Err(Corruption(problems).into());
    }
    Ok(())
}
