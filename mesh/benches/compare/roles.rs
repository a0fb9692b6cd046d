//! The processes of the comparison bench other than the orchestrator: the
//! server and driver of each system, and the local activation runs.
//!
//! A child learns its role from `MESH_BENCH_ROLE` and its arguments from
//! `MESH_BENCH_ARGS` (space separated). Servers print `ready` and serve
//! until their standard input closes. Drivers print `ready`, then answer
//! each `run CALLS CASTS` line of standard input with one [`RunResult`]
//! line of JSON; local runs print one [`LocalResult`] and exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::{codec, Agent, AgentError, AgentId, Caller, Context, Durability, Registry};
use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::{BytesConvertable, NodeServer, NodeServerMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{heap_bytes, LocalResult, RunResult, PAYLOAD_BYTES};

/// How long a call may take before the bench fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a driver may take to find its server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many activations the local runs keep in flight.
const IN_FLIGHT: usize = 256;
/// The `wire` argument of a node that speaks every frame version.
pub(crate) const ALL_VERSIONS: &str = "all";
/// The cookie of the raw `ractor_cluster` pair.
const COOKIE: &str = "bench-cookie";

/// Runs the child role `role`.
pub(crate) fn run(role: &str, args: &[String]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("role {role} needs argument {}", i + 1))
    };
    let number = |i: usize| -> anyhow::Result<usize> {
        arg(i)?
            .parse()
            .with_context(|| format!("argument {} of {role}", i + 1))
    };
    runtime.block_on(async {
        match role {
            "ractor-server" => ractor_server(number(0)? as u16).await,
            "ractor-driver" => ractor_driver(arg(0)?).await,
            "mesh-server" => mesh_server(arg(0)?, arg(1)?, arg(2)?).await,
            "mesh-driver" => mesh_driver(arg(0)?, arg(1)?, arg(2)?).await,
            "nats-server" => nats_server(arg(0)?).await,
            "nats-driver" => nats_driver(arg(0)?).await,
            "local-ractor" => local_ractor(number(0)?).await,
            "local-mesh" => local_mesh(arg(0)?, arg(1)?, number(2)?).await,
            "passivate-mesh" => passivate_mesh(arg(0)?, arg(1)?, number(2)?).await,
            "army-workers" => army_workers(arg(0)?, arg(1)?, number(2)?).await,
            "army-driver" => {
                army_driver(arg(0)?, arg(1)?, number(2)?, number(3)?, number(4)?).await
            }
            other => bail!("unknown bench role {other}"),
        }
    })
}

/// Prints one line and flushes it to the orchestrator.
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The lines of standard input, read by a thread of their own (tokio's
/// stdin is not among the features this workspace builds).
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits until standard input closes: the orchestrator is done.
async fn until_stdin_closes() {
    let mut lines = stdin_lines();
    while lines.recv().await.is_some() {}
}

/// Says `ready`, then yields the `(calls, casts)` of each `run CALLS CASTS`
/// line until standard input closes.
struct Commands(mpsc::UnboundedReceiver<String>);

impl Commands {
    fn ready() -> Commands {
        let lines = stdin_lines();
        say("ready");
        Commands(lines)
    }

    async fn next(&mut self) -> anyhow::Result<Option<(usize, usize)>> {
        let Some(line) = self.0.recv().await else {
            return Ok(None);
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, calls, casts] = words[..] else {
            bail!("expected `run CALLS CASTS`, got {line:?}");
        };
        Ok(Some((calls.parse()?, casts.parse()?)))
    }

    fn answer(&self, result: &RunResult) -> anyhow::Result<()> {
        say(&serde_json::to_string(result)?);
        Ok(())
    }
}

/// Round trip samples: a tenth as many unrecorded rounds come first.
struct Samples {
    warm_up: usize,
    samples: Vec<u64>,
}

impl Samples {
    fn new(calls: usize) -> Samples {
        Samples {
            warm_up: (calls / 10).max(1),
            samples: Vec::with_capacity(calls),
        }
    }

    /// How many rounds to make in all.
    fn rounds(&self) -> usize {
        self.warm_up + self.samples.capacity()
    }

    /// Records round `i`, which started at `started`.
    fn record(&mut self, i: usize, started: Instant) {
        if i >= self.warm_up {
            self.samples.push(started.elapsed().as_nanos() as u64);
        }
    }
}

// ---------------------------------------------------------------- ractor

/// One frame between the raw actors: a tag byte, then the body.
#[derive(Debug)]
struct Raw(Vec<u8>);

impl BytesConvertable for Raw {
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Raw(bytes)
    }
}

