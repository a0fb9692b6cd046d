//! The roster: every node that joined the cluster recently, gone or not.
//!
//! Membership only knows the nodes that are alive now, and each node only
//! while it runs, so a zone whose nodes all died would vanish from every
//! view. The roster keeps them: each node writes its entry, `<name>`, in the
//! JetStream bucket `mesh-<cluster>-roster` when it starts, every
//! [`REFRESH`] and when it leaves. The bucket is replicated like the
//! ownership bucket, so it outlives any node, and anyone with NATS access
//! (`meshctl status`) reads it without asking a node.
//!
//! An entry not rewritten for [`FORGET_AFTER`] is dropped by JetStream
//! itself: a node removed for good leaves the roster a day later. Liveness
//! does not come from here (a write every [`REFRESH`] is too coarse):
//! `meshctl status` asks the nodes themselves and uses the roster for the
//! ones that do not answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::node::Shared;

/// How often a node rewrites its entry.
pub const REFRESH: Duration = Duration::from_secs(10);
/// How long an entry survives without being rewritten.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The name of a cluster's roster bucket.
pub fn bucket_name(cluster: &str) -> String {
    format!("mesh-{cluster}-roster")
}

/// What the roster says about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The node's name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// The kind of host.
    pub kind: String,
    /// The release it runs.
    pub software: String,
    /// When the process started, in Unix milliseconds.
    pub started_ms: u64,
    /// When it last wrote this entry, in Unix milliseconds.
    pub seen_ms: u64,
    /// When its last snapshot was written, if any since it started.
    #[serde(default)]
    pub snapshot_ms: Option<u64>,
    /// How many agents were live on it at that moment.
    #[serde(default)]
    pub agents: u64,
    /// Whether it left gracefully (a crashed node never sets this).
    #[serde(default)]
    pub left: bool,
}

/// The time now in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Opens (or creates) the roster bucket of `cluster`.
pub async fn open(
    nats: &async_nats::Client,
    cluster: &str,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let config = kv::Config {
        bucket: bucket_name(cluster),
        history: 1,
        num_replicas: replicas,
        max_age: FORGET_AFTER,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    crate::state::open_kv_with(nats, config).await
}

/// Every entry of the roster, by name. Unreadable entries are skipped with
/// a warning, so one bad value hides one node, not the cluster.
pub async fn read(bucket: &kv::Store) -> anyhow::Result<Vec<Entry>> {
    let mut keys = bucket.keys().await?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key?);
    }
    let mut entries = Vec::new();
    for name in names {
        let Some(value) = bucket.get(name.as_str()).await? else {
            continue;
        };
        match serde_json::from_slice::<Entry>(&value) {
            Ok(entry) => entries.push(entry),
            Err(e) => warn!(key = %name, error = %e, "unreadable roster entry skipped"),
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// This node's entry as of now.
fn entry(shared: &Shared, left: bool) -> Entry {
    let snapshot = shared.last_snapshot_ms.load(Ordering::Relaxed);
    Entry {
        name: shared.config.name.clone(),
        zone: shared.config.zone.clone(),
        kind: shared.config.kind.to_string(),
        software: crate::SOFTWARE_VERSION.to_owned(),
        started_ms: shared.started_ms,
        seen_ms: now_ms(),
        snapshot_ms: (snapshot > 0).then_some(snapshot),
        agents: shared.directory.len() as u64,
        left,
    }
}

/// Writes this node's entry; failures are logged, never fatal.
pub(crate) async fn write(bucket: &kv::Store, shared: &Shared, left: bool) {
    let value = serde_json::to_vec(&entry(shared, left)).expect("roster entries encode");
    if let Err(e) = bucket.put(shared.config.name.as_str(), value.into()).await {
        debug!(error = %e, "cannot write the roster entry");
    }
}

/// Writes this node's entry now, every [`REFRESH`] and after each
/// snapshot, until aborted.
pub(crate) async fn refresh_forever(bucket: kv::Store, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.roster_wake.notified() => {}
        }
        write(&bucket, &shared, false).await;
    }
}
