//! Comparison benchmark: the mesh side by side with raw `ractor_cluster`,
//! NATS request/reply and Erlang/OTP distribution, in one run.
//!
//! Every system runs as two processes on loopback, a server and a driver
//! (for the mesh: two mesh nodes, the driver calling a `bench` agent that
//! placement put on the other node, by name, as an agent would). For each
//! system and run, the driver:
//! 1. makes a tenth of the calls unrecorded (warm-up), then times each of
//!    `BENCH_CALLS` sequential calls with a 100-byte payload;
//! 2. sends `BENCH_CASTS` one-way messages of 100 bytes, then asks for the
//!    count, which arrives after all of them: throughput is the count over
//!    the time from the first send to the count's answer.
//!
//! Runs go round the systems in turn, so that load from the other builds
//! on the machine falls on every system alike; the report gives, for each
//! figure, the median over runs and the range, and ratios of medians.
//!
//! Local figures come from fresh processes that start N idle actors (or
//! activate N agents, or spawn N Erlang processes) and report the time and
//! the memory it took: heap bytes counted by this binary's allocator, and
//! the resident set. A last process activates durable agents and waits
//! until passivation has stopped them all.
//!
//! The army: a node with 30 workers and a node that submits `sleep 0`
//! tasks to `board/main`, once calling a worker directly and once through
//! the board, one task at a time, then many tasks at once for the rate.
//!
//! The report is printed and written to `bench/results/compare.md`;
//! `bench/run.sh` puts it into `BENCHMARKS.md`.

#[path = "support/machine.rs"]
mod machine;

#[path = "compare/roles.rs"]
mod roles;

use std::alloc::{GlobalAlloc, Layout};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// The payload of every message measured.
pub(crate) const PAYLOAD_BYTES: usize = 100;
/// The variable that names a child's role.
const ROLE_VAR: &str = "MESH_BENCH_ROLE";
/// The variable that holds a child's arguments.
const ARGS_VAR: &str = "MESH_BENCH_ARGS";
/// How long a child may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The cluster of the mesh nodes.
const CLUSTER: &str = "bench";
/// The frame versions of the mesh measured without batches.
const UNBATCHED_WIRE: &str = "1-2";
/// That mesh's name in the report.
pub(crate) const UNBATCHED: &str = "mesh, unbatched (frames 1-2)";
/// The Erlang cookie of the two `erl` nodes.
const ERL_COOKIE: &str = "meshbench";

// ------------------------------------------------------- counted memory

/// Counts live heap bytes, in local runs only (set once at start), so the
/// timed runs pay nothing for it.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes live now (local runs only).
pub(crate) fn heap_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

// --------------------------------------------------------------- results

/// What a driver measured in one run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunResult {
    /// Each call's round trip, in nanoseconds.
    samples_ns: Vec<u64>,
    /// One-way messages sent.
    casts: usize,
    /// One-way messages the server counted.
    counted: u64,
    /// From the first send to the count's answer.
    cast_ns: u64,
}

impl RunResult {
    pub(crate) fn new(samples_ns: Vec<u64>, casts: usize, counted: u64, cast_ns: u64) -> Self {
        RunResult {
            samples_ns,
            casts,
            counted,
            cast_ns,
        }
    }
}

/// What a local run measured.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LocalResult {
    /// Agents or actors started.
    n: usize,
    /// How long starting them took.
    seconds: f64,
    /// Heap they hold (Erlang: the VM's process memory).
    heap_bytes: usize,
    /// How much the resident set grew.
    rss_bytes: usize,
    /// Heap still held once every one was passivated.
    passivated_heap_bytes: Option<usize>,
}

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        COUNTING.store(
            role.starts_with("local-") || role.starts_with("passivate-"),
            Ordering::Relaxed,
        );
        let args: Vec<String> = std::env::var(ARGS_VAR)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        return match roles::run(&role, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench role {role}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match orchestrate() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What this run does, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    runs: usize,
    calls: usize,
    casts: usize,
    sizes: Vec<usize>,
    local_runs: usize,
    passivate: usize,
    nats_server: String,
    quick: bool,
    /// Tasks of the army's throughput run.
    army_tasks: usize,
    /// Timed tasks (and direct worker calls) of the army's latency runs.
    army_samples: usize,
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name}={v:?}: expected a whole number above 0")),
        Err(_) => Ok(default),
    }
}

