//! Supervision and failover: crashing agents, dying nodes.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use serde_json::json;
use support::{error_code, meshctl, ok, Client, MeshNode, Nats, NodeSpec};

#[tokio::test]
async fn a_poisoned_agent_restarts_then_fails_and_the_node_serves_others() {
    let nats = Nats::start().await;
    let node = MeshNode::start(&nats, NodeSpec::new("poison", "node-0", "fr-par-1"));
    let client = Client::connect(&nats, "poison").await;
    client.converged(&[&node]).await;
    let whoami = json!({"whoami": {}});

    let reply = ok(client.call(None, "probe/p", whoami.clone()).await);
    assert_eq!(reply["handled"], 1);

    // Each poison message crashes it; the next message finds it restarted
    // with fresh state, while other agents keep serving.
    for crash in 1..=3 {
        let code = error_code(
            client
                .call(None, "probe/p", json!({"panic": "poison"}))
                .await,
        );
        assert_eq!(code, "crashed", "crash {crash}");
        let reply = ok(client.call(None, "probe/p", whoami.clone()).await);
        assert_eq!(
            reply["handled"], 1,
            "restarted with fresh state after crash {crash}"
        );
        let reply = ok(client.call(None, "counter/other", json!({"add": 1})).await);
        assert_eq!(reply, json!({"value": crash}));
    }

    // One crash more than the limit (3 in 10 s for probes): failed.
    let code = error_code(
        client
            .call(None, "probe/p", json!({"panic": "poison"}))
            .await,
    );
    assert_eq!(code, "crashed");
    let code = error_code(client.call(None, "probe/p", whoami.clone()).await);
    assert_eq!(code, "failed");
    let out = meshctl(&nats.url(), "poison", &["agents"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("probe/p") && table.contains("failed: crashed 4 times"),
        "{table}"
    );

    // A handler error is an answer, not a crash.
    let code = error_code(client.call(None, "probe/q", json!({"fail": "no"})).await);
    assert_eq!(code, "agent_error");
    let reply = ok(client.call(None, "probe/q", whoami).await);
    assert_eq!(reply["handled"], 2);
    let reply = ok(client.call(None, "counter/other", json!({"get": {}})).await);
    assert_eq!(reply, json!({"value": 3}));
    assert!(node
        .log_text()
        .contains("agent failed: restart limit reached"));
}
