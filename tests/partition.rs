//! Hosts with their own addresses in network namespaces, one NATS server
//! and one node per zone, and a zone cut off from the others.

#![allow(missing_docs)]

#[path = "netns_support.rs"]
mod netns_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use netns_support::{
    activations_in, lab_unavailable, nats_call_async, nats_cluster, spawn_logged, Lab, NatsReply,
    NsChild,
};
use serde_json::{json, Value};

const CLUSTER: &str = "part";
/// How long the zone stays cut off.
const CUT: Duration = Duration::from_secs(10);

/// The mesh as the test client (a host of its own) reaches it.
struct Mesh<'a> {
    lab: &'a Lab,
    /// The NATS server the client talks to (in the majority).
    url: String,
}

impl Mesh<'_> {
    async fn request(&self, subject: &str, body: &Value) -> Option<Value> {
        let body = body.to_string();
        let wait = Duration::from_secs(4);
        match nats_call_async(self.lab, "client", &self.url, subject, &body, wait).await {
            NatsReply::Reply(text) => Some(serde_json::from_str(&text).expect("JSON answers")),
            _ => None,
        }
    }

    /// Calls `agent` through `node`'s gateway: the reply value, or the
    /// error code.
    async fn call(&self, node: &str, agent: &str, msg: Value) -> Result<Value, String> {
        let subject = format!("mesh.{CLUSTER}.node.{node}.gateway");
        let body = json!({"agent": agent, "msg": msg, "timeout_ms": 2000});
        match self.request(&subject, &body).await {
            Some(answer) if answer.get("ok").is_some() => Ok(answer["ok"].clone()),
            Some(answer) => Err(answer["error"]["code"].as_str().unwrap_or("?").to_owned()),
            None => Err("no answer".into()),
        }
    }

    /// Adds one to `counter`, which holds `before`, exactly once: retried
    /// while the mesh says it was not applied, and read back when the
    /// outcome is unknown.
    async fn add_once(&self, node: &str, counter: &str, before: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.call(node, counter, json!({"add": 1})).await {
                Ok(_) => return,
                Err(code) if code == "unavailable" => {}
                Err(_) => {
                    let now = self.call_until_ok(node, counter, json!({"get": {}})).await;
                    if now["value"] == before + 1 {
                        return;
                    }
                    assert_eq!(now["value"], before, "{counter} changed behind our back");
                }
            }
            assert!(Instant::now() < deadline, "{counter} never took the add");
        }
    }

    /// Calls until the agent answers, as a client riding out a failover.
    async fn call_until_ok(&self, node: &str, agent: &str, msg: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.call(node, agent, msg.clone()).await {
                Ok(value) => return value,
                Err(code) => assert!(
                    Instant::now() < deadline,
                    "{agent} never answered through {node}: last {code}"
                ),
            }
        }
    }

    async fn admin(&self, node: &str, body: Value) -> Option<Value> {
        let subject = format!("mesh.{CLUSTER}.node.{node}.admin");
        let answer = self.request(&subject, &body).await?;
        Some(answer["ok"].clone())
    }

    async fn locate(&self, node: &str, agent: &str) -> String {
        let answer = self
            .admin(node, json!({"op": "locate", "agent": agent}))
            .await;
        answer.expect("node answers")["node"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until `node` sees exactly `names` with a link up.
    async fn linked(&self, node: &str, names: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(view) = self.admin(node, json!({"op": "members"})).await {
                let linked: Vec<&str> = view["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["linked"] == true)
                    .map(|m| m["name"].as_str().unwrap())
                    .collect();
                if linked == names {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{node} never linked to {names:?}"
            );
        }
    }
}

fn start_node(lab: &Lab, host: &str, nats_url: &str, root: &Path) -> NsChild {
    let addr = lab.host(host).addr;
    let zone = lab.host(host).zone.clone();
    let dir = root.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), "partition-test-secret").unwrap();
    let link = format!("{addr}:7400");
    let mut command = lab.command(host, env!("CARGO_BIN_EXE_mesh-node"));
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .args(["--cluster", CLUSTER, "--name", &format!("node-{host}")])
        .args(["--zone", &zone, "--nats", nats_url])
        .args(["--listen", &link, "--advertise", &link])
        .args(["--heartbeat", "200ms", "--member-timeout", "1500ms"])
        .args(["--kv-replicas", "3"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--secret-file")
        .arg(dir.join("secret"))
        .arg("--insecure");
    spawn_logged(&mut command, &dir.join("node.log"))
}

/// Every "agent activated" line: agent -> [(epoch, node)].
fn activations(nodes: &[(&str, &NsChild)]) -> BTreeMap<String, Vec<(u64, String)>> {
    activations_in(nodes.iter().map(|(name, node)| (*name, node.log_text())))
}

#[tokio::test]
async fn a_zone_cut_off_stops_serving_and_the_majority_takes_over_once() {
    if let Some(why) = lab_unavailable() {
        panic!("this test needs a network lab: {why} (run bootstrap/install-deps.sh as root)");
    }
    let lab = Lab::new(&[
        ("client", "fr-par-1"),
        ("a", "fr-par-1"),
        ("b", "nl-ams-1"),
        ("c", "pl-waw-1"),
    ]);
    let root = tempfile::tempdir().unwrap();
    let servers = nats_cluster(&lab, &["a", "b", "c"], root.path()).await;
    let url = |host: &str| servers.iter().find(|s| s.host == host).unwrap().url.clone();
    let nodes: Vec<(&str, NsChild)> = ["a", "b", "c"]
        .iter()
        .map(|h| (*h, start_node(&lab, h, &url(h), root.path())))
        .collect();
    let mesh = Mesh {
        lab: &lab,
        url: url("a"),
    };
    let all = ["node-a", "node-b", "node-c"];
    for name in all {
        mesh.linked(name, &all).await;
    }

    // Probes and replicated counters that live in zone c.
    let mut probes = Vec::new();
    let mut counters = Vec::new();
    for i in 0..60 {
        let (probe, counter) = (format!("probe/p{i}"), format!("rcounter/r{i}"));
        if probes.len() < 2 && mesh.locate("node-a", &probe).await == "node-c" {
            probes.push(probe);
        }
        if counters.len() < 2 && mesh.locate("node-a", &counter).await == "node-c" {
            counters.push(counter);
        }
    }
    assert!(
        !probes.is_empty() && !counters.is_empty(),
        "nothing placed in zone c"
    );
    for probe in &probes {
        let reply = mesh
            .call_until_ok("node-a", probe, json!({"whoami": {}}))
            .await;
        assert_eq!(reply["node"], "node-c");
    }
    for counter in &counters {
        for before in 0..5 {
            mesh.add_once("node-a", counter, before).await;
        }
    }

    // Zone c is cut off from everyone, its NATS server included.
    lab.partition(&["c"]);
    let cut_at = Instant::now();
    for probe in &probes {
        let reply = mesh
            .call_until_ok("node-a", probe, json!({"whoami": {}}))
            .await;
        assert_ne!(
            reply["node"], "node-c",
            "{probe} still served by the cut-off zone"
        );
    }
    for counter in &counters {
        let reply = mesh
            .call_until_ok("node-b", counter, json!({"get": {}}))
            .await;
        assert_eq!(
            reply,
            json!({"value": 5}),
            "{counter} lost acknowledged writes"
        );
        mesh.add_once("node-b", counter, 5).await;
    }
    let node_c = &nodes[2].1;
    node_c.wait_for_log("lease lapsed", Duration::from_secs(10));

    // The rest of the ten seconds passes with the zone still cut off.
    tokio::time::sleep(CUT.saturating_sub(cut_at.elapsed())).await;
    lab.heal();
    for name in all {
        mesh.linked(name, &all).await;
    }

    // Zone c is back, and never answers for the agents it lost.
    for probe in &probes {
        for _ in 0..3 {
            let reply = mesh
                .call_until_ok("node-c", probe, json!({"whoami": {}}))
                .await;
            assert_ne!(reply["node"], "node-c", "{probe} served by the old owner");
        }
    }
    for counter in &counters {
        let reply = mesh
            .call_until_ok("node-c", counter, json!({"get": {}}))
            .await;
        assert_eq!(reply, json!({"value": 6}));
    }

    // An epoch belongs to one node (a node may re-activate an agent it
    // still owns under the same epoch); the takeover's epoch is later.
    let logs: Vec<(&str, &NsChild)> = nodes.iter().map(|(n, c)| (*n, c)).collect();
    let history = activations(&logs);
    for agent in probes.iter().chain(&counters) {
        let list = &history[agent];
        let mut owners: BTreeMap<u64, &str> = BTreeMap::new();
        for (epoch, node) in list {
            let first = owners.entry(*epoch).or_insert(node);
            assert_eq!(first, node, "{agent}: epoch {epoch} on two nodes: {list:?}");
        }
        let first_on_c = list.iter().filter(|(_, n)| n == "c").map(|(e, _)| *e).min();
        let later_elsewhere = list.iter().filter(|(_, n)| n != "c").map(|(e, _)| *e).max();
        assert!(later_elsewhere > first_on_c, "{agent}: {list:?}");
    }
}
