//! Operating a node: Prometheus metrics and health endpoints.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use support::{
    error_code, free_port, meshctl, meshctl_ok, ok, wait_until, Client, MeshNode, Nats,
    NatsCluster, NodeSpec,
};

/// GETs `path` from `port` on loopback: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Scrapes `port` and returns the samples.
fn scrape(port: u16) -> Vec<prometheus_parse::Sample> {
    let (status, body) = get(port, "/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("the exposition parses")
        .samples
}

/// The value of `metric` with `label` = `value` (or the first, unlabelled).
fn value(samples: &[prometheus_parse::Sample], metric: &str, label: Option<(&str, &str)>) -> f64 {
    let found = samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)));
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{metric}: {other:?}"),
    }
}

/// A name of `kind` that `node` places on itself.
async fn agent_on(client: &Client, kind: &str, node: &str) -> String {
    for i in 0..200 {
        let agent = format!("{kind}/n{i}");
        if client.locate(node, &agent).await == node {
            return agent;
        }
    }
    panic!("no {kind} agent placed on {node}");
}

fn with_metrics(cluster: &str, name: &str, zone: &str) -> (NodeSpec, u16) {
    let port = free_port();
    let mut spec = NodeSpec::new(cluster, name, zone);
    spec.extra = vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")];
    (spec, port)
}

