//! The zone bootstrap script, `bootstrap/add-zone.py`, in local mode: each
//! host a network namespace of a lab, NATS servers and nodes started by the
//! script, a fourth zone added under traffic.

#![allow(missing_docs)]

#[path = "netns_support.rs"]
mod netns_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns_support::{
    activations_in, lab_unavailable, nats_call_async, nats_server_bin, python_bin, Lab, NatsReply,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const CLUSTER: &str = "zb";
/// Replicated counters the traffic adds to.
const COUNTERS: usize = 16;
/// The zone the fourth zone's run adds, which the counters prefer.
const NEW_ZONE: &str = "fr-par-2";
/// The topology every run gives its nodes: counters prefer the new zone.
const TOPOLOGY: &str = "[policy.rcounter]\nzones = [\"fr-par-2\"]\n";
/// The ownership lease add-zone.py gives nodes: long enough to outlast
/// the election of a new leader for the ownership bucket's stream (see
/// mesh::ownership).
const LEASE: Duration = Duration::from_secs(15);
/// Error codes a caller may see and retry (the mesh says so).
const RETRYABLE: &[&str] = &["unavailable", "node_lost", "timeout"];

/// `(host, zone, kind, capabilities)` of every lab host.
const HOSTS: &[(&str, &str, &str, &[&str])] = &[
    ("a1", "fr-par-1", "elastic-metal", &[]),
    ("b1", "nl-ams-1", "instance", &[]),
    ("c1", "pl-waw-1", "instance", &["gpu"]),
    ("d1", "fr-par-2", "elastic-metal", &[]),
    ("d2", "fr-par-2", "instance", &["gpu"]),
];

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bootstrap/add-zone.py")
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mesh-node"))
        .parent()
        .expect("binaries live in a folder")
        .to_owned()
}

/// The script's files: inventory, secret, topology and the hosts' folders.
struct Bootstrap {
    dir: tempfile::TempDir,
}

