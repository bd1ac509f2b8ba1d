//! The metadata group's state: nodes, topics and their placement,
//! partition leaders as last reported, committed consumer-group offsets and
//! the producer-id counter. Applying a command is a pure function of the
//! state and the command, so every replica computes the same image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use openraft::async_runtime::WatchReceiver;

use super::{Cmd, NodeInfo, Raft, Reply, Tc};
use crate::error::BrokerError;
use crate::producer_id::ProducerIdKey;
use crate::settings::TopicSettings;

/// A topic as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Name.
    pub name: String,
    /// Per-topic settings.
    pub settings: TopicSettings,
    /// Replication factor asked for at creation.
    pub replication: u32,
    /// Replica node ids of every partition (the first is the preferred
    /// leader).
    pub placement: Vec<Vec<u64>>,
    /// The placement at creation: these replicas initialize the group.
    pub initial: Vec<Vec<u64>>,
}

/// The last leader a partition's group reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Leader node.
    pub node: u64,
    /// Its Raft term.
    pub term: u64,
}

/// A metadata command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCmd {
    /// Adds or updates a node's addresses.
    RegisterNode {
        /// Node id.
        id: u64,
        /// Addresses.
        info: NodeInfo,
    },
    /// Removes a node from the node list (its replicas must be moved first).
    RemoveNode {
        /// Node id.
        id: u64,
    },
    /// Creates a topic with the given placement.
    CreateTopic(TopicMeta),
    /// Replaces a topic's settings.
    AlterTopic {
        /// Topic.
        name: String,
        /// New settings (already merged).
        settings: TopicSettings,
    },
    /// Deletes a topic and its offsets.
    DeleteTopic {
        /// Topic.
        name: String,
    },
    /// Sets a partition's replica list.
    AssignReplicas {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// New replicas.
        replicas: Vec<u64>,
    },
    /// Commits consumer-group offsets.
    CommitOffsets {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// (partition, next offset to read).
        offsets: Vec<(u32, u64)>,
    },
    /// Allocates the next producer id (answered with `Reply::Done(id)`).
    /// No longer proposed (nodes issue random ids on their own); kept so
    /// that logs written before still decode and apply alike.
    AllocProducerId,
    /// Records the leader of a partition (ignored unless the term is newer).
    SetLeader {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Leader.
        leader: LeaderRecord,
    },
    /// Records the leaders of many partitions at once, each as
    /// [`MetaCmd::SetLeader`] would (a node reports the leaderships it won
    /// in one write, not one per partition). Appended last: older
    /// commands keep their encoding.
    SetLeaders(Vec<(String, u32, LeaderRecord)>),
    /// Sets the cluster's producer-id key, unless one is set already (the
    /// first proposed wins; it never changes after). Appended last.
    SetProducerIdKey(ProducerIdKey),
}

/// Why a metadata command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The topic exists.
    TopicExists(String),
    /// No such topic.
    UnknownTopic(String),
    /// Anything else, with the reason.
    Invalid(String),
}

impl From<Refusal> for BrokerError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::TopicExists(t) => BrokerError::TopicExists(t),
            Refusal::UnknownTopic(t) => BrokerError::UnknownTopic(t),
            Refusal::Invalid(why) => BrokerError::InvalidRequest(why),
        }
    }
}

/// The metadata image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Nodes by id.
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Reported leaders by (topic, partition).
    pub leaders: BTreeMap<(String, u32), LeaderRecord>,
    /// Committed offsets by (group, topic, partition).
    pub offsets: BTreeMap<(String, String, u32), u64>,
    /// Producer ids handed out so far (by `AllocProducerId`, no longer
    /// proposed).
    pub producer_ids: u64,
    /// The secret that issues and checks producer ids (`producer_id`),
    /// set once by the first node asked for a producer id.
    pub producer_id_key: Option<ProducerIdKey>,
}

impl MetaState {
    /// Why node `id` cannot leave the cluster: it still hosts a replica.
    pub fn check_removable(&self, id: u64) -> Result<(), Refusal> {
        match self.topics.values().find_map(|t| {
            t.placement
                .iter()
                .position(|r| r.contains(&id))
                .map(|p| (t.name.as_str(), p))
        }) {
            Some((t, p)) => Err(Refusal::Invalid(format!(
                "node {id} still hosts {t}/{p}; reassign its replicas first"
            ))),
            None => Ok(()),
        }
    }

