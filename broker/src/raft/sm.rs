//! The state machine of a Raft group, and its snapshots.
//!
//! **Partition groups.** Applying a batch assigns it the next offsets (the
//! same function of the log the log store uses, so both agree) and records
//! it in the idempotent-producer state; the high watermark is the offset
//! after the last applied batch, published on a watch. Applying a `Trim`
//! moves the log start offset and *pins a snapshot at the trim point*: a
//! small checkpoint (offset after the trim point, log start, producer
//! state, membership) whose last log id is the trim point, not the applied
//! point. The node then asks openraft to build it (the builder hands out the
//! pinned checkpoint) and to purge up to it. A follower too far behind gets
//! that checkpoint, purges to it, and replicates everything after it through
//! ordinary appends — so it ends with the same log start offset and the
//! same bytes at the same offsets as the leader (shared/notes/openraft-0.10
//! §3). The producer state in a pinned checkpoint may be newer than the trim
//! point: it records the index it reflects (`producers_index`), and the
//! entries up to it change nothing in it when they are replayed.
//!
//! **Producer expiry.** `ExpireProducers` carries the leader's clock and
//! the expiry settings; applying it advances the group's clock and forgets
//! producers idle for too long (and, past the maximum, the least recently
//! seen), the same ones on every replica. A batch stamps its producer with
//! the group's clock.
//!
//! **The metadata group** snapshots its whole image at the applied point.
//!
//! The current snapshot is kept in `raft-snapshot` beside the log (written
//! atomically, through the log's storage seam like `raft-applied`); on
//! restart the state starts from it and openraft re-applies the committed
//! entries after it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::store::InstallHint;
use super::{
    Cmd, MetaState, RaftLogId, Reply, Snapshot, SnapshotMeta, StoredMembership, Tc, decode, encode,
};
use crate::dedup::ProducerTable;
use crate::log::Storage;
use crate::log::storage::{read_all, write_atomic};

const SNAPSHOT_FILE: &str = "raft-snapshot";
/// A partition's applied state, saved now and then so a restart re-applies
/// only the log after it (the snapshot sits at the last trim point, which
/// may be far back). Not a snapshot: never sent to peers.
const CHECKPOINT_FILE: &str = "raft-applied";
/// A checkpoint is written after this many applied entries…
const CHECKPOINT_ENTRIES: u64 = 1_000;
/// …or this long after the last one, whichever comes first.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A partition's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Offset after the last applied batch: the high watermark.
    pub next_offset: u64,
    /// First readable offset.
    pub log_start_offset: u64,
    /// Idempotent producers; a batch's outcome is its base offset, and a
    /// producer's last-seen time is `clock_ms` when its batch applied.
    pub producers: ProducerTable<u64>,
    /// The group's clock: the latest time an `ExpireProducers` command
    /// carried (the leader's wall time when it proposed it), so every
    /// replica ages producers alike. 0 before the first.
    pub clock_ms: u64,
    /// `producers` reflects every entry up to this index. A pinned trim
    /// image holds a table newer than its trim point: the entries after
    /// the trim point that the table already reflects are not applied to
    /// it again when a follower installs the image and replays them.
    pub producers_index: u64,
}

/// What a group's state machine holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Machine {
    /// A partition group.
    Partition(PartitionState),
    /// The metadata group.
    Meta(MetaState),
}

/// The serialized forms of [`Machine`] (in snapshots and checkpoints),
/// oldest first; a new form is a new variant, so every older file still
/// loads. Only the newest forms are written.
#[derive(Deserialize)]
enum MachineWire {
    /// Version 1: producers without a last-seen time, no clock.
    PartitionV1(legacy::PartitionStateV1),
    /// Version 1: no producer-id key.
    MetaV1(legacy::MetaStateV1),
    /// Version 2.
    Partition(PartitionState),
    /// Version 2.
    Meta(MetaState),
}

impl Serialize for Machine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The variant indexes of `MachineWire`'s version 2.
        match self {
            Machine::Partition(p) => s.serialize_newtype_variant("MachineWire", 2, "Partition", p),
            Machine::Meta(m) => s.serialize_newtype_variant("MachineWire", 3, "Meta", m),
        }
    }
}

