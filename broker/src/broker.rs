//! The broker's core, shared by the gRPC and HTTP services: the topic
//! registry over the metadata store and the partitions' logs, and every
//! operation the services expose, in domain types (no prost, no JSON).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use bytes::Bytes;
use strata_proto::batch::{VerifiedBatch, admit_batch};

use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::log::{PartitionLog, SyncObserver, WriterConfig, WriterPool};
use crate::meta::{MetaStore, TopicRecord};
use crate::metrics::{Metrics, PartitionFigures, PartitionSource};
use crate::producer_id::ProducerIdKey;
use crate::raft::MetaCmd;
use crate::settings::{TopicSettings, validate_topic_name};
use crate::topic::{Acks, Partition, ProduceOutcome, Submitted};

/// A topic and its open partitions.
#[derive(Debug)]
pub struct Topic {
    /// What the metadata store holds.
    pub record: TopicRecord,
    /// Its partitions, by number.
    pub partitions: Vec<Arc<Partition>>,
}

/// Per-partition figures for describe and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: u32,
    /// First readable offset.
    pub log_start_offset: u64,
    /// End of the committed prefix.
    pub high_watermark: u64,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: usize,
}

/// The broker core.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    /// The threads that append and fsync for every partition here.
    writer_pool: WriterPool,
    meta: MetaStore,
    metrics: Metrics,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    cluster: Option<Arc<Cluster>>,
    /// The (gRPC, HTTP) addresses the listeners are bound to, once bound:
    /// what clients are told (a configured port 0 is not an address).
    bound: std::sync::OnceLock<(String, String)>,
    /// The Kafka address clients are told, once the listener is bound.
    kafka: std::sync::OnceLock<String>,
    /// The key that issues and checks producer ids: the metadata store's
    /// on a single node; in a cluster the metadata group's, once known
    /// here (it never changes once set).
    producer_key: std::sync::OnceLock<ProducerIdKey>,
}

/// A topic as the services describe it, in either mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    /// Name.
    pub name: String,
    /// Settings.
    pub settings: TopicSettings,
    /// Partitions, in order.
    pub partitions: Vec<PartitionView>,
}

/// A partition as the services describe it. Sizes and offsets come from
/// this node's replica (zero where it hosts none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// Its status on this node.
    pub status: PartitionStatus,
    /// The leader as last known (0: none yet).
    pub leader: u64,
    /// Replica node ids.
    pub replicas: Vec<u64>,
    /// Whether this node hosts a replica (else `status` holds no offsets).
    pub local: bool,
}

