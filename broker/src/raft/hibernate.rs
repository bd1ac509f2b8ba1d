//! Hibernation of partition groups, and node-level liveness.
//!
//! An awake openraft group ticks every 12 ms and its leader heartbeats each
//! follower every 60 ms, idle or not: a few hundred idle groups keep both
//! cores busy, and a thousand groups electing at once never settle. Here a
//! partition replica runs its timers only while it stands for election, or
//! leads a group with a follower to catch up; every other replica is
//! asleep (its ticker off: no timers, no heartbeats, no wakeups, whether
//! the group is idle or under load), and a node-level probe between every
//! pair of nodes replaces the followers' election timers, as CockroachDB's
//! quiesced ranges and TiKV's hibernating regions do. Raft's safety never
//! depends on timers; only liveness does, and it is restored by the rules
//! below.
//!
//! **Followers and leaders sleep.** A replica opens asleep. openraft's core
//! is driven by messages, so a sleeping follower still appends, commits
//! and applies what its leader sends, and a sleeping leader still
//! replicates every write (commit indexes travel with replication, not
//! with heartbeats). Every [`ROUND`] a node puts back to sleep its awake
//! replicas that follow a live leader, and the leaders whose live followers
//! have all caught up.
//!
//! **The lease.** openraft refuses a write on a leader whose last quorum
//! acknowledgement is older than its lease; without heartbeats that is
//! the case after a quiet moment, so a write first renews it with one
//! quorum round when the last acknowledgement is older than
//! [`LEASE_FRESH`] ([`Sleeper::ready_to_write`]). Under load, replication
//! acknowledgements keep it fresh.
//!
//! **Who elects.** Every [`ROUND`] each node sends each peer one
//! `Hibernate` RPC, a probe that carries the sender's incarnation (it
//! changes on restart); a peer that has not answered for [`DOWN_AFTER`] is
//! down. A sleeping replica that does not lead then checks whether its
//! group has a leader it can count on:
//! - its vote names this node (it led before a restart): it wakes and
//!   elects at once (its election timer has long expired, so it runs a
//!   Pre-Vote and an election within one tick);
//! - its vote names no leader (a new group) or a peer that is down: one
//!   designated live voter wakes at once, the group's preferred leader (the
//!   first replica of its placement) for a new group, else one chosen by
//!   hashing the group's name, so new leaders spread over the nodes; the
//!   other live voters wake [`BACKUP_WAKE`] later if the group is still
//!   without a leader.
//!
//! Votes do not wake a replica, so a sleeping voter answers a candidate
//! without starting a competing election.
//!
//! **A node comes back** (or restarted): every group led here that it
//! belongs to wakes, so the leader's heartbeats find where the returning
//! replica's log ends and replication catches it up; the leader sleeps
//! again once it has.
//!
//! The metadata group never sleeps. A wrongly declared death (a paused
//! process) costs an election, never data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strata_proto::raft_pb::RaftMessage;
use strata_proto::raft_pb::raft_peer_client::RaftPeerClient;
use tokio::sync::watch;
use tonic::Request;

use super::channels::Channels;
use super::{Raft, decode, encode};

/// How often a node probes each peer and offers sleep.
pub const ROUND: Duration = Duration::from_millis(250);
/// A peer that has not answered a probe for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1_000);
/// A write on a leader whose last quorum acknowledgement is older than
/// this renews the lease first (a sleeping group's lease is 1.25 s).
pub const LEASE_FRESH: Duration = Duration::from_millis(800);
/// How long a survivor that is not the designated candidate waits before
/// it wakes a group whose leader died.
pub const BACKUP_WAKE: Duration = Duration::from_millis(1_500);
/// Rounds between two scans for groups without a leader when nothing
/// changed.
const ORPHAN_SCAN_EVERY: u64 = 8;
/// Replicas of this node standing for election at once, at most.
const CAMPAIGNS_MAX: usize = 32;
/// Deadline of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The body of a `Hibernate` RPC (a probe).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernateRequest {
    /// The sender's node id.
    pub from: u64,
    /// Changes when the sender restarts.
    pub incarnation: u64,
}

/// The answer to a `Hibernate` RPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernateReply {
    /// The receiver's incarnation.
    pub incarnation: u64,
}

/// One hosted group's sleep state, and what the node's probes say about
/// its voters.
#[derive(Debug)]
pub struct Sleeper {
    raft: Raft,
    node_id: u64,
    /// The peers the node's probes find down.
    down: watch::Receiver<BTreeSet<u64>>,
    /// The node that should lead a new group (the first replica placed).
    preferred: Option<u64>,
    state: Mutex<SleepState>,
    /// The node's count of awake groups.
    awake: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct SleepState {
    asleep: bool,
    /// Since when the group, asleep, has had no leader to count on.
    orphaned_since: Option<Instant>,
    /// Woken here to stand for election: until the group has a live
    /// leader, every round nudges it to try again (see
    /// [`Hibernation::orphans`]).
    campaigning: bool,
}

impl Sleeper {
    /// Whether the group is asleep (its ticker off).
    pub fn is_asleep(&self) -> bool {
        self.state.lock().asleep
    }

