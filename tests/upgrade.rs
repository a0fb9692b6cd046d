//! Rolling upgrades: nodes of two releases in one mesh.
//!
//! The previous release is played by this build started with
//! `--wire-versions 1`: it then speaks exactly the link frames of the
//! release before frame version 2, announces the same, and reads the same
//! state. Building the previous commit instead would double the CI build
//! time for no more coverage of the frames, which fixtures pin byte by byte
//! (see `mesh/src/wire.rs`).

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::time::Duration;

use mesh::gateway::MemberView;
use serde_json::json;
use support::{error_code, ok, wait_until, Client, MeshNode, Nats, NodeSpec};

/// A node of the previous release: frame version 1 only.
fn old_node(nats: &Nats, cluster: &str, name: &str) -> MeshNode {
    let mut spec = NodeSpec::new(cluster, name, "fr-par-1");
    spec.extra = vec!["--wire-versions".into(), "1".into()];
    MeshNode::start(nats, spec)
}

/// A node of this release, logging JSON with debug detail.
fn new_node(nats: &Nats, cluster: &str, name: &str) -> MeshNode {
    let mut spec = NodeSpec::new(cluster, name, "fr-par-2");
    spec.extra = vec!["--log-format".into(), "json".into()];
    spec.env = vec![("RUST_LOG".into(), "info,mesh=debug".into())];
    MeshNode::start(nats, spec)
}

/// The first of `kind/prefix<i>` that `asking` places on `on`.
async fn agent_placed_on(client: &Client, asking: &str, on: &str, kind: &str) -> String {
    for i in 0..200 {
        let agent = format!("{kind}/u{i}");
        if client.locate(asking, &agent).await == on {
            return agent;
        }
    }
    panic!("no {kind} agent is placed on {on}");
}

fn member<'a>(members: &'a [MemberView], name: &str) -> &'a MemberView {
    members
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} is not a member"))
}

/// The `fields` of a JSON log line.
fn fields(line: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(value["fields"].clone())
}

#[tokio::test]
async fn old_and_new_nodes_call_each_other_and_hand_agents_back_and_forth() {
    let nats = Nats::start().await;
    let old = old_node(&nats, "mixed", "old-0");
    let new = new_node(&nats, "mixed", "new-0");
    let client = Client::connect(&nats, "mixed").await;
    client.converged(&[&old, &new]).await;

    // Each side negotiated version 1, and `members` shows both releases.
    let members = client.members("new-0").await.expect("new-0 answers");
    assert_eq!(member(&members, "old-0").wire, "1");
    assert_eq!(member(&members, "new-0").wire, "1-3");
    assert_eq!(member(&members, "new-0").state_versions["counter"], 1);
    let link_up = |log: String| {
        log.lines()
            .filter_map(fields)
            .any(|f| f["message"] == "link up" && f["version"] == 1)
    };
    assert!(link_up(new.log_text()), "new-0 linked with version 1");
    assert!(old.log_text().contains("link up peer=new-0 version=1"));

    // Calls both ways, and an agent calling across the releases.
    let on_old = agent_placed_on(&client, "new-0", "old-0", "counter").await;
    let on_new = agent_placed_on(&client, "old-0", "new-0", "counter").await;
    ok(client.call(Some("new-0"), &on_old, json!({"add": 2})).await);
    ok(client.call(Some("old-0"), &on_new, json!({"add": 3})).await);
    let relay = agent_placed_on(&client, "new-0", "old-0", "relay").await;
    let reply = ok(client
        .call(
            Some("new-0"),
            &relay,
            json!({"to": on_new, "msg": {"get": {}}}),
        )
        .await);
    assert_eq!(reply["reply"]["value"], 3);
    assert_eq!(reply["relay_node"], "old-0");

    // A cast from the new node reaches the old one over version 1 (as a
    // plain cast, since version 1 has no traced cast).
    let cast = json!({"agent": on_old, "msg": {"add": 1}, "cast": true});
    ok(client
        .raw_call("new-0", &serde_json::to_vec(&cast).unwrap())
        .await);
    wait_until(
        "the cast to land on old-0",
        Duration::from_secs(5),
        || async {
            let value = ok(client
                .call(Some("old-0"), &on_old, json!({"get": {}}))
                .await);
            (value["value"] == 3).then_some(())
        },
    )
    .await;

    // Fail over a replicated agent from the old node to the new one...
    let moving = agent_placed_on(&client, "new-0", "old-0", "rcounter").await;
    ok(client.call(Some("new-0"), &moving, json!({"add": 5})).await);
    assert!(client.agents("old-0").await.contains(&moving));
    drop(old);
    let get = json!({"get": {}});
    let value = client
        .call_until_ok(Some("new-0"), &moving, get.clone(), Duration::from_secs(20))
        .await;
    assert_eq!(value["value"], 5);
    assert!(client.agents("new-0").await.contains(&moving));
    ok(client.call(Some("new-0"), &moving, json!({"add": 1})).await);

    // ...and back, to a restarted old node, once the new one dies.
    let old = old_node(&nats, "mixed", "old-0");
    client.converged(&[&old, &new]).await;
    drop(new);
    let value = client
        .call_until_ok(Some("old-0"), &moving, get, Duration::from_secs(20))
        .await;
    assert_eq!(
        value["value"], 6,
        "the state written on new-0 is read by old-0"
    );
    assert!(client.agents("old-0").await.contains(&moving));
}

