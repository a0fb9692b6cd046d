//! Durable agent state end to end: sled on the node, the replicated bucket
//! in NATS JetStream, snapshots in object storage, and restore.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{counter_value, meshctl_ok, ok, wait_until, Client, MeshNode, Nats, NodeSpec};

/// A node spec with a data directory (and snapshot folder) that outlive it.
fn durable_spec(cluster: &str, name: &str, zone: &str, root: &Path) -> NodeSpec {
    let mut spec = NodeSpec::new(cluster, name, zone);
    spec.data_dir = Some(root.join(name));
    spec.extra = vec![
        "--snapshots".into(),
        format!("file://{}", root.join("snapshots").display()),
    ];
    spec
}

/// How long an agent of a dead node may take to come back elsewhere.
const FAILOVER: Duration = Duration::from_secs(15);

#[tokio::test]
async fn acknowledged_increments_survive_kill_9_of_the_node() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let spec = durable_spec("kill9", "node-0", "fr-par-1", root.path());
    let node = MeshNode::start(&nats, spec.clone());
    let client = Arc::new(Client::connect(&nats, "kill9").await);
    client.converged(&[&node]).await;

    // Four writers increment their own counter until the node dies; each
    // counts the increments the node acknowledged and those it sent.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let (client, acked, sent) = (client.clone(), acked.clone(), sent.clone());
            tokio::spawn(async move {
                let agent = format!("counter/k{i}");
                loop {
                    sent[i].fetch_add(1, Ordering::SeqCst);
                    let response = client
                        .call_with_timeout(Some("node-0"), &agent, json!({"add": 1}), Some(500))
                        .await;
                    match response {
                        mesh::gateway::Response::Ok(_) => acked[i].fetch_add(1, Ordering::SeqCst),
                        mesh::gateway::Response::Error(_) => break,
                    };
                }
            })
        })
        .collect();

    wait_until(
        "100 acknowledged increments",
        Duration::from_secs(20),
        || {
            let total: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
            async move { (total >= 100).then_some(()) }
        },
    )
    .await;
    node.signal(libc::SIGKILL);
    drop(node);
    // A call in flight when the node died counts as sent, not acknowledged.
    for writer in writers {
        writer.abort();
    }

    let node = MeshNode::start(&nats, spec);
    client.converged(&[&node]).await;
    for i in 0..4 {
        let got = counter_value(&client, "node-0", &format!("counter/k{i}")).await as u64;
        let (acked, sent) = (
            acked[i].load(Ordering::SeqCst),
            sent[i].load(Ordering::SeqCst),
        );
        assert!(got >= acked, "counter/k{i}: {got} < {acked} acknowledged");
        assert!(got <= sent, "counter/k{i}: {got} > {sent} sent");
    }
}

#[tokio::test]
async fn replicated_state_survives_losing_the_host_and_its_disk() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let a = MeshNode::start(
        &nats,
        durable_spec("repl", "node-a", "fr-par-1", root.path()),
    );
    let b = MeshNode::start(
        &nats,
        durable_spec("repl", "node-b", "nl-ams-1", root.path()),
    );
    let client = Client::connect(&nats, "repl").await;
    client.converged(&[&a, &b]).await;

    // An agent that node-a hosts, with acknowledged increments.
    let mut agent = String::new();
    for i in 0..100 {
        let name = format!("rcounter/r{i}");
        if client.locate("node-b", &name).await == "node-a" {
            agent = name;
            break;
        }
    }
    for n in 1..=25 {
        let reply = ok(client.call(Some("node-b"), &agent, json!({"add": 1})).await);
        assert_eq!(reply, json!({"value": n}));
    }

    // The host and its disk are gone.
    a.signal(libc::SIGKILL);
    drop(a);
    std::fs::remove_dir_all(root.path().join("node-a")).unwrap();
    wait_until("node-b to drop node-a", Duration::from_secs(10), || async {
        let names = client.linked_names("node-b").await?;
        (names == ["node-b"]).then_some(())
    })
    .await;

    assert_eq!(counter_value(&client, "node-b", &agent).await, 25);
    assert!(client.agents("node-b").await.contains(&agent));
    let log = b.log_text();
    assert!(
        log.contains("from=\"replicated bucket\"") || log.contains("from=replicated bucket"),
        "{log}"
    );
}

