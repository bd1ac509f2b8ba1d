//! Hibernation of partition groups, and node-level liveness.
//!
//! An awake openraft group ticks every 12 ms and its leader heartbeats each
//! follower every 60 ms, idle or not: a few hundred idle groups keep both
//! cores busy, and a thousand groups electing at once never settle. Here a
//! partition replica runs its timers only while it must: a leader while it
//! has work, a replica while it stands for election. Everything else is
//! asleep (its ticker off: no timers, no heartbeats, no wakeups), and a
//! node-level probe between every pair of nodes replaces the followers'
//! election timers, as CockroachDB's quiesced ranges and TiKV's hibernating
//! regions do. Raft's safety never depends on timers; only liveness does,
//! and it is restored by the rules below.
//!
//! **Followers sleep.** A replica opens asleep and a follower stays asleep
//! while it follows: AppendEntries are handled without ticks (the core is
//! driven by messages), so a follower under load costs nothing when idle
//! between messages.
//!
//! **Leaders sleep when idle.** Every [`ROUND`] each node sends each peer
//! one `Hibernate` RPC. Besides proving the sender alive, it offers sleep
//! for the groups the sender leads that have been idle for [`IDLE_ROUNDS`]
//! rounds with every live follower matched and everything committed and
//! applied (an offer names the group, term, leader and last index). A
//! follower accepts only if its own view is the same (same leader and term,
//! same last index, all of it committed and applied), and stops ticking if
//! it was awake. The leader stops ticking once every live follower accepted
//! and nothing happened to the group meanwhile. At least a quorum must be
//! live.
//!
//! **A write wakes a sleeping leader** and first renews its lease with a
//! quorum round ([`Sleeper::wake_to_write`]): a sleeping leader's lease has
//! lapsed, so openraft would refuse the write.
//!
//! **Who elects.** Each round, every sleeping replica that does not lead
//! checks whether its group has a leader it can count on:
//! - its vote names this node (it led before a restart): it wakes and
//!   elects at once (its election timer has long expired, so it runs a
//!   Pre-Vote and an election within one tick);
//! - its vote names no leader (a new group) or a peer that is down (no
//!   answer to probes for [`DOWN_AFTER`]): one designated live voter wakes
//!   at once, the group's preferred leader (the first replica of its
//!   placement) or else one chosen by hashing the group's name, so new
//!   leaders spread over the nodes; the other live voters wake
//!   [`BACKUP_WAKE`] later if the group is still without a leader.
//!
//! Votes do not wake a replica, so a sleeping voter answers a candidate
//! without starting a competing election. A replica that woke sleeps again
//! when its leader's next offer comes.
//!
//! **A node comes back** (or restarted: each probe carries the sender's
//! incarnation): every group led here that it belongs to wakes, so the
//! leader catches it up; the group sleeps again once it matched.
//!
//! The metadata group never sleeps. A wrongly declared death (a paused
//! process) costs an election, never data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strata_proto::raft_pb::RaftMessage;
use strata_proto::raft_pb::raft_peer_client::RaftPeerClient;
use tonic::Request;

use super::network::Channels;
use super::{Raft, decode, encode};

/// How often a node probes each peer and offers sleep.
pub const ROUND: Duration = Duration::from_millis(250);
/// A peer that has not answered a probe for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1_000);
/// Rounds without a new entry before a leader offers sleep.
pub const IDLE_ROUNDS: u32 = 4;
/// How long a survivor that is not the designated candidate waits before
/// it wakes a group whose leader died.
pub const BACKUP_WAKE: Duration = Duration::from_millis(1_500);
/// Rounds between two scans for groups without a leader when nothing
/// changed.
const ORPHAN_SCAN_EVERY: u64 = 8;
/// Deadline of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One group a leader offers to put to sleep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepOffer {
    /// The group's name.
    pub group: String,
    /// The leader's term.
    pub term: u64,
    /// The leader's node id.
    pub leader: u64,
    /// The leader's last (committed) log index.
    pub last_index: u64,
}

/// The body of a `Hibernate` RPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernateRequest {
    /// The sender's node id.
    pub from: u64,
    /// Changes when the sender restarts.
    pub incarnation: u64,
    /// Groups the sender leads and offers to put to sleep.
    pub offers: Vec<SleepOffer>,
}