/// `BENCH_ARMY_TASKS`, which the board must be able to hold open at once.
fn army_tasks(quick: bool) -> anyhow::Result<usize> {
    let tasks = env_number("BENCH_ARMY_TASKS", if quick { 1000 } else { 4000 })?;
    let max = actors::board::MAX_OPEN;
    if tasks > max {
        bail!("BENCH_ARMY_TASKS={tasks}: a board holds at most {max} open tasks");
    }
    Ok(tasks)
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let quick = std::env::var_os("BENCH_QUICK").is_some();
        let (runs, calls, casts, sizes) = if quick {
            (2, 1000, 10_000, vec![1000, 5000])
        } else {
            (5, 5000, 50_000, vec![10_000, 100_000])
        };
        Ok(Settings {
            runs: env_number("BENCH_RUNS", runs)?,
            calls: env_number("BENCH_CALLS", calls)?,
            casts: env_number("BENCH_CASTS", casts)?,
            sizes,
            local_runs: env_number("BENCH_LOCAL_RUNS", if quick { 1 } else { 3 })?,
            passivate: env_number("BENCH_PASSIVATE", if quick { 1000 } else { 10_000 })?,
            nats_server: std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into()),
            quick,
            army_tasks: army_tasks(quick)?,
            army_samples: env_number("BENCH_ARMY_SAMPLES", if quick { 100 } else { 300 })?,
        })
    }
}

/// The workspace's folder, which holds `bench/`.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

// ------------------------------------------------------------- processes