/// Tags of [`Raw`] frames.
const ECHO: u8 = 0;
const DATA: u8 = 1;
const COUNT: u8 = 2;

/// The groups the raw actors join.
const ECHO_GROUP: &str = "bench/echo";
const CLIENT_GROUP: &str = "bench/client";

/// The first remote member of a process group, if any.
fn remote_member(group: &str) -> Option<ActorRef<Raw>> {
    ractor::pg::get_members(&group.to_owned())
        .into_iter()
        .find(|cell| !cell.get_id().is_local())
        .map(ActorRef::from)
}

/// The server's actor: echoes, counts data, answers the count.
struct RawServer;

impl Actor for RawServer {
    type Msg = Raw;
    type State = (u64, Option<ActorRef<Raw>>);
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Raw>,
        (): (),
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(ECHO_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok((0, None))
    }

    async fn handle(
        &self,
        _: ActorRef<Raw>,
        Raw(mut bytes): Raw,
        (count, client): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match bytes.first() {
            Some(&DATA) => *count += 1,
            Some(&ECHO) | Some(&COUNT) => {
                if bytes[0] == COUNT {
                    bytes = [&[COUNT][..], &count.to_le_bytes()].concat();
                    *count = 0;
                }
                if client.is_none() {
                    *client = remote_member(CLIENT_GROUP);
                }
                if let Some(client) = client {
                    client.cast(Raw(bytes))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The driver's actor: hands every frame it receives to the driver.
struct RawClient;

impl Actor for RawClient {
    type Msg = Raw;
    type State = mpsc::UnboundedSender<Vec<u8>>;
    type Arguments = mpsc::UnboundedSender<Vec<u8>>;

    async fn pre_start(
        &self,
        myself: ActorRef<Raw>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(CLIENT_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(tx)
    }

    async fn handle(
        &self,
        _: ActorRef<Raw>,
        Raw(bytes): Raw,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(bytes);
        Ok(())
    }
}

async fn node_server(port: u16, name: &str) -> anyhow::Result<ActorRef<NodeServerMessage>> {
    let server = NodeServer::new(
        port,
        COOKIE.into(),
        name.into(),
        "127.0.0.1".into(),
        None,
        None,
    );
    let (server, _) = Actor::spawn(None, server, ()).await?;
    Ok(server)
}

async fn ractor_server(port: u16) -> anyhow::Result<()> {
    let _server = node_server(port, "server").await?;
    let (actor, _) = Actor::spawn(None, RawServer, ()).await?;
    say("ready");
    until_stdin_closes().await;
    actor.stop(None);
    Ok(())
}

async fn ractor_driver(address: &str) -> anyhow::Result<()> {
    let port = super::free_port()?;
    let server = node_server(port, "driver").await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_client, _) = Actor::spawn(None, RawClient, tx).await?;
    ractor_cluster::client_connect(&server, address).await?;
    let started = Instant::now();
    let echo = loop {
        if let Some(echo) = remote_member(ECHO_GROUP) {
            break echo;
        }
        if started.elapsed() > CONNECT_TIMEOUT {
            bail!("the raw ractor server never appeared");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let payload = [&[ECHO][..], &[7; PAYLOAD_BYTES]].concat();
    let data = [&[DATA][..], &[7; PAYLOAD_BYTES]].concat();
    let mut commands = Commands::ready();
    while let Some((calls, casts)) = commands.next().await? {
        let mut samples = Samples::new(calls);
        for i in 0..samples.rounds() {
            let started = Instant::now();
            echo.cast(Raw(payload.clone()))?;
            rx.recv().await.context("the raw client stopped")?;
            samples.record(i, started);
        }
        let started = Instant::now();
        for _ in 0..casts {
            echo.cast(Raw(data.clone()))?;
        }
        echo.cast(Raw(vec![COUNT]))?;
        let reply = rx.recv().await.context("the raw client stopped")?;
        let cast_ns = started.elapsed().as_nanos() as u64;
        let count = u64::from_le_bytes(reply[1..9].try_into()?);
        commands.answer(&RunResult::new(samples.samples, casts, count, cast_ns))?;
    }
    Ok(())
}

// ------------------------------------------------------------------ mesh

/// What the bench agents accept.
#[derive(Debug, Serialize, Deserialize)]
enum BenchMessage {
    /// Answer with the same bytes.
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Count it; no answer (sent as a cast).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Answer with the count of data messages since the last `Count`.
    Count,
    /// Answer with the node's name.
    Where,
}

/// What the bench agents answer.
#[derive(Debug, Serialize, Deserialize)]
enum BenchReply {
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    Count(u64),
    Where(String),
}

async fn bench_handle(
    count: &mut u64,
    ctx: &Context,
    msg: BenchMessage,
) -> Result<BenchReply, AgentError> {
    Ok(match msg {
        BenchMessage::Echo(bytes) => BenchReply::Echo(bytes),
        BenchMessage::Data(_) => {
            *count += 1;
            BenchReply::Count(*count)
        }
        BenchMessage::Count => BenchReply::Count(std::mem::take(count)),
        BenchMessage::Where => BenchReply::Where(ctx.node().to_owned()),
    })
}

/// The bench agent whose state lives in memory.
struct BenchAgent;

impl Agent for BenchAgent {
    const KIND: &'static str = "bench";
    type State = u64;
    type Message = BenchMessage;
    type Reply = BenchReply;

    async fn handle(
        count: &mut u64,
        ctx: &Context,
        msg: BenchMessage,
    ) -> Result<BenchReply, AgentError> {
        bench_handle(count, ctx, msg).await
    }
}

/// The bench agent whose state is on disk, so it may be passivated.
struct DurableBenchAgent;

impl Agent for DurableBenchAgent {
    const KIND: &'static str = "bench-durable";
    const DURABILITY: Durability = Durability::Local;
    type State = u64;
    type Message = BenchMessage;
    type Reply = BenchReply;

    async fn handle(
        count: &mut u64,
        ctx: &Context,
        msg: BenchMessage,
    ) -> Result<BenchReply, AgentError> {
        bench_handle(count, ctx, msg).await
    }
}

/// What every bench node is given: a free loopback link port, its data
/// in `dir`, and plaintext links (raw ractor_cluster, its peer in the
/// comparison, is plaintext too).
fn bench_node_args(
    nats: &str,
    cluster: &str,
    name: &str,
    dir: &std::path::Path,
) -> anyhow::Result<mesh::NodeArgs> {
    Ok(mesh::NodeArgs {
        cluster: Some(cluster.into()),
        name: Some(name.into()),
        nats: Some(vec![nats.into()]),
        listen: Some(format!("127.0.0.1:{}", super::free_port()?)),
        data_dir: Some(dir.join("data")),
        insecure: true,
        ..mesh::NodeArgs::default()
    })
}

/// Starts a mesh node named `name` in this process, with the bench kinds,
/// speaking the frame versions `wire` (such as `1-2`, or `all`).
async fn start_node(
    nats: &str,
    cluster: &str,
    name: &str,
    passivate_after: &str,
    wire: &str,
) -> anyhow::Result<(mesh::Node, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let args = mesh::NodeArgs {
        passivate_after: Some(passivate_after.into()),
        wire_versions: (wire != ALL_VERSIONS).then(|| wire.to_owned()),
        ..bench_node_args(nats, cluster, name, dir.path())?
    };
    let config = mesh::Config::load(args, |_| None)?;
    let mut registry = Registry::new();
    registry.register::<BenchAgent>();
    registry.register::<DurableBenchAgent>();
    let node = mesh::Node::start(config, registry).await?;
    Ok((node, dir))
}

async fn ask(
    caller: &Arc<dyn Caller>,
    to: &AgentId,
    msg: &BenchMessage,
) -> anyhow::Result<BenchReply> {
    let bytes = caller
        .call(to.clone(), codec::encode(msg)?, CALL_TIMEOUT)
        .await?;
    Ok(codec::decode(&bytes)?)
}

async fn mesh_server(nats: &str, cluster: &str, wire: &str) -> anyhow::Result<()> {
    let (node, _dir) = start_node(nats, cluster, "server", "off", wire).await?;
    say("ready");
    until_stdin_closes().await;
    node.shutdown().await;
    Ok(())
}

/// The first bench agent (after `from`) that placement puts on `node`.
async fn agent_on(
    caller: &Arc<dyn Caller>,
    node: &str,
    from: usize,
) -> anyhow::Result<(AgentId, usize)> {
    let started = Instant::now();
    let mut i = from;
    loop {
        let id = AgentId::new("bench", &format!("a{i}"))?;
        i += 1;
        if let BenchReply::Where(at) = ask(caller, &id, &BenchMessage::Where).await? {
            if at == node {
                return Ok((id, i));
            }
        }
        if started.elapsed() > CONNECT_TIMEOUT {
            bail!("no bench agent was placed on node {node}");
        }
        // Until the link is up every agent lands here: give it time.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mesh_driver(nats: &str, cluster: &str, wire: &str) -> anyhow::Result<()> {
    let (node, _dir) = start_node(nats, cluster, "driver", "off", wire).await?;
    let caller = node.caller();
    let (echo, next) = agent_on(&caller, "server", 0).await?;
    let (sink, _) = agent_on(&caller, "server", next).await?;
    let echo_msg = codec::encode(&BenchMessage::Echo(vec![7; PAYLOAD_BYTES]))?;
    let data_msg = codec::encode(&BenchMessage::Data(vec![7; PAYLOAD_BYTES]))?;
    let mut commands = Commands::ready();
    while let Some((calls, casts)) = commands.next().await? {
        let mut samples = Samples::new(calls);
        for i in 0..samples.rounds() {
            let started = Instant::now();
            caller
                .call(echo.clone(), echo_msg.clone(), CALL_TIMEOUT)
                .await?;
            samples.record(i, started);
        }
        let started = Instant::now();
        for _ in 0..casts {
            caller.cast(sink.clone(), data_msg.clone())?;
        }
        let BenchReply::Count(count) = ask(&caller, &sink, &BenchMessage::Count).await? else {
            bail!("the sink did not answer with a count");
        };
        let cast_ns = started.elapsed().as_nanos() as u64;
        commands.answer(&RunResult::new(samples.samples, casts, count, cast_ns))?;
    }
    node.shutdown().await;
    Ok(())
}

// ------------------------------------------------------------------ NATS

const NATS_ECHO: &str = "bench.echo";
const NATS_SINK: &str = "bench.sink";

async fn nats_server(url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    let mut echo = client.subscribe(NATS_ECHO).await?;
    // Data and count requests share one subscription, so the count is read
    // after every data message sent before it.
    let mut sink = client.subscribe(NATS_SINK).await?;
    let echoer = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(msg) = echo.next().await {
                if let Some(reply) = msg.reply {
                    let _ = client.publish(reply, msg.payload).await;
                }
            }
        })
    };
    let counter = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut count = 0u64;
            while let Some(msg) = sink.next().await {
                match msg.reply {
                    None => count += 1,
                    Some(reply) => {
                        let bytes = std::mem::take(&mut count).to_le_bytes();
                        let _ = client.publish(reply, bytes.to_vec().into()).await;
                    }
                }
            }
        })
    };
    client.flush().await?;
    say("ready");
    until_stdin_closes().await;
    echoer.abort();
    counter.abort();
    Ok(())
}

async fn nats_driver(url: &str) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(CALL_TIMEOUT))
        .connect(url)
        .await?;
    let payload = bytes::Bytes::from(vec![7; PAYLOAD_BYTES]);
    let mut commands = Commands::ready();
    while let Some((calls, casts)) = commands.next().await? {
        let mut samples = Samples::new(calls);
        for i in 0..samples.rounds() {
            let started = Instant::now();
            client.request(NATS_ECHO, payload.clone()).await?;
            samples.record(i, started);
        }
        let started = Instant::now();
        for _ in 0..casts {
            client.publish(NATS_SINK, payload.clone()).await?;
        }
        let reply = client.request(NATS_SINK, bytes::Bytes::new()).await?;
        let cast_ns = started.elapsed().as_nanos() as u64;
        let count = u64::from_le_bytes(reply.payload[..8].try_into()?);
        commands.answer(&RunResult::new(samples.samples, casts, count, cast_ns))?;
    }
    Ok(())
}

