//! The mesh core end to end: real `nats-server`, real `mesh-node`
//! processes, messages by name, membership under stop, kill and freeze.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{error_code, meshctl, meshctl_ok, ok, wait_until, Client, MeshNode, Nats, NodeSpec};

const ZONES: [&str; 3] = ["fr-par-1", "nl-ams-1", "pl-waw-1"];

/// Starts `n` nodes of cluster `cluster` in three zones and waits until
/// they all see each other linked.
async fn mesh(nats: &Nats, cluster: &str, n: usize) -> (Vec<MeshNode>, Client) {
    support::start_mesh(nats, cluster, n, &ZONES).await
}

/// The first agent name `kind/prefixN` that `asking` places on `target`.
async fn name_placed_on(client: &Client, asking: &str, target: &str, kind: &str) -> String {
    names_placed_on(client, asking, target, kind, 1)
        .await
        .remove(0)
}

/// The first `n` names of `kind` that `asking` places on `target`.
async fn names_placed_on(
    client: &Client,
    asking: &str,
    target: &str,
    kind: &str,
    n: usize,
) -> Vec<String> {
    let mut found = Vec::new();
    for i in 0..200 {
        let agent = format!("{kind}/{kind}-{i}");
        if client.locate(asking, &agent).await == target {
            found.push(agent);
            if found.len() == n {
                return found;
            }
        }
    }
    panic!("fewer than {n} {kind} names place on {target}");
}

