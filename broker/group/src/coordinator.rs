//! The coordinator: every group's membership, epochs, target and current
//! assignments, and committed offsets, changed by heartbeats, commits and
//! `tick`, each change returned as [`GroupRecord`]s to persist. It does not
//! persist, time or schedule anything itself; the broker does.
//!
//! Reconciliation is incremental and revoke-before-grant: a partition
//! leaves a member's `assigned` for its `revoking` set when the target
//! moves it, and is granted to its new owner only once no other member has
//! it in `assigned ∪ revoking`, so no partition is ever owned twice.

use std::collections::{BTreeMap, BTreeSet};

use crate::assignor::{self, Assignment};
use crate::describe::{GroupDescription, GroupState, GroupSummary, MemberDescription};
use crate::record::{GroupRecord, GroupSnapshot, MemberSnapshot};
use crate::subscription::Matcher;
use crate::{
    CoordinatorConfig, GroupError, Subscription, TopicPartition, Topics, validate_group_name,
};

/// Longest member id, instance id, client id or client host, in bytes.
pub const ID_BYTES_MAX: usize = 255;

/// One heartbeat (join, leave or regular) of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// Never empty; the caller generates one on join.
    pub member_id: String,
    /// 0 = join (or rejoin after being fenced), -1 = leave, -2 = a static
    /// member's temporary leave, > 0 = regular heartbeat.
    pub member_epoch: i32,
    /// Static membership.
    pub instance_id: Option<String>,
    /// Required on join; `None` = unchanged.
    pub subscription: Option<Subscription>,
    /// Partitions the member owns now; `None` = unchanged.
    pub owned: Option<Vec<TopicPartition>>,
    /// 0 = default; else within the configured bounds.
    pub session_timeout_ms: u32,
    /// 0 = default.
    pub rebalance_timeout_ms: u32,
    /// Free text for describe, at most 255 bytes.
    pub client_id: String,
    /// Peer address, for describe.
    pub client_host: String,
}

/// The coordinator's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// The member id.
    pub member_id: String,
    /// The member's epoch now (-1 after a leave, -2 after a static leave).
    pub member_epoch: i32,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u32,
    /// Sorted; exactly the partitions the member may own now. It must stop
    /// consuming (commit, then release) any others it owns, and report
    /// that in `owned` next time.
    pub assignment: Vec<TopicPartition>,
}

#[derive(Clone, Debug)]
struct Member {
    instance_id: Option<String>,
    epoch: i32,
    left: bool,
    client_id: String,
    client_host: String,
    subscription: Subscription,
    matcher: Matcher,
    session_timeout_ms: u32,
    rebalance_timeout_ms: u32,
    assigned: BTreeSet<TopicPartition>,
    revoking: BTreeSet<TopicPartition>,
    session_deadline_ms: u64,
    /// Set when `revoking` became non-empty; the member is removed if it
    /// has not released everything by then.
    rebalance_deadline_ms: Option<u64>,
}

impl Member {
    fn owns(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains(tp) || self.revoking.contains(tp)
    }
}

#[derive(Clone, Debug, Default)]
struct Group {
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: Assignment,
    topics: Topics,
    offsets: BTreeMap<TopicPartition, u64>,
    last_change_ms: u64,
    hold: bool,
}

impl Group {
    fn new(now_ms: u64) -> Self {
        Self {
            last_change_ms: now_ms,
            ..Self::default()
        }
    }