impl Bootstrap {
    fn new() -> Bootstrap {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "zones-bootstrap-test-secret\n").unwrap();
        std::fs::write(dir.path().join("topology.toml"), TOPOLOGY).unwrap();
        // The links of the zones' nodes use TLS with this CA.
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bootstrap/certs.sh");
        let made = std::process::Command::new(certs)
            .arg("ca")
            .arg(dir.path().join("tls"))
            .output()
            .expect("certs.sh runs");
        assert!(made.status.success(), "{made:?}");
        Bootstrap { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an inventory of `hosts` (lab hosts, or missing ones given by
    /// name only) with `extra` appended; returns its path.
    fn inventory(&self, lab: &Lab, hosts: &[&str], extra: &str) -> PathBuf {
        // No lease: the script's default for zones (LEASE) is under test.
        let mut text = "[node]\nheartbeat = \"200ms\"\nmember_timeout = \"2s\"\n".to_owned();
        text.push_str(extra);
        for name in hosts {
            let (_, zone, kind, caps) =
                HOSTS
                    .iter()
                    .find(|h| h.0 == *name)
                    .unwrap_or(&("", "fr-par-2", "instance", &[]));
            let (address, netns) = match lab.hosts().iter().find(|h| h.name == *name) {
                Some(host) => (host.addr.to_string(), host.ns.clone()),
                None => ("10.213.250.250".to_owned(), format!("{}-missing", lab.id)),
            };
            text.push_str(&format!(
                "\n[[host]]\nname = \"{name}\"\naddress = \"{address}\"\nzone = \"{zone}\"\n\
                 kind = \"{kind}\"\ncapabilities = {caps:?}\nnetns = \"{netns}\"\n"
            ));
        }
        let path = self.path("inventory.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(
        &self,
        inventory: &Path,
        zones: &[&str],
        routes: &[String],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(python_bin());
        cmd.arg(script_path())
            .arg("--local")
            .arg(self.path("hosts"))
            .arg("--inventory")
            .arg(inventory)
            .arg("--secret-file")
            .arg(self.path("secret"))
            .arg("--topology")
            .arg(self.path("topology.toml"))
            .arg("--tls-dir")
            .arg(self.path("tls"))
            .args(["--cluster", CLUSTER, "--nats-server", nats_server_bin()])
            .arg("--bin-dir")
            .arg(bin_dir())
            .kill_on_drop(true)
            .stdin(Stdio::null());
        for zone in zones {
            cmd.args(["--zone", zone]);
        }
        if !routes.is_empty() {
            cmd.args(["--routes", &routes.join(",")]);
        }
        cmd
    }

    async fn run(&self, inventory: &Path, zones: &[&str], routes: &[String]) -> Run {
        self.run_with(inventory, zones, routes, &[]).await
    }

    async fn run_with(
        &self,
        inventory: &Path,
        zones: &[&str],
        routes: &[String],
        extra: &[&str],
    ) -> Run {
        let out = self
            .command(inventory, zones, routes)
            .args(extra)
            .output()
            .await
            .expect("the script starts");
        Run::from(out)
    }

    fn node_log(&self, host: &str) -> String {
        let log = self.path("hosts").join(host).join("var/log/mesh/node.log");
        std::fs::read_to_string(log).unwrap_or_default()
    }
}

/// What one run of the script did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "the script failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The actions it took: lines such as `[d1] start mesh-node ...`, but
    /// not the `[d1] mesh-node ready` checks.
    fn actions(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('[') && !l.ends_with(" ready"))
            .collect()
    }
}

/// Gateway calls from inside the lab, through the NATS server of `host`.
#[derive(Clone)]
struct Client {
    lab: Arc<Lab>,
    host: String,
    url: String,
    /// Every error code its calls got, with its count.
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Client {
    fn new(lab: &Arc<Lab>, host: &str) -> Client {
        Client {
            lab: lab.clone(),
            host: host.into(),
            url: format!("nats://{}:4222", lab.host(host).addr),
            errors: Arc::default(),
        }
    }

    async fn call(&self, agent: &str, msg: Value) -> Result<Value, String> {
        let subject = format!("mesh.{CLUSTER}.gateway");
        let body = json!({"agent": agent, "msg": msg, "timeout_ms": 2000}).to_string();
        let wait = Duration::from_secs(4);
        let error =
            match nats_call_async(&self.lab, &self.host, &self.url, &subject, &body, wait).await {
                NatsReply::Reply(text) => {
                    let answer: Value = serde_json::from_str(&text).expect("JSON answers");
                    match answer.get("ok") {
                        Some(ok) => return Ok(ok.clone()),
                        None => answer["error"]["code"].as_str().unwrap_or("?").to_owned(),
                    }
                }
                // The gateway did not answer in time: a timeout to its caller.
                NatsReply::Timeout => "timeout".to_owned(),
                other => format!("{other:?}"),
            };
        *self
            .errors
            .lock()
            .unwrap()
            .entry(error.clone())
            .or_default() += 1;
        Err(error)
    }

    /// The error codes seen that a caller may not simply retry.
    fn errors_beyond_retries(&self) -> BTreeMap<String, u64> {
        let mut errors = self.errors.lock().unwrap().clone();
        errors.retain(|code, _| !RETRYABLE.contains(&code.as_str()));
        errors
    }

    async fn value(&self, counter: &str) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.call(counter, json!({"get": {}})).await {
                Ok(v) => return v["value"].as_i64().expect("a counter's value"),
                Err(e) => assert!(Instant::now() < deadline, "{counter} never answered: {e}"),
            }
        }
    }

    /// Adds one to `counter`, which holds `before`, exactly once: retried
    /// while the mesh says it was not applied, read back when unsure.
    async fn add_once(&self, counter: &str, before: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.call(counter, json!({"add": 1})).await {
                Ok(_) => return,
                Err(code) if code == "unavailable" => {}
                Err(_) => {
                    let now = self.value(counter).await;
                    if now == before + 1 {
                        return;
                    }
                    assert_eq!(now, before, "{counter} changed behind our back");
                }
            }
            assert!(Instant::now() < deadline, "{counter} never took the add");
        }
    }
}

