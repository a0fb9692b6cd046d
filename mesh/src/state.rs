//! Agent state: where an activating agent's state comes from, and how a
//! change is saved before the reply.
//!
//! Loading, for a kind that keeps state:
//! 1. the node's own store (the same host, after a restart);
//! 2. for `replicated` kinds, the replicated bucket in NATS JetStream;
//! 3. if neither has it, the newest snapshot holding it, from any node.
//!
//! For `replicated` kinds the bucket's record wins whenever there is one;
//! otherwise the local one, then the snapshot.
//!
//! Saving: the new record goes to the local store (group commit) and, for
//! `replicated` kinds, to the bucket with compare-and-set on the revision
//! this activation last saw. A failed save stops the agent, so it never
//! answers from a state that is not durable; a failed compare-and-set means
//! another activation wrote meanwhile, and this one is fenced.

use std::time::{Duration, Instant};

use actors::{AgentId, CallError, Durability};
use async_nats::jetstream::kv;
use tracing::{info, warn};

use crate::node::Shared;
use crate::snapshot::{Catalog, SnapshotError};
use crate::storage::Record;

/// How stale the snapshot catalog may be when looking up a new agent.
const CATALOG_MAX_AGE: Duration = Duration::from_secs(2);

/// The name of a cluster's replicated-state bucket.
pub fn bucket_name(cluster: &str) -> String {
    format!("mesh-{cluster}-state")
}

/// The bucket key of an agent: `kind.name`, with characters that keys do
/// not allow written as `=XX`.
pub fn bucket_key(id: &AgentId) -> String {
    let mut key = String::with_capacity(id.kind().len() + id.name().len() + 1);
    push_bucket_key(id, &mut key);
    key
}

/// Appends [`bucket_key`] of `id` to `key`, allocating only if it must grow.
pub fn push_bucket_key(id: &AgentId, key: &mut String) {
    use std::fmt::Write as _;
    for (i, part) in [id.kind(), id.name()].into_iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                key.push(b as char);
            } else {
                let _ = write!(key, "={b:02X}");
            }
        }
    }
}

/// How many times opening a bucket is tried before giving up.
const BUCKET_ATTEMPTS: u32 = 20;
/// The pause between two attempts.
const BUCKET_RETRY: Duration = Duration::from_millis(250);

/// Opens (or creates) a KV bucket, retrying a while: nodes starting
/// together race to create it, and a JetStream cluster that is still
/// electing its leader refuses for a moment.
pub(crate) async fn open_kv(
    nats: &async_nats::Client,
    name: &str,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let config = kv::Config {
        bucket: name.to_owned(),
        history: 1,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    open_kv_with(nats, config).await
}

/// Opens the bucket `config` names, or creates it with `config`.
pub(crate) async fn open_kv_with(
    nats: &async_nats::Client,
    config: kv::Config,
) -> anyhow::Result<kv::Store> {
    let js = async_nats::jetstream::new(nats.clone());
    let name = config.bucket.clone();
    let mut last = String::new();
    for attempt in 1..=BUCKET_ATTEMPTS {
        if let Ok(store) = js.get_key_value(&name).await {
            return Ok(store);
        }
        match js.create_key_value(config.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) => {
                last = e.to_string();
                tracing::debug!(bucket = %name, attempt, error = %last, "cannot open bucket yet");
            }
        }
        tokio::time::sleep(BUCKET_RETRY).await;
    }
    anyhow::bail!(
        "cannot open the JetStream bucket {name}: {last} (is JetStream enabled on the NATS server?)"
    )
}

/// Opens (or creates) the replicated-state bucket.
pub(crate) async fn open_bucket(
    nats: &async_nats::Client,
    cluster: &str,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    open_kv(nats, &bucket_name(cluster), replicas).await
}

/// A bucket entry as the stream's leader has it.
#[derive(Debug, Clone)]
pub(crate) struct LeaderEntry {
    pub(crate) value: bytes::Bytes,
    pub(crate) revision: u64,
    /// A delete marker (the key was released or deleted).
    pub(crate) deleted: bool,
}

/// Reads `key` from the stream's leader, never from a replica.
///
/// Plain KV reads may be served by any replica, and one that lags (a zone
/// just back from a partition) answers with old data: a decision to run an
/// agent, or the state it starts from, must not rest on that.
pub(crate) async fn leader_entry(
    bucket: &kv::Store,
    key: &str,
) -> Result<Option<LeaderEntry>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", bucket.prefix);
    match bucket
        .stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(message) => {
            let operation = message.headers.get("KV-Operation").map(|v| v.as_str());
            Ok(Some(LeaderEntry {
                value: message.payload,
                revision: message.sequence,
                deleted: matches!(operation, Some("DEL") | Some("PURGE")),
            }))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// What an activation starts from.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) record: Option<Record>,
    /// The bucket revision seen, for compare-and-set (replicated kinds).
    pub(crate) revision: Option<u64>,
    /// Where the record came from, for the log.
    pub(crate) source: &'static str,
}

fn unavailable(id: &AgentId, reason: impl std::fmt::Display) -> CallError {
    CallError::Unavailable {
        agent: id.to_string(),
        reason: reason.to_string(),
    }
}