// ----------------------------------------------------------------- local

/// An actor that only waits, like an idle agent.
struct Idle;

impl Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, (): ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Lets memory settle (tasks finish their first poll) before reading it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn local_ractor(n: usize) -> anyhow::Result<()> {
    settle().await;
    let before = heap_bytes();
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut actors = Vec::with_capacity(n);
    for _ in 0..n {
        actors.push(Actor::spawn(None, Idle, ()).await?);
    }
    let elapsed = started.elapsed();
    settle().await;
    let result = LocalResult {
        n,
        seconds: elapsed.as_secs_f64(),
        heap_bytes: heap_bytes().saturating_sub(before),
        rss_bytes: rss_bytes().saturating_sub(rss_before),
        passivated_heap_bytes: None,
    };
    say(&serde_json::to_string(&result)?);
    for (actor, _) in actors {
        actor.stop(None);
    }
    Ok(())
}

/// Activates `n` agents of `kind` with `IN_FLIGHT` calls at a time.
async fn activate_many(caller: &Arc<dyn Caller>, kind: &str, n: usize) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let msg = codec::encode(&BenchMessage::Count)?;
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (caller, next, msg, kind) =
                (caller.clone(), next.clone(), msg.clone(), kind.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let id = AgentId::new(&kind, &format!("l{i}"))?;
                    caller.call(id, msg.clone(), CALL_TIMEOUT).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(started.elapsed())
}

