use object_store::memory::InMemory;

use super::*;

fn record(n: u64) -> Record {
    Record {
        epoch: 1,
        seq: n,
        state_version: 1,
        state: vec![n as u8; 100],
    }
}

async fn store_with(dir: &std::path::Path, agents: u64) -> Store {
    let store = Store::open(dir).unwrap();
    for i in 0..agents {
        let id: AgentId = format!("counter/c{i}").parse().unwrap();
        store.write(&id, record(i)).await.unwrap();
    }
    store
}

/// The ids of node n1's complete snapshots, newest first.
async fn snapshot_ids(snapshots: &Snapshots) -> Vec<String> {
    let list = snapshots.list("n1").await.unwrap();
    list.into_iter().map(|m| m.id).collect()
}

fn snapshots() -> (Arc<InMemory>, Snapshots) {
    let memory = Arc::new(InMemory::new());
    let snapshots = Snapshots::new(memory.clone(), "test", "memory");
    (memory, snapshots)
}

#[tokio::test]
async fn a_snapshot_reads_back_whole_and_agent_by_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 50).await;
    let (_, snapshots) = snapshots();
    let manifest = snapshots.take("n1", &store).await.unwrap();
    assert_eq!(manifest.agents, 50);

    let records = snapshots.records(&manifest).await.unwrap();
    assert_eq!(records.len(), 50);
    let all: HashMap<String, Record> = records
        .into_iter()
        .map(|(a, r)| (a.to_string(), r))
        .collect();
    assert_eq!(all["counter/c7"], record(7));

    let catalog = Catalog::load(&snapshots).await.unwrap();
    let (m, entry) = catalog.find(&"counter/c9".parse().unwrap()).unwrap();
    assert_eq!(snapshots.record(m, entry).await.unwrap(), record(9));
    assert!(catalog.find(&"counter/none".parse().unwrap()).is_none());
}

#[tokio::test]
async fn a_folder_without_manifest_is_not_a_snapshot_and_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 3).await;
    let (memory, snapshots) = snapshots();
    let good = snapshots.take("n1", &store).await.unwrap();

    // An upload that stopped before its manifest.
    let partial = ObjectPath::from("test/n1/9999999999999-deadbeef/data-00000.bin");
    memory
        .put(&partial, PutPayload::from(vec![1, 2, 3]))
        .await
        .unwrap();
    let listed = snapshot_ids(&snapshots).await;
    assert_eq!(listed, vec![good.id.clone()]);

    let newer = snapshots.take("n1", &store).await.unwrap();
    // A generous age keeps everything complete; only the partial goes.
    let day = Some(std::time::Duration::from_secs(86_400));
    assert_eq!(snapshots.prune("n1", 1, day, &newer.id).await.unwrap(), 1);
    let removed = snapshots.prune("n1", 1, None, &newer.id).await.unwrap();
    assert_eq!(removed, 1, "the older snapshot");
    assert!(memory.get(&partial).await.is_err());
    let listed = snapshot_ids(&snapshots).await;
    assert_eq!(listed, vec![newer.id]);
}

#[tokio::test]
async fn a_corrupt_newest_snapshot_falls_back_to_the_previous_one_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 10).await;
    let (memory, snapshots) = snapshots();
    let older = snapshots.take("n1", &store).await.unwrap();
    let newest = snapshots.take("n1", &store).await.unwrap();

    let key = ObjectPath::from(format!("test/n1/{}/data-00000.bin", newest.id).as_str());
    let mut bytes = memory
        .get(&key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    bytes[10] ^= 0xff;
    memory.put(&key, PutPayload::from(bytes)).await.unwrap();

    let (used, records, skipped) = snapshots
        .newest_readable("n1", None, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(used.id, older.id);
    assert_eq!(records.len(), 10);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("data-00000.bin"), "{skipped:?}");
    assert!(skipped[0].contains("CRC"), "{skipped:?}");
}

