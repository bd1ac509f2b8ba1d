//! The consumer-group coordinators this node hosts: one
//! [`strata_group::Coordinator`] per partition of the internal topic
//! `__consumer_offsets` that this node leads.
//!
//! A group lives on partition `crc32(group) mod N` of that topic (N is the
//! topic's partition count, `group_coordinator_partitions` when this node
//! creates it on the first group request). Every change the state machine
//! makes is appended to that partition as records (key = group, value =
//! the versioned JSON of `strata_group::record`) and acknowledged only once
//! replicated like any partition's batch (acks=all), so the groups survive
//! the coordinator's node: the partition's next leader rebuilds them.
//!
//! Loading is fenced by the Raft term. A leader first appends a marker (a
//! record with an empty key) and waits for it to commit; everything below
//! the marker is then the whole committed history of the partition, which
//! it replays. State loaded in one term is never used in another: a lost
//! and regained leadership reloads. A failed append drops the loaded state
//! too (the log, not memory, is the truth), so the next request reloads.
//!
//! Each slot's state sits behind a tokio mutex held across the append:
//! operations on the groups of one partition are serial, which is what
//! makes "apply in memory, then append" safe. A background tick expires
//! sessions and follows topic changes every [`TICK`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use strata_group::{
    Coordinator, CoordinatorConfig, GroupDescription, GroupRecord, GroupSummary, HeartbeatRequest,
    HeartbeatResponse, Topics, coordinator_partition, decode_record, encode_record,
    validate_group_name,
};
use strata_proto::batch::{BatchLimits, Compression, Record, admit_batch, decode_records};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::settings::TopicSettings;
use crate::topic::{Acks, Partition};

/// The internal topic holding every group's state and offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How often sessions, revocation deadlines and topic changes are checked.
pub const TICK: Duration = Duration::from_millis(250);

/// How long a request waits for its partition's slot (another request or a
/// load in progress) before answering COORDINATOR_LOADING.
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// How long a request waits for a coordinator to exist before answering
/// NOT_COORDINATOR or COORDINATOR_LOADING (both retriable): a group's first
/// request creates the offsets topic, and a failover elects a new leader.
const COORDINATOR_WAIT: Duration = Duration::from_secs(5);

/// Record payload bytes per appended batch; larger changes (a tick touching
/// many groups) are split into several batches.
const BATCH_PAYLOAD_MAX: usize = 256 << 10;

/// Bytes read per step while replaying a partition.
const REPLAY_READ_BYTES: usize = 4 << 20;

/// One partition's coordinator and the term it was loaded in.
struct SlotState {
    coordinator: Coordinator,
    /// `Some` while `coordinator` reflects the partition's log as of this
    /// leadership: the term and the partition object it was loaded from.
    loaded: Option<(u64, Arc<Partition>)>,
    /// Every group the partition's log has ever named (deleted ones too):
    /// legacy offsets are imported only for a group never seen.
    seen: std::collections::HashSet<String>,
}

