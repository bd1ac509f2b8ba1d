//! Channels to peers: one lazily connected tonic `Channel` per peer
//! address, shared by every Raft group and by the node probe, with HTTP/2
//! keep-alive so a connection that died in a network partition is noticed
//! and re-established after it heals; and the peer reachability log (a
//! peer becoming unreachable and reachable again is logged once each).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// Channels to peers, shared by every group.
#[derive(Clone, Debug, Default)]
pub struct Channels {
    by_addr: Arc<Mutex<HashMap<String, Channel>>>,
    /// Peers whose last call failed at the transport, for logging each
    /// change once (openraft's own per-heartbeat warnings are filtered out
    /// by the default log filter).
    down: Arc<Mutex<HashSet<String>>>,
}

impl Channels {
    /// Records the outcome of a call to `addr`; logs when a peer becomes
    /// unreachable and when it is back.
    pub(crate) fn observe(&self, addr: &str, error: Option<&Status>) {
        let mut down = self.down.lock();
        match error {
            Some(s) if s.code() == tonic::Code::Unavailable => {
                if down.insert(addr.to_owned()) {
                    tracing::warn!(peer = addr, error = %s.message(), "Raft peer unreachable");
                }
            }
            Some(_) => {}
            None => {
                if down.remove(addr) {
                    tracing::info!(peer = addr, "Raft peer reachable again");
                }
            }
        }
    }

    /// The channel to `addr`, created (lazily connecting) on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut m = self.by_addr.lock();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            .connect_lazy();
        m.insert(addr.to_owned(), c.clone());
        Ok(c)
    }
}
