//! Zones: topology files, draining a node, rebalancing onto a joining zone.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::gateway::Response;
use serde_json::json;
use support::{activations, meshctl, meshctl_ok, ok, wait_until, Client, MeshNode, Nats, NodeSpec};

/// Callers adding one at a time to each agent until stopped, keeping
/// count of what was acknowledged and of every error code seen.
struct Writers {
    agents: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<Vec<AtomicU64>>,
    unsure: Arc<Vec<AtomicU64>>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(client: &Arc<Client>, agents: &[String]) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicU64>> = Arc::new(agents.iter().map(|_| 0.into()).collect());
        let unsure: Arc<Vec<AtomicU64>> = Arc::new(agents.iter().map(|_| 0.into()).collect());
        let errors = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| {
                let (client, stop, agent) = (client.clone(), stop.clone(), agent.clone());
                let (acked, unsure, errors) = (acked.clone(), unsure.clone(), errors.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let add = json!({"add": 1});
                        match client
                            .call_with_timeout(None, &agent, add, Some(3000))
                            .await
                        {
                            Response::Ok(_) => acked[i].fetch_add(1, Ordering::SeqCst),
                            Response::Error(e) => {
                                // Refusals did not apply; anything else may have.
                                if e.code != "unavailable" {
                                    unsure[i].fetch_add(1, Ordering::SeqCst);
                                }
                                *errors.lock().unwrap().entry(e.code).or_default() += 1;
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Writers {
            agents: agents.to_vec(),
            stop,
            acked,
            unsure,
            errors,
            tasks,
        }
    }

    fn acknowledged(&self) -> u64 {
        self.acked.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    async fn more(&self, what: &str, n: u64) {
        let target = self.acknowledged() + n;
        wait_until(what, Duration::from_secs(30), || {
            let done = self.acknowledged();
            async move { (done >= target).then_some(()) }
        })
        .await;
    }

    /// Stops writing; checks that every counter holds every acknowledged
    /// increment, and that callers saw no error but retryable ones.
    async fn stop_and_check(self, client: &Client) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        let retryable = ["unavailable", "node_lost", "timeout"];
        assert!(
            errors.keys().all(|code| retryable.contains(&code.as_str())),
            "callers saw errors beyond retries: {errors:?}"
        );
        for (i, agent) in self.agents.iter().enumerate() {
            let reply = client
                .call_until_ok(None, agent, json!({"get": {}}), Duration::from_secs(15))
                .await;
            let value = reply["value"].as_u64().unwrap();
            let acked = self.acked[i].load(Ordering::SeqCst);
            let unsure = self.unsure[i].load(Ordering::SeqCst);
            assert!(
                value >= acked,
                "{agent}: {value} < {acked} acknowledged (state lost)"
            );
            assert!(
                value <= acked + unsure,
                "{agent}: {value} > {acked} + {unsure}"
            );
        }
    }
}

/// A node spec sharing `snapshots` (so `local` agents can move) and
/// reading `topology`, if given.
fn spec(name: &str, zone: &str, snapshots: &Path, topology: Option<&Path>) -> NodeSpec {
    let mut spec = NodeSpec::new("zones", name, zone);
    spec.extra = vec![
        "--snapshots".into(),
        format!("file://{}", snapshots.display()),
    ];
    if let Some(path) = topology {
        spec.extra.push("--topology".into());
        spec.extra.push(path.display().to_string());
    }
    spec
}

#[tokio::test]
async fn topology_check_names_each_problem_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let shown = path.display().to_string();
        // No NATS is needed: the URL leads nowhere on purpose.
        let out = meshctl(
            "nats://127.0.0.1:1",
            "zones",
            &["topology", "check", &shown],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            path,
        )
    };
    let node = "[[node]]\nname = \"a\"\nzone = \"fr-par-1\"\nkind = \"instance\"\n";
    let (code, stdout, _, path) = check(
        "good.toml",
        &format!("{node}[policy.counter]\nzones = [\"fr-par-1\"]\nspread = true\n"),
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("{}: ok: 1 nodes, 1 policies (counter)", path.display())
    );

    let cases = [
        (
            "[[node]]\nname = \"a\"\nzone = \"fr-par-7\"\nkind = \"instance\"\n".to_owned(),
            "node \"a\": unknown zone \"fr-par-7\": not a Scaleway zone and not declared in [[zone]]",
        ),
        (
            "[[zone]]\nname = \"nl-ams-4\"\nregion = \"fr-par\"\n".to_owned(),
            "zone \"nl-ams-4\": zone \"nl-ams-4\" is outside region \"fr-par\" (its region is \"nl-ams\")",
        ),
        (format!("{node}{node}"), "duplicate node name \"a\""),
        (
            "[[node]]\nname = \"a\"\nzone = \"fr-par-1\"\nkind = \"vm\"\n".to_owned(),
            "node \"a\": unknown node kind \"vm\": expected elastic-metal or instance",
        ),
        (
            format!("{node}[policy.trainer]\ncapabilities = [\"gpu\"]\n"),
            "policy trainer: no node satisfies it (capabilities gpu)",
        ),
    ];
    for (i, (text, message)) in cases.iter().enumerate() {
        let (code, _, stderr, path) = check(&format!("bad-{i}.toml"), text);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr, format!("meshctl: {}: {message}", path.display()));
    }