/// The answer to a `Hibernate` RPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernateReply {
    /// The receiver's incarnation.
    pub incarnation: u64,
    /// Per offer, in order: whether the receiver went to sleep.
    pub accepted: Vec<bool>,
}

/// One hosted group's sleep state.
#[derive(Debug)]
pub struct Sleeper {
    raft: Raft,
    /// The node that should lead a new group (the first replica placed).
    preferred: Option<u64>,
    state: Mutex<SleepState>,
    /// The node's count of awake groups.
    awake: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct SleepState {
    asleep: bool,
    /// Bumped on every wake: a leader sleeps only if no wake happened
    /// since it made its offer.
    generation: u64,
    idle_rounds: u32,
    last_index: Option<u64>,
    /// Since when the group, asleep, has had no leader to count on.
    orphaned_since: Option<Instant>,
}

impl Sleeper {
    /// Whether the group is asleep (its ticker off).
    pub fn is_asleep(&self) -> bool {
        self.state.lock().asleep
    }

    /// Turns the ticker back on; answers whether the group was asleep.
    pub fn wake(&self) -> bool {
        let mut st = self.state.lock();
        st.generation += 1;
        st.idle_rounds = 0;
        st.orphaned_since = None;
        if !st.asleep {
            return false;
        }
        st.asleep = false;
        self.awake.fetch_add(1, Ordering::Relaxed);
        self.raft.runtime_config().tick(true);
        true
    }

    /// Wakes the group before a write on its leader. A leader that slept
    /// has no valid lease, so this renews it with one quorum round (bounded
    /// by `timeout`); answers whether the group was asleep.
    pub async fn wake_to_write(&self, timeout: Duration) -> Result<bool, String> {
        if !self.wake() {
            return Ok(false);
        }
        match tokio::time::timeout(
            timeout,
            self.raft
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no quorum answered within {} ms after waking the group",
                timeout.as_millis()
            )),
        }
    }

    fn sleep(&self, st: &mut SleepState) {
        if !st.asleep {
            self.awake.fetch_sub(1, Ordering::Relaxed);
        }
        st.asleep = true;
        st.idle_rounds = 0;
        st.orphaned_since = None;
        self.raft.runtime_config().tick(false);
    }
}

#[derive(Debug)]
struct Peer {
    addr: String,
    last_ok: Instant,
    up: bool,
    incarnation: Option<u64>,
}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HibernationStats {
    /// Groups registered here.
    pub groups: usize,
    /// Of which asleep.
    pub asleep: usize,
    /// Peers currently down.
    pub peers_down: usize,
}

/// A node's hibernation and liveness service.
#[derive(Debug)]
pub struct Hibernation {
    node_id: u64,
    incarnation: u64,
    channels: Channels,
    enabled: bool,
    groups: Mutex<HashMap<String, Arc<Sleeper>>>,
    peers: Mutex<HashMap<u64, Peer>>,
    rounds: AtomicU64,
    /// Groups awake (see [`Sleeper::awake`]).
    awake: Arc<AtomicUsize>,
    /// A group registered since the last scan for groups without a leader.
    registered: AtomicBool,
    /// The last scan found a group without a leader.
    orphans_pending: AtomicBool,
}

impl Hibernation {
    /// The service of node `node_id`; with `enabled` false groups never
    /// sleep (liveness is still tracked).
    pub fn new(node_id: u64, channels: Channels, enabled: bool) -> Arc<Self> {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Arc::new(Hibernation {
            node_id,
            incarnation,
            channels,
            enabled,
            groups: Mutex::default(),
            peers: Mutex::default(),
            rounds: AtomicU64::new(0),
            awake: Arc::default(),
            registered: AtomicBool::new(false),
            orphans_pending: AtomicBool::new(false),
        })
    }

