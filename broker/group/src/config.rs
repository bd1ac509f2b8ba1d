//! The coordinator's limits and timeouts, with their defaults. Only data:
//! the coordinator reads it, nothing here acts on it.

use serde::{Deserialize, Serialize};

/// Limits and timeouts of the group coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// How often members should heartbeat (default 1000 ms); a member
    /// whose session is shorter than three intervals is told a third of it.
    pub heartbeat_interval_ms: u32,
    /// Smallest session timeout a member may ask for (default 1000 ms).
    pub session_timeout_min_ms: u32,
    /// Largest session timeout a member may ask for (default 300 000 ms).
    pub session_timeout_max_ms: u32,
    /// Session timeout when a join asks for 0 (default 10 000 ms).
    pub session_timeout_default_ms: u32,
    /// Rebalance timeout when a join asks for 0 (default 30 000 ms).
    pub rebalance_timeout_default_ms: u32,
    /// An empty group whose last commit or membership change is older than
    /// this is deleted by `tick` (default 7 days).
    pub offsets_retention_ms: u64,
    /// Most members one group may have (default 1000).
    pub max_members: u32,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 1000,
            session_timeout_min_ms: 1000,
            session_timeout_max_ms: 300_000,
            session_timeout_default_ms: 10_000,
            rebalance_timeout_default_ms: 30_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            max_members: 1000,
        }
    }
}
