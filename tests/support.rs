//! Test bed for whole-system tests: real `nats-server` and `mesh-node`
//! processes on free loopback ports, torn down on drop, even on panic.
//!
//! Each process is started with a parent-death signal, so that nothing
//! outlives a test binary that is killed. Waits poll for an event with a
//! deadline and say what never came; there are no fixed sleeps.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use mesh::gateway::{AdminRequest, CallRequest, MemberView, MembersReply, Response};
use mesh::metrics::StatsSnapshot;
use mesh::subjects;

#[path = "log_lines.rs"]
mod log_lines;

/// The poll step of [`wait_until`].
const POLL: Duration = Duration::from_millis(25);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port is free")
        .port()
}

/// Polls `probe` until it returns `Some`, or panics naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Starts `command` so that it dies with the test process.
fn spawn_child(command: &mut Command, log: &Path) -> Child {
    let out = File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

fn stop_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The `nats-server` binary: `$NATS_SERVER_BIN`, or the one on `PATH`.
fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

/// A real NATS server with JetStream, on a free loopback port.
pub struct Nats {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// A configuration file the server reads (users, permissions).
    config: Option<PathBuf>,
}

impl Nats {
    /// Starts a server and waits until it accepts clients.
    pub async fn start() -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Self::spawn(dir.path(), port, 0, None).await;
        Nats {
            child,
            port,
            dir,
            config: None,
        }
    }

    /// Starts a server that also reads `config` (such as an
    /// `authorization` block).
    pub async fn start_with_config(config: &Path) -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Self::spawn(dir.path(), port, 0, Some(config)).await;
        Nats {
            child,
            port,
            dir,
            config: Some(config.to_owned()),
        }
    }

    async fn spawn(dir: &Path, port: u16, generation: u32, config: Option<&Path>) -> Child {
        let log = dir.join(format!("nats-{generation}.log"));
        let mut command = Command::new(nats_server_bin());
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        let child = spawn_child(
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.join("js")),
            &log,
        );
        wait_until("nats-server to be ready", Duration::from_secs(15), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { text.contains("Server is ready").then_some(()) }
        })
        .await;
        child
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Starts the server again on the same port and data.
    pub async fn restart(&mut self, generation: u32) {
        let config = self.config.clone();
        self.child = Self::spawn(self.dir.path(), self.port, generation, config.as_deref()).await;
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A cluster of NATS servers with JetStream on loopback.
pub struct NatsCluster {
    servers: Vec<(Child, u16, u16)>,
    dir: tempfile::TempDir,
    generation: u32,
}

impl NatsCluster {
    /// Starts `n` routed servers and waits for a JetStream meta leader.
    pub async fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut cluster = NatsCluster {
            servers: Vec::new(),
            dir,
            generation: 0,
        };
        cluster.spawn_all(&ports).await;
        cluster
    }

    async fn spawn_all(&mut self, ports: &[(u16, u16)]) {
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let mut logs = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let log = self
                .dir
                .path()
                .join(format!("nats-{i}-{}.log", self.generation));
            let child = spawn_child(
                Command::new(nats_server_bin())
                    .args(["-a", "127.0.0.1", "-p", &client.to_string()])
                    .args(["--server_name", &format!("s{i}"), "--cluster_name", "mesh"])
                    .args(["-cluster", &format!("nats://127.0.0.1:{route}")])
                    .args(["-routes", &routes.join(",")])
                    .args(["-js", "-sd"])
                    .arg(self.dir.path().join(format!("js-{i}"))),
                &log,
            );
            self.servers.push((child, *client, *route));
            logs.push(log);
        }
        wait_until("a JetStream meta leader", Duration::from_secs(30), || {
            let found = logs.iter().any(|log| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                text.contains("JetStream cluster new metadata leader")
                    || text.contains("Self is new JetStream cluster metadata leader")
            });
            async move { found.then_some(()) }
        })
        .await;
    }

    /// The client URLs, comma separated, as `--nats` takes them.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .servers
            .iter()
            .map(|(_, client, _)| format!("nats://127.0.0.1:{client}"))
            .collect();
        urls.join(",")
    }

    /// Stops server `i` (its data stays) and returns its client URL.
    pub fn stop(&mut self, i: usize) -> String {
        let (child, client, _) = &mut self.servers[i];
        stop_child(child);
        format!("nats://127.0.0.1:{client}")
    }

    /// Stops every server (data stays).
    pub fn stop_all(&mut self) {
        for (child, _, _) in &mut self.servers {
            stop_child(child);
        }
    }

    /// Starts every server again on the same ports and data.
    pub async fn restart_all(&mut self) {
        let ports: Vec<(u16, u16)> = self.servers.drain(..).map(|(_, c, r)| (c, r)).collect();
        self.generation += 1;
        self.spawn_all(&ports).await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub cluster: String,
    pub name: String,
    pub zone: String,
    pub secret: String,
    pub heartbeat: String,
    pub member_timeout: String,
    pub extra: Vec<String>,
    /// A data directory that outlives the process (for restarts); a fresh
    /// temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Link TLS files; plaintext links (`--insecure`) when `None`.
    pub tls: Option<TlsFiles>,
}

