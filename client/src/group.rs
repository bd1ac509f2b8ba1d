//! `GroupConsumer`: a member of a consumer group. The broker's group
//! coordinator assigns partitions (KIP-848's consumer protocol, described
//! in docs/consumer-groups.md); this type heartbeats from [`poll`], adopts
//! each new assignment incrementally — it releases a revoked partition
//! (committing its position first, by default) before the coordinator
//! grants it to another member, and starts a granted one at the group's
//! committed offset — and tells a [`RebalanceListener`] what moved.
//!
//! Heartbeats ride on `poll`: a member that stops polling for longer than
//! its session timeout is removed and its partitions move to the others
//! (as Kafka's `max.poll.interval.ms`). A member fenced by the coordinator
//! (a zombie: its session expired while it was stopped) loses its
//! partitions without committing, and rejoins.
//!
//! [`poll`]: GroupConsumer::poll

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use strata_proto::pb;
use tokio::time::Instant;

use crate::admin::{Admin, Router, connect};
use crate::consumer::{ConsumerConfig, ConsumerRecord, Fetcher, ResetPolicy, reset_position};
use crate::convert;
use crate::error::{ClientError, ErrorCode, Result};
use crate::types::TopicPartition;

/// Between heartbeats that failed for a retriable reason.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// How long one group request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a group member.
#[derive(Clone, Debug)]
pub struct GroupConsumerConfig {
    /// The group.
    pub group: String,
    /// Topics to consume (may be combined with `pattern`).
    pub topics: Vec<String>,
    /// A regular expression matched against whole topic names.
    pub pattern: Option<String>,
    /// Static membership: a member restarted under the same instance id
    /// gets its partitions back without a rebalance.
    pub instance_id: Option<String>,
    /// Removed from the group after this long without a heartbeat. `None`:
    /// the broker's default (10 s).
    pub session_timeout: Option<Duration>,
    /// How long a revoked partition may take to be released. `None`: the
    /// broker's default (30 s).
    pub rebalance_timeout: Option<Duration>,
    /// Where a partition without a committed offset starts.
    pub reset: ResetPolicy,
    /// Commit a partition's position before releasing it (default true),
    /// so the next owner starts where this one stopped.
    pub commit_on_revoke: bool,
    /// Shown by `strata group describe`.
    pub client_id: String,
    /// Fetch sizes and buffering.
    pub fetch: ConsumerConfig,
}

impl GroupConsumerConfig {
    /// A member of `group` subscribed to `topics`, with defaults.
    pub fn new(group: &str, topics: &[&str]) -> Self {
        GroupConsumerConfig {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            pattern: None,
            instance_id: None,
            session_timeout: None,
            rebalance_timeout: None,
            reset: ResetPolicy::Earliest,
            commit_on_revoke: true,
            client_id: "strata-client".to_owned(),
            fetch: ConsumerConfig::default(),
        }
    }
}

/// Told what the member gains and loses; every method runs inside
/// [`GroupConsumer::poll`] (or `close`), before the member reports the
/// change to the coordinator.
pub trait RebalanceListener: Send {
    /// Partitions granted to this member; fetching them has started.
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions this member releases (their positions were committed
    /// first when `commit_on_revoke` is on).
    fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions lost without a commit: the member was fenced or removed.
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.on_revoked(partitions);
    }
}

/// A consumer-group member.
pub struct GroupConsumer {
    router: Router,
    /// The broker group requests go to now (any node relays them to the
    /// coordinator).
    addr: String,
    config: GroupConsumerConfig,
    fetcher: Fetcher,
    member_id: String,
    epoch: i32,
    interval: Duration,
    next_heartbeat: Instant,
    owned: BTreeSet<TopicPartition>,
    report_owned: bool,
    listener: Option<Box<dyn RebalanceListener>>,
    rejoins: u64,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group)
            .field("member_id", &self.member_id)
            .field("epoch", &self.epoch)
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

fn is_fenced(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::FencedMemberEpoch | ErrorCode::UnknownMemberId)
    )
}

impl GroupConsumer {
    /// Connects to the broker at `addr` and joins the group (the first
    /// heartbeat; partitions arrive over the next polls).
    pub async fn join(addr: &str, config: GroupConsumerConfig) -> Result<Self> {
        if config.topics.is_empty() && config.pattern.is_none() {
            return Err(ClientError::Invalid(
                "a group member needs topics or a pattern to subscribe to".into(),
            ));
        }
        let client = connect(addr).await?;
        let router = Router::new(addr, client);
        router.refresh().await;
        let mut c = GroupConsumer {
            fetcher: Fetcher::new(router.clone(), &config.fetch),
            router,
            addr: addr.to_owned(),
            config,
            member_id: String::new(),
            epoch: 0,
            interval: Duration::from_secs(1),
            next_heartbeat: Instant::now(),
            owned: BTreeSet::new(),
            report_owned: true,
            listener: None,
            rejoins: 0,
        };
        c.heartbeat().await?;
        Ok(c)
    }