async fn local_mesh(nats: &str, cluster: &str, n: usize) -> anyhow::Result<()> {
    let (node, _dir) = start_node(nats, cluster, "local", "off", ALL_VERSIONS).await?;
    let caller = node.caller();
    // One agent first, so that one-time costs are not counted per agent.
    activate_many(&caller, "bench", 1).await?;
    settle().await;
    let before = heap_bytes();
    let rss_before = rss_bytes();
    let elapsed = activate_many(&caller, "bench", n).await?;
    settle().await;
    let result = LocalResult {
        n,
        seconds: elapsed.as_secs_f64(),
        heap_bytes: heap_bytes().saturating_sub(before),
        rss_bytes: rss_bytes().saturating_sub(rss_before),
        passivated_heap_bytes: None,
    };
    say(&serde_json::to_string(&result)?);
    drop(node);
    Ok(())
}

/// Activates `n` durable agents, waits until every one is passivated, and
/// reports the heap they held live and what is left of them.
async fn passivate_mesh(nats: &str, cluster: &str, n: usize) -> anyhow::Result<()> {
    let (node, _dir) = start_node(nats, cluster, "passive", "2s", ALL_VERSIONS).await?;
    let caller = node.caller();
    activate_many(&caller, "bench", 1).await?;
    settle().await;
    let before = heap_bytes();
    let rss_before = rss_bytes();
    let elapsed = activate_many(&caller, "bench-durable", n).await?;
    settle().await;
    let live = heap_bytes().saturating_sub(before);
    let rss = rss_bytes().saturating_sub(rss_before);
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gone = node.live_agents() <= 1;
        if gone {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the idle agents were not passivated");
        }
    }
    settle().await;
    let result = LocalResult {
        n,
        seconds: elapsed.as_secs_f64(),
        heap_bytes: live,
        rss_bytes: rss,
        passivated_heap_bytes: Some(heap_bytes().saturating_sub(before)),
    };
    say(&serde_json::to_string(&result)?);
    drop(node);
    Ok(())
}