    /// Subscribed topics (by any member) and their partition counts.
    fn subscribed(&self, topics: &Topics) -> Topics {
        topics
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.matcher.matches(t)))
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    }

    /// A new group epoch and the target computed for it.
    fn bump(&mut self, topics: &Topics, now_ms: u64) {
        self.group_epoch += 1;
        self.topics = self.subscribed(topics);
        let subscriptions = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.matcher.resolve(&self.topics)))
            .collect();
        self.target = assignor::assign(&subscriptions, &self.topics, &self.target);
        self.assignment_epoch = self.group_epoch;
        self.last_change_ms = now_ms;
    }

    /// Steps 1–4 of reconciliation for one member; true if its durable
    /// state changed.
    fn reconcile(
        &mut self,
        id: &str,
        owned: Option<&BTreeSet<TopicPartition>>,
        now_ms: u64,
    ) -> bool {
        let empty = BTreeSet::new();
        let target = self.target.get(id).unwrap_or(&empty);
        let Some(member) = self.members.get(id) else {
            return false;
        };
        let grantable: Vec<TopicPartition> = target
            .iter()
            .filter(|tp| !member.assigned.contains(*tp))
            .filter(|tp| !self.members.iter().any(|(o, m)| o != id && m.owns(tp)))
            .cloned()
            .collect();
        let revoked: Vec<TopicPartition> = member
            .assigned
            .iter()
            .filter(|tp| !target.contains(*tp))
            .cloned()
            .collect();
        let Some(member) = self.members.get_mut(id) else {
            return false;
        };
        let mut changed = false;
        if let Some(owned) = owned {
            let before = member.revoking.len();
            member.revoking.retain(|tp| owned.contains(tp));
            changed |= member.revoking.len() != before;
        }
        for tp in revoked {
            member.assigned.remove(&tp);
            member.revoking.insert(tp);
            changed = true;
        }
        for tp in grantable {
            member.revoking.remove(&tp);
            member.assigned.insert(tp);
            changed = true;
        }
        if changed {
            member.epoch = self.group_epoch;
        }
        if member.revoking.is_empty() {
            member.rebalance_deadline_ms = None;
        } else if member.rebalance_deadline_ms.is_none() {
            member.rebalance_deadline_ms = Some(now_ms + u64::from(member.rebalance_timeout_ms));
        }
        changed
    }

    /// Reconciles every member but `skip`; one pass suffices because
    /// reconciling without `owned` never frees a partition.
    fn reconcile_all(&mut self, skip: Option<&str>, now_ms: u64) -> bool {
        let ids: Vec<String> = self
            .members
            .keys()
            .filter(|id| Some(id.as_str()) != skip)
            .cloned()
            .collect();
        let mut changed = false;
        for id in ids {
            changed |= self.reconcile(&id, None, now_ms);
        }
        changed
    }

    fn remove_member(&mut self, id: &str) {
        self.members.remove(id);
        self.target.remove(id);
    }

    fn state(&self) -> GroupState {
        let empty = BTreeSet::new();
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.members.iter().any(|(id, m)| {
            !m.revoking.is_empty() || &m.assigned != self.target.get(id).unwrap_or(&empty)
        }) {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        }
    }

    fn target_of(&self, id: &str) -> Vec<TopicPartition> {
        self.target.get(id).into_iter().flatten().cloned().collect()
    }

    fn snapshot(&self, name: &str) -> GroupSnapshot {
        GroupSnapshot {
            group: name.to_owned(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberSnapshot {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    member_epoch: m.epoch,
                    left: m.left,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscription: m.subscription.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    assigned: m.assigned.iter().cloned().collect(),
                    revoking: m.revoking.iter().cloned().collect(),
                    target: self.target_of(id),
                })
                .collect(),
            topics: self.topics.clone(),
            last_change_ms: self.last_change_ms,
            hold: self.hold,
        }
    }

    /// Replaces the membership state with `s`; deadlines of members already
    /// known are kept, new ones wait for `restart_sessions`.
    fn apply_snapshot(&mut self, s: GroupSnapshot) {
        let mut members = BTreeMap::new();
        let mut target = Assignment::new();
        for m in s.members {
            let old = self.members.get(&m.member_id);
            let session_deadline_ms = old.map_or(u64::MAX, |o| o.session_deadline_ms);
            let rebalance_deadline_ms = if m.revoking.is_empty() {
                None
            } else {
                Some(
                    old.and_then(|o| o.rebalance_deadline_ms)
                        .unwrap_or(u64::MAX),
                )
            };
            target.insert(m.member_id.clone(), m.target.into_iter().collect());
            members.insert(
                m.member_id,
                Member {
                    instance_id: m.instance_id,
                    epoch: m.member_epoch,
                    left: m.left,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    matcher: Matcher::lenient(&m.subscription),
                    subscription: m.subscription,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    assigned: m.assigned.into_iter().collect(),
                    revoking: m.revoking.into_iter().collect(),
                    session_deadline_ms,
                    rebalance_deadline_ms,
                },
            );
        }
        self.group_epoch = s.group_epoch;
        self.assignment_epoch = s.assignment_epoch;
        self.members = members;
        self.target = target;
        self.topics = s.topics;
        self.last_change_ms = s.last_change_ms;
        self.hold = s.hold;
    }
}