#[tokio::test]
async fn metrics_move_as_calls_and_snapshots_happen() {
    let nats = Nats::start().await;
    let (spec_a, port_a) = with_metrics("ops", "node-a", "fr-par-1");
    let (spec_b, port_b) = with_metrics("ops", "node-b", "nl-ams-1");
    let a = MeshNode::start(&nats, spec_a);
    let b = MeshNode::start(&nats, spec_b);
    let client = Client::connect(&nats, "ops").await;
    client.converged(&[&a, &b]).await;

    let before = scrape(port_a);
    let mut counter = String::new();
    for i in 0..100 {
        counter = format!("counter/m{i}");
        if client.locate("node-a", &counter).await == "node-b" {
            break;
        }
    }
    for _ in 0..3 {
        ok(client
            .call(Some("node-a"), &counter, json!({"add": 1}))
            .await);
    }
    let after = scrape(port_a);
    let calls = |s: &[_]| value(s, "mesh_calls_out_total", None);
    assert_eq!(
        calls(&after) - calls(&before),
        3.0,
        "three calls crossed to node-b"
    );
    assert_eq!(
        value(&after, "mesh_members", Some(("zone", "nl-ams-1"))),
        1.0
    );
    assert_eq!(value(&after, "mesh_nats_connected", None), 1.0);
    assert_eq!(value(&after, "mesh_links_up", None), 1.0);
    let on_b = scrape(port_b);
    assert_eq!(
        value(&on_b, "mesh_agents_live", Some(("kind", "counter"))),
        1.0
    );
    assert_eq!(value(&on_b, "mesh_calls_in_total", None), 3.0);

    let out = meshctl(&nats.url(), "ops", &["snapshot", "--node", "node-b"]);
    assert!(out.status.success());
    let on_b = scrape(port_b);
    assert_eq!(value(&on_b, "mesh_snapshots_total", None), 1.0);
    assert!(value(&on_b, "mesh_snapshot_age_seconds", None) < 60.0);
    assert!(value(&on_b, "mesh_snapshot_bytes_total", None) > 0.0);
    let (free, total) = (
        value(&on_b, "mesh_disk_free_bytes", None),
        value(&on_b, "mesh_disk_total_bytes", None),
    );
    assert!(0.0 < free && free <= total, "{free} of {total}");

    // A crash under its kind's limit is a restart.
    let crashes = |s: &[_]| value(s, "mesh_agent_crashes_total", None);
    let restarts = |s: &[_]| value(s, "mesh_agent_restarts_total", None);
    let before = scrape(port_b);
    let probe = agent_on(&client, "probe", "node-b").await;
    let poison = json!({"panic": "poison"});
    assert_eq!(
        error_code(client.call(None, &probe, poison).await),
        "crashed"
    );
    let after = scrape(port_b);
    assert_eq!(crashes(&after) - crashes(&before), 1.0);
    assert_eq!(restarts(&after) - restarts(&before), 1.0);
    assert_eq!(get(port_b, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(get(port_b, "/nope").unwrap().0, 404);
}

#[tokio::test]
async fn readiness_names_nats_while_it_is_down_and_recovers() {
    let mut nats = Nats::start().await;
    let (spec, port) = with_metrics("ready", "node-a", "fr-par-1");
    let node = MeshNode::start(&nats, spec);
    wait_until("the node to be ready", Duration::from_secs(15), || async {
        (get(port, "/readyz")? == (200, "ready\n".to_owned())).then_some(())
    })
    .await;

    nats.stop();
    let body = wait_until("readiness to fail", Duration::from_secs(15), || async {
        let (status, body) = get(port, "/readyz")?;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("nats: not connected to NATS"), "{body}");
    assert_eq!(
        get(port, "/healthz").unwrap().0,
        200,
        "alive while not ready"
    );

    assert_eq!(value(&scrape(port), "mesh_nats_connected", None), 0.0);
    assert_eq!(
        value(&scrape(port), "mesh_nats_reconnects_total", None),
        0.0
    );

    nats.restart(1).await;
    wait_until("readiness to recover", Duration::from_secs(20), || async {
        (get(port, "/readyz")?.0 == 200).then_some(())
    })
    .await;
    let samples = scrape(port);
    assert_eq!(value(&samples, "mesh_nats_reconnects_total", None), 1.0);
    assert_eq!(value(&samples, "mesh_nats_connected", None), 1.0);
    drop(node);
}

#[test]
fn both_binaries_print_shell_completions() {
    for (binary, args) in [
        (env!("CARGO_BIN_EXE_meshctl"), ["completions", "bash"]),
        (env!("CARGO_BIN_EXE_mesh-node"), ["--completions", "bash"]),
    ] {
        let out = std::process::Command::new(binary)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("complete -F"), "{binary}: {script}");
    }
}

/// A node whose final snapshot hangs on `endpoint`, which accepts
/// connections and never answers. Its store already holds an agent (from
/// a first run with local snapshots), so starting needs no restore.
async fn stuck_on_stop(
    nats: &Nats,
    cluster: &str,
    timeout: &str,
    endpoint: u16,
) -> (MeshNode, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut first = NodeSpec::new(cluster, "node-a", "fr-par-1");
    first.data_dir = Some(data.path().to_owned());
    let mut node = MeshNode::start(nats, first.clone());
    let client = Client::connect(nats, cluster).await;
    client.converged(&[&node]).await;
    ok(client.call(None, "counter/c", json!({"add": 1})).await);
    node.signal(libc::SIGTERM);
    assert!(node.exited(Duration::from_secs(10)).await.success());

    let mut spec = first;
    spec.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "x".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "y".into()),
    ];
    spec.extra = vec![
        "--snapshots".into(),
        "s3://nowhere/x".into(),
        "--s3-endpoint".into(),
        format!("http://127.0.0.1:{endpoint}"),
        "--shutdown-timeout".into(),
        timeout.into(),
    ];
    let node = MeshNode::start(nats, spec);
    client.converged(&[&node]).await;
    (node, data)
}