/// A node's link TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A cluster CA made by `bootstrap/certs.sh`, in a temporary folder.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir");
        run_certs(&["ca", dir.path().to_str().unwrap()], &[]);
        TestCa { dir }
    }

    /// A certificate for node `name`, valid for `days` (negative: expired).
    pub fn node(&self, name: &str, days: i32) -> TlsFiles {
        let dir = self.dir.path();
        run_certs(
            &["node", dir.to_str().unwrap(), name, "127.0.0.1"],
            &[("MESH_CERT_DAYS", &days.to_string())],
        );
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

fn run_certs(args: &[&str], env: &[(&str, &str)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bootstrap/certs.sh");
    let out = Command::new(script)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("bootstrap/certs.sh runs");
    assert!(
        out.status.success(),
        "certs.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NodeSpec {
    /// A node of cluster `cluster` with fast failure detection for tests.
    pub fn new(cluster: &str, name: &str, zone: &str) -> Self {
        NodeSpec {
            cluster: cluster.into(),
            name: name.into(),
            zone: zone.into(),
            secret: "test-secret-0123456789".into(),
            heartbeat: "200ms".into(),
            member_timeout: "1500ms".into(),
            extra: Vec::new(),
            data_dir: None,
            env: Vec::new(),
            tls: None,
        }
    }

    /// The member timeout as a duration.
    pub fn timeout(&self) -> Duration {
        humantime::parse_duration(&self.member_timeout).expect("valid timeout")
    }
}

/// A `mesh-node` process.
pub struct MeshNode {
    child: Child,
    pub spec: NodeSpec,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MeshNode {
    /// Starts a node against `nats`.
    pub fn start(nats: &Nats, spec: NodeSpec) -> MeshNode {
        Self::start_with(&nats.url(), spec)
    }

    /// Starts a node against the NATS servers at `urls`.
    pub fn start_with(urls: &str, spec: NodeSpec) -> MeshNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, &spec.secret).expect("secret file");
        let log = dir.path().join("node.log");
        let listen = format!("127.0.0.1:{}", free_port());
        let data_dir = spec
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_mesh-node"));
        // The developer's own MESH_* settings must not leak into test nodes.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MESH_")) {
            command.env_remove(key);
        }
        match &spec.tls {
            Some(tls) => command
                .arg("--tls-ca")
                .arg(&tls.ca)
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key),
            None => command.arg("--insecure"),
        };
        let child = spawn_child(
            command
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .args(["--cluster", &spec.cluster, "--name", &spec.name])
                .args(["--zone", &spec.zone, "--nats", urls])
                .args(["--listen", &listen])
                .args(["--heartbeat", &spec.heartbeat])
                .args(["--member-timeout", &spec.member_timeout])
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--secret-file")
                .arg(&secret)
                .args(&spec.extra),
            &log,
        );
        MeshNode {
            child,
            spec,
            log,
            _dir: dir,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Freezes the process and waits until the kernel shows it stopped.
    pub async fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.pid());
        wait_until("the process to be stopped", Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = text
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next());
            async move { (state == Some('T')).then_some(()) }
        })
        .await;
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit.
    pub async fn exited(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("node {} to exit", self.spec.name);
        let child = &mut self.child;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        // SIGCONT first: a stopped process cannot die of SIGKILL until then
        // on some kernels' accounting, and it must not linger.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        stop_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of {} ----\n{}",
                self.spec.name,
                tail(&self.log, 40)
            );
        }
    }
}