impl<'de> Deserialize<'de> for Machine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match MachineWire::deserialize(d)? {
            MachineWire::PartitionV1(p) => Machine::Partition(p.into()),
            MachineWire::MetaV1(m) => Machine::Meta(m.into()),
            MachineWire::Partition(p) => Machine::Partition(p),
            MachineWire::Meta(m) => Machine::Meta(m),
        })
    }
}

/// The state images of version 1, for loading files written before.
mod legacy {
    use std::collections::{BTreeMap, VecDeque};

    use serde::Deserialize;

    use super::PartitionState;
    use crate::dedup::{ProducerState, ProducerTable, RecentBatch};
    use crate::raft::NodeInfo;
    use crate::raft::meta::{LeaderRecord, MetaState, TopicMeta};

    #[derive(Deserialize)]
    pub struct ProducerStateV1 {
        epoch: u16,
        last_sequence: u32,
        recent: VecDeque<RecentBatch<u64>>,
    }

    #[derive(Deserialize)]
    pub struct PartitionStateV1 {
        next_offset: u64,
        log_start_offset: u64,
        producers: BTreeMap<u64, ProducerStateV1>,
    }

    impl From<PartitionStateV1> for PartitionState {
        /// Producers get last-seen time 0: the first `ExpireProducers`
        /// stamps them with its time (a clock of 0 means none came yet).
        fn from(p: PartitionStateV1) -> Self {
            let mut producers = ProducerTable::default();
            for (id, s) in p.producers {
                producers.insert(
                    id,
                    ProducerState {
                        epoch: s.epoch,
                        last_sequence: s.last_sequence,
                        recent: s.recent,
                        last_seen_ms: 0,
                    },
                );
            }
            PartitionState {
                next_offset: p.next_offset,
                log_start_offset: p.log_start_offset,
                producers,
                clock_ms: 0,
                producers_index: 0,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct MetaStateV1 {
        nodes: BTreeMap<u64, NodeInfo>,
        topics: BTreeMap<String, TopicMeta>,
        leaders: BTreeMap<(String, u32), LeaderRecord>,
        offsets: BTreeMap<(String, String, u32), u64>,
        producer_ids: u64,
    }

    impl From<MetaStateV1> for MetaState {
        fn from(m: MetaStateV1) -> Self {
            MetaState {
                nodes: m.nodes,
                topics: m.topics,
                leaders: m.leaders,
                offsets: m.offsets,
                producer_ids: m.producer_ids,
                producer_id_key: None,
            }
        }
    }
}

/// The state machine's state.
#[derive(Debug)]
pub struct SmState {
    /// Last applied log id.
    pub applied: Option<RaftLogId>,
    /// Memberships applied, oldest first (the last few).
    pub memberships: Vec<StoredMembership>,
    /// The data.
    pub machine: Machine,
    current: Option<(SnapshotMeta, Vec<u8>)>,
    pinned: Option<(SnapshotMeta, Vec<u8>)>,
    /// Index of the last checkpoint, and when it was written.
    checkpointed: (Option<u64>, std::time::Instant),
}

impl SmState {
    /// A state holding `machine`, with nothing applied yet.
    fn new(machine: Machine) -> Self {
        SmState {
            applied: None,
            memberships: Vec::new(),
            machine,
            current: None,
            pinned: None,
            checkpointed: (None, std::time::Instant::now()),
        }
    }

    fn membership(&self) -> StoredMembership {
        self.memberships.last().cloned().unwrap_or_default()
    }

    /// The membership in force at index `upto`.
    fn membership_at(&self, upto: u64) -> StoredMembership {
        self.memberships
            .iter()
            .rev()
            .find(|m| m.log_id().is_none_or(|l| l.index <= upto))
            .cloned()
            .unwrap_or_default()
    }

    /// The partition state, if this is a partition group.
    pub fn partition(&self) -> Option<&PartitionState> {
        match &self.machine {
            Machine::Partition(p) => Some(p),
            Machine::Meta(_) => None,
        }
    }

    /// The metadata image, if this is the metadata group.
    pub fn meta(&self) -> Option<&MetaState> {
        match &self.machine {
            Machine::Meta(m) => Some(m),
            Machine::Partition(_) => None,
        }
    }
}

/// State shared between the state machine openraft owns and the broker.
#[derive(Debug)]
pub struct SmShared {
    state: Mutex<SmState>,
    /// Partition groups: the high watermark. Metadata: bumped per apply.
    pub applied_watch: Arc<watch::Sender<u64>>,
    /// Partition groups: the log start offset.
    pub start_watch: Arc<watch::Sender<u64>>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    hint: Arc<Mutex<InstallHint>>,
    trims: mpsc::UnboundedSender<u64>,
}

impl SmShared {
    /// Locks the state.
    pub fn state(&self) -> MutexGuard<'_, SmState> {
        self.state.lock()
    }
}

/// The state machine openraft drives.
#[derive(Debug, Clone)]
pub struct GroupSm {
    shared: Arc<SmShared>,
}

/// Builds the snapshot at the pinned trim point, or of the applied state.
#[derive(Debug)]
pub struct Builder {
    shared: Arc<SmShared>,
}

impl GroupSm {
    /// Opens the state machine of the group whose log lives in `dir`:
    /// `machine` is the empty state; a saved snapshot replaces it. `trims`
    /// receives the index of every pinned trim point.
    ///
    /// A partition's checkpoint newer than the snapshot is used when
    /// `in_log` confirms this node's log holds the checkpoint's last entry
    /// (the log is the truth; a checkpoint ahead of it is ignored).
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        machine: Machine,
        hint: Arc<Mutex<InstallHint>>,
        trims: mpsc::UnboundedSender<u64>,
        in_log: impl Fn(&RaftLogId) -> bool,
    ) -> io::Result<Self> {
        let mut state = SmState::new(machine);
        if let Some(b) = read_all(storage.as_ref(), &dir.join(SNAPSHOT_FILE))? {
            let (meta, data): (SnapshotMeta, Vec<u8>) = decode(&b)?;
            state.applied = meta.last_log_id;
            state.memberships = vec![meta.last_membership.clone()];
            state.machine = decode(&data)?;
            state.current = Some((meta, data));
        }
        if let Some(b) = read_all(storage.as_ref(), &dir.join(CHECKPOINT_FILE))? {
            let (applied, memberships, machine): (
                Option<RaftLogId>,
                Vec<StoredMembership>,
                Machine,
            ) = decode(&b)?;
            if applied > state.applied
                && applied.as_ref().is_some_and(&in_log)
                && matches!(machine, Machine::Partition(_))
            {
                tracing::info!(
                    dir = %dir.display(),
                    checkpoint = ?applied.map(|l| l.index),
                    snapshot = ?state.applied.map(|l| l.index),
                    "state machine restored from checkpoint; re-applying the log after it"
                );
                state.applied = applied;
                state.memberships = memberships;
                state.machine = machine;
                state.checkpointed.0 = applied.map(|l| l.index);
            } else {
                tracing::info!(dir = %dir.display(), "checkpoint not used (older than the snapshot or beyond the log)");
            }
        }
        let (hw, start) = match &state.machine {
            Machine::Partition(p) => (p.next_offset, p.log_start_offset),
            Machine::Meta(_) => (0, 0),
        };
        Ok(GroupSm {
            shared: Arc::new(SmShared {
                state: Mutex::new(state),
                applied_watch: Arc::new(watch::channel(hw).0),
                start_watch: Arc::new(watch::channel(start).0),
                storage,
                dir,
                hint,
                trims,
            }),
        })
    }