/// Adds to the counters round-robin until `stop`; the expected values.
async fn traffic(
    client: Client,
    stop: Arc<AtomicBool>,
    expected: Arc<Mutex<BTreeMap<String, i64>>>,
) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let counter = format!("rcounter/t{}", i % COUNTERS);
        let before = expected.lock().unwrap().get(&counter).copied().unwrap_or(0);
        client.add_once(&counter, before).await;
        expected.lock().unwrap().insert(counter, before + 1);
        i += 1;
    }
}

/// Every "agent activated" line of the hosts' node logs: agent ->
/// [(epoch, host)].
fn activations(boot: &Bootstrap, hosts: &[&str]) -> BTreeMap<String, Vec<(u64, String)>> {
    activations_in(hosts.iter().map(|h| (*h, boot.node_log(h))))
}

/// `meshctl agents --json` run inside `host`: agent -> [(node, epoch)] of
/// the nodes it is live on (epoch 0 while it activates).
async fn live_agents(
    lab: &Lab,
    boot: &Bootstrap,
    host: &str,
    url: &str,
) -> BTreeMap<String, Vec<(String, u64)>> {
    let meshctl = boot.path("hosts").join(host).join("opt/mesh/bin/meshctl");
    let cmd = lab.command(host, meshctl.to_str().unwrap());
    let out = tokio::process::Command::from(cmd)
        .args(["--nats", url, "--cluster", CLUSTER, "agents", "--json"])
        .output()
        .await
        .expect("meshctl runs");
    assert!(
        out.status.success(),
        "meshctl agents: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON agent list");
    let mut live: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for row in rows {
        let status = row["status"].as_str().unwrap_or("");
        if status.starts_with("live") {
            let agent = row["agent"].as_str().unwrap().to_owned();
            let epoch = status
                .strip_prefix("live, epoch ")
                .map_or(0, |e| e.parse().expect("an epoch"));
            live.entry(agent)
                .or_default()
                .push((row["node"].as_str().unwrap().to_owned(), epoch));
        }
    }
    live
}

fn route(lab: &Lab, host: &str) -> String {
    format!("nats-route://{}:6222", lab.host(host).addr)
}

#[tokio::test]
async fn a_zone_with_nats_credentials_and_tls_comes_up_and_turns_away_anonymous_clients() {
    if let Some(why) = lab_unavailable() {
        panic!("this test needs a network lab: {why} (run bootstrap/install-deps.sh as root)");
    }
    let lab = Lab::new(&[("a1", "fr-par-1"), ("b1", "nl-ams-1"), ("c1", "pl-waw-1")]);
    let boot = Bootstrap::new();
    let auth = boot.path("nats-auth");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bootstrap/nats-auth.sh");
    let made = std::process::Command::new(script)
        .arg(CLUSTER)
        .arg(&auth)
        .output()
        .expect("nats-auth.sh runs");
    assert!(made.status.success(), "{made:?}");

    // The script's own readiness check (meshctl members) logs in too.
    let inventory = boot.inventory(&lab, &["a1", "b1", "c1"], "");
    let extra = ["--nats-auth", auth.to_str().unwrap(), "--nats-tls"];
    let run = boot
        .run_with(
            &inventory,
            &["fr-par-1", "nl-ams-1", "pl-waw-1"],
            &[],
            &extra,
        )
        .await;
    run.assert_ok();
    assert!(
        run.stdout.contains("3 nodes ready and linked"),
        "{}",
        run.stdout
    );
    let etc = boot.path("hosts").join("a1").join("etc/mesh");
    let nats_conf = std::fs::read_to_string(etc.join("nats.conf")).unwrap();
    assert!(nats_conf.contains("tls {"), "{nats_conf}");
    assert!(nats_conf.contains("user: mesh-client"), "{nats_conf}");
    let node_toml = std::fs::read_to_string(etc.join("node.toml")).unwrap();
    for key in ["nats_ca = ", "nats_user = \"mesh-node\"", "tls_cert = "] {
        assert!(node_toml.contains(key), "{key} missing: {node_toml}");
    }

    // meshctl with the node role and the CA is served; without them not.
    let meshctl = boot.path("hosts").join("a1").join("opt/mesh/bin/meshctl");
    let url = format!("nats://{}:4222", lab.host("a1").addr);
    let members = |login: &[String]| {
        lab.command("a1", meshctl.to_str().unwrap())
            .args(["--nats", &url, "--cluster", CLUSTER, "--timeout", "2s"])
            .args(login)
            .arg("members")
            .output()
            .expect("meshctl runs")
    };
    let login: Vec<String> = [
        "--nats-user",
        "mesh-node",
        "--nats-password-file",
        etc.join("nats.password").to_str().unwrap(),
        "--nats-ca",
        etc.join("tls/ca.crt").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let out = members(&login);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        ["a1", "b1", "c1"].iter().all(|n| text.contains(n)),
        "{text}"
    );
    assert_eq!(members(&login[..4]).status.code(), Some(3), "no CA");
    assert_eq!(members(&login[4..]).status.code(), Some(3), "no password");
}