#[tokio::test]
async fn a_wiped_node_restores_from_its_snapshot_and_others_restore_single_agents() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let spec_a = durable_spec("snap", "node-a", "fr-par-1", root.path());
    let a = MeshNode::start(&nats, spec_a.clone());
    let client = Client::connect(&nats, "snap").await;
    client.converged(&[&a]).await;
    for i in 0..10 {
        ok(client
            .call(
                Some("node-a"),
                &format!("counter/s{i}"),
                json!({"add": i + 1}),
            )
            .await);
    }
    let out = meshctl_ok(&nats.url(), "snap", &["snapshot", "--node", "node-a"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 agents"));

    // Wipe the node's disk (its snapshots live elsewhere) and restart it.
    a.signal(libc::SIGKILL);
    drop(a);
    std::fs::remove_dir_all(root.path().join("node-a")).unwrap();
    let a = MeshNode::start(&nats, spec_a);
    client.converged(&[&a]).await;
    for i in 0..10 {
        assert_eq!(
            counter_value(&client, "node-a", &format!("counter/s{i}")).await,
            i + 1
        );
    }
    assert!(a.log_text().contains("empty store restored from snapshot"));

    // Another node that never hosted these agents finds them in node-a's
    // snapshot once node-a is gone.
    let b = MeshNode::start(
        &nats,
        durable_spec("snap", "node-b", "nl-ams-1", root.path()),
    );
    client.converged(&[&a, &b]).await;
    a.signal(libc::SIGKILL);
    drop(a);
    wait_until("node-b to drop node-a", Duration::from_secs(10), || async {
        let names = client.linked_names("node-b").await?;
        (names == ["node-b"]).then_some(())
    })
    .await;
    assert_eq!(counter_value(&client, "node-b", "counter/s3").await, 4);

    // Point in time: change it, then restore just that agent.
    ok(client
        .call(Some("node-b"), "counter/s3", json!({"add": 100}))
        .await);
    let out = meshctl_ok(
        &nats.url(),
        "snap",
        &["restore", "--agent", "counter/s3", "--from", "node-a"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored 1 agents on node-b"));
    assert_eq!(counter_value(&client, "node-b", "counter/s3").await, 4);

    // Restores in a row (the whole node, then one agent) leave the agent
    // writable: a restore never fences the agent's next activation.
    for args in [
        &["restore", "--node", "node-b", "--from", "node-a"][..],
        &["restore", "--agent", "counter/s3", "--from", "node-a"][..],
    ] {
        meshctl_ok(&nats.url(), "snap", args);
    }
    let reply = ok(client
        .call(Some("node-b"), "counter/s3", json!({"add": 1}))
        .await);
    assert_eq!(reply, json!({"value": 5}));
}

#[tokio::test]
async fn an_agent_failing_back_prefers_a_newer_snapshot_to_its_old_copy_on_disk() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().unwrap();
    let spec_a = durable_spec("back", "node-a", "fr-par-1", root.path());
    let spec_b = durable_spec("back", "node-b", "fr-par-1", root.path());
    let a = MeshNode::start(&nats, spec_a.clone());
    let client = Client::connect(&nats, "back").await;
    client.converged(&[&a]).await;
    for _ in 0..3 {
        ok(client
            .call(Some("node-a"), "counter/fb", json!({"add": 1}))
            .await);
    }

    // node-a dies with 3 on its disk and no snapshot; node-b starts the
    // counter afresh, takes it to 5 and snapshots it.
    let b = MeshNode::start(&nats, spec_b);
    client.converged(&[&a, &b]).await;
    a.signal(libc::SIGKILL);
    drop(a);
    for _ in 0..5 {
        let add = json!({"add": 1});
        client
            .call_until_ok(Some("node-b"), "counter/fb", add, FAILOVER)
            .await;
    }
    assert_eq!(
        counter_value(&client, "node-b", "counter/fb").await,
        5,
        "no snapshot of node-a yet"
    );
    meshctl_ok(&nats.url(), "back", &["snapshot", "--node", "node-b"]);

    // node-a returns, node-b dies: the counter fails back to node-a, whose
    // disk holds the older 3; node-b's snapshot holds the newer 5.
    let a = MeshNode::start(&nats, spec_a);
    client.converged(&[&a, &b]).await;
    b.signal(libc::SIGKILL);
    drop(b);
    assert_eq!(counter_value(&client, "node-a", "counter/fb").await, 5);
}
