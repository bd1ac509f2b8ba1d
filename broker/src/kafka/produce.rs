//! Produce (v0–v9) and InitProducerId (v0–v4).
//!
//! A produce request's batches are translated and enqueued at their
//! partitions in request order before the connection reads the next
//! request (so an idempotent producer's pipelined requests keep their
//! sequence order); the wait for acknowledgements runs concurrently.

use std::sync::Arc;
use std::time::Duration;

use super::Kafka;
use super::api::Work;
use super::errors::{self, code};
use super::records::{self, RecordsError};
use super::wire::{Reader, WireError, Writer};
use crate::error::BrokerError;
use crate::topic::{Acks, ProduceOutcome, Submitted};

/// One partition's part of a produce request.
struct PartitionProduce {
    index: i32,
    /// Enqueued batches, or the error that stopped the partition.
    submitted: Result<Vec<Submitted>, (i16, String)>,
    bytes: u64,
}

fn records_code(e: &RecordsError) -> i16 {
    match e {
        RecordsError::Corrupt(_) => code::CORRUPT_MESSAGE,
        RecordsError::Unsupported(m) if m.starts_with("message format") => {
            code::UNSUPPORTED_FOR_MESSAGE_FORMAT
        }
        RecordsError::Unsupported(_) => code::INVALID_RECORD,
        RecordsError::TooLarge(_) => code::MESSAGE_TOO_LARGE,
    }
}

/// Translates and enqueues one partition's records.
async fn submit(
    k: &Kafka,
    topic: &str,
    index: i32,
    records: Option<bytes::Bytes>,
) -> PartitionProduce {
    let bytes = records.as_ref().map_or(0, |r| r.len() as u64);
    let submitted = async {
        let p = u32::try_from(index).map_err(|_| {
            (
                code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("partition {index}"),
            )
        })?;
        let partition = k
            .broker
            .partition(topic, p)
            .map_err(|e| (errors::of(&e), e.to_string()))?;
        let records = records.ok_or((code::CORRUPT_MESSAGE, "null records".to_owned()))?;
        let translated = records::translate_produce(&records, &partition.batch_limits())
            .map_err(|e| (records_code(&e), e.to_string()))?;
        let mut out = Vec::with_capacity(translated.len());
        for t in translated {
            let s = k
                .broker
                .submit(topic, p, t.batch)
                .await
                .map_err(|e| (errors::of(&e), e.to_string()))?;
            out.push(s);
        }
        Ok(out)
    }
    .await;
    PartitionProduce {
        index,
        submitted,
        bytes,
    }
}

/// Produce: see the module doc.
pub async fn produce(k: Arc<Kafka>, v: i16, mut r: Reader) -> Work {
    let parsed = (|| {
        if v >= 3 {
            let _transactional_id = r.nullable_string()?;
        }
        let acks = r.i16()?;
        let timeout_ms = r.i32()?;
        let topics = r.array(|r| {
            let name = r.string()?;
            let partitions = r.array(|r| {
                let index = r.i32()?;
                let records = r.nullable_bytes()?;
                r.tags()?;
                Ok((index, records))
            })?;
            r.tags()?;
            Ok((name, partitions))
        })?;
        r.tags()?;
        Ok::<_, WireError>((acks, timeout_ms, topics))
    })();
    let (acks_code, timeout_ms, topics) = match parsed {
        Ok(x) => x,
        Err(e) => return Box::pin(std::future::ready(Err(e))),
    };
    let acks = match acks_code {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let mut staged = Vec::with_capacity(topics.len());
    for (name, partitions) in topics {
        let mut parts = Vec::with_capacity(partitions.len());
        for (index, records) in partitions {
            if acks.is_none() {
                parts.push(PartitionProduce {
                    index,
                    submitted: Err((
                        code::INVALID_REQUIRED_ACKS,
                        format!("acks={acks_code}: use 0, 1 or -1"),
                    )),
                    bytes: 0,
                });
                continue;
            }
            parts.push(submit(&k, &name, index, records).await);
        }
        staged.push((name, parts));
    }
    let flexible = r.flexible;
    Box::pin(async move {
        let acks = acks.unwrap_or(Acks::All);
        let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
        let mut results = Vec::with_capacity(staged.len());
        for (name, parts) in staged {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                let r = wait(&k, &name, p.index, p.submitted, acks, timeout, p.bytes).await;
                out.push((p.index, r));
            }
            results.push((name, out));
        }
        if acks == Acks::None {
            return Ok(None); // acks=0: Kafka sends no response
        }
        let mut w = Writer::new(flexible);
        w.array(&results, |w, (name, parts)| {
            w.string(name);
            w.array(parts, |w, (index, r)| {
                w.i32(*index);
                match r {
                    Ok((base, lso)) => {
                        w.i16(code::NONE);
                        w.i64(*base);
                        if v >= 2 {
                            w.i64(-1);
                        }
                        if v >= 5 {
                            w.i64(*lso);
                        }
                    }
                    Err((c, _)) => {
                        w.i16(*c);
                        w.i64(-1);
                        if v >= 2 {
                            w.i64(-1);
                        }
                        if v >= 5 {
                            w.i64(-1);
                        }
                    }
                }
                if v >= 8 {
                    w.array_len(0);
                    w.nullable_string(r.as_ref().err().map(|(_, m)| m.as_str()));
                }
                w.tags();
            });
            w.tags();
        });
        if v >= 1 {
            w.i32(0);
        }
        w.tags();
        Ok(Some(w))
    })
}