    /// The state shared with the broker.
    pub fn shared(&self) -> &Arc<SmShared> {
        &self.shared
    }

    /// Writes the snapshot file (fsynced; off the async workers).
    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let bytes = encode(&(meta, data))?;
        super::blocking(|| {
            write_atomic(
                self.shared.storage.as_ref(),
                &self.shared.dir.join(SNAPSHOT_FILE),
                &bytes,
            )
        })
    }

    /// Saves a partition's applied state when enough was applied since the
    /// last checkpoint, unless a trim snapshot is pending (its entry must be
    /// re-applied after a restart, so the snapshot still gets built).
    fn maybe_checkpoint(&self) -> io::Result<()> {
        let bytes = {
            let st = self.shared.state();
            let (Some(applied), Machine::Partition(_)) = (st.applied, &st.machine) else {
                return Ok(());
            };
            let (last, at) = st.checkpointed;
            let since = applied.index.saturating_sub(last.unwrap_or(0));
            if st.pinned.is_some()
                || since == 0
                || (since < CHECKPOINT_ENTRIES && at.elapsed() < CHECKPOINT_INTERVAL)
            {
                return Ok(());
            }
            (
                applied.index,
                encode(&(st.applied, &st.memberships, &st.machine))?,
            )
        };
        write_atomic(
            self.shared.storage.as_ref(),
            &self.shared.dir.join(CHECKPOINT_FILE),
            &bytes.1,
        )?;
        self.shared.state().checkpointed = (Some(bytes.0), std::time::Instant::now());
        Ok(())
    }