/// A child process, killed when dropped.
struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    /// Starts `command` with piped stdin and stdout; its stderr goes to
    /// `log`.
    fn spawn(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<Process> {
        let err = std::fs::File::create(log)?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Process {
            name: name.into(),
            child,
            stdin,
            stdout,
        })
    }

    /// This bench binary in role `role` with `args`.
    fn role(role: &str, args: &[&str], log_dir: &Path) -> anyhow::Result<Process> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.env(ROLE_VAR, role).env(ARGS_VAR, args.join(" "));
        Process::spawn(role, &mut command, &log_dir.join(format!("{role}.log")))
    }

    /// The next line of standard output; fails if the process ends first.
    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!(
                "{} ended ({status}) without answering; see its log",
                self.name
            );
        }
        Ok(line.trim_end().to_owned())
    }

    /// Waits for the line `ready` (other lines are skipped).
    fn ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if self.line()? == "ready" {
                return Ok(());
            }
        }
        bail!("{} was not ready within {READY_TIMEOUT:?}", self.name)
    }

    /// Asks a driver for one run.
    fn run(&mut self, calls: usize, casts: usize) -> anyhow::Result<RunResult> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "run {calls} {casts}")?;
        stdin.flush()?;
        let line = self.line()?;
        serde_json::from_str(&line).with_context(|| format!("{} answered {line:?}", self.name))
    }

    /// Closes standard input, waits a little for the exit, then kills.
    fn finish(mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nats-server` with JetStream; returns it and its URL.
fn start_nats(settings: &Settings, dir: &Path) -> anyhow::Result<(Process, String)> {
    let port = free_port()?;
    let mut command = Command::new(&settings.nats_server);
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("jetstream"));
    let nats = Process::spawn("nats-server", &mut command, &dir.join("nats.log")).context(
        "nats-server is needed: put it on PATH (bootstrap/install-deps.sh nats) \
         or set NATS_SERVER_BIN",
    )?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > READY_TIMEOUT {
            bail!("nats-server did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((nats, format!("nats://127.0.0.1:{port}")))
}

/// Two `erl` nodes: the compiled program, the server node and epmd.
struct Erlang {
    beam_dir: PathBuf,
    epmd_port: u16,
    server: Option<Process>,
}

impl Erlang {
    /// Compiles `bench/erlang/meshbench.erl` and starts the server node.
    fn start(dir: &Path) -> anyhow::Result<Erlang> {
        let beam_dir = dir.join("erlang");
        std::fs::create_dir_all(&beam_dir)?;
        let source = workspace_root().join("bench/erlang/meshbench.erl");
        let status = Command::new("erlc")
            .arg("-o")
            .arg(&beam_dir)
            .arg(&source)
            .status()
            .context("erlc is needed: apt-get install -y erlang-nox")?;
        if !status.success() {
            bail!("erlc could not compile {}", source.display());
        }
        let mut erlang = Erlang {
            beam_dir,
            epmd_port: free_port()?,
            server: None,
        };
        let mut server = erlang.erl(&["-name", "b@127.0.0.1", "-run", "meshbench", "server"]);
        let mut server = Process::spawn("erl server", &mut server, &dir.join("erl-server.log"))?;
        server.ready()?;
        erlang.server = Some(server);
        Ok(erlang)
    }

    fn erl(&self, args: &[&str]) -> Command {
        let mut command = Command::new("erl");
        command
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .args(["-noshell", "-setcookie", ERL_COOKIE, "-pa"])
            .arg(&self.beam_dir)
            .args(args);
        command
    }

    /// Runs `erl` with `args` to its end and reads its `key value` lines.
    fn output(&self, args: &[&str]) -> anyhow::Result<Vec<(String, u64)>> {
        let out = self.erl(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "erl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect())
    }

    fn run(&self, calls: usize, casts: usize, dir: &Path) -> anyhow::Result<RunResult> {
        let file = dir.join("erl-samples.txt");
        let (calls_s, casts_s) = (calls.to_string(), casts.to_string());
        let file_s = file.to_string_lossy();
        let args = [
            "-name",
            "a@127.0.0.1",
            "-run",
            "meshbench",
            "client",
            "b@127.0.0.1",
        ];
        let values = self.output(&[&args[..], &[&calls_s, &casts_s, &file_s]].concat())?;
        let value = |key: &str| values.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let samples = std::fs::read_to_string(&file)?
            .lines()
            .map(|l| l.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RunResult::new(
            samples,
            casts,
            value("cast_count").context("no cast_count from erl")?,
            value("cast_ns").context("no cast_ns from erl")?,
        ))
    }

    fn local(&self, n: usize) -> anyhow::Result<LocalResult> {
        let values = self.output(&["-run", "meshbench", "local", &n.to_string()])?;
        let value = |key: &str| values.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        Ok(LocalResult {
            n,
            seconds: value("spawn_ns").context("no spawn_ns from erl")? as f64 / 1e9,
            heap_bytes: value("vm_bytes").context("no vm_bytes from erl")? as usize,
            rss_bytes: value("rss_bytes").context("no rss_bytes from erl")? as usize,
            passivated_heap_bytes: None,
        })
    }
}

impl Drop for Erlang {
    fn drop(&mut self) {
        self.server = None;
        let _ = Command::new("epmd")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .arg("-kill")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[path = "compare/report.rs"]
mod report;

use report::{Local, System};

fn orchestrate() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let dir = tempfile::tempdir()?;
    let logs = dir.path();
    eprintln!("compare bench: logs in {}", logs.display());
    let (nats, url) = start_nats(&settings, logs)?;

    let mut systems: Vec<System> = Vec::new();
    let mut drivers: Vec<Option<Process>> = Vec::new();
    let mut servers: Vec<Process> = Vec::new();
    // The mesh.
    let mut server = Process::role("mesh-server", &[&url, CLUSTER, roles::ALL_VERSIONS], logs)?;
    server.ready()?;
    let mut driver = Process::role("mesh-driver", &[&url, CLUSTER, roles::ALL_VERSIONS], logs)?;
    driver.ready()?;
    servers.push(server);
    drivers.push(Some(driver));
    systems.push(System::new("mesh"));
    // The mesh with frame versions 1-2 only: no batches, as before them.
    let cluster = format!("{CLUSTER}-v2");
    let mut server = Process::role("mesh-server", &[&url, &cluster, UNBATCHED_WIRE], logs)?;
    server.ready()?;
    let mut driver = Process::role("mesh-driver", &[&url, &cluster, UNBATCHED_WIRE], logs)?;
    driver.ready()?;
    servers.push(server);
    drivers.push(Some(driver));
    systems.push(System::new(UNBATCHED));
    // Raw ractor_cluster.
    let port = free_port()?;
    let mut server = Process::role("ractor-server", &[&port.to_string()], logs)?;
    server.ready()?;
    let mut driver = Process::role("ractor-driver", &[&format!("127.0.0.1:{port}")], logs)?;
    driver.ready()?;
    servers.push(server);
    drivers.push(Some(driver));
    systems.push(System::new("ractor_cluster"));
    // NATS request/reply.
    let mut server = Process::role("nats-server", &[&url], logs)?;
    server.ready()?;
    let mut driver = Process::role("nats-driver", &[&url], logs)?;
    driver.ready()?;
    servers.push(server);
    drivers.push(Some(driver));
    systems.push(System::new("NATS"));
    // Erlang.
    let erlang = Erlang::start(logs)?;
    drivers.push(None);
    systems.push(System::new("Erlang/OTP"));

    for run in 0..settings.runs {
        eprintln!("compare bench: run {} of {}", run + 1, settings.runs);
        // Each run starts with a different system.
        for k in 0..systems.len() {
            let i = (run + k) % systems.len();
            let result = match &mut drivers[i] {
                Some(driver) => driver.run(settings.calls, settings.casts)?,
                None => erlang.run(settings.calls, settings.casts, logs)?,
            };
            systems[i].add(result)?;
        }
    }
    for driver in drivers.into_iter().flatten() {
        driver.finish();
    }
    for server in servers {
        server.finish();
    }

    eprintln!(
        "compare bench: the army, {ARMY_WORKERS} workers, {} tasks",
        settings.army_tasks
    );
    let army = run_army(&settings, &url, logs)?;

    let mut locals: Vec<Local> = Vec::new();
    for &n in &settings.sizes {
        let mut ractor = Local::new("ractor actor", n);
        let mut agents = Local::new("mesh agent", n);
        let mut erl = Local::new("Erlang process", n);
        for run in 0..settings.local_runs {
            eprintln!(
                "compare bench: {n} actors, run {} of {}",
                run + 1,
                settings.local_runs
            );
            ractor.add(local_child("local-ractor", &[&n.to_string()], logs)?);
            let cluster = format!("local{n}r{run}");
            agents.add(local_child(
                "local-mesh",
                &[&url, &cluster, &n.to_string()],
                logs,
            )?);
            erl.add(erlang.local(n)?);
        }
        locals.extend([ractor, agents, erl]);
    }
    eprintln!("compare bench: passivating {} agents", settings.passivate);
    let n = settings.passivate.to_string();
    let passivated = local_child("passivate-mesh", &[&url, "passivate", &n], logs)?;
    drop(erlang);
    drop(nats);

    let machine = machine::describe(&workspace_root());
    let text = report::render(&settings, &machine, &systems, &locals, &passivated, &army);
    print!("{text}");
    let results = workspace_root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    let file = results.join("compare.md");
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("report written to {}", file.display());
    Ok(())
}

/// Workers of the army bench, all on one node.
pub(crate) const ARMY_WORKERS: usize = 30;

/// Runs the army: a node of workers, and a driver node that submits.
fn run_army(settings: &Settings, url: &str, logs: &Path) -> anyhow::Result<roles::ArmyResult> {
    let workers = ARMY_WORKERS.to_string();
    let mut server = Process::role("army-workers", &[url, "army", &workers], logs)?;
    server.ready()?;
    let (tasks, samples) = (
        settings.army_tasks.to_string(),
        settings.army_samples.to_string(),
    );
    let mut driver = Process::role(
        "army-driver",
        &[url, "army", &workers, &tasks, &samples],
        logs,
    )?;
    let line = driver.line()?;
    driver.finish();
    server.finish();
    serde_json::from_str(&line).with_context(|| format!("army-driver answered {line:?}"))
}

/// Runs a local role to its end and reads its result.
fn local_child(role: &str, args: &[&str], logs: &Path) -> anyhow::Result<LocalResult> {
    let mut child = Process::role(role, args, logs)?;
    let line = child.line()?;
    child.finish();
    serde_json::from_str(&line).with_context(|| format!("{role} answered {line:?}"))
}