/// The consumer-group coordinator of one or more coordinator partitions.
#[derive(Clone, Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<String, Group>,
}

/// Validated fields of a join.
struct Join {
    subscription: Subscription,
    matcher: Matcher,
    session_timeout_ms: u32,
    rebalance_timeout_ms: u32,
}

impl Coordinator {
    /// A coordinator with no groups.
    pub fn new(config: CoordinatorConfig) -> Self {
        Self {
            config,
            groups: BTreeMap::new(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// Applies one record read back from the log, in log order.
    pub fn replay(&mut self, r: GroupRecord) {
        match r {
            GroupRecord::Group(s) => {
                let group = self.groups.entry(s.group.clone()).or_default();
                group.apply_snapshot(s);
            }
            GroupRecord::Offsets {
                group,
                offsets,
                timestamp_ms,
            } => {
                let group = self
                    .groups
                    .entry(group)
                    .or_insert_with(|| Group::new(timestamp_ms));
                for (t, p, o) in offsets {
                    group.offsets.insert((t, p), o);
                }
                group.last_change_ms = timestamp_ms;
            }
            GroupRecord::Deleted { group } => {
                self.groups.remove(&group);
            }
        }
    }

    /// After replay, on becoming coordinator: every member's session
    /// deadline restarts at `now_ms` + its session timeout, and its
    /// rebalance deadline (if it has partitions to release) likewise.
    pub fn restart_sessions(&mut self, now_ms: u64) {
        for m in self
            .groups
            .values_mut()
            .flat_map(|g| g.members.values_mut())
        {
            m.session_deadline_ms = now_ms + u64::from(m.session_timeout_ms);
            m.rebalance_deadline_ms =
                (!m.revoking.is_empty()).then(|| now_ms + u64::from(m.rebalance_timeout_ms));
        }
    }

    /// A join, leave or regular heartbeat of a member of `group`.
    pub fn heartbeat(
        &mut self,
        group: &str,
        req: HeartbeatRequest,
        topics: &Topics,
        now_ms: u64,
    ) -> Result<(HeartbeatResponse, Vec<GroupRecord>), GroupError> {
        validate_group_name(group)?;
        validate_ids(&req)?;
        #[cfg(debug_assertions)]
        let before = self.groups.get(group).map(|g| g.snapshot(group));
        let (member_epoch, changed) = match req.member_epoch {
            0 => self.join(group, &req, topics, now_ms)?,
            -1 => self.leave(group, &req, topics, now_ms),
            -2 => self.static_leave(group, &req, now_ms)?,
            e if e > 0 => self.regular(group, &req, topics, now_ms)?,
            e => {
                return Err(GroupError::InvalidRequest(format!(
                    "member epoch {e} is not valid"
                )));
            }
        };
        let g = self.groups.get(group);
        #[cfg(debug_assertions)]
        if !changed {
            debug_assert_eq!(before, g.map(|g| g.snapshot(group)), "unreported change");
        }
        let assignment = g
            .and_then(|g| g.members.get(&req.member_id))
            .filter(|_| member_epoch > 0)
            .map(|m| m.assigned.iter().cloned().collect())
            .unwrap_or_default();
        // At least three heartbeats per session, whatever the broker's
        // interval: a member with a short session must not miss it.
        let heartbeat_interval_ms = g.and_then(|g| g.members.get(&req.member_id)).map_or(
            self.config.heartbeat_interval_ms,
            |m| {
                self.config
                    .heartbeat_interval_ms
                    .min((m.session_timeout_ms / 3).max(1))
            },
        );
        let records = match g {
            Some(g) if changed => vec![GroupRecord::Group(g.snapshot(group))],
            _ => Vec::new(),
        };
        let response = HeartbeatResponse {
            member_id: req.member_id,
            member_epoch,
            heartbeat_interval_ms,
            assignment,
        };
        Ok((response, records))
    }

    fn validate_join(&self, req: &HeartbeatRequest) -> Result<Join, GroupError> {
        let subscription = req
            .subscription
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                GroupError::InvalidRequest("a join needs a non-empty subscription".to_owned())
            })?;
        let matcher = Matcher::new(&subscription)?;
        let c = &self.config;
        let session_timeout_ms = match req.session_timeout_ms {
            0 => c.session_timeout_default_ms,
            t if (c.session_timeout_min_ms..=c.session_timeout_max_ms).contains(&t) => t,
            t => {
                return Err(GroupError::InvalidRequest(format!(
                    "session timeout {t} ms is outside [{}, {}] ms",
                    c.session_timeout_min_ms, c.session_timeout_max_ms
                )));
            }
        };
        let rebalance_timeout_ms = match req.rebalance_timeout_ms {
            0 => c.rebalance_timeout_default_ms,
            t => t,
        };
        Ok(Join {
            subscription,
            matcher,
            session_timeout_ms,
            rebalance_timeout_ms,
        })
    }

    /// Epoch 0: a new member, a rejoin, or a static member's replacement.
    fn join(
        &mut self,
        group: &str,
        req: &HeartbeatRequest,
        topics: &Topics,
        now_ms: u64,
    ) -> Result<(i32, bool), GroupError> {
        let join = self.validate_join(req)?;
        let id = req.member_id.as_str();
        let existing = self.groups.get(group);
        let known = existing.is_some_and(|g| g.members.contains_key(id));
        let replaced = req.instance_id.as_ref().and_then(|inst| {
            existing?
                .members
                .iter()
                .find(|(other, m)| other.as_str() != id && m.instance_id.as_ref() == Some(inst))
                .map(|(other, _)| other.clone())
        });
        if known && replaced.is_some() {
            return Err(GroupError::InvalidRequest(format!(
                "member {id:?} cannot take instance id {:?}, another member holds it",
                req.instance_id
            )));
        }
        let members = existing.map_or(0, |g| g.members.len());
        if !known && replaced.is_none() && members >= self.config.max_members as usize {
            return Err(GroupError::GroupFull {
                group: group.to_owned(),
                max: self.config.max_members,
            });
        }
        let g = self
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group::new(now_ms));
        let before = g.snapshot(group);
        let (mut member, new) = match (g.members.remove(id), replaced) {
            (Some(mut m), _) => {
                m.assigned.clear();
                m.revoking.clear();
                m.epoch = g.group_epoch;
                (m, false)
            }
            (None, Some(x)) => {
                let inherited = g.target.remove(&x).unwrap_or_default();
                g.target.insert(id.to_owned(), inherited);
                match g.members.remove(&x) {
                    Some(m) => (m, false),
                    None => unreachable!("instance owner {x:?} was found among the members"),
                }
            }
            (None, None) => (
                Member {
                    instance_id: None,
                    epoch: 0,
                    left: false,
                    client_id: String::new(),
                    client_host: String::new(),
                    subscription: Subscription::default(),
                    matcher: Matcher::default(),
                    session_timeout_ms: 0,
                    rebalance_timeout_ms: 0,
                    assigned: BTreeSet::new(),
                    revoking: BTreeSet::new(),
                    session_deadline_ms: 0,
                    rebalance_deadline_ms: None,
                },
                true,
            ),
        };
        let resubscribed = member.subscription != join.subscription;
        member.instance_id = req.instance_id.clone();
        member.left = false;
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.subscription = join.subscription;
        member.matcher = join.matcher;
        member.session_timeout_ms = join.session_timeout_ms;
        member.rebalance_timeout_ms = join.rebalance_timeout_ms;
        member.session_deadline_ms = now_ms + u64::from(join.session_timeout_ms);
        if member.revoking.is_empty() {
            member.rebalance_deadline_ms = None;
        }
        g.members.insert(id.to_owned(), member);
        g.last_change_ms = now_ms;
        if new || resubscribed {
            g.bump(topics, now_ms);
        }
        if new && let Some(m) = g.members.get_mut(id) {
            m.epoch = g.group_epoch;
        }
        g.reconcile(id, None, now_ms);
        g.reconcile_all(Some(id), now_ms);
        let epoch = g.members.get(id).map_or(0, |m| m.epoch);
        Ok((epoch, new || g.snapshot(group) != before))
    }

