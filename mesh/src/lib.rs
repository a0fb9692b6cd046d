//! The agent-mesh node runtime.
//!
//! A node joins its cluster through NATS, links to every peer with
//! `ractor_cluster`, and hosts some of the cluster's agents. Layout, in the
//! order data flows through a node:
//! - [`config`]: file, environment and flags, checked at start;
//! - [`discovery`]: announcements and goodbyes on NATS;
//! - [`signing`]: the HMAC that proves an announcement is the cluster's;
//! - [`membership`]: which nodes are alive, as this node sees it;
//! - [`link`]: one authenticated cluster link per pair of nodes;
//! - [`tls`]: mutual TLS of links with the cluster CA;
//! - [`nats_auth`]: credentials and TLS towards NATS;
//! - [`wire`]: the versioned frames links carry;
//! - [`directory`]: where an agent lives (live here, or placed);
//! - [`ownership`]: leases and single activation in NATS JetStream KV;
//! - `placement`: the topology's policies applied to this node's view;
//! - `rebalance`: agents handed off to joining nodes, and draining;
//! - [`supervision`]: agents as actors under a per-node supervisor;
//! - [`state`]: where an agent's state is loaded from and saved to;
//! - [`storage`]: the node's sled store, with group commit and fencing;
//! - [`snapshot`]: records exported to object storage, and restore;
//! - [`roster`]: every node that joined recently, for `meshctl status`;
//! - [`gateway`]: JSON over NATS request/reply, the way in from outside;
//! - [`subjects`]: every NATS subject in one place;
//! - [`metrics`]: what a node counts about itself;
//! - [`status`]: the cluster at a glance, for `meshctl status`;
//! - [`health`]: `/metrics`, `/healthz` and `/readyz` over HTTP;
//! - [`army`]: keeps this node's worker agents pulling tasks;
//! - [`node`]: the parts put together, and how a message is routed.
//!
//! The binary codec lives in [`actors::codec`], the lowest crate that needs
//! it, so agents and links share one encoding.

pub mod army;
pub mod config;
pub mod directory;
pub mod discovery;
pub mod gateway;
pub mod health;
pub mod link;
pub mod membership;
pub mod metrics;
pub mod nats_auth;
pub mod node;
pub mod ownership;
mod placement;
mod rebalance;
pub mod roster;
pub mod signing;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod storage;
pub mod subjects;
pub mod supervision;
pub mod tls;
mod trace;
pub mod wire;

pub use config::{Config, ConfigError, NodeArgs};
pub use node::Node;

use std::time::Duration;

/// This build's release, as announced to peers.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a first connection to NATS may take before giving up.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the first reachable of `urls`.
///
/// Once connected, the client reconnects by itself for as long as the
/// process lives; only the first connection can fail.
pub async fn connect_nats(
    urls: &[String],
    client_name: &str,
    auth: &nats_auth::NatsAuth,
) -> anyhow::Result<async_nats::Client> {
    connect_nats_with(urls, client_name, auth, |options| options).await
}

/// [`connect_nats`], with `tune` adjusting the connection options (such as
/// an event callback) before connecting.
pub async fn connect_nats_with(
    urls: &[String],
    client_name: &str,
    auth: &nats_auth::NatsAuth,
    tune: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
) -> anyhow::Result<async_nats::Client> {
    let addrs = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("invalid NATS URL: {e}"))?;
    let options = auth
        .options()
        .await?
        .name(client_name)
        .connection_timeout(NATS_CONNECT_TIMEOUT);
    tune(options)
        .connect(addrs)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach NATS at {}: {e}", urls.join(",")))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Log targets whose debug and trace events carry handshake digests or
/// link payloads.
pub const SECRET_BEARING_TARGETS: [&str; 3] = [
    "ractor_cluster::node::node_session",
    "ractor_cluster::net::session",
    "ractor_cluster::node::client",
];

/// Installs the global `tracing` subscriber (binaries only): `RUST_LOG`
/// selects what is logged, `info` when unset; [`SECRET_BEARING_TARGETS`]
/// never log below info.
pub fn install_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // ractor_cluster logs handshake states (challenge digests included) and
    // whole link messages at debug level: never let them out, whatever
    // RUST_LOG says.
    for quiet in SECRET_BEARING_TARGETS {
        filter = filter.add_directive(format!("{quiet}=info").parse().expect("a valid directive"));
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
