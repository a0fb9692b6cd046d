//! Storage: agents' state in the node's sled database, with group commit.
//!
//! Every write goes through one writer thread, which makes a write's epoch
//! check and the write itself atomic, and lets many agents share one flush:
//! 1. an agent hands its new record to the writer and waits;
//! 2. the writer takes every write queued so far (up to [`MAX_BATCH`]),
//!    refuses those whose epoch is older than the stored one, inserts the
//!    rest, and flushes once;
//! 3. only then does it acknowledge, so an acknowledged write survives
//!    `kill -9` of the process.
//!
//! A database that will not open is moved aside to `quarantine/` and a new
//! one is started, so a damaged disk never becomes a crash loop; the agents
//! then come back from snapshots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actors::{codec, AgentId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// The most writes one flush covers.
pub const MAX_BATCH: usize = 4096;
/// The format version of stored records.
pub const RECORD_VERSION: u16 = 1;

/// One agent's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The ownership epoch under which it was written (a fencing token).
    pub epoch: u64,
    /// Counts the writes within an epoch; grows with every change.
    pub seq: u64,
    /// The version of the agent kind's state type.
    pub state_version: u16,
    /// The state, encoded by [`actors::codec`]. Written as one byte string,
    /// which encodes exactly like a byte sequence but far faster.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

impl Record {
    /// Whether `self` is newer than `other`: a later epoch, or the same
    /// epoch and a later write.
    pub fn is_newer_than(&self, other: &Record) -> bool {
        (self.epoch, self.seq) > (other.epoch, other.seq)
    }