/// This process's resident set, from /proc.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = status
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a constant of the system.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

// ------------------------------------------------------------------ army

/// The board every worker asks for tasks.
const BOARD: &str = "main";
/// How many submissions the throughput run keeps in flight.
pub(crate) const SUBMITS_IN_FLIGHT: usize = 32;
/// How often the throughput run asks the board for its totals.
const POLL: Duration = Duration::from_millis(1);

/// What the army driver measured.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ArmyResult {
    /// Workers the board saw.
    pub(crate) workers: u64,
    /// The node the board ran on.
    pub(crate) board_node: String,
    /// `sleep 0` run by calling a worker directly, each round trip (ns).
    pub(crate) direct_ns: Vec<u64>,
    /// `sleep 0` submitted to the board, from the submission until `show`
    /// says done (ns).
    pub(crate) board_ns: Vec<u64>,
    /// Tasks of the throughput run.
    pub(crate) tasks: usize,
    /// From its first submission until the board counted them all done.
    pub(crate) tasks_ns: u64,
}

/// Starts a node with every built-in kind (board, worker, ...) and
/// `workers` workers.
async fn start_army_node(
    nats: &str,
    cluster: &str,
    name: &str,
    workers: usize,
) -> anyhow::Result<(mesh::Node, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let args = mesh::NodeArgs {
        workers: Some(workers),
        ..bench_node_args(nats, cluster, name, dir.path())?
    };
    let config = mesh::Config::load(args, |_| None)?;
    let node = mesh::Node::start(config, actors::builtin_registry()).await?;
    Ok((node, dir))
}