#[tokio::test]
async fn a_second_signal_or_the_deadline_ends_a_stop_at_once() {
    let nats = Nats::start().await;
    // The kernel completes connections to a listener nobody accepts from,
    // and the request then waits for an answer that never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = silent.local_addr().unwrap().port();
    for (cluster, timeout, second_signal) in [("sig2", "60s", true), ("deadline", "1s", false)] {
        let (mut node, _data) = stuck_on_stop(&nats, cluster, timeout, endpoint).await;

        node.signal(libc::SIGTERM);
        wait_until(
            "the stop to reach its snapshot",
            Duration::from_secs(10),
            || {
                let log = node.log_text();
                async move { log.contains("node stopping").then_some(()) }
            },
        )
        .await;
        let started = std::time::Instant::now();
        if second_signal {
            node.signal(libc::SIGTERM);
        }
        let status = node.exited(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(130), "{cluster}: {status}");
        assert!(started.elapsed() < Duration::from_secs(5), "{cluster}");
        let why = if second_signal {
            "second signal"
        } else {
            "longer than 1s"
        };
        assert!(node.log_text().contains(why), "{cluster}");
    }
}

/// The JSON objects of a node's log, one per line; panics on any other line.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[tokio::test]
async fn json_logs_follow_one_call_across_nodes_by_its_trace() {
    let nats = Nats::start().await;
    let json_node = |name: &str, zone: &str| {
        let mut spec = NodeSpec::new("trace", name, zone);
        spec.extra = vec!["--log-format".into(), "json".into()];
        spec.env = vec![("RUST_LOG".into(), "info,mesh=debug".into())];
        MeshNode::start(&nats, spec)
    };
    let a = json_node("node-a", "fr-par-1");
    let b = json_node("node-b", "nl-ams-1");
    let client = Client::connect(&nats, "trace").await;
    client.converged(&[&a, &b]).await;
    let mut counter = String::new();
    for i in 0..100 {
        counter = format!("counter/t{i}");
        if client.locate("node-a", &counter).await == "node-b" {
            break;
        }
    }
    ok(client
        .call(Some("node-a"), &counter, json!({"add": 1}))
        .await);

    let field =
        |line: &serde_json::Value, name: &str| line["fields"][name].as_str().map(str::to_owned);
    let entered = json_lines(&a.log_text())
        .into_iter()
        .find(|l| field(l, "message").as_deref() == Some("gateway call"))
        .expect("node-a logged the gateway call");
    let trace = field(&entered, "trace").expect("the call has a trace");
    let arrived = wait_until("node-b to log the call", Duration::from_secs(5), || {
        let lines = json_lines(&b.log_text());
        let trace = trace.clone();
        async move {
            lines.into_iter().find(|l| {
                field(l, "message").as_deref() == Some("call received")
                    && field(l, "trace").as_deref() == Some(trace.as_str())
            })
        }
    })
    .await;
    assert_eq!(field(&arrived, "agent").as_deref(), Some(counter.as_str()));
    assert_eq!(field(&arrived, "peer").as_deref(), Some("node-a"));

    // An agent's own calls carry the trace of the message it handles: a
    // relay on node-a calls the counter on node-b.
    let mut relay = String::new();
    for i in 0..100 {
        relay = format!("relay/r{i}");
        if client.locate("node-a", &relay).await == "node-a" {
            break;
        }
    }
    assert_eq!(client.locate("node-a", &relay).await, "node-a");
    let msg = json!({"to": counter, "msg": {"get": {}}});
    ok(client.call(Some("node-a"), &relay, msg).await);
    let entered = json_lines(&a.log_text())
        .into_iter()
        .find(|l| {
            field(l, "message").as_deref() == Some("gateway call")
                && field(l, "agent").as_deref() == Some(relay.as_str())
        })
        .expect("node-a logged the relay call");
    let trace = field(&entered, "trace").unwrap();
    wait_until(
        "node-b to log the relayed call",
        Duration::from_secs(5),
        || {
            let lines = json_lines(&b.log_text());
            let trace = trace.clone();
            async move {
                lines
                    .iter()
                    .any(|l| {
                        field(l, "message").as_deref() == Some("call received")
                            && field(l, "trace").as_deref() == Some(trace.as_str())
                    })
                    .then_some(())
            }
        },
    )
    .await;
}