/// Finds the newest stored state of `id`.
///
/// `inherited` says another owner had the agent until now: the snapshot
/// catalog is then read afresh, since that owner may have written its final
/// snapshot a moment ago.
pub(crate) async fn load(
    shared: &Shared,
    id: &AgentId,
    durability: Durability,
    inherited: bool,
) -> Result<Loaded, CallError> {
    if durability == Durability::Memory {
        return Ok(Loaded::default());
    }
    let mut best = Loaded {
        record: shared.store.load(id).map_err(|e| unavailable(id, e))?,
        revision: None,
        source: "local store",
    };

    if durability == Durability::Replicated {
        let bucket = shared
            .bucket
            .as_ref()
            .ok_or_else(|| unavailable(id, "the replicated-state bucket is not available"))?;
        let entry = leader_entry(bucket, &bucket_key(id))
            .await
            .map_err(|e| unavailable(id, format!("replicated state: {e}")))?;
        if let Some(entry) = entry.filter(|e| !e.deleted) {
            // The bucket is the truth for replicated kinds: a local record
            // can only be ahead of it when a save failed half-way (the
            // local write landed, the compare-and-set did not), and such a
            // change was never acknowledged.
            let record = Record::decode(&entry.value).map_err(|e| unavailable(id, e))?;
            best.revision = Some(entry.revision);
            best.record = Some(record);
            best.source = "replicated bucket";
        }
    }

    // A new agent, or one inherited from another owner, may have a newer
    // state in a snapshot than any copy on this node's disk (a copy left
    // from an earlier stay here). Replicated kinds have the bucket instead.
    let look = best.record.is_none() || (inherited && durability == Durability::Local);
    if look {
        if let Some(record) = from_snapshots(shared, id, inherited).await {
            if best.record.as_ref().is_none_or(|r| record.is_newer_than(r)) {
                best.record = Some(record);
                best.source = "snapshot";
            }
        }
    }
    Ok(best)
}

/// The newest snapshot record of `id`, from any node's snapshots.
async fn from_snapshots(shared: &Shared, id: &AgentId, fresh: bool) -> Option<Record> {
    let mut catalog = shared.catalog.lock().await;
    let stale = fresh || catalog.loaded.is_none_or(|t| t.elapsed() > CATALOG_MAX_AGE);
    if stale {
        match Catalog::load(&shared.snapshots).await {
            Ok(fresh) => *catalog = fresh,
            Err(e) => warn!(error = %e, "cannot read the snapshot catalog"),
        }
    }
    let (manifest, entry) = catalog.find(id)?.clone();
    drop(catalog);
    match shared.snapshots.record(&manifest, &entry).await {
        Ok(record) => Some(record),
        Err(e) => {
            warn!(
                agent = %id,
                snapshot = %manifest.id,
                error = %e,
                "snapshot entry unreadable; trying older snapshots",
            );
            older_snapshot_record(shared, &manifest.node, &manifest.id, id).await
        }
    }
}

/// Looks for `id` in snapshots of `node` older than `newer_than`.
async fn older_snapshot_record(
    shared: &Shared,
    node: &str,
    newer_than: &str,
    id: &AgentId,
) -> Option<Record> {
    let name = id.to_string();
    let manifests = shared.snapshots.list(node).await.ok()?;
    for m in manifests.iter().filter(|m| m.id.as_str() < newer_than) {
        let found = async {
            let index = shared.snapshots.index(m).await?;
            match index.iter().find(|e| e.agent == name) {
                Some(entry) => shared.snapshots.record(m, entry).await.map(Some),
                None => Ok::<_, SnapshotError>(None),
            }
        };
        match found.await {
            Ok(Some(record)) => return Some(record),
            Ok(None) => {}
            Err(e) => warn!(agent = %id, snapshot = %m.id, error = %e, "older snapshot unreadable"),
        }
    }
    None
}

/// Saves `record` for `id`; for replicated kinds also to the bucket, with
/// compare-and-set on `revision`, which is updated.
pub(crate) async fn save(
    shared: &Shared,
    id: &AgentId,
    durability: Durability,
    record: Record,
    revision: &mut Option<u64>,
) -> Result<(), CallError> {
    let started = Instant::now();
    let bytes = record.encode();
    let local = shared.store.write(id, record);
    if durability != Durability::Replicated {
        return local
            .await
            .map_err(|e| unavailable(id, format!("state not saved: {e}")));
    }
    let bucket = shared
        .bucket
        .as_ref()
        .ok_or_else(|| unavailable(id, "the replicated-state bucket is not available"))?;
    let key = bucket_key(id);
    let remote = async {
        match *revision {
            Some(rev) => bucket
                .update(&key, bytes.into(), rev)
                .await
                .map_err(|e| e.to_string()),
            None => bucket
                .create(&key, bytes.into())
                .await
                .map_err(|e| e.to_string()),
        }
    };
    let (local, remote) = tokio::join!(local, remote);
    local.map_err(|e| unavailable(id, format!("state not saved: {e}")))?;
    match remote {
        Ok(new) => {
            *revision = Some(new);
            Ok(())
        }
        Err(e) => {
            info!(
                agent = %id,
                error = %e,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replicated save refused; agent fenced",
            );
            Err(unavailable(id, format!("replicated state not saved: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_escape_what_keys_do_not_allow() {
        let id: AgentId = "counter/a.b:c@d".parse().unwrap();
        assert_eq!(bucket_key(&id), "counter.a=2Eb=3Ac=40d");
        let plain: AgentId = "rcounter/alice-1_x".parse().unwrap();
        assert_eq!(bucket_key(&plain), "rcounter.alice-1_x");
    }
}