#[tokio::test]
async fn casts_between_new_nodes_keep_their_trace() {
    let nats = Nats::start().await;
    let a = new_node(&nats, "traced", "new-a");
    let b = new_node(&nats, "traced", "new-b");
    let client = Client::connect(&nats, "traced").await;
    client.converged(&[&a, &b]).await;
    let agent = agent_placed_on(&client, "new-a", "new-b", "counter").await;
    let cast = json!({"agent": agent, "msg": {"add": 1}, "cast": true});
    ok(client
        .raw_call("new-a", &serde_json::to_vec(&cast).unwrap())
        .await);
    let entered = a
        .log_text()
        .lines()
        .filter_map(fields)
        .find(|f| f["message"] == "gateway call" && f["agent"] == agent.as_str())
        .expect("new-a logged the gateway cast");
    let trace = entered["trace"].clone();
    wait_until(
        "new-b to log the cast with its trace",
        Duration::from_secs(5),
        || {
            let found = b
                .log_text()
                .lines()
                .filter_map(fields)
                .any(|f| f["message"] == "cast received" && f["trace"] == trace);
            async move { found.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn peers_without_a_common_version_are_refused_on_both_sides() {
    let nats = Nats::start().await;
    // A release that dropped frame version 1, and one that predates 2.
    let mut spec = NodeSpec::new("split", "only-2", "fr-par-1");
    spec.extra = vec!["--wire-versions".into(), "2".into()];
    let only_2 = MeshNode::start(&nats, spec);
    let only_1 = old_node(&nats, "split", "only-1");
    let _both = new_node(&nats, "split", "both");
    let client = Client::connect(&nats, "split").await;

    // Each side says who it refused and why.
    for (node, peer, theirs, ours) in [(&only_2, "only-1", "1", "2"), (&only_1, "only-2", "2", "1")]
    {
        let line = format!(
            "peer={peer} peer_software={} peer_versions={theirs} our_versions={ours}",
            env!("CARGO_PKG_VERSION")
        );
        let what = format!("{} to refuse {peer}", node.name());
        wait_until(&what, Duration::from_secs(20), || {
            let log = node.log_text();
            let found = log
                .lines()
                .any(|l| l.contains("link refused: no common frame version") && l.contains(&line));
            async move { found.then_some(()) }
        })
        .await;
    }

    // The mesh stays healthy: both link to the node speaking both, see each
    // other as members without a link, and serve calls.
    for (node, other) in [("only-1", "only-2"), ("only-2", "only-1")] {
        let what = format!("{node} to link with both");
        let members = wait_until(&what, Duration::from_secs(20), || async {
            let members = client.members(node).await?;
            // (not a member yet, or not linked yet: wait)
            let linked = members.iter().any(|m| m.name == "both" && m.linked);
            linked.then_some(members)
        })
        .await;
        assert!(!member(&members, other).linked, "{node} linked {other}");
        let agent = format!("counter/from-{node}");
        assert_eq!(
            ok(client.call(Some(node), &agent, json!({"add": 1})).await)["value"],
            1
        );
    }
    let members = wait_until(
        "both to link with both",
        Duration::from_secs(20),
        || async {
            let members = client.members("both").await?;
            (members.len() == 3 && members.iter().all(|m| m.linked)).then_some(members)
        },
    )
    .await;
    assert_eq!(
        member(&members, "only-2").wire,
        "2",
        "members shows each node's versions"
    );

    // A refused pair is not redialed in a loop: one line per peer.
    let refusals = |log: String| log.matches("link refused: no common frame version").count();
    assert_eq!(refusals(only_1.log_text()), 1, "{}", only_1.log_text());
    assert_eq!(refusals(only_2.log_text()), 1, "{}", only_2.log_text());
}

#[tokio::test]
async fn requests_and_announcements_of_an_unknown_version_are_refused_clearly() {
    let nats = Nats::start().await;
    let node = new_node(&nats, "future", "now");
    let client = Client::connect(&nats, "future").await;
    client.converged(&[&node]).await;

    // A gateway call and an operator query of a newer format.
    let call = json!({"v": 2, "agent": "echo/x", "msg": 1});
    let answer = client
        .raw_call("now", &serde_json::to_vec(&call).unwrap())
        .await;
    assert_eq!(error_code(answer), "unsupported_version");
    let admin = async_nats::Request::new().payload(
        serde_json::to_vec(&json!({"v": 9, "op": "members"}))
            .unwrap()
            .into(),
    );
    let subject = mesh::subjects::node_admin("future", "now");
    let reply = client
        .nats
        .send_request(subject.clone(), admin)
        .await
        .unwrap();
    let reply: mesh::gateway::Response = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(error_code(reply), "unsupported_version");
    let current = async_nats::Request::new().payload(
        serde_json::to_vec(&json!({"v": 1, "op": "members"}))
            .unwrap()
            .into(),
    );
    let reply = client.nats.send_request(subject, current).await.unwrap();
    let reply: mesh::gateway::Response = serde_json::from_slice(&reply.payload).unwrap();
    ok(reply);

    // An announcement of a newer format is ignored, said once, and the
    // node keeps serving; only a signed one is read at all, so a forger
    // cannot make nodes log about versions.
    let subject = mesh::subjects::announce("future");
    let forged = json!({"v": 2, "name": "forger", "software": "9.0.0"});
    client
        .nats
        .publish(subject.clone(), serde_json::to_vec(&forged).unwrap().into())
        .await
        .unwrap();
    let future = json!({"v": 2, "name": "from-the-future", "software": "9.0.0", "shape": "new"});
    for i in 0..3 {
        let sealed = mesh::signing::seal_with(
            &NodeSpec::new("future", "x", "z").secret,
            &subject,
            future.to_string(),
            mesh::signing::now_ms() + i,
        );
        client
            .nats
            .publish(subject.clone(), sealed.into())
            .await
            .unwrap();
    }
    client.nats.flush().await.unwrap();
    wait_until(
        "the node to report the announcement",
        Duration::from_secs(5),
        || {
            let found = node.log_text().lines().filter_map(fields).any(|f| {
                f["message"] == "ignored announcements of a format this node does not read"
                    && f["peer"] == "from-the-future"
                    && f["v"] == 2
            });
            async move { found.then_some(()) }
        },
    )
    .await;
    let members = client.members("now").await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    ok(client.call(Some("now"), "echo/x", json!(1)).await);
    let log = node.log_text();
    assert_eq!(
        log.matches("from-the-future").count(),
        1,
        "reported once, not per announcement"
    );
    let version_lines = log
        .lines()
        .filter_map(fields)
        .filter(|f| f["message"] == "ignored announcements of a format this node does not read");
    assert_eq!(
        version_lines.count(),
        1,
        "the forged one is not read: {log}"
    );
}