    /// Sets the listener told of assignments and revocations.
    pub fn set_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// The member id the coordinator issued (empty before the first join
    /// answer).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The member epoch of the last heartbeat answer.
    pub fn member_epoch(&self) -> i32 {
        self.epoch
    }

    /// How many times this member was fenced or removed and rejoined.
    pub fn rejoins(&self) -> u64 {
        self.rejoins
    }

    /// The partitions this member owns now.
    pub fn assignment(&self) -> &BTreeSet<TopicPartition> {
        &self.owned
    }

    /// The next offset of each owned partition.
    pub fn positions(&self) -> &BTreeMap<TopicPartition, u64> {
        self.fetcher.positions()
    }

    /// Moves an owned partition's position back to `offset`, locally (see
    /// [`crate::Consumer::rewind`]); a partition not owned, or already at or
    /// before `offset`, is left alone.
    pub fn rewind(&mut self, tp: &TopicPartition, offset: u64) {
        if self.owned.contains(tp)
            && self
                .fetcher
                .positions()
                .get(tp)
                .is_some_and(|p| *p > offset)
        {
            self.fetcher.assign(tp.clone(), offset);
        }
    }

    /// Waits up to `timeout` for records of the owned partitions,
    /// heartbeating (and adopting new assignments) as it goes.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() >= self.next_heartbeat {
                self.heartbeat().await?;
            }
            let until = deadline.min(self.next_heartbeat);
            let wait = until.saturating_duration_since(Instant::now());
            match self.fetcher.poll(wait).await {
                Ok(records) if !records.is_empty() => return Ok(records),
                Ok(_) => {}
                Err(e) if is_fenced(&e) => {
                    tracing::info!(group = %self.config.group, error = %e, "fenced while fetching; rejoining");
                    self.lose_all();
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Commits the positions of the owned partitions, as this member.
    pub async fn commit(&mut self) -> Result<()> {
        let owned: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        self.commit_partitions(&owned).await
    }

    async fn commit_partitions(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let mut by_topic: BTreeMap<&str, Vec<(u32, u64)>> = BTreeMap::new();
        for tp in partitions {
            if let Some(o) = self.fetcher.positions().get(tp) {
                by_topic.entry(&tp.0).or_default().push((tp.1, *o));
            }
        }
        let admin = self.admin()?;
        for (topic, offsets) in by_topic {
            let r = tokio::time::timeout(
                REQUEST_TIMEOUT,
                admin.commit_as_member(
                    &self.config.group,
                    &self.member_id,
                    self.epoch,
                    topic,
                    &offsets,
                ),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Unavailable(format!(
                    "commit not answered within {REQUEST_TIMEOUT:?}"
                )))
            });
            if let Err(e) = r {
                self.rotate(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Commits (with `commit_on_revoke`), releases every partition and
    /// leaves the group (a static member leaves for its session timeout
    /// only, keeping its partitions until then).
    pub async fn close(mut self) -> Result<()> {
        let owned: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        if self.config.commit_on_revoke && self.epoch > 0 {
            self.commit_partitions(&owned).await?;
        }
        if let Some(l) = &mut self.listener {
            l.on_revoked(&owned);
        }
        for tp in &owned {
            self.fetcher.unassign(tp);
        }
        if self.epoch > 0 {
            let leave = if self.config.instance_id.is_some() {
                -2
            } else {
                -1
            };
            let req = self.request(leave);
            self.send(req).await?;
        }
        Ok(())
    }

    /// An admin on the broker group requests go to now.
    fn admin(&self) -> Result<Admin> {
        Ok(Admin::from_client(self.router.client(&self.addr)?))
    }

    /// Moves group requests to another broker after a retriable `err`.
    fn rotate(&mut self, err: &ClientError) {
        if err.is_retriable()
            && let Some(next) = self.router.next(&self.addr, err)
        {
            self.addr = next;
        }
    }

    fn request(&self, epoch: i32) -> pb::GroupHeartbeatRequest {
        let joining = epoch == 0;
        let owned: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        pb::GroupHeartbeatRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: epoch,
            instance_id: self.config.instance_id.clone().unwrap_or_default(),
            subscribed_topics: if joining {
                self.config.topics.clone()
            } else {
                Vec::new()
            },
            subscribed_pattern: if joining {
                self.config.pattern.clone().unwrap_or_default()
            } else {
                String::new()
            },
            owned: convert::partitions_to_pb(&owned),
            owned_set: joining || self.report_owned,
            session_timeout_ms: self
                .config
                .session_timeout
                .map_or(0, |d| d.as_millis() as u32),
            rebalance_timeout_ms: self
                .config
                .rebalance_timeout
                .map_or(0, |d| d.as_millis() as u32),
            client_id: self.config.client_id.clone(),
        }
    }

    /// Sends one heartbeat to the current broker, moving to another on a
    /// retriable failure.
    async fn send(&mut self, req: pb::GroupHeartbeatRequest) -> Result<pb::GroupHeartbeatResponse> {
        let client = self.router.client(&self.addr)?;
        let r = tokio::time::timeout(REQUEST_TIMEOUT, client.clone().group_heartbeat(req)).await;
        let err = match r {
            Ok(Ok(resp)) => return Ok(resp.into_inner()),
            Ok(Err(s)) => ClientError::from(s),
            Err(_) => ClientError::Unavailable(format!(
                "heartbeat not answered within {REQUEST_TIMEOUT:?}"
            )),
        };
        self.rotate(&err);
        Err(err)
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let req = self.request(self.epoch);
        match self.send(req).await {
            Ok(resp) => {
                self.member_id = resp.member_id;
                self.epoch = resp.member_epoch;
                self.interval =
                    Duration::from_millis(u64::from(resp.heartbeat_interval_ms.max(50)));
                self.report_owned = false;
                self.next_heartbeat = Instant::now() + self.interval;
                let target: BTreeSet<TopicPartition> = convert::partitions_from_pb(resp.assignment)
                    .into_iter()
                    .collect();
                self.reconcile(target).await
            }
            Err(e) if is_fenced(&e) => {
                tracing::info!(group = %self.config.group, error = %e, "fenced by the coordinator; rejoining");
                self.lose_all();
                Ok(())
            }
            Err(e) if e.is_retriable() => {
                tracing::debug!(group = %self.config.group, error = %e, "heartbeat failed; retrying");
                self.next_heartbeat = Instant::now() + RETRY_DELAY;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Drops every partition without committing and rejoins at the next
    /// heartbeat, now.
    fn lose_all(&mut self) {
        let lost: Vec<TopicPartition> = std::mem::take(&mut self.owned).into_iter().collect();
        for tp in &lost {
            self.fetcher.unassign(tp);
        }
        if let Some(l) = &mut self.listener
            && !lost.is_empty()
        {
            l.on_lost(&lost);
        }
        self.member_id.clear();
        self.epoch = 0;
        self.report_owned = true;
        self.rejoins += 1;
        self.next_heartbeat = Instant::now();
    }

    /// Adopts `target`: releases what is no longer in it, starts what is
    /// new, and heartbeats again at once to report the change.
    async fn reconcile(&mut self, target: BTreeSet<TopicPartition>) -> Result<()> {
        let revoked: Vec<TopicPartition> = self.owned.difference(&target).cloned().collect();
        if !revoked.is_empty() {
            if self.config.commit_on_revoke
                && let Err(e) = self.commit_partitions(&revoked).await
            {
                if is_fenced(&e) {
                    self.lose_all();
                    return Ok(());
                }
                tracing::warn!(group = %self.config.group, error = %e, "commit before releasing partitions failed");
            }
            if let Some(l) = &mut self.listener {
                l.on_revoked(&revoked);
            }
            for tp in &revoked {
                self.fetcher.unassign(tp);
                self.owned.remove(tp);
            }
            self.report_owned = true;
        }
        let added: Vec<TopicPartition> = target.difference(&self.owned).cloned().collect();
        if !added.is_empty() {
            let admin = self.admin()?;
            let committed = match admin.committed_all(&self.config.group).await {
                Ok(c) => c,
                Err(e) => {
                    self.rotate(&e);
                    return Err(e);
                }
            };
            let committed: BTreeMap<TopicPartition, u64> = committed
                .into_iter()
                .flat_map(|g| {
                    let topic = g.topic;
                    g.offsets
                        .into_iter()
                        .map(move |(p, o)| ((topic.clone(), p), o))
                })
                .collect();
            self.fetcher.set_member(Some(pb::FetchMember {
                group: self.config.group.clone(),
                member_id: self.member_id.clone(),
                member_epoch: self.epoch,
            }));
            for tp in &added {
                let start = match committed.get(tp) {
                    Some(o) => *o,
                    None => {
                        reset_position(
                            &admin,
                            self.config.reset,
                            Some(&self.config.group),
                            &tp.0,
                            tp.1,
                        )
                        .await?
                    }
                };
                self.fetcher.assign(tp.clone(), start);
                self.owned.insert(tp.clone());
            }
            if let Some(l) = &mut self.listener {
                l.on_assigned(&added);
            }
            self.report_owned = true;
        }
        if self.report_owned {
            self.next_heartbeat = Instant::now();
        }
        Ok(())
    }
}