    /// Epoch -1: the member leaves; idempotent for unknown members.
    fn leave(
        &mut self,
        group: &str,
        req: &HeartbeatRequest,
        topics: &Topics,
        now_ms: u64,
    ) -> (i32, bool) {
        let Some(g) = self.groups.get_mut(group) else {
            return (-1, false);
        };
        if !g.members.contains_key(&req.member_id) {
            return (-1, false);
        }
        g.remove_member(&req.member_id);
        g.bump(topics, now_ms);
        g.reconcile_all(None, now_ms);
        (-1, true)
    }

    /// Epoch -2: a static member leaves for now, keeping its partitions
    /// until its session deadline.
    fn static_leave(
        &mut self,
        group: &str,
        req: &HeartbeatRequest,
        now_ms: u64,
    ) -> Result<(i32, bool), GroupError> {
        if req.instance_id.is_none() {
            return Err(GroupError::InvalidRequest(
                "epoch -2 is for static members (with an instance id)".to_owned(),
            ));
        }
        let Some(m) = self
            .groups
            .get_mut(group)
            .and_then(|g| g.members.get_mut(&req.member_id))
        else {
            return Ok((-2, false));
        };
        if m.instance_id.is_none() {
            return Err(GroupError::InvalidRequest(format!(
                "member {:?} joined without an instance id; leave with epoch -1",
                req.member_id
            )));
        }
        m.session_deadline_ms = now_ms + u64::from(m.session_timeout_ms);
        let changed = !m.left;
        m.left = true;
        Ok((-2, changed))
    }