    /// Encodes the record with its format version in front.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = RECORD_VERSION.to_le_bytes().to_vec();
        codec::encode_into(self, &mut out).expect("records always encode");
        out
    }

    /// Decodes a record written by [`Record::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
        let Some((head, body)) = bytes.split_first_chunk::<2>() else {
            return Err(StoreError::Corrupt(
                "record shorter than its version".into(),
            ));
        };
        match u16::from_le_bytes(*head) {
            RECORD_VERSION => codec::decode(body).map_err(|e| StoreError::Corrupt(e.to_string())),
            v => Err(StoreError::Corrupt(format!(
                "record version {v} is newer than this node reads ({RECORD_VERSION})"
            ))),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The write's epoch is older than the stored record's.
    #[error("stale epoch {given} for {agent}: the stored record has epoch {stored}")]
    StaleEpoch {
        /// The agent.
        agent: String,
        /// The epoch of the refused write.
        given: u64,
        /// The epoch already stored.
        stored: u64,
    },
    /// sled failed.
    #[error("storage failure: {0}")]
    Io(String),
    /// A stored record does not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The writer thread is gone (the node is stopping).
    #[error("the store is closed")]
    Closed,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

struct Write {
    key: Vec<u8>,
    record: Record,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The node's agent-state store.
#[derive(Debug, Clone)]
pub struct Store {
    agents: sled::Tree,
    db: sled::Db,
    writer: Arc<WriterHandle>,
    /// Set when the database was quarantined at open.
    pub quarantined: Option<PathBuf>,
}

/// The writer thread's queue; dropping the last store closes the queue and
/// waits for the thread, so the database is closed when `Store` is gone.
#[derive(Debug)]
struct WriterHandle {
    queue: Option<mpsc::UnboundedSender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether a failure to open means the files are damaged (and so may be
/// moved aside) rather than unreachable (locked by another process, no
/// permission), where moving them would lose good data.
fn is_damage(e: &sled::Error) -> bool {
    matches!(
        e,
        sled::Error::Corruption { .. }
            | sled::Error::Unsupported(_)
            | sled::Error::ReportableBug(_)
    )
}

impl Store {
    /// Opens (or creates) the store under `data_dir`, quarantining a
    /// database that will not open.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", data_dir.display())))?;
        let path = data_dir.join("state");
        let (db, quarantined) = match sled::open(&path) {
            Ok(db) => (db, None),
            Err(e) if e.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Io(format!(
                    "data dir {} is in use by another process (its lock is held)",
                    data_dir.display()
                )))
            }
            Err(e) if !is_damage(&e) => {
                return Err(StoreError::Io(format!(
                    "cannot open {}: {e}",
                    path.display()
                )))
            }
            Err(e) => {
                let aside = quarantine(data_dir, &path)?;
                error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "state database does not open; moved aside, agents restore from snapshots"
                );
                (sled::open(&path)?, Some(aside))
            }
        };
        let agents = db.open_tree("agents")?;
        let (writes, queue) = mpsc::unbounded_channel();
        let writer = Writer {
            agents: agents.clone(),
            db: db.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("mesh-store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError::Io(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            agents,
            db,
            writer: Arc::new(WriterHandle {
                queue: Some(writes),
                thread: Some(thread),
            }),
            quarantined,
        })
    }

    /// The stored record of agent `id`.
    pub fn load(&self, id: &AgentId) -> Result<Option<Record>, StoreError> {
        match self.agents.get(key(id))? {
            Some(bytes) => Record::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `record` for `id` and waits until it is on disk.
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the write; it lands anyway.
    pub async fn write(&self, id: &AgentId, record: Record) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        let write = Write {
            key: key(id),
            record,
            done,
        };
        let queue = self.writer.queue.as_ref().ok_or(StoreError::Closed)?;
        queue.send(write).map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Every stored agent and record, in key order; undecodable records are
    /// reported and skipped.
    pub fn iter(&self) -> impl Iterator<Item = (AgentId, Record)> + '_ {
        self.agents.iter().filter_map(|entry| {
            let (k, v) = entry.ok()?;
            let name = std::str::from_utf8(&k).ok()?;
            let id: AgentId = name.parse().ok()?;
            match Record::decode(&v) {
                Ok(record) => Some((id, record)),
                Err(e) => {
                    warn!(agent = %id, error = %e, "skipped an undecodable record");
                    None
                }
            }
        })
    }

    /// How many agents have a stored record.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent has a stored record.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Whether the writer is gone (the store cannot take writes).
    pub fn is_closed(&self) -> bool {
        self.writer.queue.as_ref().is_none_or(|q| q.is_closed())
    }

    /// The database's size on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn key(id: &AgentId) -> Vec<u8> {
    id.to_string().into_bytes()
}

/// Moves a database that does not open out of the way.
fn quarantine(data_dir: &Path, path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let folder = data_dir.join("quarantine");
    std::fs::create_dir_all(&folder)
        .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", folder.display())))?;
    let aside = folder.join(format!("state-{stamp}"));
    std::fs::rename(path, &aside)
        .map_err(|e| StoreError::Io(format!("cannot move {} aside: {e}", path.display())))?;
    Ok(aside)
}

/// The single writer: fencing checks, batched inserts, one flush per batch.
struct Writer {
    agents: sled::Tree,
    db: sled::Db,
}

impl Writer {
    fn run(self, mut queue: mpsc::UnboundedReceiver<Write>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    fn commit(&self, batch: &mut Vec<Write>) {
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(batch.len());
        for write in batch.iter() {
            results.push(self.apply(write));
        }
        // One flush makes every write of the batch durable.
        if let Err(e) = self.db.flush() {
            let failure = StoreError::from(e);
            error!(error = %failure, "flush failed; refusing the whole batch");
            for result in results.iter_mut() {
                if result.is_ok() {
                    *result = Err(failure.clone());
                }
            }
        }
        for (write, result) in batch.drain(..).zip(results) {
            let _ = write.done.send(result);
        }
    }

    fn apply(&self, write: &Write) -> Result<(), StoreError> {
        if let Some(stored) = self.agents.get(&write.key)? {
            if let Ok(stored) = Record::decode(&stored) {
                if stored.epoch > write.record.epoch {
                    return Err(StoreError::StaleEpoch {
                        agent: String::from_utf8_lossy(&write.key).into_owned(),
                        given: write.record.epoch,
                        stored: stored.epoch,
                    });
                }
            }
        }
        self.agents.insert(&write.key, write.record.encode())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