    /// Applies a command.
    pub fn apply(&mut self, cmd: &MetaCmd) -> Reply {
        match cmd {
            MetaCmd::RegisterNode { id, info } => {
                self.nodes.insert(*id, info.clone());
            }
            MetaCmd::RemoveNode { id } => {
                if let Err(refusal) = self.check_removable(*id) {
                    return Reply::Refused(refusal);
                }
                self.nodes.remove(id);
            }
            MetaCmd::CreateTopic(t) => {
                if self.topics.contains_key(&t.name) {
                    return Reply::Refused(Refusal::TopicExists(t.name.clone()));
                }
                self.topics.insert(t.name.clone(), t.clone());
            }
            MetaCmd::AlterTopic { name, settings } => match self.topics.get_mut(name) {
                Some(t) => t.settings = settings.clone(),
                None => return Reply::Refused(Refusal::UnknownTopic(name.clone())),
            },
            MetaCmd::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return Reply::Refused(Refusal::UnknownTopic(name.clone()));
                }
                self.offsets.retain(|(_, t, _), _| t != name);
                self.leaders.retain(|(t, _), _| t != name);
            }
            MetaCmd::AssignReplicas {
                topic,
                partition,
                replicas,
            } => {
                let Some(t) = self.topics.get_mut(topic) else {
                    return Reply::Refused(Refusal::UnknownTopic(topic.clone()));
                };
                let Some(r) = t.placement.get_mut(*partition as usize) else {
                    return Reply::Refused(Refusal::Invalid(format!(
                        "topic {topic:?} has no partition {partition}"
                    )));
                };
                if let Some(unknown) = replicas.iter().find(|n| !self.nodes.contains_key(n)) {
                    return Reply::Refused(Refusal::Invalid(format!("unknown node {unknown}")));
                }
                *r = replicas.clone();
            }
            MetaCmd::CommitOffsets {
                group,
                topic,
                offsets,
            } => {
                for (p, o) in offsets {
                    self.offsets.insert((group.clone(), topic.clone(), *p), *o);
                }
            }
            MetaCmd::SetProducerIdKey(key) => {
                self.producer_id_key.get_or_insert(*key);
            }
            MetaCmd::AllocProducerId => {
                self.producer_ids += 1;
                return Reply::Done(self.producer_ids);
            }
            MetaCmd::SetLeader {
                topic,
                partition,
                leader,
            } => {
                self.set_leader(topic, *partition, *leader);
            }
            MetaCmd::SetLeaders(all) => {
                for (topic, partition, leader) in all {
                    self.set_leader(topic, *partition, *leader);
                }
            }
        }
        Reply::Done(0)
    }

    fn set_leader(&mut self, topic: &str, partition: u32, leader: LeaderRecord) {
        let key = (topic.to_owned(), partition);
        if self.leaders.get(&key).is_none_or(|l| l.term < leader.term)
            && self.topics.contains_key(topic)
        {
            self.leaders.insert(key, leader);
        }
    }

    /// Replicas of a partition, if it exists.
    pub fn replicas(&self, topic: &str, partition: u32) -> Option<&[u64]> {
        self.topics
            .get(topic)
            .and_then(|t| t.placement.get(partition as usize))
            .map(|r| r.as_slice())
    }
}

/// Places `partitions` partitions of `replication` replicas each on
/// distinct nodes, spreading preferred leaders round-robin from `start`.
pub fn place(nodes: &[u64], partitions: u32, replication: u32, start: usize) -> Vec<Vec<u64>> {
    (0..partitions as usize)
        .map(|p| {
            (0..replication as usize)
                .map(|r| nodes[(start + p + r) % nodes.len()])
                .collect()
        })
        .collect()
}

/// Writes `cmd` through this node's metadata Raft (it must lead; else
/// the error says where the leader is). Forwarded writes land here too.
/// A node registers only while it is a member: a removed node that has
/// not noticed cannot put itself back.
pub async fn write_here(
    meta: &Raft,
    cmd: MetaCmd,
) -> Result<(Reply, u64), openraft::errors::RaftError<Tc, openraft::errors::ClientWriteError<Tc>>> {
    if let MetaCmd::RegisterNode { id, .. } = &cmd {
        let member = meta
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(id)
            .is_some();
        if !member {
            return Ok((
                Reply::Refused(Refusal::Invalid(format!(
                    "node {id} is not a member of the cluster"
                ))),
                0,
            ));
        }
    }
    meta.client_write(Cmd::Meta(cmd))
        .await
        .map(|r| (r.data, r.log_id.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_uses_distinct_nodes_and_rotates_leaders() {
        let p = place(&[1, 2, 3], 4, 3, 0);
        assert_eq!(p[0], vec![1, 2, 3]);
        assert_eq!(p[1], vec![2, 3, 1]);
        for r in &p {
            let mut s = r.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 3);
        }
    }

    #[test]
    fn refused_commands_change_nothing() {
        let mut s = MetaState::default();
        s.apply(&MetaCmd::RegisterNode {
            id: 1,
            info: NodeInfo::default(),
        });
        let t = TopicMeta {
            name: "t".into(),
            settings: TopicSettings::default(),
            replication: 1,
            placement: vec![vec![1]],
            initial: vec![vec![1]],
        };
        assert_eq!(s.apply(&MetaCmd::CreateTopic(t.clone())), Reply::Done(0));
        let before = s.clone();
        assert!(matches!(
            s.apply(&MetaCmd::CreateTopic(t)),
            Reply::Refused(Refusal::TopicExists(_))
        ));
        assert!(matches!(
            s.apply(&MetaCmd::RemoveNode { id: 1 }),
            Reply::Refused(_)
        ));
        assert!(matches!(
            s.apply(&MetaCmd::AssignReplicas {
                topic: "t".into(),
                partition: 0,
                replicas: vec![9]
            }),
            Reply::Refused(_)
        ));
        assert_eq!(s, before);
        assert_eq!(s.apply(&MetaCmd::AllocProducerId), Reply::Done(1));
        assert_eq!(s.apply(&MetaCmd::AllocProducerId), Reply::Done(2));
    }
}
