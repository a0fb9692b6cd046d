//! Snapshots: every agent's record, exported to object storage.
//!
//! A snapshot of node `n` is a folder `<cluster>/<n>/<id>/` holding:
//! - `data-NNNNN.bin`: entries `[u32 length][lz4(record)]`, up to
//!   [`DATA_OBJECT_BYTES`] per object, so the object count grows with bytes,
//!   not with agents;
//! - `index.bin`: lz4 of the encoded [`IndexEntry`] list, which locates each
//!   agent's entry (object, offset, length, checksum), so one agent is
//!   restored with one ranged read;
//! - `manifest.json`, written last, with every object's size and CRC-32.
//!
//! The invariant: a folder without a manifest is not a snapshot. An upload
//! that stops halfway leaves no manifest, and the next snapshot removes the
//! folder. Ids start with the creation time, so names sort by age.
//!
//! Formats: the manifest's `format` says how the whole snapshot is laid out
//! and is read before anything else, so a newer layout need not parse as
//! ours. A node reads every format from [`MIN_SNAPSHOT_FORMAT`] to
//! [`SNAPSHOT_FORMAT`] (the promise: at least the previous release's). A
//! snapshot of another format is refused with one log line per snapshot,
//! never misread, and restores fall back to the newest one this node reads.
//! Each record inside carries its own version ([`crate::storage::Record`])
//! and its kind's state version. Fixtures of every released format are kept
//! under `tests/fixtures/` and read by `formats` tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actors::{codec, AgentId};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::SnapshotTarget;
use crate::storage::{Record, Store};

/// The format version of manifests, indexes and data objects written.
pub const SNAPSHOT_FORMAT: u16 = 1;
/// The oldest snapshot format this build still reads.
pub const MIN_SNAPSHOT_FORMAT: u16 = 1;
/// The largest data object of a snapshot.
pub const DATA_OBJECT_BYTES: usize = 32 * 1024 * 1024;
/// The longest a single object store request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest manifest or index accepted when reading.
const MAX_METADATA_BYTES: usize = 256 * 1024 * 1024;

/// Why a snapshot could not be taken or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The object store failed or timed out.
    #[error("object storage: {0}")]
    Storage(String),
    /// An object's bytes do not match its checksum, or do not parse.
    #[error("corrupt snapshot object {key}: {reason}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The snapshot was written by a newer release.
    #[error(
        "snapshot {id} has format {format}, newer than this node reads \
         ({MIN_SNAPSHOT_FORMAT} to {SNAPSHOT_FORMAT}): upgrade this node to use it"
    )]
    TooNew {
        /// The snapshot.
        id: String,
        /// Its format.
        format: u16,
    },
    /// The snapshot was written by a release too old for this node.
    #[error(
        "snapshot {id} has format {format}, older than this node reads \
         ({MIN_SNAPSHOT_FORMAT} to {SNAPSHOT_FORMAT})"
    )]
    TooOld {
        /// The snapshot.
        id: String,
        /// Its format.
        format: u16,
    },
    /// No complete snapshot exists.
    #[error("no complete snapshot of node {0}")]
    None(String),
}

/// One object of a snapshot, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The object's name within the snapshot folder.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// CRC-32 of its bytes.
    pub crc32: u32,
}

/// The last object of a snapshot: what it holds, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The snapshot format.
    pub format: u16,
    /// The snapshot's id (`<created ms>-<random>`).
    pub id: String,
    /// The cluster.
    pub cluster: String,
    /// The node whose records these are.
    pub node: String,
    /// When it was taken, in Unix milliseconds.
    pub created_ms: u64,
    /// The release that wrote it.
    pub software: String,
    /// How many agents it holds.
    pub agents: u64,
    /// Total bytes of data objects.
    pub bytes: u64,
    /// The data objects, in order.
    pub data: Vec<ObjectInfo>,
    /// The index object.
    pub index: ObjectInfo,
}

