//! Snapshots in a real S3-compatible store (SeaweedFS on loopback): wipe
//! and restore, a corrupt object, and the store going away.

#![allow(missing_docs)]

#[path = "s3_support.rs"]
mod s3_support;
#[path = "support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use s3_support::SeaweedS3;
use serde_json::json;
use support::{
    counter_value, meshctl, meshctl_ok, ok, wait_until, Client, MeshNode, Nats, NodeSpec,
};

/// A node whose snapshots go to `s3`, with a data directory under `root`.
fn s3_spec(cluster: &str, name: &str, root: &Path, s3: &SeaweedS3) -> NodeSpec {
    let mut spec = NodeSpec::new(cluster, name, "fr-par-1");
    spec.data_dir = Some(root.join(name));
    spec.env = s3.env();
    spec.extra = vec![
        "--snapshots".into(),
        format!("s3://{}/mesh", s3.bucket),
        "--s3-endpoint".into(),
        s3.endpoint.clone(),
        "--s3-region".into(),
        s3.region.clone(),
    ];
    spec
}

/// The test's own view of the bucket, to look at and damage objects.
fn bucket(s3: &SeaweedS3) -> impl ObjectStore {
    AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_endpoint(&s3.endpoint)
        .with_region(&s3.region)
        .with_access_key_id(&s3.access_key)
        .with_secret_access_key(&s3.secret_key)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap()
}

fn snapshot(nats: &Nats, cluster: &str, node: &str) -> String {
    let out = meshctl(&nats.url(), cluster, &["snapshot", "--node", node]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "snapshot <id> of <node>: ..."
    stdout.split_whitespace().nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn a_node_wiped_after_an_s3_snapshot_comes_back_and_peers_restore_single_agents() {
    let s3 = SeaweedS3::start().await;
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let spec_a = s3_spec("s3wipe", "node-a", root.path(), &s3);
    let a = MeshNode::start(&nats, spec_a.clone());
    let client = Client::connect(&nats, "s3wipe").await;
    client.converged(&[&a]).await;
    for i in 0..20 {
        ok(client
            .call(Some("node-a"), &format!("counter/w{i}"), json!({"add": i}))
            .await);
    }
    let id = snapshot(&nats, "s3wipe", "node-a");

    // The snapshot is in the bucket, manifest last among its objects.
    let manifest = ObjectPath::from(format!("mesh/s3wipe/node-a/{id}/manifest.json").as_str());
    assert!(
        bucket(&s3).head(&manifest).await.is_ok(),
        "no manifest in the bucket"
    );

    a.signal(libc::SIGKILL);
    drop(a);
    std::fs::remove_dir_all(root.path().join("node-a")).unwrap();
    let a = MeshNode::start(&nats, spec_a);
    client.converged(&[&a]).await;
    for i in 0..20 {
        assert_eq!(
            counter_value(&client, "node-a", &format!("counter/w{i}")).await,
            i
        );
    }

    // Point in time: counter/w7 moves on, then is restored, where it lives,
    // to the first snapshot.
    let b = MeshNode::start(&nats, s3_spec("s3wipe", "node-b", root.path(), &s3));
    client.converged(&[&a, &b]).await;
    let add = json!({"add": 1000});
    ok(client.call(Some("node-a"), "counter/w7", add).await);
    snapshot(&nats, "s3wipe", "node-a");
    let args = ["restore", "--agent", "counter/w7", "--snapshot", &id];
    let out = meshctl_ok(&nats.url(), "s3wipe", &args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("on node-a"));
    assert_eq!(counter_value(&client, "node-b", "counter/w7").await, 7);

    // A node that never hosted counter/w3 restores it, with one ranged read
    // of node-a's newest snapshot, once node-a is gone.
    a.signal(libc::SIGKILL);
    drop(a);
    wait_until("node-b to drop node-a", Duration::from_secs(10), || async {
        let names = client.linked_names("node-b").await?;
        (names == ["node-b"]).then_some(())
    })
    .await;
    assert_eq!(counter_value(&client, "node-b", "counter/w3").await, 3);
    assert!(b.log_text().contains("agent=counter/w3"));
    let out = meshctl_ok(
        &nats.url(),
        "s3wipe",
        &["snapshots", "list", "--node", "node-a", "--json"],
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.iter().any(|s| s["id"] == id.as_str()), "{list:?}");
}

#[tokio::test]
async fn a_corrupt_newest_snapshot_in_s3_is_skipped_with_its_key() {
    let s3 = SeaweedS3::start().await;
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let spec = s3_spec("s3bad", "node-a", root.path(), &s3);
    let a = MeshNode::start(&nats, spec.clone());
    let client = Client::connect(&nats, "s3bad").await;
    client.converged(&[&a]).await;

    ok(client
        .call(Some("node-a"), "counter/x", json!({"add": 1}))
        .await);
    snapshot(&nats, "s3bad", "node-a");
    ok(client
        .call(Some("node-a"), "counter/x", json!({"add": 1}))
        .await);
    let newest = snapshot(&nats, "s3bad", "node-a");

    // Flip a byte in the newest snapshot's data object.
    let store = bucket(&s3);
    let key = ObjectPath::from(format!("mesh/s3bad/node-a/{newest}/data-00000.bin").as_str());
    let mut bytes = store
        .get(&key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    store.put(&key, PutPayload::from(bytes)).await.unwrap();

    a.signal(libc::SIGKILL);
    drop(a);
    std::fs::remove_dir_all(root.path().join("node-a")).unwrap();
    let a = MeshNode::start(&nats, spec);
    client.converged(&[&a]).await;
    assert_eq!(
        counter_value(&client, "node-a", "counter/x").await,
        1,
        "the older snapshot was used"
    );
    let log = a.log_text();
    assert!(
        log.contains("snapshot unreadable; trying the previous one"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{newest}/data-00000.bin")),
        "the log names the object"
    );
}

#[tokio::test]
async fn s3_down_during_periodic_snapshots_keeps_the_node_serving() {
    let mut s3 = SeaweedS3::start().await;
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut spec = s3_spec("s3down", "node-a", root.path(), &s3);
    spec.extra
        .extend(["--snapshot-interval".into(), "1s".into()]);
    let a = MeshNode::start(&nats, spec);
    let client = Client::connect(&nats, "s3down").await;
    client.converged(&[&a]).await;
    ok(client
        .call(Some("node-a"), "counter/d", json!({"add": 1}))
        .await);
    wait_until("a periodic snapshot", Duration::from_secs(15), || {
        let log = a.log_text();
        async move { log.contains("snapshot written").then_some(()) }
    })
    .await;

    s3.stop();
    wait_until(
        "a failed periodic snapshot",
        Duration::from_secs(60),
        || {
            let log = a.log_text();
            async move { log.contains("periodic snapshot failed").then_some(()) }
        },
    )
    .await;
    // The node answers throughout.
    for n in 2..=5 {
        let reply = ok(client
            .call(Some("node-a"), "counter/d", json!({"add": 1}))
            .await);
        assert_eq!(reply, json!({"value": n}));
    }

    let written_before = a.log_text().matches("snapshot written").count();
    s3.restart().await;
    wait_until(
        "a snapshot after S3 came back",
        Duration::from_secs(60),
        || {
            let count = a.log_text().matches("snapshot written").count();
            async move { (count > written_before).then_some(()) }
        },
    )
    .await;
    let out = meshctl(
        &nats.url(),
        "s3down",
        &["snapshots", "list", "--node", "node-a", "--json"],
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.len() >= 2, "{list:?}");
}