    /// Epoch > 0: a regular heartbeat.
    fn regular(
        &mut self,
        group: &str,
        req: &HeartbeatRequest,
        topics: &Topics,
        now_ms: u64,
    ) -> Result<(i32, bool), GroupError> {
        let id = req.member_id.as_str();
        let unknown = || GroupError::UnknownMember {
            group: group.to_owned(),
            member: id.to_owned(),
        };
        let g = self.groups.get_mut(group).ok_or_else(unknown)?;
        let m = g.members.get(id).ok_or_else(unknown)?;
        let fenced = |detail: String| GroupError::FencedMemberEpoch {
            group: group.to_owned(),
            member: id.to_owned(),
            epoch: req.member_epoch,
            current: m.epoch,
            detail,
        };
        if m.left {
            return Err(fenced("the member left with epoch -2".to_owned()));
        }
        if req.member_epoch > m.epoch {
            return Err(fenced("epoch is ahead of the member's".to_owned()));
        }
        if req.member_epoch < m.epoch
            && let Some(tp) = req.owned.iter().flatten().find(|tp| !m.owns(tp))
        {
            return Err(fenced(format!(
                "stale epoch and {}/{} is no longer the member's",
                tp.0, tp.1
            )));
        }
        let resubscribe = match &req.subscription {
            Some(s) if *s != m.subscription => {
                if s.is_empty() {
                    return Err(GroupError::InvalidRequest(
                        "subscription must not be empty".to_owned(),
                    ));
                }
                Some((s.clone(), Matcher::new(s)?))
            }
            _ => None,
        };
        let mut changed = false;
        if let Some(m) = g.members.get_mut(id) {
            m.session_deadline_ms = now_ms + u64::from(m.session_timeout_ms);
            if let Some((s, matcher)) = resubscribe {
                m.subscription = s;
                m.matcher = matcher;
                changed = true;
            }
        }
        if changed {
            g.bump(topics, now_ms);
        }
        let owned: Option<BTreeSet<TopicPartition>> =
            req.owned.as_ref().map(|o| o.iter().cloned().collect());
        changed |= g.reconcile(id, owned.as_ref(), now_ms);
        if changed {
            g.reconcile_all(Some(id), now_ms);
        }
        Ok((g.members.get(id).map_or(0, |m| m.epoch), changed))
    }