impl Broker {
    /// Opens the data directory: the metadata store, then every topic's
    /// partitions (recovering each log).
    pub fn open(config: BrokerConfig, metrics: Metrics) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(config.data_dir.join("topics")).map_err(|e| {
            BrokerError::InvalidConfig(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let meta = MetaStore::open(&config.data_dir.join("meta"))?;
        let producer_key = std::sync::OnceLock::new();
        let writer_pool = WriterPool::new(config.writer_threads).map_err(|e| {
            BrokerError::Storage(crate::log::LogError::Invalid(format!(
                "cannot start the writer threads: {e}"
            )))
        })?;
        let broker = Broker {
            config,
            writer_pool,
            meta,
            metrics,
            topics: RwLock::new(HashMap::new()),
            cluster: None,
            bound: std::sync::OnceLock::new(),
            kafka: std::sync::OnceLock::new(),
            producer_key,
        };
        for record in broker.meta.topics()? {
            let topic = broker.open_topic(record)?;
            broker
                .topics_mut()
                .insert(topic.record.name.clone(), Arc::new(topic));
        }
        Ok(broker)
    }

    /// The writer threads every partition of this node shares.
    pub fn writer_pool(&self) -> &WriterPool {
        &self.writer_pool
    }

    /// Makes this broker a cluster node: topics, offsets and producer ids
    /// then live in the metadata group, partitions in Raft groups.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The producer-id key, if known here. A single node's comes from its
    /// metadata store (created on first use); a cluster node's from the
    /// metadata group's image, waited for up to `wait` if not applied
    /// here yet.
    async fn producer_key(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<ProducerIdKey>, BrokerError> {
        if let Some(k) = self.producer_key.get() {
            return Ok(Some(*k));
        }
        let key = match &self.cluster {
            Some(c) => c.producer_id_key(wait).await,
            None => Some(self.meta.producer_id_key()?),
        };
        Ok(key.map(|k| *self.producer_key.get_or_init(|| k)))
    }

    /// Refuses an idempotent batch whose producer id this cluster did not
    /// issue (`UNKNOWN_PRODUCER`, nothing written).
    async fn check_producer_id(&self, id: u64) -> Result<(), BrokerError> {
        match self.producer_key(KEY_WAIT).await? {
            Some(k) if k.verify(id) => Ok(()),
            Some(_) => Err(BrokerError::UnknownProducer(id)),
            // A cluster node whose metadata has not caught up with the
            // key's creation in time: retriable, like a follower's lag.
            None => Err(BrokerError::NotLeader { leader: None }),
        }
    }

    /// The cluster, if this broker is a cluster node.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Records the addresses the listeners are bound to (once).
    pub fn set_bound(&self, grpc: std::net::SocketAddr, http: std::net::SocketAddr) {
        let _ = self.bound.set((grpc.to_string(), http.to_string()));
    }

    /// Records the Kafka address clients are told (once).
    pub fn set_kafka_advertised(&self, addr: std::net::SocketAddr) {
        let _ = self.kafka.set(addr.to_string());
    }

    /// The Kafka address clients are told; empty when the listener is off.
    pub fn kafka_advertised(&self) -> String {
        self.kafka.get().cloned().unwrap_or_default()
    }

    /// The (gRPC, HTTP) addresses clients are told: the bound ones once
    /// known, else the configured ones.
    pub fn advertised(&self) -> (String, String) {
        self.bound.get().cloned().unwrap_or_else(|| {
            (
                self.config.grpc_addr.to_string(),
                self.config.http_addr.to_string(),
            )
        })
    }

    /// Partitions of a topic.
    pub fn partition_count(&self, topic: &str) -> Result<u32, BrokerError> {
        match &self.cluster {
            Some(c) => c
                .with_meta(|m| m.topics.get(topic).map(|t| t.placement.len() as u32))
                .ok_or_else(|| BrokerError::UnknownTopic(topic.to_owned())),
            None => Ok(self.topic(topic)?.record.partitions),
        }
    }

    /// Describes topics (`names` empty: all), in either mode.
    pub fn topic_views(&self, names: &[String]) -> Result<Vec<TopicView>, BrokerError> {
        let Some(c) = &self.cluster else {
            let topics = if names.is_empty() {
                self.topics()
            } else {
                names
                    .iter()
                    .map(|n| self.topic(n))
                    .collect::<Result<_, _>>()?
            };
            let node = self.config.node_id;
            return Ok(topics
                .iter()
                .map(|t| TopicView {
                    name: t.record.name.clone(),
                    settings: t.record.settings.clone(),
                    partitions: self
                        .partition_status(t)
                        .into_iter()
                        .map(|status| PartitionView {
                            status,
                            leader: node,
                            replicas: vec![node],
                            local: true,
                        })
                        .collect(),
                })
                .collect());
        };
        let meta = c.meta_state();
        let hosted: HashMap<(String, u32), Arc<Partition>> = c
            .hosted()
            .into_iter()
            .map(|p| ((p.topic.clone(), p.id), p))
            .collect();
        let selected: Vec<_> = if names.is_empty() {
            meta.topics.values().collect()
        } else {
            names
                .iter()
                .map(|n| {
                    meta.topics
                        .get(n)
                        .ok_or_else(|| BrokerError::UnknownTopic(n.clone()))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(selected
            .into_iter()
            .map(|t| TopicView {
                name: t.name.clone(),
                settings: t.settings.clone(),
                partitions: t
                    .placement
                    .iter()
                    .enumerate()
                    .map(|(i, replicas)| {
                        let key = (t.name.clone(), i as u32);
                        let status = match hosted.get(&key) {
                            Some(p) => {
                                let (size_bytes, segments) = p.size();
                                PartitionStatus {
                                    partition: i as u32,
                                    log_start_offset: p.log_start_offset(),
                                    high_watermark: p.high_watermark(),
                                    size_bytes,
                                    segments,
                                }
                            }
                            None => PartitionStatus {
                                partition: i as u32,
                                log_start_offset: 0,
                                high_watermark: 0,
                                size_bytes: 0,
                                segments: 0,
                            },
                        };
                        // A replica's own view of its group is fresher than
                        // the leader last reported to the metadata group.
                        let live = hosted.get(&key).and_then(|p| {
                            use openraft::async_runtime::WatchReceiver;
                            p.raft()
                                .and_then(|r| r.metrics().borrow_watched().current_leader)
                        });
                        PartitionView {
                            local: hosted.contains_key(&key),
                            status,
                            leader: live
                                .or_else(|| meta.leaders.get(&key).map(|l| l.node))
                                .unwrap_or(0),
                            replicas: replicas.clone(),
                        }
                    })
                    .collect(),
            })
            .collect())
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configuration in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    fn topics_mut(&self) -> parking_lot::RwLockWriteGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.write()
    }

    fn topics_read(&self) -> parking_lot::RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.read()
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.config.data_dir.join("topics").join(name)
    }

    fn open_topic(&self, record: TopicRecord) -> Result<Topic, BrokerError> {
        let log_config = record.settings.to_log_config(&self.config.log);
        let writer = WriterConfig {
            queue_depth: self.config.writer_queue_depth,
            ..WriterConfig::default()
        };
        let open = |p: u32| -> Result<Arc<Partition>, BrokerError> {
            let log = PartitionLog::open_dir(
                self.topic_dir(&record.name).join(p.to_string()),
                log_config.clone(),
            )?;
            let fsync = self
                .metrics
                .fsync
                .with_label_values(&[record.name.as_str()]);
            let observer: SyncObserver = Arc::new(move |d| fsync.observe(d.as_secs_f64()));
            Ok(Arc::new(Partition::open(
                &record.name,
                p,
                self.config.node_id,
                log,
                &self.writer_pool,
                writer,
                Some(observer),
                self.config.producer_expiry(),
            )?))
        };
        // Opening (recovery, or creating the first segment) is mostly
        // waiting for fsyncs: several partitions at once.
        let threads = (record.partitions as usize).clamp(1, OPEN_THREADS);
        let mut opened: Vec<(u32, Result<Arc<Partition>, BrokerError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads as u32)
                .map(|k| {
                    let open = &open;
                    let n = record.partitions;
                    s.spawn(move || {
                        (k..n)
                            .step_by(threads)
                            .map(|p| (p, open(p)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        if opened.len() != record.partitions as usize {
            return Err(BrokerError::Storage(crate::log::LogError::Invalid(
                format!(
                    "opening topic {}: a partition's opening thread panicked",
                    record.name
                ),
            )));
        }
        opened.sort_by_key(|(p, _)| *p);
        let partitions = opened
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Result<Vec<_>, BrokerError>>()?;
        Ok(Topic { record, partitions })
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.topics_read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))
    }

    /// A partition by topic and number.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        if let Some(c) = &self.cluster {
            return c.partition(topic, partition);
        }
        let t = self.topic(topic)?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or(BrokerError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: t.record.partitions,
            })
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.topics_read().values().cloned().collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    /// Creates a topic. Nothing is created when any argument is invalid.
    /// Names starting with `__` are reserved for the broker's internal
    /// topics.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        settings: TopicSettings,
    ) -> Result<TopicView, BrokerError> {
        refuse_internal(name, "created")?;
        self.create_any_topic(name, partitions, replication_factor, settings)
            .await
    }

    /// Creates an internal topic (a `__` name) for the broker itself, with
    /// a replication factor of min(3, nodes).
    pub async fn create_internal_topic(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
    ) -> Result<TopicView, BrokerError> {
        let replication = match &self.cluster {
            Some(c) => c.with_meta(|m| m.nodes.len()).clamp(1, 3) as u32,
            None => 1,
        };
        self.create_any_topic(name, partitions, replication, settings)
            .await
    }

    async fn create_any_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        settings: TopicSettings,
    ) -> Result<TopicView, BrokerError> {
        if let Some(c) = &self.cluster {
            c.create_topic(name, partitions, replication_factor, settings)
                .await?;
            return self
                .topic_views(&[name.to_owned()])?
                .pop()
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()));
        }
        tokio::task::block_in_place(|| {
            self.create_local_topic(name, partitions, replication_factor, settings)
        })?;
        self.topic_views(&[name.to_owned()])?
            .pop()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))
    }

    fn create_local_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        settings: TopicSettings,
    ) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > self.config.partitions_max {
            return Err(BrokerError::InvalidConfig(format!(
                "partitions must be between 1 and {}, got {partitions}",
                self.config.partitions_max
            )));
        }
        if replication_factor > 1 {
            return Err(BrokerError::InvalidConfig(format!(
                "replication factor {replication_factor} needs a cluster; this single-node broker supports 1"
            )));
        }
        settings.validate(&self.config.log)?;
        let mut topics = self.topics_mut();
        if topics.contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_owned()));
        }
        let record = TopicRecord {
            name: name.to_owned(),
            partitions,
            settings,
        };
        // Leftovers of a topic of the same name deleted before a crash.
        let dir = self.topic_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                BrokerError::InvalidConfig(format!(
                    "cannot clear stale directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let topic = Arc::new(self.open_topic(record.clone())?);
        self.meta.put_topic(&record)?;
        topics.insert(name.to_owned(), topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Changes a topic's settings (only those given) and applies them live.
    pub async fn alter_topic(
        &self,
        name: &str,
        changes: &TopicSettings,
    ) -> Result<TopicView, BrokerError> {
        if let Some(c) = &self.cluster {
            let mut settings = c
                .meta_state()
                .topics
                .get(name)
                .map(|t| t.settings.clone())
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))?;
            settings.merge(changes);
            settings.validate(&self.config.log)?;
            c.meta_command(MetaCmd::AlterTopic {
                name: name.to_owned(),
                settings,
            })
            .await?;
        } else {
            self.alter_local_topic(name, changes)?;
        }
        self.topic_views(&[name.to_owned()])?
            .pop()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))
    }

    fn alter_local_topic(
        &self,
        name: &str,
        changes: &TopicSettings,
    ) -> Result<Arc<Topic>, BrokerError> {
        let mut topics = self.topics_mut();
        let old = topics
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))?;
        let mut settings = old.record.settings.clone();
        settings.merge(changes);
        settings.validate(&self.config.log)?;
        let log_config = settings.to_log_config(&self.config.log);
        let record = TopicRecord {
            settings,
            ..old.record.clone()
        };
        self.meta.put_topic(&record)?;
        for p in &old.partitions {
            p.set_config(log_config.clone())?;
        }
        let topic = Arc::new(Topic {
            record,
            partitions: old.partitions.clone(),
        });
        topics.insert(name.to_owned(), topic.clone());
        Ok(topic)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        refuse_internal(name, "deleted")?;
        if let Some(c) = &self.cluster {
            c.meta_command(MetaCmd::DeleteTopic {
                name: name.to_owned(),
            })
            .await?;
            return Ok(());
        }
        tokio::task::block_in_place(|| self.delete_local_topic(name))
    }

    fn delete_local_topic(&self, name: &str) -> Result<(), BrokerError> {
        let topic = self
            .topics_mut()
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))?;
        self.meta.delete_topic(name)?;
        for p in &topic.partitions {
            let _ = p.close();
        }
        let dir = self.topic_dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted topic's data; it is removed when the name is reused");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Status of each partition of a topic.
    pub fn partition_status(&self, topic: &Topic) -> Vec<PartitionStatus> {
        topic
            .partitions
            .iter()
            .map(|p| {
                let (size_bytes, segments) = p.size();
                PartitionStatus {
                    partition: p.id,
                    log_start_offset: p.log_start_offset(),
                    high_watermark: p.high_watermark(),
                    size_bytes,
                    segments,
                }
            })
            .collect()
    }

    /// Verifies and appends a batch.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<ProduceOutcome, BrokerError> {
        self.submit(topic, partition, batch).await?.wait(acks).await
    }

    /// Verifies a batch and queues it (see [`Partition::submit`]).
    pub async fn submit(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<Submitted, BrokerError> {
        refuse_internal(topic, "produced to")?;
        let p = self.partition(topic, partition)?;
        let verified: VerifiedBatch = admit_batch(batch, &p.batch_limits())?;
        let header = verified.header();
        if let Some(info) = header.producer {
            self.check_producer_id(info.producer_id).await?;
        }
        self.check_timestamp(header.max_timestamp_ms)?;
        p.submit(verified).await
    }

    /// Refuses a batch dated more than `message_timestamp_after_max_ms`
    /// ahead of this broker's clock (`INVALID_TIMESTAMP`, nothing written):
    /// time retention trusts record timestamps.
    pub fn check_timestamp(&self, max_timestamp_ms: i64) -> Result<(), BrokerError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let limit = i64::try_from(self.config.message_timestamp_after_max_ms).unwrap_or(i64::MAX);
        if max_timestamp_ms.saturating_sub(now) > limit {
            return Err(BrokerError::InvalidTimestamp {
                timestamp_ms: max_timestamp_ms,
                now_ms: now,
                after_max_ms: self.config.message_timestamp_after_max_ms,
            });
        }
        Ok(())
    }

    /// Issues an idempotent-producer id (epoch 0), on this node alone: 48
    /// random bits from the operating system and a tag keyed by the
    /// cluster's secret (`producer_id`), so producing depends only on its
    /// partitions' groups, ids cannot be guessed, and ids never issued are
    /// refused. In a cluster the first id ever asked for creates the key
    /// (one metadata write in the cluster's life).
    pub async fn init_producer(&self) -> Result<(u64, u16), BrokerError> {
        let key = match (
            self.producer_key(std::time::Duration::ZERO).await?,
            &self.cluster,
        ) {
            (Some(k), _) => k,
            (None, Some(c)) => {
                let new = ProducerIdKey::generate().map_err(|e| {
                    BrokerError::Storage(crate::log::LogError::Invalid(e.to_string()))
                })?;
                c.meta_command(MetaCmd::SetProducerIdKey(new)).await?;
                self.producer_key(KEY_WAIT)
                    .await?
                    .ok_or(BrokerError::NotLeader { leader: None })?
            }
            (None, None) => unreachable!("a single node always has its key"),
        };
        let id = key
            .issue()
            .map_err(|e| BrokerError::Storage(crate::log::LogError::Invalid(e.to_string())))?;
        Ok((id, 0))
    }

    /// Offsets a group committed before groups moved to
    /// `__consumer_offsets` (in the metadata group, or this single node's
    /// store), on topics and partitions that still exist: imported by the
    /// group's coordinator the first time it sees the group.
    pub fn legacy_offsets(&self, group: &str) -> Result<Vec<(String, u32, u64)>, BrokerError> {
        let all = match &self.cluster {
            Some(c) => c.with_meta(|m| {
                m.offsets
                    .range((group.to_owned(), String::new(), 0)..)
                    .take_while(|((g, _, _), _)| g == group)
                    .map(|((_, t, p), o)| (t.clone(), *p, *o))
                    .collect::<Vec<_>>()
            }),
            None => self.meta.group_offsets(group)?,
        };
        Ok(all)
    }

    /// The user topics (not `__` ones) and their partition counts, for
    /// the group coordinator. A cluster node whose metadata is not current
    /// answers [`BrokerError::CoordinatorLoading`]: a topic missing from
    /// stale metadata would look deleted and its partitions be revoked.
    pub fn topic_counts(&self) -> Result<BTreeMap<String, u32>, BrokerError> {
        let mut out = BTreeMap::new();
        match &self.cluster {
            Some(c) => {
                if !c.meta_current() {
                    return Err(BrokerError::CoordinatorLoading(
                        "this node's topic metadata has not caught up with the cluster".into(),
                    ));
                }
                c.with_meta(|m| {
                    for (name, t) in &m.topics {
                        if !is_internal(name) {
                            out.insert(name.clone(), t.placement.len() as u32);
                        }
                    }
                });
            }
            None => {
                for (name, t) in self.topics_read().iter() {
                    if !is_internal(name) {
                        out.insert(name.clone(), t.record.partitions);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs retention on every partition, keeping what consumer groups'
    /// retention holds pin (`holds`: the lowest offset a holding group
    /// committed, per partition; within `retention_hold_max_bytes` and
    /// `retention_hold_max_ms`), and forgets idle idempotent producers;
    /// returns the segments deleted.
    pub async fn enforce_retention(&self, holds: &HashMap<(String, u32), u64>) -> usize {
        let mut deleted = 0;
        let partitions: Vec<Arc<Partition>> = match &self.cluster {
            Some(c) => c.hosted(),
            None => self
                .topics()
                .iter()
                .flat_map(|t| t.partitions.clone())
                .collect(),
        };
        let expiry = self.config.producer_expiry();
        let limit = |v: i64| (v >= 0).then_some(v);
        for p in &partitions {
            let hold =
                holds
                    .get(&(p.topic.clone(), p.id))
                    .map(|offset| crate::log::RetentionHold {
                        offset: *offset,
                        max_bytes: limit(self.config.retention_hold_max_bytes).map(|b| b as u64),
                        max_ms: limit(self.config.retention_hold_max_ms),
                    });
            p.set_retention_hold(hold);
            match p.enforce_retention().await {
                Ok(r) => deleted += r.segments_deleted,
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.id, error = %e, "retention failed")
                }
            }
            if let Err(e) = p.expire_producers(expiry).await {
                tracing::warn!(topic = %p.topic, partition = p.id, error = %e, "expiring idle producers failed");
            }
        }
        deleted
    }

    /// Makes everything queued durable and stops the partition writers.
    pub fn shutdown(&self) {
        for t in self.topics() {
            for p in &t.partitions {
                if let Err(e) = p.close() {
                    tracing::error!(topic = %p.topic, partition = p.id, error = %e, "flush on shutdown failed");
                }
            }
        }
    }
}
/// How long a cluster node waits to learn the producer-id key it has not
/// applied yet.
const KEY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Threads that open one topic's partitions.
const OPEN_THREADS: usize = 16;

impl PartitionSource for Broker {
    fn partition_figures(&self) -> Vec<PartitionFigures> {
        if let Some(c) = &self.cluster {
            return c.partition_figures();
        }
        let mut out = Vec::new();
        for t in self.topics() {
            for (s, p) in self.partition_status(&t).into_iter().zip(&t.partitions) {
                out.push(PartitionFigures {
                    topic: t.record.name.clone(),
                    partition: s.partition,
                    size_bytes: s.size_bytes,
                    segments: s.segments as u64,
                    high_watermark: s.high_watermark,
                    log_start_offset: s.log_start_offset,
                    producers: p.producer_count() as u64,
                    held_bytes: p.held_bytes(),
                    replica: None,
                });
            }
        }
        out
    }

    fn raft_figures(&self) -> Option<crate::metrics::RaftFigures> {
        self.cluster.as_ref().map(|c| c.raft_figures())
    }
}

/// Whether `name` is an internal topic's (reserved prefix `__`).
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

/// Refuses a client's operation on an internal topic.
fn refuse_internal(name: &str, what: &str) -> Result<(), BrokerError> {
    if is_internal(name) {
        return Err(BrokerError::InvalidTopicName(format!(
            "{name:?}: names starting with \"__\" are internal topics of the broker and cannot be {what} by clients"
        )));
    }
    Ok(())
}
