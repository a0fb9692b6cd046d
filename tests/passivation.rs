//! Passivation: an idle durable agent stops, leaving its state in storage,
//! and the next message brings it back with that state.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::{ok, wait_until, Client, MeshNode, Nats, NodeSpec};

#[tokio::test]
async fn an_idle_agent_passivates_and_comes_back_with_its_state() {
    let nats = Nats::start().await;
    let mut spec = NodeSpec::new("passivate", "node-0", "fr-par-1");
    spec.extra = vec!["--passivate-after".into(), "1s".into()];
    let node = MeshNode::start(&nats, spec);
    let client = Client::connect(&nats, "passivate").await;
    client.converged(&[&node]).await;

    for _ in 0..3 {
        ok(client
            .call(Some("node-0"), "counter/idle", json!({"add": 2}))
            .await);
    }
    // An echo agent keeps its state in memory only: never passivated.
    ok(client.call(Some("node-0"), "echo/e", json!("hi")).await);
    assert_eq!(client.stats("node-0").await.activations, 2);

    // Left alone, the counter leaves the node's live agents; the echo stays.
    wait_until(
        "the idle counter to passivate",
        Duration::from_secs(15),
        || async {
            let agents = client.agents("node-0").await;
            (!agents.iter().any(|a| a == "counter/idle")).then_some(())
        },
    )
    .await;
    let stats = client.stats("node-0").await;
    assert_eq!(stats.passivations, 1, "only the durable agent passivates");
    assert_eq!(client.agents("node-0").await, vec!["echo/e".to_owned()]);

    // The next message activates it again, with the total it had.
    let reply = ok(client
        .call(Some("node-0"), "counter/idle", json!({"get": {}}))
        .await);
    assert_eq!(reply["value"], 6);
    let stats = client.stats("node-0").await;
    assert_eq!(stats.activations, 3, "the counter was activated again");

    // A busy agent is not passivated: calls every 50 ms for 2.5 s, far
    // more often than its idle time.
    for _ in 0..50 {
        ok(client
            .call(Some("node-0"), "counter/idle", json!({"add": 1}))
            .await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = client.stats("node-0").await;
    assert_eq!(stats.passivations, 1, "a busy agent stayed live");
    assert_eq!(stats.activations, 3);
    let reply = ok(client
        .call(Some("node-0"), "counter/idle", json!({"get": {}}))
        .await);
    assert_eq!(reply["value"], 56);
}

#[tokio::test]
async fn a_bad_passivation_time_is_refused_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .args(["--passivate-after", "soon", "--nats", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("passivate_after"), "stderr: {stderr}");
    assert!(stderr.contains("soon"), "stderr: {stderr}");
}