    // A node refuses a bad topology file at start, with the same line, and
    // a zone the file does not know.
    let (_, _, _, bad) = check("bad-node.toml", &cases[2].0);
    let nats = Nats::start().await;
    let mut node = MeshNode::start(&nats, spec("n", "fr-par-1", dir.path(), Some(&bad)));
    assert_eq!(node.exited(Duration::from_secs(10)).await.code(), Some(2));
    let expected = format!("mesh-node: {}: duplicate node name \"a\"", bad.display());
    assert!(node.log_text().contains(&expected), "{}", node.log_text());
    let mut node = MeshNode::start(&nats, spec("n", "local-1", dir.path(), Some(&path)));
    assert_eq!(node.exited(Duration::from_secs(10)).await.code(), Some(2));
    assert!(
        node.log_text().contains(
            "invalid value \"local-1\" for zone: not a Scaleway zone and not declared in"
        ),
        "{}",
        node.log_text()
    );
}

#[tokio::test]
async fn a_drained_node_ends_with_no_agents_while_callers_only_retry() {
    let nats = Nats::start().await;
    let shared = tempfile::tempdir().unwrap();
    let zones = ["fr-par-1", "fr-par-2", "nl-ams-1"];
    let nodes: Vec<MeshNode> = (0..3)
        .map(|i| {
            MeshNode::start(
                &nats,
                spec(&format!("node-{i}"), zones[i], shared.path(), None),
            )
        })
        .collect();
    let client = Arc::new(Client::connect(&nats, "zones").await);
    client.converged(&nodes.iter().collect::<Vec<_>>()).await;

    // Local and replicated counters, some on the node to drain.
    let agents: Vec<String> = (0..12)
        .map(|i| format!("{}/d{i}", if i % 2 == 0 { "counter" } else { "rcounter" }))
        .collect();
    for agent in &agents {
        ok(client.call(None, agent, json!({"add": 0})).await);
    }
    let mut on_victim = 0;
    for agent in &agents {
        if client.agents("node-1").await.contains(agent) {
            on_victim += 1;
        }
    }
    assert!(on_victim > 0, "no agent on node-1 to drain");
    let writers = Writers::start(&client, &agents);
    writers.more("writes before the drain", 50).await;

    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || meshctl_ok(&url, "zones", &["drain", "node-1"]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("draining node-1: "), "{text}");
    assert!(text.contains("node-1 is drained"), "{text}");
    assert!(client.agents("node-1").await.is_empty());
    writers.more("writes after the drain", 50).await;

    // Every node knows it is draining: new agents never land there.
    for observer in ["node-0", "node-2"] {
        let what = format!("{observer} to see node-1 draining");
        wait_until(&what, Duration::from_secs(10), || async {
            let members = client.members(observer).await?;
            members
                .iter()
                .any(|m| m.name == "node-1" && m.draining)
                .then_some(())
        })
        .await;
    }
    for i in 0..30 {
        let agent = format!("echo/new{i}");
        ok(client.call(None, &agent, json!({"hi": i})).await);
        assert_ne!(client.locate("node-0", &agent).await, "node-1", "{agent}");
    }
    assert!(
        client.agents("node-1").await.is_empty(),
        "node-1 took new agents"
    );
    writers.stop_and_check(&client).await;

    // Undrained, it takes the agents placement gives it again: they move
    // and activate there at their next message.
    meshctl_ok(&nats.url(), "zones", &["undrain", "node-1"]);
    wait_until(
        "node-1 to host agents again",
        Duration::from_secs(20),
        || async {
            for agent in &agents {
                client
                    .call_until_ok(None, agent, json!({"get": {}}), Duration::from_secs(10))
                    .await;
            }
            (!client.agents("node-1").await.is_empty()).then_some(())
        },
    )
    .await;
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    for (agent, list) in activations(&refs) {
        let epochs: Vec<u64> = list.iter().map(|(e, _)| *e).collect();
        let mut unique = epochs.clone();
        unique.dedup();
        assert_eq!(
            epochs, unique,
            "{agent} activated twice under one epoch: {list:?}"
        );
    }
}