#[tokio::test]
async fn three_nodes_converge_and_reach_one_counter_through_any_node() {
    let nats = Nats::start().await;
    let (nodes, client) = mesh(&nats, "conv", 3).await;

    // Every node's gateway reaches the same counter, wherever it lives.
    let mut expected = 0;
    for node in &nodes {
        expected += 5;
        let reply = ok(client
            .call(Some(node.name()), "counter/alice", json!({"add": 5}))
            .await);
        assert_eq!(reply, json!({"value": expected}));
    }
    for node in &nodes {
        let reply = ok(client
            .call(Some(node.name()), "counter/alice", json!({"get": {}}))
            .await);
        assert_eq!(reply, json!({"value": 15}));
    }

    // The counter is live on exactly one node.
    let mut hosts = Vec::new();
    for node in &nodes {
        if client
            .agents(node.name())
            .await
            .contains(&"counter/alice".to_owned())
        {
            hosts.push(node.name().to_owned());
        }
    }
    assert_eq!(hosts.len(), 1, "counter/alice live on {hosts:?}");

    // meshctl goes through the same gateway and prints the reply JSON.
    let out = meshctl_ok(
        &nats.url(),
        "conv",
        &[
            "call",
            "counter/alice",
            r#"{"add": 1}"#,
            "--node",
            nodes[2].name(),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"value":16}"#
    );

    let out = meshctl(&nats.url(), "conv", &["members", "--json"]);
    assert!(out.status.success());
    let members: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let zones: Vec<&str> = members
        .iter()
        .map(|m| m["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones.len(), 3);
    for zone in ZONES {
        assert!(zones.contains(&zone), "{zone} missing from {zones:?}");
    }
}

#[tokio::test]
async fn an_agent_calls_an_agent_on_another_node_over_a_link() {
    let nats = Nats::start().await;
    let (nodes, client) = mesh(&nats, "relay", 2).await;
    let (a, b) = (nodes[0].name(), nodes[1].name());

    let relay = name_placed_on(&client, a, a, "relay").await;
    let counter = name_placed_on(&client, a, b, "counter").await;
    let before_a = client.stats(a).await;
    let before_b = client.stats(b).await;

    // Enter through b: the relay runs on a, and calls the counter on b.
    let message = json!({"to": counter, "msg": {"add": 7}});
    let reply = ok(client.call(Some(b), &relay, message).await);
    assert_eq!(reply["relay_node"], a);
    assert_eq!(reply["reply"], json!({"value": 7}));

    // The relay's call crossed the link from a to b, and back.
    let after_a = client.stats(a).await;
    let after_b = client.stats(b).await;
    // b's gateway forwarded the relay call to a, and a's relay called b.
    assert!(
        after_a.calls_in > before_a.calls_in,
        "a got no call frame from b"
    );
    assert!(
        after_a.calls_out > before_a.calls_out,
        "a sent no call frame"
    );
    assert!(
        after_b.calls_in > before_b.calls_in,
        "b got no call frame from a"
    );
    assert!(client.agents(b).await.contains(&counter));
    assert!(client.agents(a).await.contains(&relay));
    assert!(!client.agents(a).await.contains(&counter));
}

#[tokio::test]
async fn casts_batched_on_a_link_all_arrive_before_the_call_that_follows() {
    let nats = Nats::start().await;
    // All 500 casts of a round may be in a's gateway at once.
    let nodes: Vec<MeshNode> = (0..2)
        .map(|i| {
            let mut spec = NodeSpec::new("batch", &format!("node-{i}"), ZONES[i]);
            spec.extra = vec!["--gateway-max-inflight".into(), "500".into()];
            MeshNode::start(&nats, spec)
        })
        .collect();
    let client = Client::connect(&nats, "batch").await;
    client.converged(&[&nodes[0], &nodes[1]]).await;
    let (a, b) = (nodes[0].name(), nodes[1].name());
    let counters = names_placed_on(&client, a, b, "counter", 2).await;

    // Many casts in flight at once through a's gateway share batches on
    // the link to b; each is acknowledged once queued on the link, and the
    // call that follows goes on the same link after all of them. They go
    // to two counters in runs of 7, so that b hands runs of casts to one
    // agent to its actor together, and the runs alternate.
    let mut totals = [0, 0];
    for round in 1..=3 {
        let casts = (1..=500).map(|i| {
            let counter = &counters[(i as usize / 7) % 2];
            let body = json!({"agent": counter, "msg": {"add": i * round}, "cast": true});
            let client = &client;
            async move {
                ok(client
                    .raw_call(a, &serde_json::to_vec(&body).unwrap())
                    .await)
            }
        });
        futures::future::join_all(casts).await;
        for i in 1..=500i64 {
            totals[(i as usize / 7) % 2] += i * round;
        }
        for (counter, total) in counters.iter().zip(totals) {
            let reply = ok(client.call(Some(a), counter, json!({"get": {}})).await);
            assert_eq!(reply, json!({"value": total}), "{counter}, round {round}");
        }
    }
    let on_b = client.agents(b).await;
    assert!(counters.iter().all(|c| on_b.contains(c)));
}

#[tokio::test]
async fn a_stopped_node_leaves_every_view_within_one_second() {
    let nats = Nats::start().await;
    let (mut nodes, client) = mesh(&nats, "bye", 3).await;

    let leaving = nodes.pop().unwrap();
    let gone = leaving.name().to_owned();
    let started = Instant::now();
    leaving.signal(libc::SIGTERM);
    for node in &nodes {
        let what = format!("{} to drop {gone}", node.name());
        wait_until(&what, Duration::from_secs(5), || async {
            let members = client.members(node.name()).await?;
            (!members.iter().any(|m| m.name == gone)).then_some(())
        })
        .await;
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");

    let mut leaving = leaving;
    let status = leaving.exited(Duration::from_secs(5)).await;
    assert!(status.success(), "graceful stop exited with {status}");
    assert!(leaving.log_text().contains("node stopped"));
}

#[tokio::test]
async fn a_killed_node_leaves_every_view_within_the_member_timeout() {
    let nats = Nats::start().await;
    let (nodes, client) = mesh(&nats, "kill", 3).await;
    let victim = &nodes[1];
    let timeout = victim.spec.timeout();

    let counter = name_placed_on(&client, nodes[0].name(), victim.name(), "counter").await;
    victim.signal(libc::SIGKILL);
    let started = Instant::now();
    for node in [&nodes[0], &nodes[2]] {
        let what = format!("{} to drop {}", node.name(), victim.name());
        wait_until(&what, timeout * 3, || async {
            let members = client.members(node.name()).await?;
            (!members.iter().any(|m| m.name == victim.name())).then_some(())
        })
        .await;
    }
    // Detection takes the timeout plus at most one check interval; allow
    // a heartbeat of slack for a loaded machine.
    let elapsed = started.elapsed();
    assert!(
        elapsed < timeout + Duration::from_secs(1),
        "took {elapsed:?}"
    );

    // Once the victim's lease expired, a survivor takes the agent over.
    let add = json!({"add": 1});
    let reply = client
        .call_until_ok(
            Some(nodes[0].name()),
            &counter,
            add,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(reply, json!({"value": 1}));
}

#[tokio::test]
async fn a_frozen_node_leaves_views_and_its_calls_end_then_it_rejoins() {
    let nats = Nats::start().await;
    let (nodes, client) = mesh(&nats, "freeze", 2).await;
    let (a, frozen) = (&nodes[0], &nodes[1]);
    let counter = name_placed_on(&client, a.name(), frozen.name(), "counter").await;
    ok(client
        .call(Some(a.name()), &counter, json!({"add": 1}))
        .await);

    frozen.freeze().await;

    // A call to an agent on the frozen node ends within its deadline.
    let started = Instant::now();
    let response = client
        .call_with_timeout(Some(a.name()), &counter, json!({"get": {}}), Some(700))
        .await;
    let code = error_code(response);
    assert!(
        ["timeout", "node_lost"].contains(&code.as_str()),
        "unexpected {code}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let timeout = frozen.spec.timeout();
    wait_until("a to drop the frozen node", timeout * 3, || async {
        let members = client.members(a.name()).await?;
        (!members.iter().any(|m| m.name == frozen.name())).then_some(())
    })
    .await;

    frozen.signal(libc::SIGCONT);
    client.converged(&[a, frozen]).await;
    let reply = ok(client
        .call(Some(frozen.name()), "echo/back", json!({"hi": 1}))
        .await);
    assert_eq!(reply, json!({"hi": 1}));
    assert!(frozen.log_text().contains("this node was paused"));
}

#[tokio::test]
async fn a_node_with_the_wrong_secret_is_refused_and_both_keep_running() {
    let nats = Nats::start().await;
    let good = MeshNode::start(&nats, NodeSpec::new("secret", "node-a", "fr-par-1"));
    let mut spec = NodeSpec::new("secret", "node-b", "nl-ams-1");
    spec.secret = "another-secret-entirely".into();
    let bad = MeshNode::start(&nats, spec);
    let client = Client::connect(&nats, "secret").await;

    // Announcements are signed with the secret: each side refuses the
    // other's, so neither ever dials the other.
    for node in [&good, &bad] {
        let what = format!("{} to log the refused announcements", node.name());
        wait_until(&what, Duration::from_secs(10), || {
            let log = node.log_text();
            async move {
                log.contains("refused announcement: bad signature")
                    .then_some(())
            }
        })
        .await;
    }
    for node in [&good, &bad] {
        assert_eq!(
            client.linked_names(node.name()).await.unwrap(),
            vec![node.name().to_owned()],
            "{} linked to a node with another secret",
            node.name()
        );
        // Each side has its own agent: they share the ownership table
        // but no link, so neither can reach the other's agents.
        let agent = format!("counter/own-{}", node.name());
        let reply = ok(client
            .call(Some(node.name()), &agent, json!({"add": 2}))
            .await);
        assert_eq!(reply, json!({"value": 2}));
    }
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    let nats = Nats::start().await;
    let mut nodes: Vec<MeshNode> = Vec::new();
    for (i, zone) in ["fr-par-1", "nl-ams-1"].iter().enumerate() {
        let mut spec = NodeSpec::new("bad", &format!("node-{i}"), zone);
        spec.extra = vec!["--max-message-bytes".into(), "4096".into()];
        nodes.push(MeshNode::start(&nats, spec));
    }
    let client = Client::connect(&nats, "bad").await;
    client.converged(&[&nodes[0], &nodes[1]]).await;
    let a = nodes[0].name();

    let cases: [(&[u8], &str); 5] = [
        (b"{not json", "bad_request"),
        (br#"{"agent": "counter/x"}"#, "bad_request"),
        (br#"{"agent": "nokind/x", "msg": {}}"#, "unknown_kind"),
        (
            br#"{"agent": "counter/x", "msg": {"mul": 2}}"#,
            "bad_message",
        ),
        (br#"{"agent": "not a name", "msg": {}}"#, "bad_request"),
    ];
    for (body, code) in cases {
        let response = client.raw_call(a, body).await;
        assert_eq!(
            error_code(response),
            code,
            "for {}",
            String::from_utf8_lossy(body)
        );
    }

    // Oversized messages fail at the sender, for local and remote agents.
    let remote = name_placed_on(&client, a, nodes[1].name(), "echo").await;
    let local = name_placed_on(&client, a, a, "echo").await;
    let big = json!("x".repeat(5000));
    for agent in [&remote, &local] {
        let code = error_code(client.call(Some(a), agent, big.clone()).await);
        assert_eq!(code, "too_large", "for {agent}");
    }
    let huge = json!("y".repeat(20_000));
    assert_eq!(
        error_code(client.call(Some(a), &remote, huge).await),
        "too_large"
    );

    // Nothing above disturbed the node or its link.
    let reply = ok(client
        .call(Some(a), &remote, json!({"still": "here"}))
        .await);
    assert_eq!(reply, json!({"still": "here"}));
    client.converged(&[&nodes[0], &nodes[1]]).await;
}

#[tokio::test]
async fn meshctl_reports_each_failure_with_its_exit_status() {
    let nats = Nats::start().await;
    let _node = MeshNode::start(&nats, NodeSpec::new("ctl", "node-0", "fr-par-1"));
    let client = Client::connect(&nats, "ctl").await;
    wait_until("node-0 to answer", Duration::from_secs(10), || {
        client.members("node-0")
    })
    .await;
    let url = nats.url();

    let cases: [(&str, &[&str], i32, &str); 5] = [
        ("ctl", &["call", "counter/x", "{oops"], 2, "not valid JSON"),
        ("ctl", &["call", "nokind/x", "{}"], 1, "unknown agent kind"),
        ("ctl", &["call", "counterx", "{}"], 2, "invalid agent name"),
        ("nobody", &["members"], 5, "no node of cluster \"nobody\""),
        (
            "ctl",
            &["call", "counter/x", r#"{"add": "five"}"#],
            1,
            "bad_message",
        ),
    ];
    for (cluster, args, status, text) in cases {
        let out = meshctl(&url, cluster, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
        assert!(stderr.contains(text), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }

    for (args, text) in [
        (
            &["--cluster", "bad cluster", "members"][..],
            "invalid cluster",
        ),
        (
            &["--timeout", "0s", "members"][..],
            "--timeout must be at least 1ms",
        ),
        // Once a panic: adding a second for a lost node overflowed.
        (
            &["--timeout", "18446744073709551615s", "members"][..],
            "--timeout must be at most 24h",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["--nats", &url])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(text), "{args:?}: {stderr}");
    }

    let dead = format!("nats://127.0.0.1:{}", support::free_port());
    let out = meshctl(&dead, "ctl", &["members"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach NATS"));

    let out = meshctl(&url, "ctl", &["send", "counter/x", r#"{"add": 3}"#]);
    assert!(out.status.success());
    wait_until("the cast to land", Duration::from_secs(5), || async {
        let reply = ok(client.call(None, "counter/x", json!({"get": {}})).await);
        (reply == json!({"value": 3})).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_clusters_on_one_nats_never_see_each_other() {
    let nats = Nats::start().await;
    let a0 = MeshNode::start(&nats, NodeSpec::new("blue", "node-0", "fr-par-1"));
    let a1 = MeshNode::start(&nats, NodeSpec::new("blue", "node-1", "nl-ams-1"));
    let b0 = MeshNode::start(&nats, NodeSpec::new("green", "node-9", "pl-waw-1"));
    let blue = Client::connect(&nats, "blue").await;
    let green = Client::connect(&nats, "green").await;
    blue.converged(&[&a0, &a1]).await;
    green.converged(&[&b0]).await;

    // Give green every chance to hear blue: several heartbeats pass while
    // blue keeps announcing and serving traffic.
    for i in 0..10 {
        ok(blue.call(None, "counter/shared", json!({"add": 1})).await);
        let reply = ok(green.call(None, "counter/shared", json!({"get": {}})).await);
        assert_eq!(reply, json!({"value": 0}), "after {i} blue calls");
    }
    let green_view = green.members("node-9").await.unwrap();
    assert_eq!(green_view.len(), 1, "{green_view:?}");
    let blue_view = blue.members("node-0").await.unwrap();
    assert_eq!(blue_view.len(), 2, "{blue_view:?}");
}

#[tokio::test]
async fn bad_configuration_is_refused_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "cluster = \"prod\"\nzone = \"fr-par-1\"\nzoen = \"x\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let cases: [(&[&str], &str); 4] = [
        (&["--zone", "paris"], "invalid value \"paris\" for zone"),
        (&["--kind", "vm"], "invalid value \"vm\" for kind"),
        (&["--config", &file], "line 3: unknown field `zoen`"),
        (&["--listen", "0.0.0.0:7400"], "for advertise"),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-node"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("mesh-node:"))
            .unwrap_or_else(|| panic!("{args:?}: no error line in {stderr}"));
        assert!(line.contains(expected), "{args:?}: {line}");
    }
}

#[tokio::test]
async fn a_nats_restart_moves_no_agent_and_membership_resumes() {
    let mut nats = Nats::start().await;
    let (nodes, client) = mesh(&nats, "natsdown", 3).await;
    let mut hosts = Vec::new();
    for i in 0..6 {
        let agent = format!("counter/n{i}");
        ok(client.call(None, &agent, json!({"add": 1})).await);
        hosts.push(client.locate("node-0", &agent).await);
    }
    let before: Vec<Vec<String>> = {
        let mut all = Vec::new();
        for node in &nodes {
            all.push(client.agents(node.name()).await);
        }
        all
    };

    // NATS is gone for several member timeouts.
    nats.stop();
    let outage = nodes[0].spec.timeout() * 3;
    let frozen = "NATS unreachable; membership frozen";
    for node in &nodes {
        let what = format!("{} to freeze its membership", node.name());
        wait_until(&what, Duration::from_secs(10), || {
            let log = node.log_text();
            async move { log.contains(frozen).then_some(()) }
        })
        .await;
    }
    tokio::time::sleep(outage).await;
    nats.restart(1).await;

    // Every node reconnects; nobody left anybody's view; nothing moved.
    let client = Client::connect(&nats, "natsdown").await;
    for node in &nodes {
        let what = format!("{} to answer again", node.name());
        wait_until(&what, Duration::from_secs(20), || {
            client.members(node.name())
        })
        .await;
    }
    client.converged(&nodes.iter().collect::<Vec<_>>()).await;
    for node in &nodes {
        assert!(
            !node.log_text().contains("node left"),
            "{} saw a node leave",
            node.name()
        );
    }
    for (i, host) in hosts.iter().enumerate() {
        let agent = format!("counter/n{i}");
        // Leases lapsed during the outage; the owners renew them and serve.
        let get = json!({"get": {}});
        let reply = client
            .call_until_ok(None, &agent, get, Duration::from_secs(10))
            .await;
        assert_eq!(reply, json!({"value": 1}), "{agent} lost its state");
        assert_eq!(
            &client.locate("node-0", &agent).await,
            host,
            "{agent} moved"
        );
    }
    for (node, agents) in nodes.iter().zip(before) {
        let now = client.agents(node.name()).await;
        assert!(
            agents.iter().all(|a| now.contains(a)),
            "{}: {agents:?} -> {now:?}",
            node.name()
        );
    }
}

#[tokio::test]
async fn two_nodes_with_one_name_are_reported() {
    let nats = Nats::start().await;
    let first = MeshNode::start(&nats, NodeSpec::new("dup", "node-0", "fr-par-1"));
    let second = MeshNode::start(&nats, NodeSpec::new("dup", "node-0", "fr-par-2"));
    for node in [&first, &second] {
        wait_until(
            "the duplicate name to be reported",
            Duration::from_secs(10),
            || {
                let log = node.log_text();
                async move {
                    log.contains("another node announces this node's name")
                        .then_some(())
                }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_busy_node_refuses_calls_past_its_bound_at_once_and_still_answers_operators() {
    const SLOW_MS: u64 = 4000;
    let nats = Nats::start().await;
    let mut spec = NodeSpec::new("busy", "busy-1", "fr-par-1");
    spec.extra = ["--workers", "2", "--gateway-max-inflight", "2"]
        .map(String::from)
        .to_vec();
    let node = MeshNode::start(&nats, spec);
    let client = Client::connect(&nats, "busy").await;
    client.converged(&[&node]).await;
    let name = node.name();
    let run = |ms: u64| json!({"run": {"type": "sleep", "payload": {"ms": ms}}});
    for worker in ["worker/busy-1.0", "worker/busy-1.1"] {
        client
            .call_until_ok(Some(name), worker, run(0), Duration::from_secs(20))
            .await;
    }

    // Two slow calls, to two workers, fill the node's two places.
    let started = Instant::now();
    let slow: Vec<_> = ["worker/busy-1.0", "worker/busy-1.1"]
        .into_iter()
        .map(|worker| {
            let client = Client {
                nats: client.nats.clone(),
                cluster: client.cluster.clone(),
            };
            tokio::spawn(async move {
                client
                    .call_with_timeout(Some("busy-1"), worker, run(SLOW_MS), Some(20_000))
                    .await
            })
        })
        .collect();
    wait_until("two calls in flight", Duration::from_secs(5), || async {
        (client.stats(name).await.gateway_inflight == 2).then_some(())
    })
    .await;

    // A third call is refused at once, naming the bound.
    let asked = Instant::now();
    let response = client.call(Some(name), "echo/x", json!("hi")).await;
    let refused_after = asked.elapsed();
    let mesh::gateway::Response::Error(e) = response else {
        panic!("a third call was served: {response:?}");
    };
    assert_eq!(e.code, "unavailable", "{e:?}");
    assert!(
        e.message
            .contains("node busy-1 is busy: 2 gateway calls in flight"),
        "{e:?}"
    );
    assert!(refused_after < Duration::from_secs(1), "{refused_after:?}");
    assert!(slow.iter().all(|call| !call.is_finished()));

    // Operators still get answers while the calls are full.
    let stats = client.stats(name).await;
    assert_eq!((stats.gateway_busy, stats.gateway_inflight), (1, 2));
    let url = nats.url();
    let status = tokio::task::spawn_blocking(move || meshctl_ok(&url, "busy", &["status"]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let alive = |l: &str| l.contains("busy-1") && l.contains("alive");
    assert!(text.lines().any(alive), "{text}");
    assert!(slow.iter().all(|call| !call.is_finished()));

    // The slow calls end well, the places come back, and the node serves.
    for call in slow {
        let reply = ok(call.await.unwrap());
        assert_eq!(reply, json!({"output": {"slept_ms": SLOW_MS}}));
    }
    assert!(started.elapsed() >= Duration::from_millis(SLOW_MS));
    assert_eq!(
        ok(client.call(Some(name), "echo/x", json!("hi")).await),
        json!("hi")
    );
    wait_until("no call in flight", Duration::from_secs(5), || async {
        (client.stats(name).await.gateway_inflight == 0).then_some(())
    })
    .await;
    client.converged(&[&node]).await;
}