    /// Ownership check for a fetch or a commit by a member: it exists,
    /// `0 < epoch <=` its epoch, and the partition is in its assigned or
    /// revoking set.
    pub fn check_member(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
        topic: &str,
        partition: u32,
    ) -> Result<(), GroupError> {
        let m = self
            .groups
            .get(group)
            .and_then(|g| g.members.get(member_id))
            .ok_or_else(|| GroupError::UnknownMember {
                group: group.to_owned(),
                member: member_id.to_owned(),
            })?;
        let fenced = |detail: String| GroupError::FencedMemberEpoch {
            group: group.to_owned(),
            member: member_id.to_owned(),
            epoch,
            current: m.epoch,
            detail,
        };
        if epoch <= 0 || epoch > m.epoch {
            return Err(fenced("epoch must be in (0, current]".to_owned()));
        }
        if !m.owns(&(topic.to_owned(), partition)) {
            return Err(fenced(format!("{topic}/{partition} is not the member's")));
        }
        Ok(())
    }

    /// Commits offsets, by a member (`Some((id, epoch))`, which must own
    /// every partition) or standalone (`None`, only while the group has no
    /// members; creates the group). All-or-nothing.
    pub fn commit(
        &mut self,
        group: &str,
        member: Option<(&str, i32)>,
        offsets: &[(String, u32, u64)],
        topics: &Topics,
        now_ms: u64,
    ) -> Result<Vec<GroupRecord>, GroupError> {
        validate_group_name(group)?;
        match member {
            Some((id, epoch)) => {
                for (t, p, _) in offsets {
                    self.check_member(group, id, epoch, t, *p)?;
                }
            }
            None => self.check_empty(group)?,
        }
        check_partitions(offsets, topics)?;
        let committed = self.groups.get(group).map(|g| &g.offsets);
        for (t, p, o) in offsets {
            if let Some(&c) = committed.and_then(|c| c.get(&(t.clone(), *p)))
                && *o < c
            {
                return Err(GroupError::OffsetRegression {
                    group: group.to_owned(),
                    topic: t.clone(),
                    partition: *p,
                    committed: c,
                    offset: *o,
                });
            }
        }
        Ok(self.apply_offsets(group, offsets, now_ms))
    }

    /// Sets offsets (backwards allowed) of a group without members;
    /// creates the group.
    pub fn reset_offsets(
        &mut self,
        group: &str,
        offsets: &[(String, u32, u64)],
        topics: &Topics,
        now_ms: u64,
    ) -> Result<Vec<GroupRecord>, GroupError> {
        validate_group_name(group)?;
        self.check_empty(group)?;
        check_partitions(offsets, topics)?;
        Ok(self.apply_offsets(group, offsets, now_ms))
    }

    fn check_empty(&self, group: &str) -> Result<(), GroupError> {
        match self.groups.get(group) {
            Some(g) if !g.members.is_empty() => Err(GroupError::GroupNotEmpty {
                group: group.to_owned(),
                members: g.members.len(),
            }),
            _ => Ok(()),
        }
    }

    fn apply_offsets(
        &mut self,
        group: &str,
        offsets: &[(String, u32, u64)],
        now_ms: u64,
    ) -> Vec<GroupRecord> {
        let record = GroupRecord::Offsets {
            group: group.to_owned(),
            offsets: offsets.to_vec(),
            timestamp_ms: now_ms,
        };
        self.replay(record.clone());
        vec![record]
    }

    /// Committed offsets of `group`; empty if unknown.
    pub fn committed(&self, group: &str) -> BTreeMap<TopicPartition, u64> {
        self.groups
            .get(group)
            .map(|g| g.offsets.clone())
            .unwrap_or_default()
    }