    fn publish(&self, st: &SmState) {
        match &st.machine {
            Machine::Partition(p) => {
                let (hw, start) = (p.next_offset, p.log_start_offset);
                self.shared.applied_watch.send_if_modified(|h| {
                    let moved = *h != hw;
                    *h = hw;
                    moved
                });
                self.shared.start_watch.send_if_modified(|s| {
                    let moved = *s != start;
                    *s = start;
                    moved
                });
            }
            Machine::Meta(_) => {
                self.shared.applied_watch.send_modify(|v| *v += 1);
            }
        }
    }
}

/// Applies one entry's command.
fn apply_cmd(st: &mut SmState, log_id: RaftLogId, cmd: Cmd) -> io::Result<(Reply, Option<u64>)> {
    let mut pinned = None;
    let reply = match (&mut st.machine, cmd) {
        (Machine::Partition(p), Cmd::Batch(b)) => {
            let base_offset = p.next_offset;
            p.next_offset += u64::from(b.record_count());
            if log_id.index > p.producers_index {
                p.producers_index = log_id.index;
                if let Some(info) = b.header().producer {
                    p.producers
                        .remember(info, b.record_count(), base_offset, p.clock_ms);
                }
            }
            Reply::Appended { base_offset }
        }
        (Machine::Partition(p), Cmd::ExpireProducers { now_ms, expiry }) => {
            let before = p.clock_ms;
            p.clock_ms = p.clock_ms.max(now_ms);
            if log_id.index <= p.producers_index {
                return Ok((Reply::Expired(Vec::new()), None));
            }
            p.producers_index = log_id.index;
            if before == 0 {
                // Producers from before the first clock have no time yet.
                p.producers.stamp_all(p.clock_ms);
            }
            // A producer stamped with the clock's last value (`before`) may
            // have been active at any time since: it is kept.
            Reply::Expired(p.producers.expire(p.clock_ms, before, expiry))
        }
        (
            Machine::Partition(p),
            Cmd::Trim {
                upto,
                log_start_offset,
            },
        ) => {
            if log_start_offset > p.log_start_offset && upto.index < log_id.index {
                p.log_start_offset = log_start_offset;
                let image = PartitionState {
                    next_offset: log_start_offset,
                    log_start_offset,
                    producers: p.producers.clone(),
                    clock_ms: p.clock_ms,
                    producers_index: p.producers_index.max(log_id.index),
                };
                let meta = SnapshotMeta {
                    last_log_id: Some(upto),
                    last_membership: st.membership_at(upto.index),
                };
                st.pinned = Some((meta, encode(&Machine::Partition(image))?));
                pinned = Some(upto.index);
            }
            Reply::None
        }
        (Machine::Meta(m), Cmd::Meta(c)) => m.apply(&c),
        (_, c) => {
            tracing::warn!(%log_id, cmd = %c, "command for another kind of group ignored");
            Reply::None
        }
    };
    Ok((reply, pinned))
}