/// `meshctl status --json` against `urls`.
fn status_json(urls: &str, cluster: &str) -> serde_json::Value {
    let out = meshctl_ok(urls, cluster, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("status prints JSON")
}

fn zone_state(report: &serde_json::Value, zone: &str) -> Option<String> {
    let zones = report["zones"].as_array()?;
    let found = zones.iter().find(|z| z["zone"] == zone)?;
    found["state"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn status_shows_a_zone_whose_node_died_as_down() {
    let nats = Nats::start().await;
    let zones = [
        ("node-a", "fr-par-1"),
        ("node-b", "nl-ams-1"),
        ("node-c", "pl-waw-1"),
    ];
    let mut nodes: Vec<MeshNode> = zones
        .iter()
        .map(|(name, zone)| MeshNode::start(&nats, NodeSpec::new("glance", name, zone)))
        .collect();
    let client = Client::connect(&nats, "glance").await;
    client.converged(&nodes.iter().collect::<Vec<_>>()).await;
    let mut on_c = String::new();
    for i in 0..100 {
        on_c = format!("counter/s{i}");
        if client.locate("node-a", &on_c).await == "node-c" {
            break;
        }
    }
    ok(client.call(None, &on_c, json!({"add": 1})).await);
    meshctl_ok(&nats.url(), "glance", &["snapshot", "--node", "node-c"]);

    // All three zones are up, and the table says so.
    let report = wait_until("every node in the roster", Duration::from_secs(15), || {
        let report = status_json(&nats.url(), "glance");
        async move {
            let up = zones
                .iter()
                .all(|(_, z)| zone_state(&report, z).as_deref() == Some("up"));
            up.then_some(report)
        }
    })
    .await;
    assert_eq!(report["warnings"], json!([]), "{report:#}");
    let text = meshctl_ok(&nats.url(), "glance", &["status"]).stdout;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("cluster glance: 3 zones, 3 nodes"), "{text}");
    assert!(text.contains("no warnings"), "{text}");

    // node-c dies with its zone; a second NATS URL points at nothing.
    let mut c = nodes.pop().unwrap();
    c.signal(libc::SIGKILL);
    c.exited(Duration::from_secs(10)).await;
    let dead_nats = format!("nats://127.0.0.1:{}", free_port());
    let urls = format!("{},{dead_nats}", nats.url());
    let report = wait_until("pl-waw-1 to be down", Duration::from_secs(15), || {
        let report = status_json(&urls, "glance");
        let down = zone_state(&report, "pl-waw-1").as_deref() == Some("down");
        async move { down.then_some(report) }
    })
    .await;
    let waw = &report["zones"].as_array().unwrap()[2];
    assert_eq!(waw["nodes"][0]["name"], "node-c", "{report:#}");
    assert!(
        waw["nodes"][0]["snapshot_age_s"].as_u64().is_some(),
        "{report:#}"
    );
    assert_eq!(zone_state(&report, "fr-par-1").as_deref(), Some("up"));
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("zone pl-waw-1 is down: none of its nodes answers"),
        "{warnings}"
    );
    assert!(warnings.contains("node node-c is"), "{warnings}");
    assert!(
        warnings.contains(&format!("NATS server {dead_nats} is unreachable")),
        "{warnings}"
    );

    // The zone stays visible after node-c has left every member view (the
    // status may come from either survivor).
    for node in ["node-a", "node-b"] {
        wait_until(
            &format!("node-c to leave {node}'s view"),
            Duration::from_secs(15),
            || async {
                let members = client.members(node).await?;
                members.iter().all(|m| m.name != "node-c").then_some(())
            },
        )
        .await;
    }
    let report = status_json(&nats.url(), "glance");
    assert_eq!(zone_state(&report, "pl-waw-1").as_deref(), Some("down"));
    assert_eq!(
        report["zones"][2]["nodes"][0]["state"], "down",
        "{report:#}"
    );
}

/// Every `mesh_*` metric name in `text`.
fn mesh_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("mesh_"))
        .map(str::to_owned)
        .collect()
}