/// Where one agent's entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The agent, `kind/name`.
    pub agent: String,
    /// The data object's position in [`Manifest::data`].
    pub object: u32,
    /// The entry's offset within the object (its length prefix).
    pub offset: u64,
    /// The entry's length, prefix included.
    pub len: u32,
    /// CRC-32 of the entry's bytes, prefix included.
    pub crc32: u32,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    /// The snapshot used.
    pub snapshot: String,
    /// Agents written to the store.
    pub agents: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Snapshots skipped as unreadable, with the reason.
    pub skipped: Vec<String>,
}

/// Readable manifests, and unreadable snapshots with why.
type Scan = (Vec<Manifest>, Vec<(String, SnapshotError)>);

/// A progress report: bytes done, bytes in total.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Snapshots of one cluster in one object store.
#[derive(Debug, Clone)]
pub struct Snapshots {
    store: Arc<dyn ObjectStore>,
    cluster: String,
    object_bytes: usize,
    /// Where the store is, for log lines.
    pub target: String,
    /// Snapshots (`node/id`) already logged as unreadable: a catalog reload
    /// every few seconds must not repeat the same line.
    reported: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// The part of a manifest every format has.
#[derive(Debug, Deserialize)]
struct FormatOnly {
    format: u16,
}

fn storage(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Storage(e.to_string())
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SnapshotError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, op).await {
        Ok(result) => result.map_err(storage),
        Err(_) => Err(SnapshotError::Storage(format!(
            "{what} timed out after {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A creation time for a new snapshot, later than any given before by this
/// process, so that two snapshots in one millisecond still sort by age.
fn creation_ms() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = now_ms();
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |last| Some(now.max(last + 1)),
        )
        .expect("the update always succeeds");
    now.max(previous + 1)
}

/// Accumulates data objects and the index while a snapshot is written; a
/// full object is handed out at once, so it uploads while the next fills.
struct Builder {
    current: Vec<u8>,
    number: u32,
    index: Vec<IndexEntry>,
    object_bytes: usize,
}

impl Builder {
    fn new(object_bytes: usize) -> Self {
        Builder {
            current: Vec::with_capacity(object_bytes),
            number: 0,
            index: Vec::new(),
            object_bytes,
        }
    }

    /// Adds one record; returns the previous object if this one starts a
    /// new object.
    fn add(&mut self, agent: &AgentId, record: &Record) -> Option<Vec<u8>> {
        let compressed = lz4_flex::compress_prepend_size(&record.encode());
        let entry_len = compressed.len() + 4;
        let mut full = None;
        if self.current.len() + entry_len > self.object_bytes && !self.current.is_empty() {
            let next = Vec::with_capacity(self.object_bytes);
            full = Some(std::mem::replace(&mut self.current, next));
            self.number += 1;
        }
        let offset = self.current.len();
        self.current
            .extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        self.current.extend_from_slice(&compressed);
        let entry = &self.current[offset..];
        self.index.push(IndexEntry {
            agent: agent.to_string(),
            object: self.number,
            offset: offset as u64,
            len: entry.len() as u32,
            crc32: crc32fast::hash(entry),
        });
        full
    }

    /// The last object (if it holds anything) and the index.
    fn finish(self) -> (Option<Vec<u8>>, Vec<IndexEntry>) {
        let last = (!self.current.is_empty()).then_some(self.current);
        (last, self.index)
    }
}

/// Decodes one entry (length prefix included).
fn decode_entry(key: &str, entry: &[u8]) -> Result<Record, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    let body = entry
        .get(4..)
        .ok_or_else(|| corrupt("entry shorter than its prefix".into()))?;
    let raw = decompress_bounded(body).map_err(corrupt)?;
    Record::decode(&raw).map_err(|e| corrupt(e.to_string()))
}

/// Decodes a snapshot's index object: the reader the restore path uses,
/// public for fuzzing.
pub fn decode_index(key: &str, bytes: &[u8]) -> Result<Vec<IndexEntry>, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    let raw = decompress_bounded(bytes).map_err(corrupt)?;
    codec::decode(&raw).map_err(|e| corrupt(e.to_string()))
}

/// Decodes one data entry (length prefix included); public for fuzzing.
pub fn decode_data_entry(key: &str, entry: &[u8]) -> Result<(), SnapshotError> {
    decode_entry(key, entry).map(|_| ())
}

/// Parses manifest `bytes` of snapshot `id` (stored at `key`): the format
/// first, since a newer layout need not parse as this one, then the rest.
pub fn parse_manifest(key: &str, id: &str, bytes: &[u8]) -> Result<Manifest, SnapshotError> {
    if bytes.len() > MAX_METADATA_BYTES {
        return Err(SnapshotError::Corrupt {
            key: key.to_owned(),
            reason: "manifest too large".into(),
        });
    }
    let corrupt = |e: serde_json::Error| SnapshotError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    };
    let format = serde_json::from_slice::<FormatOnly>(bytes)
        .map_err(corrupt)?
        .format;
    let id = id.to_owned();
    if format > SNAPSHOT_FORMAT {
        return Err(SnapshotError::TooNew { id, format });
    }
    if format < MIN_SNAPSHOT_FORMAT {
        return Err(SnapshotError::TooOld { id, format });
    }
    serde_json::from_slice(bytes).map_err(corrupt)
}

