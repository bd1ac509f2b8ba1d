//! `strata group list|describe|offsets|commit|reset|delete`: the groups of
//! the cluster (state, members, epoch, coordinator); one group's members
//! with their assignments and epochs and its partitions with lag; committed
//! offsets with lag; committing one offset (standalone: the group must have
//! no members); moving offsets to earliest, latest, an offset or a time
//! (backwards too, in a group without members); deleting an empty group.

use anyhow::Context;
use clap::Subcommand;
use strata_client::{Admin, OffsetSpec, Seek};

use crate::render::{self, GroupOffsetRow};

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// List every group: state, members, group epoch, coordinator node.
    List,
    /// Show one group: its members (ids, epochs, subscriptions, assigned
    /// and revoking partitions) and each partition's committed offset,
    /// high watermark, lag and owner.
    Describe {
        /// Group.
        group: String,
    },
    /// Delete a group without members, with its committed offsets.
    Delete {
        /// Group.
        group: String,
    },
    /// Turn the group's retention hold on or off: while on, retention keeps
    /// the records the group has not consumed, up to the broker's
    /// retention_hold_max_bytes per partition and retention_hold_max_ms.
    Hold {
        /// Group.
        group: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Show committed offsets (of one group, or all) with lag.
    Offsets {
        /// Group (default: all groups).
        group: Option<String>,
    },
    /// Commit an offset (the next offset to consume) for a group without
    /// members (a member commits its own partitions).
    Commit {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        #[arg(long, short)]
        partition: u32,
        /// Offset.
        #[arg(long, short)]
        offset: u64,
    },
    /// Move a group's committed offsets (backwards too); the group must
    /// have no members.
    Reset {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Target: earliest, latest, an offset, or timestamp:<ms>.
        #[arg(long)]
        to: String,
        /// Partitions (default all).
        #[arg(long, short)]
        partition: Vec<u32>,
    },
}

pub async fn run(broker: &str, json: bool, cmd: GroupCmd) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    match cmd {
        GroupCmd::List => {
            let listing = admin.list_groups().await?;
            render::print_group_list(&listing, json);
            if !listing.unavailable_partitions.is_empty() {
                eprintln!(
                    "warning: coordinator partitions {:?} did not answer; their groups are missing",
                    listing.unavailable_partitions
                );
            }
        }
        GroupCmd::Describe { group } => {
            let d = admin.describe_group(&group).await?;
            render::print_group_description(&d, json);
        }
        GroupCmd::Hold { group, state } => {
            let on = state == "on";
            admin.set_group_hold(&group, on).await?;
            if json {
                render::print_json(&serde_json::json!({ "group": group, "hold": on }));
            } else {
                println!("group {group}: retention hold {state}");
            }
        }
        GroupCmd::Delete { group } => {
            admin.delete_group(&group).await?;
            if json {
                render::print_json(&serde_json::json!({ "deleted": group }));
            } else {
                println!("deleted group {group}");
            }
        }
        GroupCmd::Offsets { group } => {
            let mut rows = Vec::new();
            for g in admin.list_groups().await?.offsets {
                if group.as_ref().is_some_and(|want| *want != g.group) {
                    continue;
                }
                for &(partition, committed) in &g.offsets {
                    let high_watermark = admin
                        .list_offsets(&g.topic, partition, OffsetSpec::Latest)
                        .await
                        .map(|x| x.high_watermark)
                        .ok();
                    rows.push(GroupOffsetRow {
                        group: g.group.clone(),
                        topic: g.topic.clone(),
                        partition,
                        committed,
                        high_watermark,
                    });
                }
            }
            render::print_group_offsets(&rows, json);
        }
        GroupCmd::Commit {
            group,
            topic,
            partition,
            offset,
        } => {
            admin.commit(&group, &topic, &[(partition, offset)]).await?;
            if !json {
                println!("committed {group} {topic}/{partition} at {offset}");
            }
        }
        GroupCmd::Reset {
            group,
            topic,
            to,
            partition,
        } => {
            let target = parse_target(&to)?;
            let d = admin.describe_topic(&topic).await?;
            let parts = if partition.is_empty() {
                (0..d.partitions).collect()
            } else {
                partition
            };
            let mut offsets = Vec::new();
            for p in parts {
                let o = match target {
                    Seek::Offset(o) => o,
                    Seek::Earliest => {
                        admin
                            .list_offsets(&topic, p, OffsetSpec::Earliest)
                            .await?
                            .offset
                    }
                    Seek::Latest => {
                        admin
                            .list_offsets(&topic, p, OffsetSpec::Latest)
                            .await?
                            .offset
                    }
                    Seek::Timestamp(t) => {
                        admin
                            .list_offsets(&topic, p, OffsetSpec::Timestamp(t))
                            .await?
                            .offset
                    }
                };
                offsets.push((p, o));
            }
            admin.reset_offsets(&group, &topic, &offsets).await?;
            render::print_group_reset(&group, &topic, &offsets, json);
        }
    }
    Ok(())
}

/// Parses `--to`: earliest, latest, an offset, or timestamp:<ms>.
fn parse_target(to: &str) -> anyhow::Result<Seek> {
    Ok(match to {
        "earliest" => Seek::Earliest,
        "latest" => Seek::Latest,
        t => match t.strip_prefix("timestamp:") {
            Some(ms) => Seek::Timestamp(
                ms.parse()
                    .with_context(|| format!("bad timestamp in {to:?}"))?,
            ),
            None => Seek::Offset(t.parse().with_context(|| {
                format!("--to must be earliest, latest, an offset or timestamp:<ms>, not {to:?}")
            })?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert_eq!(parse_target("earliest").ok(), Some(Seek::Earliest));
        assert_eq!(parse_target("latest").ok(), Some(Seek::Latest));
        assert_eq!(parse_target("42").ok(), Some(Seek::Offset(42)));
        assert_eq!(
            parse_target("timestamp:1700000000000").ok(),
            Some(Seek::Timestamp(1_700_000_000_000))
        );
        assert!(parse_target("timestamp:soon").is_err());
        assert!(parse_target("-1").is_err());
    }
}
