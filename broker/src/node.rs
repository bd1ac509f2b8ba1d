//! Wires a broker together and runs it: opens the data directory, serves
//! gRPC and HTTP, runs retention on a timer, and on SIGINT/SIGTERM stops
//! accepting requests, makes everything queued durable and exits.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::raft::NodeInfo;
use crate::raft::network::PeerService;
use crate::service::{grpc::GrpcService, http};

/// Why the broker could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Opening the data failed.
    #[error(transparent)]
    Broker(#[from] crate::error::BrokerError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// A server failed.
    #[error("server failed: {0}")]
    Serve(String),
}

/// Reset streams the Raft listener tolerates per connection before it
/// closes it (see `http2_max_pending_accept_reset_streams`).
const RAFT_RESET_STREAMS_MAX: usize = 100_000;

/// Runs the broker until `shutdown` completes (e.g. a signal).
pub async fn run(
    config: BrokerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate().map_err(NodeError::Config)?;
    let (grpc_addr, http_addr) = (config.grpc_addr, config.http_addr);
    let retention_every = Duration::from_millis(config.retention_check_ms);
    let message_max = config.grpc_message_bytes_max;
    let data_dir = config.data_dir.clone();
    let b = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Broker::open(config, Metrics::new()))
            .await
            .map_err(|e| NodeError::Serve(e.to_string()))??
    };
    let grpc_listener = TcpListener::bind(grpc_addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: grpc_addr,
            source,
        })?;
    let http_listener = TcpListener::bind(http_addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: http_addr,
            source,
        })?;
    let grpc_local = grpc_listener
        .local_addr()
        .map_err(|e| NodeError::Serve(e.to_string()))?;
    let http_local = http_listener
        .local_addr()
        .map_err(|e| NodeError::Serve(e.to_string()))?;
    b.set_bound(grpc_local, http_local);
    let kafka_listener = if config.kafka_enabled {
        let l = TcpListener::bind(config.kafka_addr)
            .await
            .map_err(|source| NodeError::Bind {
                addr: config.kafka_addr,
                source,
            })?;
        let local = l
            .local_addr()
            .map_err(|e| NodeError::Serve(e.to_string()))?;
        b.set_kafka_advertised(config.kafka_advertised_addr.unwrap_or(local));
        Some((l, local))
    } else {
        None
    };
    let kafka_line = kafka_listener
        .as_ref()
        .map_or_else(String::new, |(_, a)| format!(" kafka={a}"));
    let mut raft_server = None;
    let mut raft_line = String::new();
    let b = match config.raft_addr {
        None => b,
        Some(raft_addr) => {
            let raft_listener =
                TcpListener::bind(raft_addr)
                    .await
                    .map_err(|source| NodeError::Bind {
                        addr: raft_addr,
                        source,
                    })?;
            let raft_local = raft_listener
                .local_addr()
                .map_err(|e| NodeError::Serve(e.to_string()))?;
            let peers = crate::config::parse_peers(&config.peers).map_err(NodeError::Config)?;
            let cluster = Cluster::start(
                ClusterConfig {
                    node_id: config.node_id,
                    node: NodeInfo {
                        raft_addr: raft_local.to_string(),
                        grpc_addr: grpc_local.to_string(),
                        http_addr: http_local.to_string(),
                    },
                    peers,
                },
                config.clone(),
                b.metrics().clone(),
                b.writer_pool().clone(),
            )
            .await?;
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(raft_listener),
                |s| {
                    s.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                },
            );
            let svc = PeerService::new(cluster.groups(), cluster.hibernation());
            raft_server = Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(Duration::from_secs(1)))
                    .http2_keepalive_timeout(Some(Duration::from_secs(2)))
                    .initial_stream_window_size(Some(8 << 20))
                    .initial_connection_window_size(Some(32 << 20))
                    // One connection per peer carries every group's RPCs;
                    // when a loaded peer lets many of them time out, the
                    // client resets those streams. h2's default (20 reset
                    // streams pending) then tears down the connection and
                    // with it every group's traffic.
                    .http2_max_pending_accept_reset_streams(Some(RAFT_RESET_STREAMS_MAX))
                    .add_service(svc)
                    .serve_with_incoming(incoming),
            ));
            raft_line = format!(" raft={raft_local} node={}", config.node_id);
            b.with_cluster(cluster)
        }
    };
    let broker = Arc::new(b);
    tracing::info!(data_dir = %data_dir.display(), grpc = %grpc_local, http = %http_local, "strata-broker serving");
    // A line tests and scripts can wait for.
    println!("strata-broker ready grpc={grpc_local} http={http_local}{raft_line}{kafka_line}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let service = GrpcService::new(
        broker.clone(),
        crate::coordinator::GroupCoordinators::start(broker.clone()),
    );
    let kafka = kafka_listener.map(|(listener, local)| {
        let k = crate::kafka::Kafka::new(
            broker.clone(),
            service.clone(),
            config.kafka_advertised_addr.unwrap_or(local),
        );
        tokio::spawn(k.serve(listener))
    });
    let retention = {
        let broker = broker.clone();
        let service = service.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(retention_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The last complete view of the groups' retention holds: a
            // round whose coordinators cannot all be asked uses it, and
            // until there is one retention waits (it cannot know what a
            // group still needs).
            let mut holds: Option<std::collections::HashMap<(String, u32), u64>> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        match service.collect_holds().await {
                            Some(h) => holds = Some(h),
                            None if holds.is_some() => {
                                tracing::warn!("some group coordinators did not answer; retention uses the last known holds");
                            }
                            None => {
                                tracing::warn!("group coordinators did not answer; retention waits until the groups' holds are known");
                                continue;
                            }
                        }
                        let b = broker.clone();
                        let h = holds.clone().unwrap_or_default();
                        // Retention deletes files: keep it off the
                        // request-serving workers' hot path.
                        let _ = tokio::spawn(async move { b.enforce_retention(&h).await }).await;
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    };

    let svc = strata_proto::pb::strata_server::StrataServer::new(service)
        .max_decoding_message_size(message_max)
        .max_encoding_message_size(message_max);
    let grpc = {
        let mut stop = stop_rx.clone();
        // Accepted sockets get TCP_NODELAY: with Nagle, a response can wait
        // for the client's delayed ACK (40 ms).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            |s| {
                s.inspect(|s| {
                    if let Err(e) = s.set_nodelay(true) {
                        tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                    }
                })
            },
        );
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            // Large flow-control windows: batches are up to megabytes.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .add_service(crate::service::rich_status::RichStatus(svc))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.changed().await;
            })
    };
    let http = {
        let mut stop = stop_rx.clone();
        let c = broker.config();
        http::serve(
            http_listener,
            http::router(broker.clone()),
            Duration::from_millis(c.http_read_timeout_ms),
            c.http_connections_max,
            async move {
                let _ = stop.changed().await;
            },
        )
    };
    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(http);
    shutdown.await;
    tracing::info!("shutting down: draining requests and flushing partitions");
    let _ = stop_tx.send(true);
    if let Some(k) = &kafka {
        k.abort(); // no new Kafka connections
    }
    // Long-polling fetch streams keep servers' graceful shutdown waiting;
    // give in-flight requests a bounded time.
    let drain = async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("requests still open after 5 s; closing them");
    }
    let _ = retention.await;
    if let Some(c) = broker.cluster() {
        c.shutdown().await;
    }
    if let Some(t) = raft_server {
        t.abort();
    }
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.shutdown())
        .await
        .map_err(|e| NodeError::Serve(e.to_string()))?;
    tracing::info!("stopped cleanly");
    Ok(())
}
