//! `strata cluster status|init|add-node|remove-node|transfer-leader|reassign`:
//! cluster operations through `Admin`; the status view is rendered in
//! `render`.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use strata_client::Admin;

use crate::render;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every node (up or down), the metadata leader, and every partition's
    /// leader, replicas and their lag in records behind the leader.
    Status,
    /// Form a new cluster from nodes started with --node-id and --raft-addr
    /// but without --peers: run once, against any one of them.
    Init {
        /// Every initial voter as id=raft_host:port, comma-separated
        /// (e.g. 1=10.0.0.1:7071,2=10.0.0.2:7071,3=10.0.0.3:7071).
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<String>,
    },
    /// Add a started node (run with --node-id N --raft-addr H:P, no
    /// --peers) to the cluster as a metadata voter. Partitions move to it
    /// only with `strata cluster reassign`.
    AddNode {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new node's Raft address (host:port).
        #[arg(long)]
        raft_addr: String,
    },
    /// Remove a node that hosts no partition replicas (reassign them first).
    RemoveNode {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Move a partition's (or, without --topic, the metadata group's)
    /// leadership to another replica.
    TransferLeader {
        /// Topic (default: the metadata group).
        #[arg(long, requires = "partition")]
        topic: Option<String>,
        /// Partition.
        #[arg(long, short)]
        partition: Option<u32>,
        /// Node id of the new leader (a voter of the group).
        #[arg(long)]
        to: u64,
    },
    /// Move a partition to a new set of replicas (1 to 5 distinct nodes).
    /// New replicas catch up, from a snapshot if retention already deleted
    /// the start of the log, before the old ones leave.
    Reassign {
        /// Topic.
        topic: String,
        /// Partition.
        #[arg(long, short)]
        partition: u32,
        /// The new replicas, comma-separated node ids.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
    },
}

pub async fn run(broker: &str, json: bool, cmd: ClusterCmd) -> anyhow::Result<()> {
    let admin = Admin::connect(broker).await?;
    match cmd {
        ClusterCmd::Status => {
            let st = admin.cluster_status().await?;
            render::print_cluster_status(&st, json);
        }
        ClusterCmd::Init { peers } => {
            let fresh = admin.init_cluster(parse_peers(&peers)?).await?;
            if json {
                render::print_json(&serde_json::json!({ "initialized": fresh }));
            } else if fresh {
                println!("cluster initialized with {} voters", peers.len());
            } else {
                println!("this node already belongs to a cluster; nothing changed");
            }
        }
        ClusterCmd::AddNode { id, raft_addr } => {
            admin.add_node(id, &raft_addr).await?;
            if !json {
                println!("node {id} ({raft_addr}) joined the cluster");
            }
        }
        ClusterCmd::RemoveNode { id } => {
            admin.remove_node(id).await?;
            if !json {
                println!("node {id} removed from the cluster");
            }
        }
        ClusterCmd::TransferLeader {
            topic,
            partition,
            to,
        } => {
            let group = topic.as_deref().map(|t| (t, partition.unwrap_or(0)));
            let already = admin.transfer_leader(group, to).await?;
            let what = match group {
                Some((t, p)) => format!("{t}/{p}"),
                None => "the metadata group".to_owned(),
            };
            if json {
                render::print_json(
                    &serde_json::json!({"group": what, "leader": to, "moved": !already}),
                );
            } else if already {
                println!("{what} is already led by node {to}; nothing to do");
            } else {
                println!("{what} is now led by node {to}");
            }
        }
        ClusterCmd::Reassign {
            topic,
            partition,
            replicas,
        } => {
            admin.reassign(&topic, partition, &replicas).await?;
            if !json {
                println!("{topic}/{partition} now on nodes {replicas:?}");
            }
        }
    }
    Ok(())
}

/// Parses `--peers` entries `id=host:port` into node id → Raft address.
fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut map = BTreeMap::new();
    for p in peers {
        let (id, addr) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("peer {p:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| anyhow!("peer {p:?}: {id:?} is not a node id"))?;
        if map.insert(id, addr.trim().to_owned()).is_some() {
            bail!("node {id} is listed twice in --peers");
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_duplicates_are_refused() {
        let ok = parse_peers(&["1=a:1".into(), " 2 = b:2 ".into()]).ok();
        assert_eq!(
            ok,
            Some(BTreeMap::from([
                (1, "a:1".to_owned()),
                (2, "b:2".to_owned())
            ]))
        );
        assert!(parse_peers(&["1=a:1".into(), "1=b:2".into()]).is_err());
        assert!(parse_peers(&["a:1".into()]).is_err());
        assert!(parse_peers(&["x=a:1".into()]).is_err());
    }
}
