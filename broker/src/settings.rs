//! Topic settings and their rules: topic names, per-topic overrides
//! ([`TopicSettings`]) and the broker-wide defaults they override
//! ([`LogDefaults`]), mapped onto the storage engine's [`LogConfig`].
//!
//! Pure data and checks: no I/O, no Raft, no services. The metadata store,
//! the metadata state machine, the broker configuration and the services
//! all read topic settings from here.

use serde::{Deserialize, Serialize};

use crate::log::LogConfig;

/// A topic name or setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The name breaks the naming rules (the reason is included).
    #[error("invalid topic name {0}")]
    InvalidTopicName(String),
    /// A setting is out of range, alone or in combination.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_MAX: usize = 249;
/// Checks a topic name: 1–249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), SettingsError> {
    let bad = |why: &str| Err(SettingsError::InvalidTopicName(format!("{name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_MAX {
        return bad(&format!("longer than {TOPIC_NAME_MAX} characters"));
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// Per-topic overrides of the broker's log defaults. `None`: use the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    /// Time retention in ms; -1 keeps forever.
    pub retention_ms: Option<i64>,
    /// Size retention in bytes per partition; -1 means no limit.
    pub retention_bytes: Option<i64>,
    /// Segment size.
    pub segment_bytes: Option<u64>,
    /// Segment age before rolling.
    pub segment_ms: Option<i64>,
    /// Largest batch accepted.
    pub max_batch_bytes: Option<u32>,
}

impl TopicSettings {
    /// The log configuration these settings give over `d`.
    pub fn to_log_config(&self, d: &LogDefaults) -> LogConfig {
        let retention_ms = self.retention_ms.unwrap_or(d.retention_ms);
        let retention_bytes = self.retention_bytes.unwrap_or(d.retention_bytes);
        LogConfig {
            segment_bytes_max: self.segment_bytes.unwrap_or(d.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(d.segment_ms),
            index_interval_bytes: d.index_interval_bytes,
            batch_bytes_max: self.max_batch_bytes.unwrap_or(d.max_batch_bytes),
            retention_ms: (retention_ms >= 0).then_some(retention_ms),
            retention_bytes: (retention_bytes >= 0).then_some(retention_bytes as u64),
            ..LogConfig::default()
        }
    }

    /// Overwrites the settings that `other` sets.
    pub fn merge(&mut self, other: &TopicSettings) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            retention_ms,
            retention_bytes,
            segment_bytes,
            segment_ms,
            max_batch_bytes
        );
    }

    /// Rejects values that are invalid on their own (the combination is
    /// checked by [`LogConfig::validate`]).
    pub fn validate(&self, d: &LogDefaults) -> Result<(), SettingsError> {
        for (name, v) in [
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
        ] {
            if v.is_some_and(|v| v < -1 || v == 0) {
                return Err(SettingsError::InvalidConfig(format!(
                    "{name} must be positive or -1 (unlimited)"
                )));
            }
        }
        self.to_log_config(d)
            .validate()
            .map_err(|e| SettingsError::InvalidConfig(e.to_string()))
    }
}

/// Broker-wide defaults of the topic settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogDefaults {
    /// See [`LogConfig::segment_bytes_max`].
    pub segment_bytes: u64,
    /// See [`LogConfig::segment_ms`].
    pub segment_ms: i64,
    /// See [`LogConfig::retention_ms`]; -1 keeps forever.
    pub retention_ms: i64,
    /// See [`LogConfig::retention_bytes`]; -1 means no limit.
    pub retention_bytes: i64,
    /// See [`LogConfig::batch_bytes_max`].
    pub max_batch_bytes: u32,
    /// See [`LogConfig::index_interval_bytes`].
    pub index_interval_bytes: u32,
}

impl Default for LogDefaults {
    fn default() -> Self {
        let d = LogConfig::default();
        LogDefaults {
            segment_bytes: d.segment_bytes_max,
            segment_ms: d.segment_ms,
            retention_ms: d.retention_ms.unwrap_or(-1),
            retention_bytes: d.retention_bytes.map_or(-1, |b| b as i64),
            max_batch_bytes: d.batch_bytes_max,
            index_interval_bytes: d.index_interval_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(
                matches!(
                    validate_topic_name(bad),
                    Err(SettingsError::InvalidTopicName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn settings_merge_and_map_unlimited() {
        let d = LogDefaults::default();
        let mut s = TopicSettings {
            retention_ms: Some(-1),
            ..Default::default()
        };
        s.merge(&TopicSettings {
            retention_bytes: Some(1000),
            ..Default::default()
        });
        let c = s.to_log_config(&d);
        assert_eq!((c.retention_ms, c.retention_bytes), (None, Some(1000)));
        assert!(
            TopicSettings {
                retention_ms: Some(0),
                ..Default::default()
            }
            .validate(&d)
            .is_err()
        );
        assert!(
            TopicSettings {
                segment_bytes: Some(10),
                ..Default::default()
            }
            .validate(&d)
            .is_err()
        );
    }
}