#[tokio::test]
async fn agents_move_to_a_joining_zone_once_with_their_state() {
    let nats = Nats::start().await;
    let shared = tempfile::tempdir().unwrap();
    // Counters prefer nl-ams-1, which has no node yet.
    let topology = shared.path().join("topology.toml");
    let policy =
        "[policy.counter]\nzones = [\"nl-ams-1\"]\n\n[policy.rcounter]\nzones = [\"nl-ams-1\"]\n";
    std::fs::write(&topology, policy).unwrap();
    let snapshots = shared.path().join("snapshots");
    let first: Vec<MeshNode> = ["fr-par-1", "fr-par-2"]
        .iter()
        .enumerate()
        .map(|(i, zone)| {
            MeshNode::start(
                &nats,
                spec(&format!("node-{i}"), zone, &snapshots, Some(&topology)),
            )
        })
        .collect();
    let client = Arc::new(Client::connect(&nats, "zones").await);
    client.converged(&first.iter().collect::<Vec<_>>()).await;
    let agents: Vec<String> = (0..16)
        .map(|i| format!("{}/j{i}", if i % 2 == 0 { "counter" } else { "rcounter" }))
        .collect();
    for agent in &agents {
        ok(client.call(None, agent, json!({"add": 0})).await);
    }
    let writers = Writers::start(&client, &agents);
    writers.more("writes before the join", 50).await;

    // The new zone comes up: every counter moves there, under load.
    let joiner = MeshNode::start(
        &nats,
        spec("node-2", "nl-ams-1", &snapshots, Some(&topology)),
    );
    let all: Vec<&MeshNode> = first.iter().chain([&joiner]).collect();
    client.converged(&all).await;
    wait_until(
        "every counter on node-2",
        Duration::from_secs(30),
        || async {
            let there = client.agents("node-2").await;
            agents.iter().all(|a| there.contains(a)).then_some(())
        },
    )
    .await;
    writers.more("writes after the move", 50).await;
    for node in ["node-0", "node-1"] {
        let left = client.agents(node).await;
        assert!(
            left.iter().all(|a| !agents.contains(a)),
            "{node} still has {left:?}"
        );
    }
    writers.stop_and_check(&client).await;

    // Each agent: one activation per epoch, the last on node-2, and the old
    // hosts logged the handoff.
    let seen = activations(&all);
    for agent in &agents {
        let list = &seen[agent];
        let mut epochs: Vec<u64> = list.iter().map(|(e, _)| *e).collect();
        epochs.dedup();
        assert_eq!(epochs.len(), list.len(), "{agent}: {list:?}");
        assert_eq!(list.last().unwrap().1, "node-2", "{agent}: {list:?}");
    }
    let moved: usize = first
        .iter()
        .map(|n| n.log_text().matches("agent moved").count())
        .sum();
    assert!(moved >= agents.len(), "{moved} handoffs logged");
}