impl RaftStateMachine<Tc> for GroupSm {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<RaftLogId>, StoredMembership), io::Error> {
        let st = self.shared.state();
        Ok((st.applied, st.membership()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<Tc>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let (reply, pinned) = {
                let mut st = self.shared.state();
                st.applied = Some(entry.log_id);
                let r = match entry.payload {
                    EntryPayload::Blank => (Reply::None, None),
                    EntryPayload::Normal(cmd) => apply_cmd(&mut st, entry.log_id, cmd)?,
                    EntryPayload::Membership(m) => {
                        st.memberships
                            .push(StoredMembership::new(Some(entry.log_id), m));
                        if st.memberships.len() > 8 {
                            st.memberships.remove(0);
                        }
                        (Reply::None, None)
                    }
                };
                self.publish(&st);
                r
            };
            if let Some(upto) = pinned {
                let _ = self.shared.trims.send(upto);
            }
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        super::blocking(|| self.maybe_checkpoint())?;
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Builder> {
        let st = self.shared.state();
        let newer_pin = st.pinned.as_ref().is_some_and(|(p, _)| {
            st.current
                .as_ref()
                .is_none_or(|(c, _)| c.last_log_id < p.last_log_id)
        });
        let meta_group = matches!(st.machine, Machine::Meta(_));
        (force || newer_pin || meta_group).then(|| Builder {
            shared: self.shared.clone(),
        })
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let machine: Machine = decode(&snapshot)?;
        if let Machine::Partition(p) = &machine
            && let Some(l) = meta.last_log_id
        {
            self.shared.hint.lock().at = Some((l.index, p.next_offset));
        }
        self.save(meta, &snapshot)?;
        let mut st = self.shared.state();
        st.applied = meta.last_log_id;
        st.memberships = vec![meta.last_membership.clone()];
        st.machine = machine;
        st.current = Some((meta.clone(), snapshot));
        st.pinned = None;
        self.publish(&st);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .shared
            .state()
            .current
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: data,
            }))
    }
}