/// A NATS client speaking the gateway and admin protocols, as tests do.
pub struct Client {
    pub nats: async_nats::Client,
    pub cluster: String,
}

impl Client {
    pub async fn connect(nats: &Nats, cluster: &str) -> Client {
        Self::connect_to(&nats.url(), cluster).await
    }

    /// Connects to any of the comma-separated `urls`.
    pub async fn connect_to(urls: &str, cluster: &str) -> Client {
        let addrs: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(|u| u.parse().expect("a NATS URL"))
            .collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await
            .expect("test client connects");
        Client {
            nats: client,
            cluster: cluster.into(),
        }
    }

    async fn request(&self, subject: String, body: Vec<u8>) -> Option<Response> {
        self.request_within(subject, body, Duration::from_secs(10))
            .await
    }

    async fn request_within(
        &self,
        subject: String,
        body: Vec<u8>,
        wait: Duration,
    ) -> Option<Response> {
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(wait));
        let reply = self.nats.send_request(subject, request).await.ok()?;
        Some(serde_json::from_slice(&reply.payload).expect("gateway answers are JSON"))
    }

    /// Sends raw bytes to a node's gateway and returns the answer.
    pub async fn raw_call(&self, node: &str, body: &[u8]) -> Response {
        let subject = subjects::node_gateway(&self.cluster, node);
        self.request(subject, body.to_vec())
            .await
            .expect("the node answers")
    }

    /// Calls `agent` through `node` (or any node) with a JSON message.
    pub async fn call(&self, node: Option<&str>, agent: &str, msg: serde_json::Value) -> Response {
        self.call_with_timeout(node, agent, msg, None).await
    }

    pub async fn call_with_timeout(
        &self,
        node: Option<&str>,
        agent: &str,
        msg: serde_json::Value,
        timeout_ms: Option<u64>,
    ) -> Response {
        let request = CallRequest {
            v: None,
            agent: agent.into(),
            msg,
            timeout_ms,
            cast: false,
        };
        let subject = match node {
            Some(node) => subjects::node_gateway(&self.cluster, node),
            None => subjects::gateway(&self.cluster),
        };
        let body = serde_json::to_vec(&request).unwrap();
        // A node that dies holding the request never answers: wait a little
        // longer than the mesh's own deadline, then report a timeout.
        let wait = Duration::from_millis(timeout_ms.unwrap_or(5000) + 2000);
        self.request_within(subject, body, wait)
            .await
            .unwrap_or_else(|| {
                Response::Error(mesh::gateway::ErrorBody {
                    code: "timeout".into(),
                    message: "no answer through NATS".into(),
                })
            })
    }

    /// Calls until the reply is not a retryable error (`unavailable`,
    /// `node_lost`, `timeout`): what a client does while an agent fails
    /// over. Panics naming the last error after `timeout`.
    pub async fn call_until_ok(
        &self,
        node: Option<&str>,
        agent: &str,
        msg: serde_json::Value,
        timeout: Duration,
    ) -> serde_json::Value {
        let what = format!("{agent} to answer through {node:?}");
        wait_until(&what, timeout, || async {
            match self.call(node, agent, msg.clone()).await {
                Response::Ok(v) => Some(v),
                Response::Error(e)
                    if ["unavailable", "node_lost", "timeout"].contains(&e.code.as_str()) =>
                {
                    None
                }
                Response::Error(e) => panic!("{agent}: {} ({})", e.message, e.code),
            }
        })
        .await
    }

    async fn admin(&self, node: &str, request: AdminRequest) -> Option<serde_json::Value> {
        let subject = subjects::node_admin(&self.cluster, node);
        match self
            .request(subject, serde_json::to_vec(&request).unwrap())
            .await?
        {
            Response::Ok(v) => Some(v),
            Response::Error(e) => panic!("admin request failed: {e:?}"),
        }
    }

    /// `node`'s member list, or `None` if it does not answer.
    pub async fn members(&self, node: &str) -> Option<Vec<MemberView>> {
        let value = self.admin(node, AdminRequest::Members).await?;
        let reply: MembersReply = serde_json::from_value(value).unwrap();
        Some(reply.members)
    }

    /// The names `node` sees as members with a link up (itself included).
    pub async fn linked_names(&self, node: &str) -> Option<Vec<String>> {
        let members = self.members(node).await?;
        Some(
            members
                .into_iter()
                .filter(|m| m.linked)
                .map(|m| m.name)
                .collect(),
        )
    }

    /// `node`'s counters.
    pub async fn stats(&self, node: &str) -> StatsSnapshot {
        let value = self
            .admin(node, AdminRequest::Stats)
            .await
            .expect("node answers");
        serde_json::from_value(value).unwrap()
    }

    /// The node `asking` would send `agent`'s messages to.
    pub async fn locate(&self, asking: &str, agent: &str) -> String {
        let request = AdminRequest::Locate {
            agent: agent.into(),
        };
        let value = self.admin(asking, request).await.expect("node answers");
        value["node"].as_str().unwrap().to_owned()
    }

    /// The agents live on `node`.
    pub async fn agents(&self, node: &str) -> Vec<String> {
        let value = self
            .admin(node, AdminRequest::Agents)
            .await
            .expect("node answers");
        serde_json::from_value(value["agents"].clone()).unwrap()
    }

    /// Waits until every node in `nodes` sees all of them, linked.
    pub async fn converged(&self, nodes: &[&MeshNode]) {
        let mut expected: Vec<String> = nodes.iter().map(|n| n.name().to_owned()).collect();
        expected.sort();
        for node in nodes {
            let what = format!("{} to see {expected:?} linked", node.name());
            let expected = expected.clone();
            wait_until(&what, Duration::from_secs(20), || async {
                let names = self.linked_names(node.name()).await?;
                (names == expected).then_some(())
            })
            .await;
        }
    }
}