/// Every `expr` string in a Grafana dashboard.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_use_only_metrics_a_node_exports() {
    let monitoring = concat!(env!("CARGO_MANIFEST_DIR"), "/../bootstrap/monitoring");
    let rules = std::fs::read_to_string(format!("{monitoring}/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(format!("{monitoring}/dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    for alert in [
        "MeshNodeDown",
        "MeshZoneDown",
        "MeshFailoverStorm",
        "MeshSnapshotTooOld",
        "MeshDiskAlmostFull",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
    }

    // A live node with an agent, so every labelled family has a sample.
    let nats = Nats::start().await;
    let (spec, port) = with_metrics("dash", "node-a", "fr-par-1");
    let node = MeshNode::start(&nats, spec);
    let client = Client::connect(&nats, "dash").await;
    client.converged(&[&node]).await;
    ok(client.call(None, "counter/d", json!({"add": 1})).await);
    let (_, exposition) = get(port, "/metrics").unwrap();
    let exported: std::collections::BTreeSet<String> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();

    let mut used = mesh_names(&rules);
    used.extend(exprs.iter().flat_map(|e| mesh_names(e)));
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\n{exposition}"
    );
    assert!(used.len() >= 20, "{used:?}");
}

#[tokio::test]
async fn status_names_a_nats_server_that_is_down() {
    let mut nats = NatsCluster::start(3).await;
    let urls = nats.urls();
    let mut spec = NodeSpec::new("natsdown", "node-a", "fr-par-1");
    spec.extra = vec!["--kv-replicas".into(), "3".into()];
    let node = MeshNode::start_with(&urls, spec);
    let client = Client::connect_to(&urls, "natsdown").await;
    client.converged(&[&node]).await;
    let report = status_json(&urls, "natsdown");
    assert_eq!(report["warnings"], json!([]), "{report:#}");

    // Killed: its URL refuses connections, and the ownership bucket's
    // replica group stops hearing from it (whether it led the group or not).
    let dead = nats.stop(2);
    let warnings = wait_until("status to name s2", Duration::from_secs(30), || {
        let warnings = status_json(&urls, "natsdown")["warnings"].to_string();
        async move {
            warnings
                .contains("NATS server s2 looks down")
                .then_some(warnings)
        }
    })
    .await;
    assert!(
        warnings.contains(&format!("NATS server {dead} is unreachable")),
        "{warnings}"
    );
}

#[tokio::test]
async fn readiness_names_a_node_cut_off_by_another_secret_and_only_that_node() {
    let nats = Nats::start().await;
    let (spec_a, port_a) = with_metrics("cut", "node-a", "fr-par-1");
    let (spec_b, port_b) = with_metrics("cut", "node-b", "nl-ams-1");
    let (mut spec_c, port_c) = with_metrics("cut", "node-c", "pl-waw-1");
    spec_c.secret = "another-secret-entirely".into();
    let a = MeshNode::start(&nats, spec_a);
    let b = MeshNode::start(&nats, spec_b);
    let _c = MeshNode::start(&nats, spec_c);
    let client = Client::connect(&nats, "cut").await;
    client.converged(&[&a, &b]).await;

    // node-c hears the others' announcements but can check none of them,
    // and has no link: it says so once the grace (member timeout plus link
    // timeout) has passed.
    let body = wait_until("node-c to be unready", Duration::from_secs(20), || async {
        let (status, body) = get(port_c, "/readyz")?;
        (status == 503 && body.contains("links:")).then_some(body)
    })
    .await;
    assert!(body.contains("cluster secret"), "{body}");
    // The two nodes that link to each other stay ready, though they refuse
    // node-c's announcements all along.
    for port in [port_a, port_b] {
        assert_eq!(get(port, "/readyz"), Some((200, "ready\n".to_owned())));
    }
}
