use super::*;

fn record(epoch: u64, seq: u64, state: &[u8]) -> Record {
    Record {
        epoch,
        seq,
        state_version: 1,
        state: state.to_vec(),
    }
}

fn id(name: &str) -> AgentId {
    format!("counter/{name}").parse().unwrap()
}

#[tokio::test]
async fn a_written_record_is_read_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.write(&id("a"), record(1, 1, b"one")).await.unwrap();
        store.write(&id("a"), record(1, 2, b"two")).await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load(&id("a")).unwrap(), Some(record(1, 2, b"two")));
    assert_eq!(store.load(&id("b")).unwrap(), None);
    assert_eq!(store.iter().count(), 1);
}

#[tokio::test]
async fn a_write_with_an_older_epoch_is_refused_and_the_newer_record_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .write(&id("a"), record(5, 1, b"new owner"))
        .await
        .unwrap();
    let err = store
        .write(&id("a"), record(4, 9, b"old owner"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::StaleEpoch {
            agent: "counter/a".into(),
            given: 4,
            stored: 5
        }
    );
    assert_eq!(
        store.load(&id("a")).unwrap(),
        Some(record(5, 1, b"new owner"))
    );
    // The same or a newer epoch is accepted.
    store.write(&id("a"), record(5, 2, b"same")).await.unwrap();
    store.write(&id("a"), record(6, 1, b"next")).await.unwrap();
}

#[tokio::test]
async fn concurrent_writes_share_flushes_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writes = (0..500).map(|i| {
        let store = store.clone();
        async move { store.write(&id(&i.to_string()), record(1, 1, b"x")).await }
    });
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(store.len(), 500);
}

#[tokio::test]
async fn a_damaged_database_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.write(&id("a"), record(1, 1, b"x")).await.unwrap();
    }
    let conf = dir.path().join("state").join("conf");
    std::fs::write(&conf, b"garbage where the configuration was").unwrap();

    let store = Store::open(dir.path()).unwrap();
    let aside = store.quarantined.clone().expect("quarantined");
    assert!(aside.starts_with(dir.path().join("quarantine")));
    assert_eq!(
        std::fs::read(aside.join("conf")).unwrap(),
        b"garbage where the configuration was",
        "the damaged files are kept for inspection"
    );
    assert!(store.is_empty());
}

#[test]
fn a_database_locked_by_another_process_is_refused_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("lock"), "{err}");
    assert!(!dir.path().join("quarantine").exists());
}

#[test]
fn records_refuse_garbage_and_future_versions() {
    assert!(Record::decode(&[1]).is_err());
    assert!(Record::decode(&[9, 0, 1, 2])
        .unwrap_err()
        .to_string()
        .contains("version 9"));
    let bytes = record(3, 4, b"s").encode();
    assert_eq!(Record::decode(&bytes).unwrap(), record(3, 4, b"s"));
}