/// Decompresses an lz4 block with its size prepended, refusing a claimed
/// size larger than lz4 can expand the block to (or than the codec's
/// limit) before allocating: a corrupt or forged prefix cannot make the
/// node allocate gigabytes.
fn decompress_bounded(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (size, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| "shorter than its size prefix".to_owned())?;
    let size = u32::from_le_bytes(*size) as usize;
    // One lz4 sequence byte stands for at most 255 output bytes.
    let most = body
        .len()
        .saturating_mul(256)
        .saturating_add(64)
        .min(codec::DECODE_LIMIT);
    if size > most {
        return Err(format!(
            "claims {size} bytes from {} compressed bytes",
            body.len()
        ));
    }
    lz4_flex::block::decompress(body, size).map_err(|e| e.to_string())
}

/// Opens the object store a node's configuration names.
pub fn open_target(target: &SnapshotTarget, cluster: &str) -> Result<Snapshots, SnapshotError> {
    use object_store::aws::AmazonS3Builder;
    use object_store::{ClientOptions, RetryConfig};

    let store: Arc<dyn ObjectStore> = match target {
        SnapshotTarget::File(path) => {
            std::fs::create_dir_all(path)
                .map_err(|e| storage(format!("cannot create {}: {e}", path.display())))?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(path).map_err(storage)?)
        }
        SnapshotTarget::S3 {
            bucket,
            prefix,
            endpoint,
            region,
        } => {
            let options = ClientOptions::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_connect_timeout(Duration::from_secs(5))
                .with_allow_http(
                    endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("http://")),
                );
            let retry = RetryConfig {
                max_retries: 3,
                retry_timeout: REQUEST_TIMEOUT,
                ..RetryConfig::default()
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(endpoint) = endpoint {
                // Path-style requests work with every S3-compatible store.
                builder = builder
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(region) = region {
                builder = builder.with_region(region);
            }
            let s3 = builder.build().map_err(storage)?;
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
            }
        }
    };
    Ok(Snapshots::new(store, cluster, &target.to_string()))
}