async fn army_workers(nats: &str, cluster: &str, workers: usize) -> anyhow::Result<()> {
    let (node, _dir) = start_army_node(nats, cluster, "workers", workers).await?;
    say("ready");
    until_stdin_closes().await;
    node.shutdown().await;
    Ok(())
}

async fn board(
    caller: &Arc<dyn Caller>,
    msg: &actors::board::BoardMessage,
) -> anyhow::Result<actors::board::BoardReply> {
    let to = AgentId::new("board", BOARD)?;
    let bytes = caller.call(to, codec::encode(msg)?, CALL_TIMEOUT).await?;
    Ok(codec::decode(&bytes)?)
}

fn sleep_task() -> actors::board::TaskSpec {
    actors::board::TaskSpec {
        id: None,
        task_type: "sleep".into(),
        payload: actors::Json(serde_json::json!({"ms": 0})),
        requires: actors::board::Requirements::default(),
        priority: 0,
        timeout_ms: None,
        retries: None,
    }
}

async fn board_stats(caller: &Arc<dyn Caller>) -> anyhow::Result<actors::board::BoardStats> {
    use actors::board::{BoardMessage, BoardReply};
    match board(caller, &BoardMessage::Stats {}).await? {
        BoardReply::Stats(stats) => Ok(stats),
        other => bail!("the board answered stats with {other:?}"),
    }
}