/// Polls `done` until it holds; fails naming `what` after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether lab host `host` lives in the zone the counters prefer.
fn in_new_zone(host: &str) -> bool {
    HOSTS.iter().any(|h| h.0 == host && h.1 == NEW_ZONE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_zone_joins_under_traffic_and_takes_the_agents_preferring_it() {
    if let Some(why) = lab_unavailable() {
        panic!("this test needs a network lab: {why} (run bootstrap/install-deps.sh as root)");
    }
    let names: Vec<(&str, &str)> = HOSTS.iter().map(|h| (h.0, h.1)).collect();
    let lab = Arc::new(Lab::new(&names));
    let boot = Bootstrap::new();
    let first = ["a1", "b1", "c1"];
    let all = ["a1", "b1", "c1", "d1", "d2"];

    // Three zones at once: a new cluster, one NATS server and node each.
    let inventory = boot.inventory(&lab, &all, "");
    let zones = ["fr-par-1", "nl-ams-1", "pl-waw-1"];
    let run = boot.run(&inventory, &zones, &[]).await;
    run.assert_ok();
    assert!(
        run.stdout.contains("3 nodes ready and linked"),
        "{}",
        run.stdout
    );
    for host in first {
        let config = boot.path("hosts").join(host).join("etc/mesh/node.toml");
        let config = std::fs::read_to_string(&config).expect("node.toml written");
        let lease = format!("lease = \"{}s\"", LEASE.as_secs());
        assert!(config.contains(&lease), "{config}");
        let copied = boot.path("hosts").join(host).join("etc/mesh/topology.toml");
        assert_eq!(
            std::fs::read_to_string(&copied).ok().as_deref(),
            Some(TOPOLOGY)
        );
    }

    // Traffic through zone a's NATS server from now on; every counter is
    // live in the first zones before the new zone comes.
    let client = Client::new(&lab, "a1");
    let stop = Arc::new(AtomicBool::new(false));
    let expected = Arc::new(Mutex::new(BTreeMap::new()));
    let load = tokio::spawn(traffic(client.clone(), stop.clone(), expected.clone()));
    wait_for("every counter took an add", Duration::from_secs(60), || {
        expected.lock().unwrap().len() == COUNTERS
    })
    .await;

    // An unreachable host stops the run before anything changes.
    let routes: Vec<String> = first.iter().map(|h| route(&lab, h)).collect();
    let with_ghost = boot.inventory(&lab, &["a1", "b1", "c1", "d1", "d2", "d3"], "");
    let run = boot.run(&with_ghost, &[NEW_ZONE], &routes).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("host d3 (10.213.250.250) is unreachable: network namespace")
            && run.stderr.contains("Nothing was changed")
            && run.stderr.contains("run the same command again"),
        "{}",
        run.stderr
    );
    assert!(run.actions().is_empty(), "{}", run.stdout);
    assert!(
        !boot.path("hosts/d1").exists(),
        "nothing may be written for d1"
    );

    // A dry run says what it would do, and does none of it.
    let inventory = boot.inventory(&lab, &all, "");
    let dry = boot
        .run_with(&inventory, &[NEW_ZONE], &routes, &["--dry-run"])
        .await;
    dry.assert_ok();
    for action in [
        "[d1] would install nats-server",
        "[d1] would write",
        "[d1] would start nats-server",
        "[d2] would start mesh-node",
    ] {
        assert!(
            dry.stdout.contains(action),
            "no {action:?} in:\n{}",
            dry.stdout
        );
    }
    assert!(!boot.path("hosts/d1").exists(), "a dry run wrote files");

    // A failed step (the nodes refuse a setting) stops with mesh-node's
    // own message and a way to resume.
    let broken = boot.inventory(&lab, &all, "passivate_after = \"forever\"\n");
    let run = boot.run(&broken, &[NEW_ZONE], &routes).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("invalid value \"forever\" for passivate_after")
            && run
                .stderr
                .contains("fix the cause, then run the same command again"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );

    // Fixed, and killed half-way: once it started the first new node.
    let inventory = boot.inventory(&lab, &all, "");
    let mut cmd = boot.command(&inventory, &[NEW_ZONE], &routes);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next_line().await.unwrap();
        let line = line.unwrap_or_else(|| panic!("the script ended first: {seen:?}"));
        seen.push(line.clone());
        if line.contains("] start mesh-node") || line.contains("] restart mesh-node") {
            break;
        }
    }
    child.kill().await.unwrap();

    // A rerun completes; the one after changes nothing.
    let run = boot.run(&inventory, &[NEW_ZONE], &routes).await;
    run.assert_ok();
    assert!(
        run.stdout.contains("2 nodes ready and linked"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("members by zone: fr-par-1 1, fr-par-2 2, nl-ams-1 1, pl-waw-1 1"),
        "{}",
        run.stdout
    );
    let again = boot.run(&inventory, &[NEW_ZONE], &routes).await;
    again.assert_ok();
    assert!(
        again.actions().is_empty(),
        "a second run acted: {}",
        again.stdout
    );
    assert!(again.stdout.contains("nothing changed"), "{}", again.stdout);
    let dry = boot
        .run_with(&inventory, &[NEW_ZONE], &routes, &["--dry-run"])
        .await;
    assert!(
        dry.stdout.contains("dry run: nothing to change"),
        "{}",
        dry.stdout
    );
    let old = boot.run(&inventory, &zones, &[]).await;
    old.assert_ok();
    assert!(
        old.actions().is_empty(),
        "a rerun of the first zones acted: {}",
        old.stdout
    );

    // The new zone serves: an agent reached through its own NATS server.
    let via_d = Client::new(&lab, "d1");
    assert_eq!(
        via_d.call("echo/from-d", json!({"hi": 1})).await,
        Ok(json!({"hi": 1}))
    );

    // The counters prefer the new zone: they move there under traffic.
    let moved_by = Instant::now() + Duration::from_secs(60);
    loop {
        let live = live_agents(&lab, &boot, "d1", &via_d.url).await;
        let there = expected.lock().unwrap().keys().all(|counter| {
            live.get(counter)
                .is_some_and(|nodes| nodes.len() == 1 && in_new_zone(&nodes[0].0))
        });
        if there {
            break;
        }
        assert!(
            Instant::now() < moved_by,
            "the counters did not all move to {NEW_ZONE}: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Traffic goes on for a while after the moves.
    let total = || expected.lock().unwrap().values().sum::<i64>();
    let after_moves = total() + 2 * COUNTERS as i64;
    wait_for("traffic after the moves", Duration::from_secs(30), || {
        total() >= after_moves
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    load.await.expect("traffic ran without failing");
    assert_eq!(
        client.errors_beyond_retries(),
        BTreeMap::new(),
        "callers saw errors beyond retries: {:?}",
        client.errors.lock().unwrap()
    );

    // Nothing lost: every counter holds every acknowledged add.
    let expected = expected.lock().unwrap().clone();
    for (counter, value) in &expected {
        assert_eq!(client.value(counter).await, *value, "{counter} lost an add");
    }

    // No double activation: each counter is live on one node of the new
    // zone, by the newest of its activations, which came after one in the
    // first zones; no epoch was activated twice.
    let live = live_agents(&lab, &boot, "d1", &via_d.url).await;
    let log = activations(&boot, &all);
    for counter in expected.keys() {
        let nodes = live.get(counter).cloned().unwrap_or_default();
        let [(node, epoch)] = nodes.as_slice() else {
            panic!("{counter} is live on {nodes:?}");
        };
        assert!(in_new_zone(node), "{counter} live on {node}");
        let seen = log.get(counter).cloned().unwrap_or_default();
        assert!(
            seen.iter().any(|(_, host)| !in_new_zone(host)),
            "{counter} was not live in the first zones: {seen:?}"
        );
        let newest = seen.iter().max().expect("activations");
        assert_eq!(
            newest,
            &(*epoch, node.clone()),
            "{counter}: live epoch {epoch} on {node}, activations {seen:?}"
        );
    }
    for (agent, seen) in &log {
        let mut epochs: Vec<u64> = seen.iter().map(|(epoch, _)| *epoch).collect();
        let count = epochs.len();
        epochs.sort_unstable();
        epochs.dedup();
        assert_eq!(epochs.len(), count, "{agent} activated twice at one epoch");
    }

    // The ownership bucket has a replica in each of three zones, so with zone
    // fr-par-1 gone (its NATS server and node killed), the counters answer
    // through the new zone with every add.
    let owners = format!("KV_mesh-{CLUSTER}-owners");
    let servers = bucket_servers(&lab, "b1", &owners).await;
    let zones_of: Vec<&str> = servers
        .iter()
        .map(|s| {
            let host = s
                .strip_prefix("nats-")
                .expect("servers are named nats-<host>");
            HOSTS.iter().find(|h| h.0 == host).expect("a lab host").1
        })
        .collect();
    let mut distinct = zones_of.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "owners bucket replicas: {servers:?} in {zones_of:?}"
    );
    // The worst case: the zone lost holds the bucket's leader, so JetStream
    // elects another while the nodes renew their leases.
    lead_stream(&lab, "b1", &owners, "a1").await;
    let before = activations(&boot, &all);
    kill_host(&lab, "a1");
    let killed = Instant::now();
    let servers = bucket_servers(&lab, "b1", &owners).await;
    eprintln!(
        "zone loss: {owners} led by {} after {:?}",
        servers[0],
        killed.elapsed()
    );
    // Past a lease since the loss: a lease that was not renewed meanwhile
    // has lapsed, and its agents would activate again when called.
    tokio::time::sleep_until((killed + LEASE).into()).await;
    for (counter, value) in &expected {
        assert_eq!(
            via_d.value(counter).await,
            *value,
            "{counter} after zone loss"
        );
    }
    eprintln!(
        "zone loss: every counter answered after {:?}",
        killed.elapsed()
    );

    // The leases outlasted the election: no counter stopped or moved.
    let live_after = live_agents(&lab, &boot, "d1", &via_d.url).await;
    let after = activations(&boot, &all);
    for counter in expected.keys() {
        assert_eq!(
            live_after.get(counter),
            live.get(counter),
            "{counter} after zone loss"
        );
        assert_eq!(
            after.get(counter),
            before.get(counter),
            "{counter} activated again after zone loss"
        );
    }
}

/// Makes the NATS server of `host` the leader of stream `stream`, asking
/// through `via`'s server for leader step-downs.
async fn lead_stream(lab: &Lab, via: &str, stream: &str, host: &str) {
    let want = format!("nats-{host}");
    let url = format!("nats://{}:4222", lab.host(via).addr);
    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
    let body = json!({"placement": {"preferred": want}}).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let servers = bucket_servers(lab, via, stream).await;
        if servers[0] == want {
            return;
        }
        assert!(
            servers.contains(&want),
            "{want} holds no replica: {servers:?}"
        );
        assert!(Instant::now() < deadline, "{want} never led {stream}");
        let reply = nats_call_async(lab, via, &url, &subject, &body, Duration::from_secs(5)).await;
        let Some(text) = reply.ok() else {
            continue;
        };
        let answer: Value = serde_json::from_str(&text).expect("JSON step-down answer");
        assert!(
            answer["error"].is_null() || answer["success"] == true,
            "{answer}"
        );
        // Wait for the election the step-down started.
        let changed = Instant::now() + Duration::from_secs(10);
        while bucket_servers_now(lab, via, stream).await.as_deref() == Some(servers.as_slice())
            && Instant::now() < changed
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The NATS servers holding the replicas of JetStream stream `stream`,
/// leader first, as its leader reports them (stream info, asked through
/// `host`'s server); waits while the stream elects a leader.
async fn bucket_servers(lab: &Lab, host: &str, stream: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(servers) = bucket_servers_now(lab, host, stream).await {
            return servers;
        }
        assert!(Instant::now() < deadline, "{stream} has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`bucket_servers`], or `None` when no leader answers now.
async fn bucket_servers_now(lab: &Lab, host: &str, stream: &str) -> Option<Vec<String>> {
    let url = format!("nats://{}:4222", lab.host(host).addr);
    let subject = format!("$JS.API.STREAM.INFO.{stream}");
    let wait = Duration::from_secs(5);
    let text = nats_call_async(lab, host, &url, &subject, "", wait)
        .await
        .ok()?;
    let info: Value = serde_json::from_str(&text).expect("JSON stream info");
    let cluster = &info["cluster"];
    let mut servers = vec![cluster["leader"].as_str()?.to_owned()];
    for replica in cluster["replicas"].as_array().cloned().unwrap_or_default() {
        servers.push(replica["name"].as_str().expect("a name").to_owned());
    }
    Some(servers)
}

/// Kills every process of a lab host, as if its zone went down.
fn kill_host(lab: &Lab, host: &str) {
    let ns = &lab.host(host).ns;
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip runs");
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let pid: i32 = pid.parse().expect("a pid");
        // SAFETY: plain syscall on a process of the lab.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Runs the script with `args` (no lab needed); (exit status, stderr).
fn run_plain(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(python_bin())
        .arg(script_path())
        .args(["--secret-file", dir.join("secret").to_str().unwrap()])
        .arg("--insecure")
        .args([
            "--bin-dir",
            bin_dir().to_str().unwrap(),
            "--nats-server",
            nats_server_bin(),
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the script starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_inventories_and_arguments_stop_the_script_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "zones-bootstrap-test-secret\n").unwrap();
    let host = |extra: &str| format!("[[host]]\nname = \"h1\"\naddress = \"10.9.0.1\"\n{extra}");
    let cases = [
        (
            host("colour = \"red\"\n"),
            "unknown key 'colour' in host 'h1'",
        ),
        (
            host("kind = \"mainframe\"\n"),
            "invalid kind 'mainframe' of host 'h1'",
        ),
        (
            host("zone = \"frpar\"\n"),
            "invalid zone \"frpar\" in host 'h1'",
        ),
        (host("") + &host(""), "host name 'h1' appears twice"),
        (
            "[[host]]\nname = \"h2\"\naddress = \"ten\"\n".to_owned(),
            "invalid address 'ten'",
        ),
        (host("") + "[node]\nname = \"x\"\n", "[node] key 'name'"),
        ("[[host]\n".to_owned(), "is not valid TOML"),
        (
            host("zone = \"nl-ams-1\"\n"),
            "has no host in zone fr-par-2",
        ),
    ];
    for (text, message) in cases {
        let inventory = dir.path().join("inventory.toml");
        std::fs::write(&inventory, &text).unwrap();
        let args = [
            "--zone",
            "fr-par-2",
            "--inventory",
            inventory.to_str().unwrap(),
        ];
        let (code, stderr) = run_plain(dir.path(), &args);
        assert_eq!(code, 2, "{text}: {stderr}");
        assert!(
            stderr.contains(message),
            "{text}: expected {message:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(&inventory, host("")).unwrap();
    let inv = inventory.to_str().unwrap();
    // Topology files: checked as `meshctl topology check` does, then
    // against the inventory as each node would when it starts.
    let topology = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let unknown_zone = topology("t1.toml", "[policy.rcounter]\nzones = [\"fr-par-7\"]\n");
    let elsewhere = topology(
        "t2.toml",
        "[[node]]\nname = \"h1\"\nzone = \"nl-ams-1\"\nkind = \"instance\"\n",
    );
    let other_kind = topology(
        "t3.toml",
        "[[node]]\nname = \"h1\"\nzone = \"fr-par-2\"\nkind = \"elastic-metal\"\n",
    );
    let unsatisfiable = topology(
        "t4.toml",
        "[[node]]\nname = \"h1\"\nzone = \"fr-par-2\"\nkind = \"instance\"\n\n\
         [policy.trainer]\ncapabilities = [\"gpu\"]\n",
    );
    let zone_args = ["--zone", "fr-par-2", "--inventory", inv, "--topology"];
    let with_topology = |file: &str| {
        let mut args = zone_args.map(str::to_owned).to_vec();
        args.push(file.to_owned());
        args
    };
    let topology_cases = [
        (
            with_topology(&unknown_zone),
            "invalid topology file: ".to_owned()
                + &unknown_zone
                + ": policy rcounter: unknown zone \"fr-par-7\"",
        ),
        (
            with_topology(&elsewhere),
            format!("the topology file {elsewhere} puts host 'h1' in zone nl-ams-1"),
        ),
        (
            with_topology(&other_kind),
            format!("the topology file {other_kind} says host 'h1' is of kind elastic-metal"),
        ),
        (
            with_topology(&unsatisfiable),
            "policy trainer: no node satisfies it".to_owned(),
        ),
        (
            with_topology("/nonexistent.toml"),
            "cannot read the topology file /nonexistent.toml".to_owned(),
        ),
    ];
    for (args, message) in &topology_cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run_plain(dir.path(), &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(message.as_str()),
            "{args:?}: expected {message:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
    let bad_args: [(&[&str], &str); 3] = [
        (
            &[
                "--zone",
                "fr-par-2",
                "--inventory",
                inv,
                "--routes",
                "10.0.0.1:6222",
            ],
            "invalid route \"10.0.0.1:6222\"",
        ),
        (
            &[
                "--zone",
                "fr-par-2",
                "--inventory",
                inv,
                "--kv-replicas",
                "9",
            ],
            "invalid --kv-replicas 9",
        ),
        (
            &["--zone", "fr-par-2", "--inventory", "/nonexistent.toml"],
            "cannot read the inventory /nonexistent.toml",
        ),
    ];
    for (args, message) in bad_args {
        let (code, stderr) = run_plain(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr:?}"
        );
    }
}

#[test]
fn a_host_unreachable_over_ssh_stops_the_script_before_it_changes_anything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "zones-bootstrap-test-secret\n").unwrap();
    let inventory = dir.path().join("inventory.toml");
    // Port 1 of the loopback address: refused at once.
    let text = "[[host]]\nname = \"h1\"\naddress = \"10.9.0.1\"\nssh = \"root@127.0.0.1\"\n";
    std::fs::write(&inventory, text).unwrap();
    let ssh = "ssh -o BatchMode=yes -o ConnectTimeout=3 -p 1";
    let args = [
        "--zone",
        "fr-par-2",
        "--inventory",
        inventory.to_str().unwrap(),
        "--ssh",
        ssh,
    ];
    let (code, stderr) = run_plain(dir.path(), &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("host h1 (10.9.0.1) is unreachable: ssh root@127.0.0.1 failed")
            && stderr.contains("Nothing was changed")
            && stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
}