/// Waits for one partition's batches: (first base offset, log start) or
/// the first error.
async fn wait(
    k: &Kafka,
    topic: &str,
    index: i32,
    submitted: Result<Vec<Submitted>, (i16, String)>,
    acks: Acks,
    timeout: Duration,
    bytes: u64,
) -> Result<(i64, i64), (i16, String)> {
    let submitted = submitted?;
    let mut first: Option<ProduceOutcome> = None;
    let mut records = 0u64;
    for s in submitted {
        let o =
            match tokio::time::timeout(timeout.max(Duration::from_millis(1)), s.wait(acks)).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => return Err((errors::of(&e), e.to_string())),
                Err(_) => {
                    return Err((
                        code::REQUEST_TIMED_OUT,
                        format!("not acknowledged within the request's timeout of {timeout:?}"),
                    ));
                }
            };
        if !o.duplicate {
            records += u64::from(o.record_count);
        }
        first.get_or_insert(o);
    }
    let m = k.broker.metrics();
    m.produced_records
        .with_label_values(&[topic])
        .inc_by(records);
    m.produced_bytes.with_label_values(&[topic]).inc_by(bytes);
    let base = first.and_then(|o| o.base_offset).map_or(-1, |b| b as i64);
    let lso = k
        .broker
        .partition(topic, index as u32)
        .map_or(-1, |p| p.log_start_offset() as i64);
    Ok((base, lso))
}

/// InitProducerId: an idempotent-producer id from the broker (epoch 0).
/// A transactional id is refused: Strata has no transactions.
pub async fn init_producer_id(k: &Kafka, v: i16, r: &mut Reader) -> Result<Writer, WireError> {
    let transactional_id = r.nullable_string()?;
    let _timeout = r.i32()?;
    if v >= 3 {
        let _pid = r.i64()?;
        let _epoch = r.i16()?;
    }
    r.tags()?;
    let issued: Result<(u64, u16), i16> = match transactional_id {
        Some(t) if !t.is_empty() => {
            tracing::info!(transactional_id = %t, "kafka InitProducerId refused: transactions are not supported");
            Err(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        }
        _ => k
            .broker
            .init_producer()
            .await
            .map_err(|e: BrokerError| match errors::of(&e) {
                code::NOT_LEADER_OR_FOLLOWER => code::COORDINATOR_NOT_AVAILABLE,
                c => c,
            }),
    };
    let mut w = Writer::new(r.flexible);
    w.i32(0);
    match issued {
        Ok((id, epoch)) => {
            w.i16(code::NONE);
            w.i64(id as i64);
            w.i16(epoch as i16);
        }
        Err(c) => {
            w.i16(c);
            w.i64(-1);
            w.i16(-1);
        }
    }
    w.tags();
    Ok(w)
}