    /// Deletes a group without members, with its offsets.
    pub fn delete_group(&mut self, group: &str) -> Result<Vec<GroupRecord>, GroupError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| GroupError::UnknownGroup {
                group: group.to_owned(),
            })?;
        self.check_empty(group)?;
        debug_assert!(g.members.is_empty());
        self.groups.remove(group);
        Ok(vec![GroupRecord::Deleted {
            group: group.to_owned(),
        }])
    }

    /// Periodic work: expire sessions and overdue revocations, follow topic
    /// metadata changes, finish pending grants, delete empty groups past
    /// retention. Returns the records to persist.
    pub fn tick(&mut self, topics: &Topics, now_ms: u64) -> Vec<GroupRecord> {
        let mut records = Vec::new();
        let mut deleted = Vec::new();
        for (name, g) in &mut self.groups {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    now_ms >= m.session_deadline_ms
                        || m.rebalance_deadline_ms.is_some_and(|d| now_ms >= d)
                })
                .map(|(id, _)| id.clone())
                .collect();
            let mut changed = !expired.is_empty();
            for id in &expired {
                g.remove_member(id);
            }
            if changed || (!g.members.is_empty() && g.subscribed(topics) != g.topics) {
                g.bump(topics, now_ms);
                changed = true;
            }
            changed |= g.reconcile_all(None, now_ms);
            if g.members.is_empty()
                && now_ms.saturating_sub(g.last_change_ms) > self.config.offsets_retention_ms
            {
                deleted.push(name.clone());
            } else if changed {
                records.push(GroupRecord::Group(g.snapshot(name)));
            }
        }
        for name in deleted {
            self.groups.remove(&name);
            records.push(GroupRecord::Deleted { group: name });
        }
        records
    }

    /// The group's state, members and offsets; `None` if unknown.
    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let g = self.groups.get(group)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                member_epoch: m.epoch,
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                subscription: m.subscription.clone(),
                assigned: m.assigned.iter().cloned().collect(),
                revoking: m.revoking.iter().cloned().collect(),
                target: g.target_of(id),
                session_timeout_ms: m.session_timeout_ms,
            })
            .collect();
        Some(GroupDescription {
            group: group.to_owned(),
            state: g.state(),
            group_epoch: g.group_epoch,
            assignment_epoch: g.assignment_epoch,
            members,
            offsets: g.offsets.clone(),
            hold: g.hold,
        })
    }

    /// Every group, sorted by name.
    pub fn groups(&self) -> Vec<GroupSummary> {
        self.groups
            .iter()
            .map(|(name, g)| GroupSummary {
                group: name.clone(),
                state: g.state(),
                members: g.members.len(),
                group_epoch: g.group_epoch,
                hold: g.hold,
            })
            .collect()
    }

    /// Turns the group's retention hold on or off (creating the group, with
    /// no members and no offsets, if it does not exist). A holding group's
    /// committed offset of a partition keeps retention from deleting the
    /// records from that offset on (the broker bounds how much is held).
    pub fn set_hold(
        &mut self,
        group: &str,
        hold: bool,
        now_ms: u64,
    ) -> Result<Vec<GroupRecord>, GroupError> {
        validate_group_name(group)?;
        let g = self
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group::new(now_ms));
        if g.hold == hold {
            return Ok(Vec::new());
        }
        g.hold = hold;
        g.last_change_ms = now_ms;
        Ok(vec![GroupRecord::Group(g.snapshot(group))])
    }

    /// Per partition, the lowest offset committed by a holding group:
    /// retention keeps every record from it on.
    pub fn holds(&self) -> BTreeMap<TopicPartition, u64> {
        let mut out: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        for g in self.groups.values().filter(|g| g.hold) {
            for (tp, o) in &g.offsets {
                out.entry(tp.clone())
                    .and_modify(|h| *h = (*h).min(*o))
                    .or_insert(*o);
            }
        }
        out
    }
}

fn validate_ids(req: &HeartbeatRequest) -> Result<(), GroupError> {
    let fields = [
        ("member id", Some(&req.member_id)),
        ("instance id", req.instance_id.as_ref()),
        ("client id", Some(&req.client_id)),
        ("client host", Some(&req.client_host)),
    ];
    for (what, value) in fields {
        if let Some(v) = value
            && v.len() > ID_BYTES_MAX
        {
            return Err(GroupError::InvalidRequest(format!(
                "{what} is {} bytes, at most {ID_BYTES_MAX}",
                v.len()
            )));
        }
    }
    if req.member_id.is_empty() {
        return Err(GroupError::InvalidRequest(
            "member id must not be empty".to_owned(),
        ));
    }
    Ok(())
}

fn check_partitions(offsets: &[(String, u32, u64)], topics: &Topics) -> Result<(), GroupError> {
    let mut seen = BTreeSet::new();
    for (t, p, _) in offsets {
        if topics.get(t).is_none_or(|n| p >= n) {
            return Err(GroupError::UnknownTopicOrPartition {
                topic: t.clone(),
                partition: *p,
            });
        }
        if !seen.insert((t, p)) {
            return Err(GroupError::InvalidRequest(format!(
                "{t}/{p} appears twice in one commit"
            )));
        }
    }
    Ok(())
}
