//! The metadata store: topics and their settings, committed consumer-group
//! offsets, and the secret key of idempotent-producer ids, in sled.
//!
//! Every write is flushed before it returns, so whatever the broker
//! acknowledges survives a crash. Values are JSON (topics) or little-endian
//! integers (offsets, counters). Keys of committed offsets are
//! `group \0 topic \0 partition(be u32)` so a group's topic is one prefix scan.

use std::path::Path;

use crate::producer_id::ProducerIdKey;
use crate::settings::TopicSettings;

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The store failed.
    #[error("metadata store: {0}")]
    Store(#[from] sled::Error),
    /// A stored value cannot be decoded.
    #[error("metadata store holds an undecodable value for {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A topic as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TopicRecord {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Per-topic settings.
    pub settings: TopicSettings,
}

/// The metadata store.
#[derive(Debug, Clone)]
pub struct MetaStore {
    db: sled::Db,
    topics: sled::Tree,
    offsets: sled::Tree,
}

fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 6);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl MetaStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let db = sled::Config::new().path(dir).open()?;
        let topics = db.open_tree("topics")?;
        let offsets = db.open_tree("offsets")?;
        Ok(MetaStore {
            db,
            topics,
            offsets,
        })
    }

    /// Every topic.
    pub fn topics(&self) -> Result<Vec<TopicRecord>, MetaError> {
        self.topics
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| MetaError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Stores a topic (create or update), durably.
    pub fn put_topic(&self, t: &TopicRecord) -> Result<(), MetaError> {
        let v = serde_json::to_vec(t).map_err(|e| MetaError::Corrupt {
            key: t.name.clone(),
            reason: e.to_string(),
        })?;
        self.topics.insert(t.name.as_bytes(), v)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes a topic, durably.
    pub fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        self.topics.remove(name.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Commits offsets of one group on one topic, durably and atomically.
    pub fn commit(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        for (p, o) in offsets {
            batch.insert(offset_key(group, topic, *p), &o.to_le_bytes());
        }
        self.offsets.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Committed offsets of a group on a topic, by partition.
    pub fn committed(&self, group: &str, topic: &str) -> Result<Vec<(u32, u64)>, MetaError> {
        let mut prefix = offset_key(group, topic, 0);
        prefix.truncate(prefix.len() - 4);
        self.offsets
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode_offset(&k, &v).map(|(_, _, p, o)| (p, o))
            })
            .collect()
    }

    /// The node's producer-id key: the stored one, or a new one stored
    /// (and flushed) before it is returned, so ids issued survive restarts.
    pub fn producer_id_key(&self) -> Result<ProducerIdKey, MetaError> {
        const KEY: &str = "producer-id-key";
        if let Some(v) = self.db.get(KEY)? {
            let k: [u8; 16] = v.as_ref().try_into().map_err(|_| MetaError::Corrupt {
                key: KEY.into(),
                reason: format!("{} bytes, expected 16", v.len()),
            })?;
            return Ok(ProducerIdKey(k));
        }
        let key = ProducerIdKey::generate().map_err(|e| MetaError::Corrupt {
            key: KEY.into(),
            reason: e.to_string(),
        })?;
        // Another opener of the same store cannot race: sled locks the
        // directory. compare_and_swap keeps the first key regardless.
        let _ = self
            .db
            .compare_and_swap(KEY, None as Option<&[u8]>, Some(&key.0[..]))?;
        self.db.flush()?;
        self.producer_id_key()
    }

    /// A group's committed offsets on every topic: (topic, partition,
    /// offset).
    pub fn group_offsets(&self, group: &str) -> Result<Vec<(String, u32, u64)>, MetaError> {
        let mut prefix = group.as_bytes().to_vec();
        prefix.push(0);
        self.offsets
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode_offset(&k, &v).map(|(_, t, p, o)| (t, p, o))
            })
            .collect()
    }

    /// Every (group, topic, partition, offset).
    pub fn all_committed(&self) -> Result<Vec<(String, String, u32, u64)>, MetaError> {
        self.offsets
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode_offset(&k, &v)
            })
            .collect()
    }
}

fn decode_offset(k: &[u8], v: &[u8]) -> Result<(String, String, u32, u64), MetaError> {
    let corrupt = |reason: &str| MetaError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: reason.into(),
    };
    let mut parts = k.splitn(3, |b| *b == 0);
    let group = parts.next().ok_or_else(|| corrupt("no group"))?;
    let topic = parts.next().ok_or_else(|| corrupt("no topic"))?;
    let p = parts.next().ok_or_else(|| corrupt("no partition"))?;
    let p: [u8; 4] = p
        .try_into()
        .map_err(|_| corrupt("partition is not 4 bytes"))?;
    let o: [u8; 8] = v.try_into().map_err(|_| corrupt("offset is not 8 bytes"))?;
    Ok((
        String::from_utf8_lossy(group).into_owned(),
        String::from_utf8_lossy(topic).into_owned(),
        u32::from_be_bytes(p),
        u64::from_le_bytes(o),
    ))
}