/// A log writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_snapshot_from_a_newer_release_is_refused_once_and_the_older_one_used() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test runs on one thread, so everything it logs is captured.
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 4).await;
    let (memory, snapshots) = snapshots();
    let older = snapshots.take("n1", &store).await.unwrap();
    let newest = snapshots.take("n1", &store).await.unwrap();

    // A newer release's manifest, of a layout this one does not parse.
    let key = ObjectPath::from(format!("test/n1/{}/manifest.json", newest.id).as_str());
    let future = serde_json::json!({
        "format": SNAPSHOT_FORMAT + 1,
        "id": newest.id,
        "parts": [{"objects": 3}],
    });
    memory
        .put(&key, PutPayload::from(serde_json::to_vec(&future).unwrap()))
        .await
        .unwrap();
    let err = snapshots.manifest("n1", &newest.id).await.unwrap_err();
    assert!(matches!(err, SnapshotError::TooNew { .. }), "{err}");
    assert!(err.to_string().contains("upgrade this node"), "{err}");

    // Restores, lists and catalog loads fall back to the older snapshot.
    let (used, records, skipped) = snapshots
        .newest_readable("n1", None, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(used.id, older.id);
    assert_eq!(records.len(), 4);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].starts_with(&newest.id), "{skipped:?}");
    assert!(
        skipped[0].contains("newer than this node reads"),
        "{skipped:?}"
    );
    assert_eq!(snapshot_ids(&snapshots).await, vec![older.id.clone()]);
    let catalog = Catalog::load(&snapshots).await.unwrap();
    let (m, _) = catalog.find(&"counter/c3".parse().unwrap()).unwrap();
    assert_eq!(m.id, older.id);

    // Asked for by id, the newer one is refused with the same reason.
    let only = snapshots
        .newest_readable("n1", Some(&newest.id), &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(only, SnapshotError::TooNew { .. }), "{only}");

    // One log line however often it is met.
    let text = log.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("newer release"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains(&newest.id), "{}", lines[0]);
}

#[tokio::test]
async fn a_snapshot_of_a_retired_format_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 1).await;
    let (memory, snapshots) = snapshots();
    let m = snapshots.take("n1", &store).await.unwrap();
    let key = ObjectPath::from(format!("test/n1/{}/manifest.json", m.id).as_str());
    let mut old = m.clone();
    old.format = MIN_SNAPSHOT_FORMAT - 1;
    memory
        .put(&key, PutPayload::from(serde_json::to_vec(&old).unwrap()))
        .await
        .unwrap();
    let err = snapshots.manifest("n1", &m.id).await.unwrap_err();
    assert!(matches!(err, SnapshotError::TooOld { .. }), "{err}");
}

#[tokio::test]
async fn many_agents_share_few_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 2000).await;
    let (memory, snapshots) = snapshots();
    let m = snapshots.take("n1", &store).await.unwrap();
    let objects: Vec<_> = memory.list(None).try_collect().await.unwrap();
    assert_eq!(
        objects.len(),
        3,
        "one data object, the index and the manifest"
    );
    assert_eq!(m.data.len(), 1);
}

#[tokio::test]
async fn records_spread_over_many_objects_read_back_whole_and_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 300).await;
    let memory = Arc::new(InMemory::new());
    // An entry compresses to about 30 bytes: a dozen or so fit in an object.
    let snapshots = Snapshots::new(memory, "test", "memory").with_object_bytes(512);
    let m = snapshots.take("n1", &store).await.unwrap();
    assert!(m.data.len() >= 10, "{} objects", m.data.len());
    assert_eq!(m.bytes, m.data.iter().map(|o| o.size).sum::<u64>());

    let all = snapshots.records(&m).await.unwrap();
    assert_eq!(all.len(), 300);
    let catalog = Catalog::load(&snapshots).await.unwrap();
    for i in [0, 150, 299] {
        let id: AgentId = format!("counter/c{i}").parse().unwrap();
        let (m, entry) = catalog.find(&id).unwrap();
        assert!(entry.object > 0 || i == 0);
        assert_eq!(snapshots.record(m, entry).await.unwrap(), record(i));
    }
}