impl RaftSnapshotBuilder<Tc> for Builder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let sm = GroupSm {
            shared: self.shared.clone(),
        };
        let (meta, data) = {
            let mut st = self.shared.state();
            match st.pinned.take() {
                Some(pinned) => pinned,
                None => (
                    SnapshotMeta {
                        last_log_id: st.applied,
                        last_membership: st.membership(),
                    },
                    encode(&st.machine)?,
                ),
            }
        };
        sm.save(&meta, &data)?;
        self.shared.state().current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use super::*;
    use crate::dedup::Expiry;
    use strata_proto::batch::{BatchLimits, ProducerInfo, Record, encode_batch, verify_batch};

    fn state(machine: Machine) -> SmState {
        SmState::new(machine)
    }

    fn log_id(index: u64) -> RaftLogId {
        crate::raft::from_log_id(crate::log::LogId::new(1, 1, index))
    }

    fn batch(producer_id: u64, base_sequence: u32) -> Cmd {
        let mut out = Vec::new();
        let p = ProducerInfo {
            producer_id,
            producer_epoch: 0,
            base_sequence,
        };
        let r = Record {
            key: None,
            value: bytes::Bytes::from_static(b"v"),
            headers: vec![],
            timestamp_ms: 0,
        };
        encode_batch(&[r], strata_proto::Compression::None, Some(p), &mut out).expect("encode");
        Cmd::Batch(verify_batch(out.into(), &BatchLimits::UNLIMITED).expect("verify"))
    }

    const EXPIRY: Expiry = Expiry {
        idle_ms: 1_000,
        producers_max: 10,
    };

    fn partition(st: &SmState) -> &PartitionState {
        st.partition().expect("a partition")
    }

    /// Snapshots and checkpoints written before producers had a last-seen
    /// time (version 1) still load; the first clock stamps their producers.
    #[test]
    fn version_1_images_load() {
        type OldProducers = BTreeMap<u64, (u16, u32, VecDeque<(u32, u32, u64)>)>;
        #[derive(Serialize)]
        enum OldMachine {
            Partition(u64, u64, OldProducers),
            Meta(MetaV1),
        }
        #[derive(Serialize, Default)]
        struct MetaV1 {
            nodes: BTreeMap<u64, crate::raft::NodeInfo>,
            topics: BTreeMap<String, crate::raft::meta::TopicMeta>,
            leaders: BTreeMap<(String, u32), crate::raft::meta::LeaderRecord>,
            offsets: BTreeMap<(String, String, u32), u64>,
            producer_ids: u64,
        }
        let old = OldMachine::Partition(
            12,
            2,
            BTreeMap::from([(7, (0, 4, VecDeque::from([(4, 1, 11)])))]),
        );
        let Machine::Partition(p) = decode::<Machine>(&encode(&old).expect("encode")).expect("v1")
        else {
            panic!("a partition")
        };
        assert_eq!((p.next_offset, p.log_start_offset, p.clock_ms), (12, 2, 0));
        assert_eq!(
            p.producers
                .get(7)
                .map(|s| (s.last_sequence, s.last_seen_ms)),
            Some((4, 0))
        );
        let meta = OldMachine::Meta(MetaV1 {
            producer_ids: 9,
            ..Default::default()
        });
        let Machine::Meta(m) = decode::<Machine>(&encode(&meta).expect("encode")).expect("v1")
        else {
            panic!("meta")
        };
        assert_eq!((m.producer_ids, m.producer_id_key), (9, None));
        // And the current form round-trips.
        let now = Machine::Partition(p);
        assert_eq!(
            decode::<Machine>(&encode(&now).expect("encode")).expect("v2"),
            now
        );
    }

    /// Every replica forgets the same producers, by the leader's clock in
    /// the command, and replaying entries an image already reflects (a
    /// follower installing a trim image) changes nothing.
    #[test]
    fn expiry_follows_the_replicated_clock_and_replays_change_nothing() {
        let mut st = state(Machine::Partition(PartitionState::default()));
        let tick = |now_ms| Cmd::ExpireProducers {
            now_ms,
            expiry: EXPIRY,
        };
        apply_cmd(&mut st, log_id(1), batch(1, 0)).expect("apply");
        // The first clock stamps producers seen before it.
        let (r, _) = apply_cmd(&mut st, log_id(2), tick(10_000)).expect("apply");
        assert_eq!(r, Reply::Expired(vec![]));
        assert_eq!(
            partition(&st).producers.get(1).map(|s| s.last_seen_ms),
            Some(10_000)
        );
        let (r, _) = apply_cmd(&mut st, log_id(3), tick(10_500)).expect("apply");
        assert_eq!(r, Reply::Expired(vec![]), "1 was seen 500 ms ago");
        apply_cmd(&mut st, log_id(4), batch(2, 0)).expect("apply");
        // Producer 2 was stamped with the clock's value (10,500) and may
        // have been active at any time since: kept at 11,200 although
        // 10,500 + 1,000 <= 11,200 would say idle; 1 (10,000) is gone.
        let (r, _) = apply_cmd(&mut st, log_id(5), tick(11_200)).expect("apply");
        assert_eq!(r, Reply::Expired(vec![1]));
        let (r, _) = apply_cmd(&mut st, log_id(6), tick(11_600)).expect("apply");
        assert_eq!(r, Reply::Expired(vec![2]));
        assert!(partition(&st).producers.is_empty());

        // Replaying entries 4..=6 over an image that reflects them (index
        // 6) changes nothing; a later batch applies.
        let image = partition(&st).clone();
        let mut replica = state(Machine::Partition(image.clone()));
        for (i, c) in [(4, batch(2, 0)), (5, tick(11_200)), (6, tick(11_600))] {
            apply_cmd(&mut replica, log_id(i), c).expect("apply");
        }
        let Machine::Partition(p) = &replica.machine else {
            unreachable!()
        };
        assert_eq!(p.producers, image.producers);
        apply_cmd(&mut replica, log_id(7), batch(3, 0)).expect("apply");
        assert_eq!(
            partition(&replica).producers.get(3).map(|s| s.last_seen_ms),
            Some(11_600)
        );
    }
}