impl Snapshots {
    /// Snapshots of `cluster` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, cluster: &str, target: &str) -> Self {
        Snapshots {
            store,
            cluster: cluster.to_owned(),
            object_bytes: DATA_OBJECT_BYTES,
            target: target.to_owned(),
            reported: Arc::default(),
        }
    }

    /// Caps data objects at `bytes` instead of [`DATA_OBJECT_BYTES`].
    pub fn with_object_bytes(mut self, bytes: usize) -> Self {
        self.object_bytes = bytes.max(1);
        self
    }

    fn folder(&self, node: &str, id: &str) -> String {
        format!("{}/{node}/{id}", self.cluster)
    }

    async fn put(&self, key: String, bytes: Vec<u8>) -> Result<(), SnapshotError> {
        let path = ObjectPath::from(key.as_str());
        bounded(
            &format!("put {key}"),
            self.store.put(&path, PutPayload::from(bytes)),
        )
        .await
        .map(|_| ())
    }

    /// Reads object `key`, refusing one larger than `limit` bytes before
    /// reading its body.
    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Vec<u8>, SnapshotError> {
        let path = ObjectPath::from(key);
        let result = bounded(&format!("get {key}"), self.store.get(&path)).await?;
        if result.meta.size > limit {
            return Err(SnapshotError::Corrupt {
                key: key.to_owned(),
                reason: format!("{} bytes, more than the limit of {limit}", result.meta.size),
            });
        }
        let bytes = bounded(&format!("read {key}"), result.bytes()).await?;
        Ok(bytes.to_vec())
    }

    /// Takes a snapshot of every record in `store`, as node `node`.
    pub async fn take(&self, node: &str, store: &Store) -> Result<Manifest, SnapshotError> {
        let started = Instant::now();
        let created_ms = creation_ms();
        let id = format!("{created_ms:013}-{:08x}", rand::random::<u32>());
        let folder = self.folder(node, &id);

        // Records are read one agent at a time: each is consistent, and an
        // agent changed meanwhile is caught by the next snapshot. A blocking
        // thread builds objects while this task uploads the previous one,
        // so at most two objects are in memory.
        let (objects, mut ready) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let source = store.clone();
        let object_bytes = self.object_bytes;
        let building = tokio::task::spawn_blocking(move || {
            let mut builder = Builder::new(object_bytes);
            for (agent, record) in source.iter() {
                if let Some(full) = builder.add(&agent, &record) {
                    if objects.blocking_send(full).is_err() {
                        return None;
                    }
                }
            }
            let (last, index) = builder.finish();
            if let Some(last) = last {
                objects.blocking_send(last).ok()?;
            }
            Some(index)
        });

        let mut data = Vec::new();
        let mut bytes = 0;
        while let Some(object) = ready.recv().await {
            let info = ObjectInfo {
                name: format!("data-{:05}.bin", data.len()),
                size: object.len() as u64,
                crc32: crc32fast::hash(&object),
            };
            bytes += info.size;
            self.put(format!("{folder}/{}", info.name), object).await?;
            data.push(info);
        }
        let entries = building
            .await
            .map_err(|e| SnapshotError::Storage(format!("snapshot builder failed: {e}")))?
            .ok_or_else(|| SnapshotError::Storage("snapshot builder stopped".into()))?;
        let index_bytes = lz4_flex::compress_prepend_size(
            &codec::encode(&entries).map_err(|e| SnapshotError::Storage(e.to_string()))?,
        );
        let index = ObjectInfo {
            name: "index.bin".into(),
            size: index_bytes.len() as u64,
            crc32: crc32fast::hash(&index_bytes),
        };
        self.put(format!("{folder}/index.bin"), index_bytes).await?;

        let manifest = Manifest {
            format: SNAPSHOT_FORMAT,
            id,
            cluster: self.cluster.clone(),
            node: node.to_owned(),
            created_ms,
            software: crate::SOFTWARE_VERSION.into(),
            agents: entries.len() as u64,
            bytes,
            data,
            index,
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("manifests encode");
        self.put(format!("{folder}/manifest.json"), body).await?;
        info!(
            snapshot = %manifest.id,
            agents = manifest.agents,
            bytes = manifest.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            target = %self.target,
            "snapshot written"
        );
        Ok(manifest)
    }

    /// The snapshot ids of `node`, newest first, complete or not.
    async fn ids(&self, node: &str) -> Result<Vec<String>, SnapshotError> {
        let prefix = ObjectPath::from(format!("{}/{node}", self.cluster).as_str());
        let listing = bounded(
            "list snapshots",
            self.store.list_with_delimiter(Some(&prefix)),
        )
        .await?;
        let mut ids: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// The nodes that have a snapshot folder.
    pub async fn nodes(&self) -> Result<Vec<String>, SnapshotError> {
        let prefix = ObjectPath::from(self.cluster.as_str());
        let listing = bounded("list nodes", self.store.list_with_delimiter(Some(&prefix))).await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// The manifest of snapshot `id` of `node`, or `None` if incomplete.
    pub async fn manifest(&self, node: &str, id: &str) -> Result<Option<Manifest>, SnapshotError> {
        let key = format!("{}/manifest.json", self.folder(node, id));
        let bytes = match self.get_at_most(&key, MAX_METADATA_BYTES as u64).await {
            Ok(bytes) => bytes,
            Err(SnapshotError::Storage(e)) if e.contains("not found") || e.contains("NotFound") => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        parse_manifest(&key, id, &bytes).map(Some)
    }

    /// Every complete snapshot of `node`, newest first; those that cannot
    /// be read are logged (once each) and left out.
    pub async fn list(&self, node: &str) -> Result<Vec<Manifest>, SnapshotError> {
        let (readable, unreadable) = self.scan(node).await?;
        for (id, e) in unreadable {
            self.report(node, &id, &e);
        }
        Ok(readable)
    }

    /// Every complete snapshot of `node`, newest first, and the snapshots
    /// whose manifest cannot be read, with why.
    async fn scan(&self, node: &str) -> Result<Scan, SnapshotError> {
        let mut readable = Vec::new();
        let mut unreadable = Vec::new();
        for id in self.ids(node).await? {
            match self.manifest(node, &id).await {
                Ok(Some(m)) => readable.push(m),
                Ok(None) => {}
                Err(e) => unreadable.push((id, e)),
            }
        }
        Ok((readable, unreadable))
    }

    /// Logs an unreadable snapshot: once per snapshot unless the cause may
    /// pass (the object store failing).
    fn report(&self, node: &str, id: &str, e: &SnapshotError) {
        let lasting = !matches!(e, SnapshotError::Storage(_));
        if lasting {
            let first = self
                .reported
                .lock()
                .expect("reported lock")
                .insert(format!("{node}/{id}"));
            if !first {
                return;
            }
        }
        match e {
            SnapshotError::TooNew { format, .. } => warn!(
                node = %node,
                snapshot = %id,
                format,
                reads = %format!("{MIN_SNAPSHOT_FORMAT}-{SNAPSHOT_FORMAT}"),
                "refused a snapshot written by a newer release; \
                 older snapshots are used until this node is upgraded",
            ),
            _ => warn!(node = %node, snapshot = %id, error = %e, "unreadable snapshot manifest"),
        }
    }

    /// Reads and checks one whole object of a snapshot.
    async fn object(&self, m: &Manifest, info: &ObjectInfo) -> Result<Vec<u8>, SnapshotError> {
        let key = format!("{}/{}", self.folder(&m.node, &m.id), info.name);
        // An object larger than the manifest says is refused unread.
        let bytes = self.get_at_most(&key, info.size).await?;
        if bytes.len() as u64 != info.size || crc32fast::hash(&bytes) != info.crc32 {
            return Err(SnapshotError::Corrupt {
                key,
                reason: format!(
                    "{} bytes with CRC {:08x}, the manifest says {} bytes with CRC {:08x}",
                    bytes.len(),
                    crc32fast::hash(&bytes),
                    info.size,
                    info.crc32
                ),
            });
        }
        Ok(bytes)
    }

    /// The index of a snapshot, checked.
    pub async fn index(&self, m: &Manifest) -> Result<Vec<IndexEntry>, SnapshotError> {
        let bytes = self.object(m, &m.index).await?;
        let key = format!("{}/index.bin", self.folder(&m.node, &m.id));
        decode_index(&key, &bytes)
    }

    /// Every record of a snapshot, each object checked whole.
    pub async fn records(&self, m: &Manifest) -> Result<Vec<(AgentId, Record)>, SnapshotError> {
        self.records_with_progress(m, &|_, _| {}).await
    }

    /// [`Snapshots::records`], calling `progress(bytes done, bytes total)`
    /// after each object.
    pub async fn records_with_progress(
        &self,
        m: &Manifest,
        progress: Progress<'_>,
    ) -> Result<Vec<(AgentId, Record)>, SnapshotError> {
        let index = self.index(m).await?;
        let total = m.bytes + m.index.size;
        let mut done = m.index.size;
        progress(done, total);
        let mut objects = Vec::with_capacity(m.data.len());
        for info in &m.data {
            objects.push(self.object(m, info).await?);
            done += info.size;
            progress(done, total);
        }
        let mut out = Vec::with_capacity(index.len());
        for entry in index {
            let key = format!(
                "{}/{}",
                self.folder(&m.node, &m.id),
                m.data[entry.object as usize].name
            );
            let object =
                objects
                    .get(entry.object as usize)
                    .ok_or_else(|| SnapshotError::Corrupt {
                        key: key.clone(),
                        reason: "index names a missing object".into(),
                    })?;
            let range = entry.offset as usize..entry.offset as usize + entry.len as usize;
            let bytes = object.get(range).ok_or_else(|| SnapshotError::Corrupt {
                key: key.clone(),
                reason: "index points past the object's end".into(),
            })?;
            let id =
                entry
                    .agent
                    .parse()
                    .map_err(|e: actors::AgentIdError| SnapshotError::Corrupt {
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
            out.push((id, decode_entry(&key, bytes)?));
        }
        Ok(out)
    }

    /// One agent's record from a snapshot, with one ranged read.
    pub async fn record(&self, m: &Manifest, entry: &IndexEntry) -> Result<Record, SnapshotError> {
        let info = m
            .data
            .get(entry.object as usize)
            .ok_or_else(|| SnapshotError::Corrupt {
                key: format!("{}/index.bin", self.folder(&m.node, &m.id)),
                reason: "index names a missing object".into(),
            })?;
        let key = format!("{}/{}", self.folder(&m.node, &m.id), info.name);
        let path = ObjectPath::from(key.as_str());
        let range = entry.offset..entry.offset + u64::from(entry.len);
        let bytes = bounded(
            &format!("get range of {key}"),
            self.store.get_range(&path, range),
        )
        .await?;
        if crc32fast::hash(&bytes) != entry.crc32 {
            return Err(SnapshotError::Corrupt {
                key,
                reason: format!("entry of {} fails its checksum", entry.agent),
            });
        }
        decode_entry(&key, &bytes)
    }

    /// The newest snapshot of `node` that reads back whole, with its
    /// records; unreadable newer ones are skipped and reported.
    pub async fn newest_readable(
        &self,
        node: &str,
        only: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<(Manifest, Vec<(AgentId, Record)>, Vec<String>), SnapshotError> {
        let (readable, unreadable) = self.scan(node).await?;
        // Every snapshot newest first, read or refused, so a refused one
        // is named in the report when an older one is used instead.
        let mut all: Vec<Result<Manifest, (String, SnapshotError)>> =
            readable.into_iter().map(Ok).collect();
        for (id, e) in unreadable {
            self.report(node, &id, &e);
            all.push(Err((id, e)));
        }
        let id_of = |entry: &Result<Manifest, (String, SnapshotError)>| match entry {
            Ok(m) => m.id.clone(),
            Err((id, _)) => id.clone(),
        };
        all.sort_unstable_by_key(|entry| std::cmp::Reverse(id_of(entry)));

        let mut skipped = Vec::new();
        for entry in all {
            if only.is_some_and(|id| id != id_of(&entry)) {
                continue;
            }
            let m = match entry {
                Ok(m) => m,
                Err((_, e)) if only.is_some() => return Err(e),
                Err((id, e)) => {
                    skipped.push(format!("{id}: {e}"));
                    continue;
                }
            };
            match self.records_with_progress(&m, progress).await {
                Ok(records) => return Ok((m, records, skipped)),
                Err(e) => {
                    warn!(
                        node = %node,
                        snapshot = %m.id,
                        error = %e,
                        "snapshot unreadable; trying the previous one",
                    );
                    skipped.push(format!("{}: {e}", m.id));
                }
            }
        }
        match only {
            Some(id) => Err(SnapshotError::None(format!("{node} with id {id}"))),
            None => Err(SnapshotError::None(node.to_owned())),
        }
    }

    /// Deletes the snapshots of `node` that are neither among the newest
    /// `keep` complete ones nor younger than `max_age`, and every folder
    /// without a manifest other than `current`.
    pub async fn prune(
        &self,
        node: &str,
        keep: usize,
        max_age: Option<Duration>,
        current: &str,
    ) -> Result<usize, SnapshotError> {
        let mut complete = 0;
        let mut doomed = Vec::new();
        let now = now_ms();
        let young = |m: &Manifest| {
            max_age.is_some_and(|age| now.saturating_sub(m.created_ms) < age.as_millis() as u64)
        };
        for id in self.ids(node).await? {
            if id == current {
                complete += 1;
                continue;
            }
            match self.manifest(node, &id).await {
                Ok(Some(_)) if complete < keep => complete += 1,
                Ok(Some(m)) if young(&m) => complete += 1,
                _ => doomed.push(id),
            }
        }
        for id in &doomed {
            let prefix = ObjectPath::from(self.folder(node, id).as_str());
            let keys: Vec<_> = bounded(
                "list a snapshot",
                self.store.list(Some(&prefix)).try_collect::<Vec<_>>(),
            )
            .await?
            .into_iter()
            .map(|meta| meta.location)
            .collect();
            for key in keys {
                bounded("delete", self.store.delete(&key)).await?;
            }
        }
        Ok(doomed.len())
    }
}

/// The newest snapshot entry of each agent, across every node's newest
/// complete snapshot: how a node finds an agent it never hosted.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: HashMap<String, (Arc<Manifest>, IndexEntry)>,
    /// When it was last loaded.
    pub loaded: Option<Instant>,
}

impl Catalog {
    /// Loads the newest readable index of every node's snapshots.
    pub async fn load(snapshots: &Snapshots) -> Result<Catalog, SnapshotError> {
        let mut entries: HashMap<String, (Arc<Manifest>, IndexEntry)> = HashMap::new();
        for node in snapshots.nodes().await? {
            for m in snapshots.list(&node).await? {
                let index = match snapshots.index(&m).await {
                    Ok(index) => index,
                    Err(e) => {
                        warn!(
                            node = %node,
                            snapshot = %m.id,
                            error = %e,
                            "skipping an unreadable index",
                        );
                        continue;
                    }
                };
                let m = Arc::new(m);
                for entry in index {
                    let newer = entries
                        .get(&entry.agent)
                        .is_none_or(|(known, _)| known.created_ms < m.created_ms);
                    if newer {
                        entries.insert(entry.agent.clone(), (m.clone(), entry));
                    }
                }
                break;
            }
        }
        Ok(Catalog {
            entries,
            loaded: Some(Instant::now()),
        })
    }

    /// Where the newest snapshot of `agent` is.
    pub fn find(&self, agent: &AgentId) -> Option<&(Arc<Manifest>, IndexEntry)> {
        self.entries.get(&agent.to_string())
    }
}

#[cfg(test)]
mod tests;