/// The coordinators of this node.
pub struct GroupCoordinators {
    broker: Arc<Broker>,
    config: CoordinatorConfig,
    partitions_default: u32,
    slots: parking_lot::Mutex<HashMap<u32, Arc<tokio::sync::Mutex<SlotState>>>>,
    /// Serialises the creation of the internal topic.
    creating: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GroupCoordinators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinators")
            .field("slots", &self.slots.lock().len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a coordinator operation gives back: its answer and the records
/// that make its effect durable.
type OpResult<T> = Result<(T, Vec<GroupRecord>), strata_group::GroupError>;

impl GroupCoordinators {
    /// The coordinators over `broker`, with a background tick that stops
    /// when the returned value is dropped.
    pub fn start(broker: Arc<Broker>) -> Arc<Self> {
        let c = Arc::new(GroupCoordinators {
            config: broker.config().groups.clone(),
            partitions_default: broker.config().group_coordinator_partitions,
            broker,
            slots: parking_lot::Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(tick_loop(Arc::downgrade(&c)));
        c
    }

    /// The broker's limits for groups.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The partition count of the internal topic, creating it if it does
    /// not exist (with `create`).
    async fn offsets_partitions(&self, create: bool) -> Result<Option<u32>, BrokerError> {
        match self.broker.partition_count(OFFSETS_TOPIC) {
            Ok(n) => return Ok(Some(n)),
            Err(BrokerError::UnknownTopic(_)) if create => {}
            Err(BrokerError::UnknownTopic(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        let _guard = self.creating.lock().await;
        if let Ok(n) = self.broker.partition_count(OFFSETS_TOPIC) {
            return Ok(Some(n));
        }
        let settings = TopicSettings {
            retention_ms: Some(-1),
            retention_bytes: Some(-1),
            ..TopicSettings::default()
        };
        match self
            .broker
            .create_internal_topic(OFFSETS_TOPIC, self.partitions_default, settings)
            .await
        {
            Ok(_) | Err(BrokerError::TopicExists(_)) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(
            topic = OFFSETS_TOPIC,
            partitions = self.partitions_default,
            "created the consumer-group offsets topic"
        );
        // In a cluster the topic is usable once this node has applied its
        // creation (its partitions then elect leaders; see `wait_led`).
        let deadline = tokio::time::Instant::now() + COORDINATOR_WAIT;
        loop {
            if let Ok(n) = self.broker.partition_count(OFFSETS_TOPIC) {
                return Ok(Some(n));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::CoordinatorLoading(format!(
                    "created {OFFSETS_TOPIC}; its partitions are starting"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Self::led_partition`], waiting up to [`COORDINATOR_WAIT`] while no
    /// node is known to lead the partition (just created, or electing).
    async fn wait_led(&self, group: &str, p: u32) -> Result<(Arc<Partition>, u64), BrokerError> {
        let deadline = tokio::time::Instant::now() + COORDINATOR_WAIT;
        loop {
            match self.led_partition(group, p) {
                Err(BrokerError::NotCoordinator { leader: None, .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => return r,
            }
        }
    }

    /// The partition of the internal topic holding `group`.
    pub async fn partition_of(&self, group: &str) -> Result<u32, BrokerError> {
        validate_group_name(group)?;
        let n = self
            .offsets_partitions(true)
            .await?
            .ok_or_else(|| BrokerError::CoordinatorLoading(format!("{OFFSETS_TOPIC} missing")))?;
        Ok(coordinator_partition(group, n))
    }

    /// This node's partition `p` of the internal topic if it leads it, or
    /// NOT_COORDINATOR with the leader's address.
    fn led_partition(&self, group: &str, p: u32) -> Result<(Arc<Partition>, u64), BrokerError> {
        let not_coordinator = |leader| BrokerError::NotCoordinator {
            group: group.to_owned(),
            leader,
        };
        let part = match self.broker.partition(OFFSETS_TOPIC, p) {
            Ok(part) => part,
            Err(BrokerError::NotLeader { leader }) => return Err(not_coordinator(leader)),
            Err(BrokerError::MetadataBehind(_)) => return Err(not_coordinator(None)),
            Err(e) => return Err(e),
        };
        match part.leader_term() {
            Ok(term) => Ok((part, term)),
            Err(BrokerError::NotLeader { leader }) => Err(not_coordinator(leader)),
            Err(e) => Err(e),
        }
    }

    /// NOT_COORDINATOR (with a hint) unless this node leads partition `p`
    /// of the internal topic, which holds `group`.
    pub async fn check_coordinator(&self, group: &str, p: u32) -> Result<(), BrokerError> {
        self.wait_led(group, p).await.map(|_| ())
    }

    fn slot(&self, p: u32) -> Arc<tokio::sync::Mutex<SlotState>> {
        self.slots
            .lock()
            .entry(p)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(SlotState {
                    coordinator: Coordinator::new(self.config.clone()),
                    loaded: None,
                    seen: Default::default(),
                }))
            })
            .clone()
    }

    /// Runs `op` on the coordinator of `group`'s partition (loading it
    /// first if needed) and appends the records it returns; answers once
    /// they are replicated.
    async fn run<T>(
        &self,
        group: &str,
        op: impl FnOnce(&mut Coordinator, &Topics, u64) -> OpResult<T>,
    ) -> Result<T, BrokerError> {
        let p = self.partition_of(group).await?;
        let (part, term) = self.wait_led(group, p).await?;
        let slot = self.slot(p);
        let mut state = tokio::time::timeout(SLOT_WAIT, slot.lock())
            .await
            .map_err(|_| {
                BrokerError::CoordinatorLoading(format!(
                    "partition {p} of {OFFSETS_TOPIC} is busy (loading or appending)"
                ))
            })?;
        ensure_loaded(&mut state, &part, term).await?;
        let topics = self.broker.topic_counts()?;
        if !state.seen.contains(group) {
            self.import_legacy(&mut state, &part, group, &topics)
                .await?;
        }
        let (answer, records) = op(&mut state.coordinator, &topics, now_ms())?;
        if !records.is_empty() {
            state.seen.insert(group.to_owned());
        }
        if let Err(e) = append(&part, &records).await {
            // Memory is ahead of the log now: rebuild from the log next time.
            state.loaded = None;
            state.coordinator = Coordinator::new(self.config.clone());
            state.seen.clear();
            return Err(e);
        }
        Ok(answer)
    }

    /// Brings the offsets `group` committed before this version (see
    /// [`Broker::legacy_offsets`]) into its coordinator, once: the group is
    /// then in the log, so a later delete is not undone.
    async fn import_legacy(
        &self,
        state: &mut SlotState,
        part: &Arc<Partition>,
        group: &str,
        topics: &Topics,
    ) -> Result<(), BrokerError> {
        let legacy: Vec<(String, u32, u64)> = self
            .broker
            .legacy_offsets(group)?
            .into_iter()
            .filter(|(t, p, _)| topics.get(t).is_some_and(|n| p < n))
            .collect();
        if !legacy.is_empty() {
            let records = state
                .coordinator
                .reset_offsets(group, &legacy, topics, now_ms())?;
            if let Err(e) = append(part, &records).await {
                state.loaded = None;
                state.coordinator = Coordinator::new(self.config.clone());
                state.seen.clear();
                return Err(e);
            }
            tracing::info!(
                group,
                partitions = legacy.len(),
                "imported the group's offsets committed before __consumer_offsets"
            );
        }
        state.seen.insert(group.to_owned());
        Ok(())
    }

    /// A member's heartbeat (join, leave, or keep-alive with its owned
    /// partitions).
    pub async fn heartbeat(
        &self,
        group: &str,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, BrokerError> {
        self.run(group, |c, topics, now| c.heartbeat(group, req, topics, now))
            .await
    }

    /// Commits offsets (by a member, or standalone with `member` `None`).
    /// The caller has checked them against the high watermarks.
    pub async fn commit(
        &self,
        group: &str,
        member: Option<(String, i32)>,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), BrokerError> {
        self.run(group, |c, topics, now| {
            let m = member.as_ref().map(|(id, e)| (id.as_str(), *e));
            c.commit(group, m, &offsets, topics, now).map(|r| ((), r))
        })
        .await
    }

    /// Sets offsets of a group without members (backwards allowed).
    pub async fn reset_offsets(
        &self,
        group: &str,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), BrokerError> {
        self.run(group, |c, topics, now| {
            c.reset_offsets(group, &offsets, topics, now)
                .map(|r| ((), r))
        })
        .await
    }

    /// Turns a group's retention hold on or off.
    pub async fn set_hold(&self, group: &str, hold: bool) -> Result<(), BrokerError> {
        self.run(group, |c, _, now| {
            c.set_hold(group, hold, now).map(|r| ((), r))
        })
        .await
    }

    /// Deletes a group without members.
    pub async fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        self.run(group, |c, _, _| c.delete_group(group).map(|r| ((), r)))
            .await
    }

    /// A group's committed offsets.
    pub async fn committed(
        &self,
        group: &str,
    ) -> Result<BTreeMap<strata_group::TopicPartition, u64>, BrokerError> {
        self.run(group, |c, _, _| Ok((c.committed(group), Vec::new())))
            .await
    }

    /// A group's members, assignment and offsets.
    pub async fn describe(&self, group: &str) -> Result<GroupDescription, BrokerError> {
        self.run(group, |c, _, _| {
            c.describe(group).map(|d| (d, Vec::new())).ok_or_else(|| {
                strata_group::GroupError::UnknownGroup {
                    group: group.to_owned(),
                }
            })
        })
        .await
    }

    /// The fetch-side fencing check: the member owns the partition under
    /// an epoch not newer than its own.
    pub async fn check_member(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
        topic: &str,
        partition: u32,
    ) -> Result<(), BrokerError> {
        self.run(group, |c, _, _| {
            c.check_member(group, member_id, epoch, topic, partition)
                .map(|()| ((), Vec::new()))
        })
        .await
    }

    /// The groups of the internal topic's partitions this node leads, with
    /// their committed offsets; and the partitions it does not lead (asked
    /// elsewhere by the service), as (partition, leader address).
    pub async fn local_groups(&self) -> Result<LocalGroups, BrokerError> {
        let mut out = LocalGroups::default();
        let Some(n) = self.offsets_partitions(false).await? else {
            return Ok(out);
        };
        for p in 0..n {
            let (part, term) = match self.led_partition("", p) {
                Ok(x) => x,
                Err(BrokerError::NotCoordinator { leader, .. }) => {
                    out.elsewhere.push((p, leader));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let slot = self.slot(p);
            let Ok(mut state) = tokio::time::timeout(SLOT_WAIT, slot.lock()).await else {
                out.elsewhere.push((p, None));
                continue;
            };
            if ensure_loaded(&mut state, &part, term).await.is_err() {
                out.elsewhere.push((p, None));
                continue;
            }
            for s in state.coordinator.groups() {
                let offsets = state.coordinator.committed(&s.group);
                out.groups.push((s, offsets));
            }
        }
        Ok(out)
    }

    /// One round of periodic work on every partition this node leads.
    async fn tick(&self) {
        let Ok(Some(n)) = self.offsets_partitions(false).await else {
            return;
        };
        let Ok(topics) = self.broker.topic_counts() else {
            return; // metadata behind: changes would be wrong
        };
        for p in 0..n {
            let led = self.led_partition("", p);
            let slot = self.slot(p);
            let Ok(mut state) = slot.try_lock() else {
                continue; // a request is running on it
            };
            let (part, term) = match led {
                Ok(x) => x,
                Err(_) => {
                    if state.loaded.is_some() {
                        tracing::info!(
                            partition = p,
                            "no longer coordinating the groups of this partition"
                        );
                        state.loaded = None;
                        state.coordinator = Coordinator::new(self.config.clone());
                        state.seen.clear();
                    }
                    continue;
                }
            };
            if let Err(e) = ensure_loaded(&mut state, &part, term).await {
                tracing::debug!(partition = p, error = %e, "coordinator load deferred");
                continue;
            }
            let records = state.coordinator.tick(&topics, now_ms());
            if let Err(e) = append(&part, &records).await {
                tracing::warn!(partition = p, error = %e, "group tick records not appended; reloading");
                state.loaded = None;
                state.coordinator = Coordinator::new(self.config.clone());
                state.seen.clear();
            }
        }
    }
}

/// What [`GroupCoordinators::local_groups`] found.
#[derive(Debug, Default)]
pub struct LocalGroups {
    /// Each group here with its committed offsets.
    pub groups: Vec<(GroupSummary, BTreeMap<strata_group::TopicPartition, u64>)>,
    /// Partitions led elsewhere (or not loadable now), with their leader.
    pub elsewhere: Vec<(u32, Option<String>)>,
}

async fn tick_loop(weak: Weak<GroupCoordinators>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(c) = weak.upgrade() else { return };
        c.tick().await;
    }
}

/// Loads the slot from the partition's log unless it was loaded in this
/// term from this partition object.
async fn ensure_loaded(
    state: &mut SlotState,
    part: &Arc<Partition>,
    term: u64,
) -> Result<(), BrokerError> {
    if let Some((t, p)) = &state.loaded
        && *t == term
        && Arc::ptr_eq(p, part)
    {
        return Ok(());
    }
    state.loaded = None;
    let started = std::time::Instant::now();
    let mut coordinator = Coordinator::new(state.coordinator.config().clone());
    let mut seen = std::collections::HashSet::new();
    // The marker: once it commits, everything before it is the committed
    // history; nothing after it was written by another leader.
    let marker = Record {
        key: None,
        value: Bytes::new(),
        headers: Vec::new(),
        timestamp_ms: now_ms() as i64,
    };
    let outcome = submit(part, std::slice::from_ref(&marker)).await?;
    let end = outcome;
    let mut offset = part.log_start_offset();
    let mut replayed = 0u64;
    while offset < end {
        let p = part.clone();
        let batches = tokio::task::spawn_blocking(move || p.read(offset, REPLAY_READ_BYTES))
            .await
            .map_err(|e| BrokerError::CoordinatorLoading(format!("replay task failed: {e}")))??;
        let Some(last) = batches.last() else { break };
        let next = last.base_offset + u64::from(last.record_count);
        for b in batches {
            let records = decode_records(b.bytes, &BatchLimits::UNLIMITED)?;
            for (i, r) in records.into_iter().enumerate() {
                if b.base_offset + i as u64 >= end {
                    break;
                }
                let key = r.key.unwrap_or_default();
                if key.is_empty() {
                    continue; // a marker
                }
                match decode_record(&key, &r.value) {
                    Ok(rec) => {
                        if !seen.contains(rec.group()) {
                            seen.insert(rec.group().to_owned());
                        }
                        coordinator.replay(rec);
                        replayed += 1;
                    }
                    Err(e) => {
                        return Err(BrokerError::Group(e));
                    }
                }
            }
        }
        offset = next;
    }
    coordinator.restart_sessions(now_ms());
    tracing::info!(
        topic = %part.topic,
        partition = part.id,
        term,
        records = replayed,
        groups = coordinator.groups().len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "group coordinator loaded"
    );
    state.coordinator = coordinator;
    state.seen = seen;
    state.loaded = Some((term, part.clone()));
    Ok(())
}

/// Appends `records` (in batches of at most [`BATCH_PAYLOAD_MAX`]) and waits
/// until all are replicated. Nothing to append is a no-op.
async fn append(part: &Partition, records: &[GroupRecord]) -> Result<(), BrokerError> {
    if records.is_empty() {
        return Ok(());
    }
    let now = now_ms() as i64;
    let mut chunk: Vec<Record> = Vec::new();
    let mut size = 0;
    for r in records {
        let (key, value) = encode_record(r);
        size += key.len() + value.len();
        chunk.push(Record {
            key: Some(Bytes::from(key)),
            value: Bytes::from(value),
            headers: Vec::new(),
            timestamp_ms: now,
        });
        if size >= BATCH_PAYLOAD_MAX {
            submit(part, &chunk).await?;
            chunk.clear();
            size = 0;
        }
    }
    if !chunk.is_empty() {
        submit(part, &chunk).await?;
    }
    Ok(())
}

/// Appends one batch with acks=all; returns the offset after it.
async fn submit(part: &Partition, records: &[Record]) -> Result<u64, BrokerError> {
    let mut out = Vec::new();
    strata_proto::batch::encode_batch(records, Compression::None, None, &mut out)
        .map_err(|e| BrokerError::InvalidRequest(format!("group records do not encode: {e}")))?;
    let verified = admit_batch(Bytes::from(out), &part.batch_limits())?;
    let o = part.submit(verified).await?.wait(Acks::All).await?;
    let base = o.base_offset.ok_or_else(|| {
        BrokerError::InvalidRequest("an acks=all append was answered without an offset".into())
    })?;
    Ok(base + u64::from(o.record_count))
}