/// Submits one task and waits until `show` says it finished, asking again
/// as soon as each answer arrives: a sleep between them would add the
/// timer's millisecond granularity to the figure, while back-to-back calls
/// add at most one `show` round trip.
async fn one_task(caller: &Arc<dyn Caller>) -> anyhow::Result<Duration> {
    use actors::board::{BoardMessage, BoardReply};
    let started = Instant::now();
    let BoardReply::Submitted { id, .. } =
        board(caller, &BoardMessage::Submit(sleep_task())).await?
    else {
        bail!("the board did not answer the submission");
    };
    loop {
        let show = BoardMessage::Show { id: id.clone() };
        let BoardReply::Task(task) = board(caller, &show).await? else {
            bail!("the board did not show task {id}");
        };
        if task.state.is_finished() {
            if task.state != actors::board::TaskState::Done {
                bail!("task {id} ended {:?}: {:?}", task.state, task.error);
            }
            return Ok(started.elapsed());
        }
        if started.elapsed() > CALL_TIMEOUT {
            bail!("task {id} did not finish within {CALL_TIMEOUT:?}");
        }
    }
}

async fn army_driver(
    nats: &str,
    cluster: &str,
    workers: usize,
    tasks: usize,
    samples: usize,
) -> anyhow::Result<()> {
    use actors::worker::WorkerMessage;
    let (node, _dir) = start_army_node(nats, cluster, "submitter", 0).await?;
    let caller = node.caller();
    let worker = |i: usize| AgentId::new("worker", &format!("workers.{}", i % workers));
    let run = codec::encode(&WorkerMessage::Run {
        task_type: "sleep".into(),
        payload: actors::Json(serde_json::json!({"ms": 0})),
        timeout_ms: None,
    })?;
    // Until the link is up and every worker has asked the board for work.
    let started = Instant::now();
    let seen = loop {
        let linked = caller
            .call(worker(0)?, run.clone(), CALL_TIMEOUT)
            .await
            .is_ok();
        let seen = match linked {
            true => board_stats(&caller)
                .await
                .map_or(0, |s| s.workers_by_zone.values().sum()),
            false => 0,
        };
        if seen >= workers as u64 {
            break seen;
        }
        if started.elapsed() > CONNECT_TIMEOUT {
            bail!("the board saw {seen} of {workers} workers");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut direct = Samples::new(samples);
    for i in 0..direct.rounds() {
        let started = Instant::now();
        caller.call(worker(i)?, run.clone(), CALL_TIMEOUT).await?;
        direct.record(i, started);
    }
    let mut via_board = Samples::new(samples);
    for i in 0..via_board.rounds() {
        let started = Instant::now();
        one_task(&caller).await?;
        via_board.record(i, started);
    }

    let before = board_stats(&caller).await?.totals.done;
    let started = Instant::now();
    let submits = futures::stream::iter(0..tasks)
        .map(|_| {
            let caller = caller.clone();
            async move { board(&caller, &actors::board::BoardMessage::Submit(sleep_task())).await }
        })
        .buffer_unordered(SUBMITS_IN_FLIGHT);
    futures::pin_mut!(submits);
    while let Some(reply) = submits.next().await {
        reply?;
    }
    let board_node = loop {
        let stats = board_stats(&caller).await?;
        if stats.totals.done >= before + tasks as u64 {
            break stats.node;
        }
        if started.elapsed() > CONNECT_TIMEOUT + CALL_TIMEOUT {
            bail!("{} of {tasks} tasks done", stats.totals.done - before);
        }
        tokio::time::sleep(POLL).await;
    };
    let tasks_ns = started.elapsed().as_nanos() as u64;
    let result = ArmyResult {
        workers: seen,
        board_node,
        direct_ns: direct.samples,
        board_ns: via_board.samples,
        tasks,
        tasks_ns,
    };
    say(&serde_json::to_string(&result)?);
    node.shutdown().await;
    Ok(())
}