    /// Registers a hosted group, asleep (its Raft must have been started
    /// with its ticker off) unless hibernation is disabled; `preferred` is
    /// the node that should lead it when it has no leader yet. Answers its
    /// handle.
    pub fn register(&self, name: &str, raft: Raft, preferred: Option<u64>) -> Arc<Sleeper> {
        let s = Arc::new(Sleeper {
            raft,
            preferred,
            state: Mutex::new(SleepState {
                asleep: self.enabled,
                ..SleepState::default()
            }),
            awake: self.awake.clone(),
        });
        if !self.enabled {
            self.awake.fetch_add(1, Ordering::Relaxed);
        }
        self.groups.lock().insert(name.to_owned(), s.clone());
        self.registered.store(true, Ordering::Relaxed);
        s
    }

    /// Forgets a group that is no longer hosted.
    pub fn unregister(&self, name: &str) {
        if let Some(s) = self.groups.lock().remove(name)
            && !s.state.lock().asleep
        {
            self.awake.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Wakes `group` if it sleeps (an RPC for it arrived).
    pub fn wake(&self, group: &str) {
        let s = self.groups.lock().get(group).cloned();
        if let Some(s) = s
            && s.wake()
        {
            tracing::debug!(group, "woken by a peer");
        }
    }

    /// The counters.
    pub fn stats(&self) -> HibernationStats {
        let groups: Vec<Arc<Sleeper>> = self.groups.lock().values().cloned().collect();
        HibernationStats {
            groups: groups.len(),
            asleep: groups.iter().filter(|s| s.is_asleep()).count(),
            peers_down: self.peers.lock().values().filter(|p| !p.up).count(),
        }
    }

    fn is_up(&self, node: u64) -> bool {
        node == self.node_id || self.peers.lock().get(&node).is_none_or(|p| p.up)
    }

    /// Answers a peer's probe: notes it alive and accepts the offers this
    /// node's view agrees with.
    pub fn handle(&self, req: HibernateRequest) -> HibernateReply {
        let now = Instant::now();
        if let Some(p) = self.peers.lock().get_mut(&req.from) {
            p.last_ok = now;
        }
        let accepted = req
            .offers
            .iter()
            .map(|o| self.enabled && self.accept(o))
            .collect();
        HibernateReply {
            incarnation: self.incarnation,
            accepted,
        }
    }

    fn accept(&self, offer: &SleepOffer) -> bool {
        let Some(s) = self.groups.lock().get(&offer.group).cloned() else {
            return false;
        };
        let mut st = s.state.lock();
        let agrees = {
            let m = s.raft.metrics();
            let m = m.borrow_watched();
            m.state != ServerState::Leader
                && m.state != ServerState::Candidate
                && m.current_leader == Some(offer.leader)
                && m.current_term == offer.term
                && m.vote.is_committed()
                && m.last_log_index == Some(offer.last_index)
                && m.local_committed.as_ref().map(|c| c.index) == Some(offer.last_index)
                && m.last_applied.as_ref().map(|c| c.index) == Some(offer.last_index)
        };
        if !agrees {
            return false;
        }
        if !st.asleep {
            s.sleep(&mut st);
        }
        true
    }

    /// Probes peers and offers sleep every [`ROUND`], forever; `peers`
    /// answers the current node id → Raft address map.
    pub async fn run(
        self: Arc<Self>,
        peers: impl Fn() -> BTreeMap<u64, String> + Send + Sync + 'static,
    ) {
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.round(peers()).await;
        }
    }

    /// The groups this node leads that may sleep now, with the followers
    /// that must agree.
    fn offers(&self) -> Vec<(Arc<Sleeper>, u64, SleepOffer, Vec<u64>)> {
        // The map's lock is held over the scan (lock order: map, then a
        // group's state); nothing is cloned for the sleeping majority.
        let mut out = Vec::new();
        if self.awake.load(Ordering::Relaxed) == 0 {
            return out;
        }
        let groups = self.groups.lock();
        for (name, s) in groups.iter() {
            let mut st = s.state.lock();
            if st.asleep {
                continue;
            }
            let m = s.raft.metrics();
            let m = m.borrow_watched();
            if m.state != ServerState::Leader {
                st.idle_rounds = 0;
                st.last_index = None;
                continue;
            }
            if m.last_log_index != st.last_index {
                st.last_index = m.last_log_index;
                st.idle_rounds = 0;
                continue;
            }
            st.idle_rounds = st.idle_rounds.saturating_add(1);
            let Some(last) = m.last_log_index else {
                continue;
            };
            let settled = st.idle_rounds >= IDLE_ROUNDS
                && m.local_committed.as_ref().map(|c| c.index) == Some(last)
                && m.last_applied.as_ref().map(|c| c.index) == Some(last);
            if !settled || !self.enabled {
                continue;
            }
            let membership = m.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            let live_voters = voters.iter().filter(|v| self.is_up(**v)).count();
            if live_voters * 2 <= voters.len() {
                continue;
            }
            let replication = m.replication.as_ref();
            let mut followers = Vec::new();
            let mut matched = true;
            for (id, _) in membership.nodes() {
                if *id == self.node_id || !self.is_up(*id) {
                    continue;
                }
                let at = replication
                    .and_then(|r| r.get(id))
                    .and_then(|l| l.as_ref().map(|l| l.index));
                if at != Some(last) {
                    matched = false;
                    break;
                }
                followers.push(*id);
            }
            if !matched {
                continue;
            }
            let offer = SleepOffer {
                group: name.clone(),
                term: m.current_term,
                leader: self.node_id,
                last_index: last,
            };
            out.push((s.clone(), st.generation, offer, followers));
        }
        out
    }

    async fn round(&self, peers: BTreeMap<u64, String>) {
        let now = Instant::now();
        {
            let mut table = self.peers.lock();
            table.retain(|id, _| peers.contains_key(id));
            for (id, addr) in &peers {
                if *id == self.node_id {
                    continue;
                }
                let p = table.entry(*id).or_insert_with(|| Peer {
                    addr: addr.clone(),
                    last_ok: now,
                    up: true,
                    incarnation: None,
                });
                p.addr.clone_from(addr);
            }
        }
        let offers = self.offers();
        let mut per_peer: HashMap<u64, Vec<SleepOffer>> = HashMap::new();
        for (_, _, offer, followers) in &offers {
            for f in followers {
                per_peer.entry(*f).or_default().push(offer.clone());
            }
        }
        let targets: Vec<(u64, String)> = self
            .peers
            .lock()
            .iter()
            .map(|(id, p)| (*id, p.addr.clone()))
            .collect();
        let calls = targets.into_iter().map(|(id, addr)| {
            let offers = per_peer.remove(&id).unwrap_or_default();
            async move {
                let r = self.probe(&addr, offers.clone()).await;
                (id, offers, r)
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut accepted: HashSet<(u64, String)> = HashSet::new();
        let mut came_up = Vec::new();
        let mut went_down = Vec::new();
        {
            let now = Instant::now();
            let mut table = self.peers.lock();
            for (id, offers, r) in results {
                let Some(p) = table.get_mut(&id) else {
                    continue;
                };
                if let Ok(reply) = r {
                    p.last_ok = now;
                    let restarted = p.incarnation.is_some_and(|i| i != reply.incarnation);
                    p.incarnation = Some(reply.incarnation);
                    if restarted && p.up {
                        tracing::info!(peer = id, "peer restarted");
                        came_up.push(id);
                    }
                    for (o, ok) in offers.iter().zip(reply.accepted) {
                        if ok {
                            accepted.insert((id, o.group.clone()));
                        }
                    }
                }
                let up = now.duration_since(p.last_ok) < DOWN_AFTER;
                if up != p.up {
                    p.up = up;
                    if up {
                        tracing::info!(peer = id, "peer is up");
                        came_up.push(id);
                    } else {
                        tracing::warn!(peer = id, "peer is down (no answer for {DOWN_AFTER:?})");
                        went_down.push(id);
                    }
                }
            }
        }
        for (s, generation, offer, followers) in offers {
            if followers
                .iter()
                .all(|f| accepted.contains(&(*f, offer.group.clone())))
            {
                let mut st = s.state.lock();
                if !st.asleep && st.generation == generation {
                    s.sleep(&mut st);
                    tracing::debug!(group = offer.group, "asleep");
                }
            }
        }
        let peers_changed = !went_down.is_empty() || !came_up.is_empty();
        for id in came_up {
            self.peer_up(id);
        }
        // Looking for groups without a leader costs a scan of every group:
        // done when something changed (a peer, a new group, a group still
        // waiting for its leader), and every few rounds regardless.
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        if peers_changed
            || self.registered.swap(false, Ordering::Relaxed)
            || self.orphans_pending.load(Ordering::Relaxed)
            || round.is_multiple_of(ORPHAN_SCAN_EVERY)
        {
            self.orphans();
        }
    }

    async fn probe(&self, addr: &str, offers: Vec<SleepOffer>) -> Result<HibernateReply, String> {
        let channel = self.channels.get(addr).map_err(|e| e.to_string())?;
        let body = encode(&HibernateRequest {
            from: self.node_id,
            incarnation: self.incarnation,
            offers,
        })
        .map_err(|e| e.to_string())?;
        let mut req = Request::new(RaftMessage {
            group: String::new(),
            body: body.into(),
        });
        req.set_timeout(PROBE_TIMEOUT);
        let resp = RaftPeerClient::new(channel)
            .hibernate(req)
            .await
            .map_err(|s| s.to_string())?;
        decode(&resp.into_inner().body).map_err(|e| e.to_string())
    }

    /// Wakes the sleeping replicas that must stand for election (see the
    /// module documentation).
    fn orphans(&self) {
        let now = Instant::now();
        let mut to_wake = Vec::new();
        let mut pending = false;
        for (name, s) in self.groups.lock().iter() {
            let wake = {
                let mut st = s.state.lock();
                if !st.asleep {
                    continue;
                }
                let m = s.raft.metrics();
                let m = m.borrow_watched();
                if m.state == ServerState::Leader {
                    st.orphaned_since = None;
                    continue;
                }
                let leader = m.vote.is_committed().then(|| m.vote.leader_id().node_id);
                if leader.is_some_and(|l| l != self.node_id && self.is_up(l)) {
                    // The common case: a follower of a live leader.
                    st.orphaned_since = None;
                    continue;
                }
                pending = true;
                let mut live: Vec<u64> = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| self.is_up(*v))
                    .collect();
                live.sort_unstable();
                match leader {
                    Some(l) if l == self.node_id => live.contains(&l),
                    Some(l) if self.is_up(l) => {
                        st.orphaned_since = None;
                        false
                    }
                    _ if live.contains(&self.node_id) => {
                        let since = *st.orphaned_since.get_or_insert(now);
                        let designated = match s.preferred {
                            Some(p) if live.contains(&p) && leader.is_none() => p,
                            _ => live[(name_hash(name) % live.len() as u64) as usize],
                        };
                        designated == self.node_id || now.duration_since(since) >= BACKUP_WAKE
                    }
                    _ => false,
                }
            };
            if wake {
                to_wake.push((name.clone(), s.clone()));
            }
        }
        self.orphans_pending.store(pending, Ordering::Relaxed);
        let mut woken = 0usize;
        for (name, s) in to_wake {
            if s.wake() {
                woken += 1;
                tracing::debug!(group = name, "woken to stand for election");
            }
        }
        if woken > 0 {
            tracing::info!(
                groups = woken,
                "woke groups without a live leader to elect one"
            );
        }
    }

    /// `node` is back: the groups led here that it belongs to wake, so it
    /// is caught up.
    fn peer_up(&self, node: u64) {
        let groups: Vec<Arc<Sleeper>> = self.groups.lock().values().cloned().collect();
        for s in groups {
            let member = {
                let m = s.raft.metrics();
                let m = m.borrow_watched();
                m.state == ServerState::Leader
                    && m.membership_config
                        .membership()
                        .nodes()
                        .any(|(id, _)| *id == node)
            };
            if member {
                s.wake();
            }
        }
    }
}

/// A hash of a group's name that every node computes alike.
fn name_hash(name: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(name.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_postcard() {
        let req = HibernateRequest {
            from: 2,
            incarnation: 7,
            offers: vec![SleepOffer {
                group: "t/0".into(),
                term: 3,
                leader: 2,
                last_index: 41,
            }],
        };
        let back: HibernateRequest = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let reply = HibernateReply {
            incarnation: 9,
            accepted: vec![true, false],
        };
        let back: HibernateReply = decode(&encode(&reply).unwrap()).unwrap();
        assert_eq!(back, reply);
    }
}
