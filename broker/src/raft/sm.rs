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
//! point; applying producer updates is idempotent and monotonic, so
//! replaying the entries after the trim point over it is harmless.
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
    /// Idempotent producers; a batch's outcome is its base offset.
    pub producers: ProducerTable<u64>,
}

/// What a group's state machine holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Machine {
    /// A partition group.
    Partition(PartitionState),
    /// The metadata group.
    Meta(MetaState),
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
        let mut state = SmState {
            applied: None,
            memberships: Vec::new(),
            machine,
            current: None,
            pinned: None,
            checkpointed: (None, std::time::Instant::now()),
        };
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

    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        write_atomic(
            self.shared.storage.as_ref(),
            &self.shared.dir.join(SNAPSHOT_FILE),
            &encode(&(meta, data))?,
        )
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
            if let Some(info) = b.header().producer {
                p.producers.remember(info, b.record_count(), base_offset);
            }
            Reply::Appended { base_offset }
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
        self.maybe_checkpoint()?;
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
