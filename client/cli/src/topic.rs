//! `strata topic create|list|describe|alter|delete`: topic administration
//! through `Admin`. Output is shaped in `render`.

use clap::{Args, Subcommand};
use strata_client::{Admin, TopicConfig};

use crate::render;

/// Topic settings as flags; those not given stay `None` (the broker's
/// default, or in `alter`, unchanged).
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Delete segments whose newest record is older than this (ms); -1 keeps forever.
    #[arg(long)]
    retention_ms: Option<i64>,
    /// Delete the oldest segments while a partition holds more than this (bytes); -1: no limit.
    #[arg(long)]
    retention_bytes: Option<i64>,
    /// Roll segments at this size (bytes).
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Roll segments at this age (ms).
    #[arg(long)]
    segment_ms: Option<i64>,
    /// Largest batch accepted (bytes).
    #[arg(long)]
    max_batch_bytes: Option<u32>,
}

impl From<ConfigArgs> for TopicConfig {
    fn from(a: ConfigArgs) -> Self {
        TopicConfig {
            retention_ms: a.retention_ms,
            retention_bytes: a.retention_bytes,
            segment_bytes: a.segment_bytes,
            segment_ms: a.segment_ms,
            max_batch_bytes: a.max_batch_bytes,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        /// Topic name: letters, digits, '.', '_', '-'; at most 249 characters.
        name: String,
        /// Number of partitions.
        #[arg(long, short, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (1 on a single node).
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List topics.
    List,
    /// Show a topic's settings and partitions (offsets, size, segments).
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change a topic's settings (only those given).
    Alter {
        /// Topic name.
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

pub async fn run(broker: &str, json: bool, cmd: TopicCmd) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    match cmd {
        TopicCmd::Create {
            name,
            partitions,
            replication_factor,
            config,
        } => {
            let d = admin
                .create_topic(&name, partitions, replication_factor, config.into())
                .await?;
            if json {
                render::print_json(&render::describe_json(&d));
            } else {
                println!(
                    "created topic {} with {} partition(s)",
                    d.name, d.partitions
                );
            }
        }
        TopicCmd::List => {
            let topics = admin.list_topics().await?;
            if json {
                render::print_json(&serde_json::json!(
                    topics.iter().map(render::describe_json).collect::<Vec<_>>()
                ));
            } else {
                render::print_topic_list(&topics);
            }
        }
        TopicCmd::Describe { name } => {
            let d = admin.describe_topic(&name).await?;
            render::print_topic(&d, json);
        }
        TopicCmd::Alter { name, config } => {
            let d = admin.alter_topic(&name, config.into()).await?;
            render::print_topic(&d, json);
        }
        TopicCmd::Delete { name } => {
            admin.delete_topic(&name).await?;
            if json {
                render::print_json(&serde_json::json!({"deleted": name}));
            } else {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
}