    /// Turns the ticker back on; answers whether the group was asleep.
    pub fn wake(&self) -> bool {
        let mut st = self.state.lock();
        st.orphaned_since = None;
        if !st.asleep {
            return false;
        }
        st.asleep = false;
        self.awake.fetch_add(1, Ordering::Relaxed);
        self.raft.runtime_config().tick(true);
        true
    }

    /// Makes sure this leader's lease is valid before a write: when its
    /// last quorum acknowledgement is older than [`LEASE_FRESH`], one
    /// quorum round (bounded by `timeout`) renews it.
    pub async fn ready_to_write(&self, timeout: Duration) -> Result<(), String> {
        let fresh = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.last_quorum_acked
                .as_ref()
                .is_some_and(|at| openraft::Instant::elapsed(&**at) < LEASE_FRESH)
        };
        if fresh {
            return Ok(());
        }
        // One heartbeat round per attempt; on a loaded node a heartbeat can
        // miss its deadline, so try again until `timeout`.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = tokio::time::timeout_at(
                deadline,
                self.raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex),
            )
            .await;
            match r {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.to_string());
                }
                Ok(Err(e)) => {
                    if e.forward_to_leader().is_some() {
                        return Err(e.to_string());
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "no quorum renewed the leader's lease within {} ms",
                        timeout.as_millis()
                    ));
                }
            }
        }
    }

    /// Whether a quorum of the group's voters is alive as far as this
    /// node's probes tell (this node counts as alive). A leader without
    /// one cannot commit; the partition answers NOT_ENOUGH_REPLICAS at
    /// once instead of holding requests until the network heals (Raft's
    /// CheckQuorum, which openraft does not do: a leader that lost its
    /// quorum keeps its role until it hears a higher term).
    pub fn quorum_reachable(&self) -> bool {
        let down = self.down.borrow();
        if down.is_empty() {
            return true;
        }
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let alive = voters
            .iter()
            .filter(|v| **v == self.node_id || !down.contains(v))
            .count();
        alive * 2 > voters.len()
    }

    /// Resolves once [`Self::quorum_reachable`] turns false (at once if it
    /// is).
    pub async fn quorum_lost(&self) {
        let mut down = self.down.clone();
        loop {
            if !self.quorum_reachable() {
                return;
            }
            if down.changed().await.is_err() {
                // The node's liveness service is gone: the node is
                // stopping, and nothing will answer this group's writes.
                return std::future::pending().await;
            }
        }
    }

    fn sleep(&self, st: &mut SleepState) {
        if !st.asleep {
            self.awake.fetch_sub(1, Ordering::Relaxed);
        }
        st.asleep = true;
        st.orphaned_since = None;
        st.campaigning = false;
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
    /// The peers found down, published for the groups' quorum checks.
    down: watch::Sender<BTreeSet<u64>>,
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
            down: watch::Sender::new(BTreeSet::new()),
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
            node_id: self.node_id,
            down: self.down.subscribe(),
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

    /// Whether `node` answers this node's probes (this node and nodes not
    /// probed yet count as up).
    pub fn is_up(&self, node: u64) -> bool {
        node == self.node_id || self.peers.lock().get(&node).is_none_or(|p| p.up)
    }

    /// Answers a peer's probe, noting it alive.
    pub fn handle(&self, req: HibernateRequest) -> HibernateReply {
        if let Some(p) = self.peers.lock().get_mut(&req.from) {
            p.last_ok = Instant::now();
        }
        HibernateReply {
            incarnation: self.incarnation,
        }
    }

    /// Probes peers and tends the groups every [`ROUND`], forever; `peers`
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

    /// Puts back to sleep the awake replicas that no longer need their
    /// timers: followers of a live leader, and leaders whose live followers
    /// have all caught up.
    fn settle(&self) {
        if !self.enabled || self.awake.load(Ordering::Relaxed) == 0 {
            return;
        }
        // The map's lock is held over the scan (lock order: map, then a
        // group's state).
        let groups = self.groups.lock();
        for s in groups.values() {
            let mut st = s.state.lock();
            if st.asleep {
                continue;
            }
            let m = s.raft.metrics();
            let m = m.borrow_watched();
            let settled = match m.state {
                ServerState::Leader => {
                    let last = m.last_log_index;
                    m.membership_config.membership().nodes().all(|(id, _)| {
                        *id == self.node_id
                            || !self.is_up(*id)
                            || m.replication
                                .as_ref()
                                .and_then(|r| r.get(id))
                                .and_then(|l| l.as_ref().map(|l| l.index))
                                == last
                    })
                }
                ServerState::Follower | ServerState::Learner => {
                    vote_leader(&m.vote).is_some_and(|l| l != self.node_id && self.is_up(l))
                }
                _ => false,
            };
            if settled {
                s.sleep(&mut st);
            }
        }
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
        let targets: Vec<(u64, String)> = self
            .peers
            .lock()
            .iter()
            .map(|(id, p)| (*id, p.addr.clone()))
            .collect();
        let calls = targets
            .into_iter()
            .map(|(id, addr)| async move { (id, self.probe(&addr).await) });
        let results = futures::future::join_all(calls).await;
        let mut came_up = Vec::new();
        let mut went_down = Vec::new();
        {
            let now = Instant::now();
            let mut table = self.peers.lock();
            for (id, r) in results {
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
        let peers_changed = !went_down.is_empty() || !came_up.is_empty();
        if peers_changed {
            let down: BTreeSet<u64> = self
                .peers
                .lock()
                .iter()
                .filter(|(_, p)| !p.up)
                .map(|(id, _)| *id)
                .collect();
            self.down.send_replace(down);
        }
        self.settle();
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

    async fn probe(&self, addr: &str) -> Result<HibernateReply, String> {
        let channel = self.channels.get(addr).map_err(|e| e.to_string())?;
        let body = encode(&HibernateRequest {
            from: self.node_id,
            incarnation: self.incarnation,
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
        // (urgent, name, group): urgent ones are this node's own duty.
        let mut to_wake: Vec<(bool, String, Arc<Sleeper>)> = Vec::new();
        let mut pending = false;
        let mut campaigning = 0usize;
        let mut nudge: Vec<Raft> = Vec::new();
        for (name, s) in self.groups.lock().iter() {
            let wake = {
                let mut st = s.state.lock();
                let m = s.raft.metrics();
                let m = m.borrow_watched();
                if !st.asleep {
                    if m.state != ServerState::Leader {
                        campaigning += 1;
                    }
                    if st.campaigning {
                        let led = m.state == ServerState::Leader
                            || vote_leader(&m.vote).is_some_and(|l| self.is_up(l));
                        if led {
                            st.campaigning = false;
                        } else {
                            // Voters that heard the old leader lately refuse
                            // (pre-)votes until their lease lapses, and a
                            // refused candidate would wait a whole election
                            // timeout before it tries again: try every round
                            // instead, so the election ends within a round of
                            // the lease's end.
                            pending = true;
                            nudge.push(s.raft.clone());
                        }
                    }
                    continue;
                }
                if m.state == ServerState::Leader {
                    st.orphaned_since = None;
                    continue;
                }
                let leader = vote_leader(&m.vote);
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
                    Some(l) if l == self.node_id => live.contains(&l).then_some(true),
                    Some(l) if self.is_up(l) => {
                        st.orphaned_since = None;
                        None
                    }
                    _ if live.contains(&self.node_id) => {
                        let since = *st.orphaned_since.get_or_insert(now);
                        let designated = match s.preferred {
                            Some(p) if live.contains(&p) && leader.is_none() => p,
                            _ => live[(name_hash(name) % live.len() as u64) as usize],
                        };
                        if designated == self.node_id {
                            Some(true)
                        } else {
                            (now.duration_since(since) >= BACKUP_WAKE).then_some(false)
                        }
                    }
                    _ => None,
                }
            };
            if let Some(urgent) = wake {
                to_wake.push((urgent, name.clone(), s.clone()));
            }
        }
        // Elections at most CAMPAIGNS_MAX at a time: a thousand groups
        // electing at once on a loaded node time their votes out and
        // retry forever; the rest wait for the next round.
        to_wake.sort_by_key(|(urgent, _, _)| !*urgent);
        let budget = CAMPAIGNS_MAX.saturating_sub(campaigning);
        if to_wake.len() > budget {
            pending = true;
        }
        self.orphans_pending.store(pending, Ordering::Relaxed);
        for raft in nudge {
            tokio::spawn(async move {
                let _ = raft.trigger().elect(true).await;
            });
        }
        let mut woken = 0usize;
        for (_, name, s) in to_wake.into_iter().take(budget) {
            if s.wake() {
                s.state.lock().campaigning = true;
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

/// The leader a vote names, if it names an elected one. Initializing a
/// group leaves every initial replica with a committed vote for itself in
/// term 0, which names no leader.
fn vote_leader(vote: &super::RaftVote) -> Option<u64> {
    let leader = vote.leader_id();
    (vote.is_committed() && leader.term > 0).then_some(leader.node_id)
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

    fn vote(term: u64, node: u64, committed: bool) -> crate::raft::RaftVote {
        use openraft::vote::RaftVote as _;
        crate::raft::RaftVote::from_leader_id(
            openraft::vote::leader_id_adv::LeaderId {
                term,
                node_id: node,
            },
            committed,
        )
    }

    #[test]
    fn only_an_elected_leader_counts_as_the_groups_leader() {
        // What openraft's `initialize` leaves on every initializing replica:
        // taking it for a leader made all three wake and split the vote.
        assert_eq!(vote_leader(&vote(0, 2, true)), None);
        assert_eq!(vote_leader(&vote(3, 2, false)), None, "a candidate's vote");
        assert_eq!(vote_leader(&vote(3, 2, true)), Some(2));
    }

    #[test]
    fn messages_round_trip_through_postcard() {
        let req = HibernateRequest {
            from: 2,
            incarnation: 7,
        };
        let back: HibernateRequest = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let reply = HibernateReply { incarnation: 9 };
        let back: HibernateReply = decode(&encode(&reply).unwrap()).unwrap();
        assert_eq!(back, reply);
    }
}