/// Starts `n` nodes of `cluster` named `node-0`.., node `i` in
/// `zones[i % len]`, and waits until they all see each other linked.
pub async fn start_mesh(
    nats: &Nats,
    cluster: &str,
    n: usize,
    zones: &[&str],
) -> (Vec<MeshNode>, Client) {
    let nodes: Vec<MeshNode> = (0..n)
        .map(|i| {
            let spec = NodeSpec::new(cluster, &format!("node-{i}"), zones[i % zones.len()]);
            MeshNode::start(nats, spec)
        })
        .collect();
    let client = Client::connect(nats, cluster).await;
    client.converged(&nodes.iter().collect::<Vec<_>>()).await;
    (nodes, client)
}

/// The reply value of a successful call, or a panic naming the error.
pub fn ok(response: Response) -> serde_json::Value {
    match response {
        Response::Ok(v) => v,
        Response::Error(e) => panic!("expected a reply, got error {}: {}", e.code, e.message),
    }
}

/// The error code of a failed call, or a panic naming the reply.
pub fn error_code(response: Response) -> String {
    match response {
        Response::Ok(v) => panic!("expected an error, got {v}"),
        Response::Error(e) => e.code,
    }
}

/// Runs `meshctl` like [`meshctl`] and asserts it succeeded.
pub fn meshctl_ok(nats_url: &str, cluster: &str, args: &[&str]) -> Output {
    let out = meshctl(nats_url, cluster, args);
    assert!(
        out.status.success(),
        "meshctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A counter's value through `node`, waiting out a failover.
pub async fn counter_value(client: &Client, node: &str, agent: &str) -> i64 {
    let get = serde_json::json!({"get": {}});
    let reply = client
        .call_until_ok(Some(node), agent, get, Duration::from_secs(15))
        .await;
    reply["value"].as_i64().expect("a counter value")
}

/// Runs `meshctl` with `args` against `nats` and returns its output.
pub fn meshctl(nats_url: &str, cluster: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--nats", nats_url, "--cluster", cluster])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("meshctl runs")
}

/// Every activation in the nodes' logs: agent -> [(epoch, node)].
pub fn activations(nodes: &[&MeshNode]) -> BTreeMap<String, Vec<(u64, String)>> {
    log_lines::activations_in(nodes.iter().map(|n| (n.name(), n.log_text())))
}
