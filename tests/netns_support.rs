//! Network labs for tests: hosts in network namespaces joined by a bridge,
//! network partitions with iptables, processes started inside hosts, a
//! clustered `nats-server` with JetStream, and a tiny NATS client that runs
//! inside a host.
//!
//! Include it with `#[path = "netns_support.rs"] mod netns_support;`. It needs
//! root, `ip` (iproute2), `iptables` (Debian's `iptables` package, nft or
//! legacy backend), `python3` and `nats-server` >= 2.10.
//!
//! Layout of a [`Lab`]: one namespace per host, with `lo` and `eth0` up and
//! `eth0` at `10.213.X.(10+i)/16` (X random per lab), plus a "switch"
//! namespace holding the bridge `br0` and the peer end `p<i>` of every
//! host's veth pair. Each veth pair is created directly inside its two
//! namespaces, so no interface, address, route or iptables rule of the test
//! machine's own namespace is ever touched; partitions are iptables rules
//! inside the hosts' namespaces. Dropping the lab kills every process left in
//! its namespaces and deletes them, which removes the veths, the bridge and
//! the rules with them.
//!
//! The test process stays in the machine's namespace and cannot reach lab
//! addresses: everything that talks to the lab runs through
//! `ip netns exec` ([`Lab::command`]), for instance [`nats_request`], a NATS
//! request/reply client written in plain Python.
//!
//! Facts this helper relies on (checked by hand on Debian 12, kernel 6.x,
//! nats-server 2.15.1, iptables 1.8.9 nft):
//! - `ip netns exec NS PROG` execs PROG: the child's pid is PROG's pid, and
//!   `PR_SET_PDEATHSIG` set before the exec survives both execs.
//! - pyenv shims work under `ip netns exec` (the environment passes through),
//!   but each shim call costs a bash start; the real binaries are resolved
//!   once ([`nats_server_bin`], [`python_bin`]).
//! - A DROP in OUTPUT makes a TCP connect time out (the kernel retransmits
//!   the SYN silently) rather than fail at once, so a partition looks like a
//!   dead network, not a refused connection.
//! - `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child ends:
//!   never start a child from a `spawn_blocking` task (its thread may end
//!   while the test goes on, killing the child).

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "log_lines.rs"]
mod log_lines;
pub use log_lines::activations_in;

/// Every namespace of every lab is named `aml-<pid>-<hex>-...`, so that
/// namespaces left by a test process that was killed can be swept.
const NS_PREFIX: &str = "aml-";
/// The poll step of every wait.
const POLL: Duration = Duration::from_millis(50);
/// NATS ports, the same in every host (each has its own port space).
pub const NATS_CLIENT_PORT: u16 = 4222;
pub const NATS_CLUSTER_PORT: u16 = 6222;
pub const NATS_MONITOR_PORT: u16 = 8222;

// ---------------------------------------------------------------------------
// Small process helpers.

/// Makes `cmd`'s child die with this process (`PR_SET_PDEATHSIG`), and
/// refuses to start it if this process is already gone.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory
    // of ours.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("the test process is gone"));
            }
            Ok(())
        })
    }
}

/// Runs `cmd` to completion with no input and captured output.
fn try_output(cmd: &mut Command) -> io::Result<Output> {
    die_with_parent(cmd).stdin(Stdio::null()).output()
}

/// [`try_output`], panicking if `cmd` cannot start.
fn output(cmd: &mut Command) -> Output {
    try_output(cmd).unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, panicking with its stderr unless it succeeds.
fn must(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Runs `ip -n NS <args>` (whitespace-separated), panicking on failure.
fn ip_in(ns: &str, args: &str) {
    let mut cmd = ip(&["-n", ns]);
    cmd.args(args.split_whitespace());
    must(&mut cmd);
}

/// A command that runs `program` inside namespace `ns`.
fn ns_command(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    die_with_parent(&mut cmd);
    cmd
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    u64::from_le_bytes(bytes)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` is gone or a zombie (a zombie holds no namespace).
fn pid_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
    }
}

/// SIGKILLs every process inside namespace `ns`; returns their pids.
fn kill_namespace_processes(ns: &str) -> Vec<i32> {
    let Ok(out) = try_output(&mut ip(&["netns", "pids", ns])) else {
        return Vec::new();
    };
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for &pid in &pids {
        // SAFETY: plain syscall; these pids live in our own namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    pids
}

/// Kills what runs in `namespaces`, waits until it is gone (up to 5 s), and
/// deletes them. Returns what went wrong; never panics (it runs in drop).
fn delete_namespaces(namespaces: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut pids = Vec::new();
    for ns in namespaces {
        pids.extend(kill_namespace_processes(ns));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|&p| pid_gone(p)) {
        if Instant::now() >= deadline {
            let left: Vec<_> = pids.iter().filter(|&&p| !pid_gone(p)).collect();
            problems.push(format!("processes still alive after SIGKILL: {left:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for ns in namespaces {
        match try_output(&mut ip(&["netns", "del", ns])) {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "ip netns del {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => problems.push(format!("ip netns del {ns}: {e}")),
        }
    }
    problems
}

/// Deletes the namespaces of labs whose test process no longer exists.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid_gone(pid) {
            stale.push(name);
        }
    }
    if !stale.is_empty() {
        eprintln!("netns_support: removing namespaces of dead test processes: {stale:?}");
        for problem in delete_namespaces(&stale) {
            eprintln!("netns_support: {problem}");
        }
    }
}

// ---------------------------------------------------------------------------
// The lab.

/// Why labs cannot run here (not root, or a tool missing), or `None`.
pub fn lab_unavailable() -> Option<String> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network labs need root".into());
    }
    for tool in ["ip", "iptables", "python3"] {
        if which(tool).is_none() {
            return Some(format!("{tool} is not on PATH"));
        }
    }
    None
}

/// One host of a [`Lab`]: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    pub zone: String,
}

/// One DROP rule added by [`Lab::cut`]: (namespace, chain, peer address).
type Rule = (String, &'static str, Ipv4Addr);

/// A set of hosts, each a network namespace with its own address, joined by
/// one bridge living in its own namespace (not the machine's), so that hosts
/// can reach each other. Everything is removed on drop, even on panic.
#[derive(Debug)]
pub struct Lab {
    /// `<pid>-<hex>`: part of every namespace name.
    pub id: String,
    /// X in 10.213.X.0/16 addresses.
    pub subnet: u8,
    /// The namespace holding the bridge.
    pub switch_ns: String,
    hosts: Vec<Host>,
    /// Every namespace created so far, for drop.
    namespaces: Vec<String>,
    rules: Mutex<BTreeSet<Rule>>,
}

impl Lab {
    /// Creates one namespace per `(host name, zone)`, a switch namespace
    /// with a bridge, and a veth pair from each host to the bridge.
    pub fn new(hosts: &[(&str, &str)]) -> Lab {
        assert!(!hosts.is_empty() && hosts.len() <= 200, "1 to 200 hosts");
        for (i, (name, _)) in hosts.iter().enumerate() {
            assert!(
                !name.is_empty()
                    && name.len() <= 32
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "host name {name:?}: use 1 to 32 of [A-Za-z0-9_-]"
            );
            assert!(
                hosts[..i].iter().all(|(other, _)| other != name),
                "host name {name:?} given twice"
            );
        }
        sweep_stale_namespaces();
        let random = random_u64();
        let id = format!("{}-{:05x}", std::process::id(), random & 0xfffff);
        let subnet = 1 + ((random >> 20) % 254) as u8;
        let switch_ns = format!("{NS_PREFIX}{id}-switch");
        // Built step by step, so that a panic half-way drops what exists.
        let mut lab = Lab {
            id,
            subnet,
            switch_ns: switch_ns.clone(),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            rules: Mutex::new(BTreeSet::new()),
        };
        lab.add_namespace(&switch_ns);
        let sw = switch_ns.as_str();
        // No IPv6 link-local addresses anywhere (addrgenmode none): all lab
        // traffic is IPv4, which the partition rules cover.
        ip_in(sw, "link add br0 type bridge");
        // (A bridge ignores addrgenmode given together with `up`.)
        ip_in(sw, "link set br0 addrgenmode none");
        ip_in(sw, "link set br0 up");
        for (i, (name, zone)) in hosts.iter().enumerate() {
            let ns = format!("{NS_PREFIX}{}-h-{name}", lab.id);
            lab.add_namespace(&ns);
            // Both ends are created inside their namespaces directly.
            let port = format!("p{i}");
            let veth = ["link", "add", "eth0", "netns", &ns, "type", "veth"];
            must(ip(&veth).args(["peer", "name", &port, "netns", sw]));
            ip_in(
                sw,
                &format!("link set {port} addrgenmode none master br0 up"),
            );
            let addr = Ipv4Addr::new(10, 213, subnet, 10 + i as u8);
            ip_in(&ns, "link set eth0 addrgenmode none up");
            ip_in(&ns, &format!("addr add {addr}/16 dev eth0"));
            lab.hosts.push(Host {
                name: (*name).to_owned(),
                ns,
                addr,
                zone: (*zone).to_owned(),
            });
        }
        lab
    }

    fn add_namespace(&mut self, ns: &str) {
        // The first `ip netns add` on a machine sets up /run/netns, which can
        // race with a parallel one: retry.
        for attempt in 1.. {
            let out = output(&mut ip(&["netns", "add", ns]));
            if out.status.success() {
                break;
            }
            if Path::new("/run/netns").join(ns).exists() {
                let _ = output(&mut ip(&["netns", "del", ns]));
            }
            if attempt == 3 {
                panic!(
                    "ip netns add {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        self.namespaces.push(ns.to_owned());
        ip_in(ns, "link set lo up");
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in the lab"))
    }

    /// Every host, in the order given to [`Lab::new`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A command running `program` inside the host's namespace
    /// (`ip netns exec <ns> <program>`; add arguments with `.arg`). The
    /// child dies with the test process.
    pub fn command(&self, host: &str, program: &str) -> Command {
        ns_command(&self.host(host).ns, program)
    }

    /// Drops every packet between hosts `a` and `b`, both directions, with
    /// rules in `a`'s namespace (INPUT by source, OUTPUT by destination).
    /// Idempotent.
    pub fn cut(&self, a: &str, b: &str) {
        assert!(
            which("iptables").is_some(),
            "iptables is not installed (Debian: apt-get install iptables)"
        );
        let (a, b) = (self.host(a), self.host(b));
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        for chain in ["INPUT", "OUTPUT"] {
            let rule: Rule = (a.ns.clone(), chain, b.addr);
            if !rules.contains(&rule) {
                must(&mut iptables(&rule, "-I"));
                rules.insert(rule);
            }
        }
    }

    /// Cuts every packet between the hosts of `group` and all other hosts,
    /// both directions, with DROP rules inside the namespaces of `group`.
    /// Idempotent; partitions add up until [`Lab::heal`].
    pub fn partition(&self, group: &[&str]) {
        for &inside in group {
            for outside in self.hosts.iter().filter(|h| !group.contains(&&*h.name)) {
                self.cut(inside, &outside.name);
            }
        }
    }

    /// Removes every rule that [`Lab::partition`] and [`Lab::cut`] added.
    pub fn heal(&self) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        for rule in std::mem::take(&mut *rules) {
            must(&mut iptables(&rule, "-D"));
        }
    }

    /// Tries a TCP connection from `from` to `to` within `timeout` (run
    /// inside `from`'s namespace).
    pub fn tcp_probe(&self, from: &str, to: SocketAddrV4, timeout: Duration) -> Reach {
        let out = output(self.command(from, python_bin()).args([
            "-c",
            PY_CLIENT,
            "tcp",
            &to.ip().to_string(),
            &to.port().to_string(),
            &secs(timeout),
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim() {
            "connected" => Reach::Connected,
            "refused" => Reach::Refused,
            "timeout" => Reach::TimedOut,
            other => Reach::Error(format!(
                "{other} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// What [`Lab::tcp_probe`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Connected,
    /// A RST came back: the host is reachable, nothing listens there.
    Refused,
    TimedOut,
    Error(String),
}

impl Reach {
    /// Whether packets went both ways.
    pub fn reachable(&self) -> bool {
        matches!(self, Reach::Connected | Reach::Refused)
    }
}

fn iptables(rule: &Rule, op: &str) -> Command {
    let (ns, chain, addr) = rule;
    let dir = if *chain == "INPUT" { "-s" } else { "-d" };
    let mut cmd = ns_command(ns, "iptables");
    cmd.args(["-w", op, chain, dir, &format!("{addr}/32"), "-j", "DROP"]);
    cmd
}

impl Drop for Lab {
    fn drop(&mut self) {
        let problems = delete_namespaces(&self.namespaces);
        if std::thread::panicking() {
            eprintln!(
                "netns_support: lab {} torn down ({} namespaces)",
                self.id,
                self.namespaces.len()
            );
        }
        for problem in problems {
            eprintln!("netns_support: lab {}: {problem}", self.id);
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// Processes inside namespaces.

/// A process started by [`spawn_logged`], usually `ip netns exec NS PROG`
/// (which execs PROG, so the pid is PROG's). It leads its own process group;
/// it is killed with its group, and reaped, on drop.
#[derive(Debug)]
pub struct NsChild {
    pub child: Child,
    pub log: PathBuf,
}

/// Starts `cmd` with stdout and stderr to `log` (truncated), no stdin, in a
/// process group of its own, dying with the test process.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> NsChild {
    let out = File::create(log).unwrap_or_else(|e| panic!("log file {log:?}: {e}"));
    let err = out.try_clone().expect("log file");
    die_with_parent(cmd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    NsChild {
        child,
        log: log.to_owned(),
    }
}

impl NsChild {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process has exited (or was reaped); does not reap it.
    pub fn exited(&self) -> bool {
        // SAFETY: waitid writes only into `info`.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r != 0 || info.si_pid() != 0
        }
    }

    /// Sends `sig` to the process group (e.g. `libc::SIGSTOP` to freeze the
    /// process, `libc::SIGCONT` to thaw it). Does nothing once it has exited.
    pub fn signal(&self, sig: i32) {
        if !self.exited() {
            // SAFETY: plain syscall on our own child's group.
            unsafe { libc::kill(-self.pid(), sig) };
        }
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, or panics naming it; also
    /// panics if the process exits first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if self.exited() {
                panic!(
                    "process exited before logging {needle:?}; log {:?}:\n{}",
                    self.log,
                    tail(&self.log, 30)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {needle:?} in {:?} after {timeout:?}:\n{}",
                    self.log,
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the group (thawing it first) and reaps the process.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain syscalls on our own child's group.
            unsafe {
                libc::kill(-self.pid(), libc::SIGCONT);
                libc::kill(-self.pid(), libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {}:\n{}\n---",
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Binaries.

/// Looks `name` up on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The real `nats-server` binary: `$NATS_SERVER_BIN`, else the one on
/// `PATH`, resolved through `pyenv which` when that is a pyenv shim.
pub fn nats_server_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
            return bin;
        }
        let found = which("nats-server").unwrap_or_else(|| {
            panic!("nats-server is not on PATH (bootstrap/install-deps.sh nats installs it)")
        });
        let is_shim = found
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d == "shims");
        if is_shim {
            let out = output(Command::new("pyenv").args(["which", "nats-server"]));
            let real = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && Path::new(&real).is_file() {
                return real;
            }
        }
        found.to_string_lossy().into_owned()
    })
}

/// The real `python3` interpreter (its `sys.executable`, so no shim).
pub fn python_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = must(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]));
        out.trim().to_owned()
    })
}

// ---------------------------------------------------------------------------
// NATS.

/// One `nats-server` of [`nats_cluster`], inside its host's namespace.
#[derive(Debug)]
pub struct NatsServer {
    pub host: String,
    /// Its `server_name` (also the route's `remote_name`).
    pub name: String,
    /// `nats://<addr>:4222`.
    pub url: String,
    pub addr: Ipv4Addr,
    /// Namespace of its host.
    pub ns: String,
    /// Its config, data and logs.
    pub dir: PathBuf,
    /// The JetStream store.
    pub store: PathBuf,
    generation: u32,
    child: Option<NsChild>,
}

impl NatsServer {
    fn conf(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    /// `http://<addr>:8222`, reachable from inside the lab only.
    pub fn monitor_url(&self) -> String {
        format!("http://{}:{NATS_MONITOR_PORT}", self.addr)
    }

    /// The log of the running (or last) process.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("nats-{}.log", self.generation))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| !c.exited())
    }

    /// The running process, for signals (SIGSTOP freezes the server).
    pub fn process(&self) -> Option<&NsChild> {
        self.child.as_ref()
    }

    fn spawn(&mut self) {
        self.generation += 1;
        let mut cmd = ns_command(&self.ns, nats_server_bin());
        cmd.arg("-c").arg(self.conf());
        self.child = Some(spawn_logged(&mut cmd, &self.log()));
    }

    /// Kills the server (SIGKILL, like a crash); its data stays.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Stops the server with SIGTERM (a clean shutdown), SIGKILL after 10 s.
    pub fn stop_graceful(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !child.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.child = None;
    }

    /// Starts the server again with the same config and data, and waits
    /// until it accepts clients. It rejoins the cluster on its own: use
    /// [`wait_nats_cluster`] to wait for that.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready(Duration::from_secs(20)).await;
    }

    async fn wait_ready(&self, timeout: Duration) {
        let child = self.child.as_ref().expect("server started");
        let deadline = Instant::now() + timeout;
        while !child.log_text().contains("Server is ready") {
            if child.exited() || Instant::now() >= deadline {
                panic!(
                    "nats-server on {} not ready (exited: {}); log:\n{}",
                    self.host,
                    child.exited(),
                    tail(&child.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts one `nats-server` with JetStream in each of `hosts`, listening on
/// the host's address, as one cluster (routes to every other server, no
/// JetStream domain, so that replicated streams and KV buckets with up to
/// `hosts.len()` replicas can exist), with config, data and logs under
/// `dir/<host>`. Servers ping their routes and clients every second and drop
/// a connection after 3 missed pongs, so a partition cuts routes in about
/// 4 s (the default, 2 min, would hide it). Returns once every server is
/// healthy, routed to every other one and agrees on the JetStream meta
/// leader.
pub async fn nats_cluster(lab: &Lab, hosts: &[&str], dir: &Path) -> Vec<NatsServer> {
    nats_cluster_with(lab, hosts, dir, "").await
}

/// [`nats_cluster`] with `extra` appended to every server's config (later
/// settings win, e.g. `"ping_interval: \"30s\"\n"`).
pub async fn nats_cluster_with(
    lab: &Lab,
    hosts: &[&str],
    dir: &Path,
    extra: &str,
) -> Vec<NatsServer> {
    assert!(!hosts.is_empty(), "at least one NATS host");
    let members: Vec<&Host> = hosts.iter().map(|h| lab.host(h)).collect();
    let mut servers = Vec::new();
    for host in &members {
        let server_dir = dir.join(&host.name);
        let store = server_dir.join("js");
        std::fs::create_dir_all(&store).expect("nats dir");
        let name = format!("nats-{}", host.name);
        let mut conf = format!(
            "server_name: \"{name}\"\n\
             listen: \"{addr}:{NATS_CLIENT_PORT}\"\n\
             http: \"{addr}:{NATS_MONITOR_PORT}\"\n\
             ping_interval: \"1s\"\n\
             ping_max: 3\n\
             jetstream {{\n  store_dir: \"{store}\"\n\
             \x20 max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
            addr = host.addr,
            store = store.display(),
        );
        if members.len() > 1 {
            let routes: Vec<String> = members
                .iter()
                .filter(|other| other.name != host.name)
                .map(|other| format!("\"nats-route://{}:{NATS_CLUSTER_PORT}\"", other.addr))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: \"lab-{id}\"\n\
                 \x20 listen: \"{addr}:{NATS_CLUSTER_PORT}\"\n  routes: [{routes}]\n}}\n",
                id = lab.id,
                addr = host.addr,
                routes = routes.join(", "),
            ));
        }
        conf.push_str(extra);
        std::fs::write(server_dir.join("nats.conf"), conf).expect("nats config");
        servers.push(NatsServer {
            host: host.name.clone(),
            name,
            url: format!("nats://{}:{NATS_CLIENT_PORT}", host.addr),
            addr: host.addr,
            ns: host.ns.clone(),
            dir: server_dir,
            store,
            generation: 0,
            child: None,
        });
    }
    for server in &mut servers {
        server.spawn();
    }
    wait_nats_cluster(&servers, Duration::from_secs(30)).await;
    servers
}

/// Waits until every running server of `servers` answers `/healthz` with
/// ok (JetStream current), has routes to every other running server, and
/// all agree on a JetStream meta leader, whose name it returns. Probes run
/// inside the first running server's namespace, through its monitoring port.
pub async fn wait_nats_cluster(servers: &[NatsServer], timeout: Duration) -> String {
    let running: Vec<&NatsServer> = servers.iter().filter(|s| s.is_running()).collect();
    assert!(!running.is_empty(), "no NATS server is running");
    let spec: Vec<String> = running
        .iter()
        .map(|s| format!("{}={}", s.name, s.monitor_url()))
        .collect();
    let clustered = if servers.len() > 1 { "1" } else { "0" };
    let deadline = Instant::now() + timeout;
    loop {
        for server in &running {
            if !server.is_running() {
                panic!(
                    "nats-server on {} exited; log:\n{}",
                    server.host,
                    tail(&server.log(), 30)
                );
            }
        }
        let mut cmd = ns_command(&running[0].ns, python_bin());
        cmd.args(["-c", PY_CLIENT, "cluster", clustered, &spec.join(",")]);
        let out = tokio::process::Command::from(cmd)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if let Some(leader) = text.strip_prefix("ready leader=") {
            return leader.to_owned();
        }
        let last = format!("{text} {}", String::from_utf8_lossy(&out.stderr).trim());
        if Instant::now() >= deadline {
            panic!("NATS cluster not formed after {timeout:?}: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a NATS request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsReply {
    Reply(String),
    /// The server said nobody subscribes to the subject.
    NoResponders,
    /// No reply within the timeout.
    Timeout,
    /// Connection or protocol failure (including a connect timeout).
    Error(String),
}

impl NatsReply {
    pub fn ok(self) -> Option<String> {
        match self {
            NatsReply::Reply(text) => Some(text),
            _ => None,
        }
    }
}

fn request_command(
    lab: &Lab,
    from_host: &str,
    url: &str,
    subject: &str,
    timeout: Duration,
) -> Command {
    let mut cmd = lab.command(from_host, python_bin());
    cmd.args(["-c", PY_CLIENT, "req", url, subject, &secs(timeout)]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn request_outcome(out: &Output) -> NatsReply {
    match out.status.code() {
        Some(0) => NatsReply::Reply(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(1) => NatsReply::Timeout,
        Some(2) => NatsReply::NoResponders,
        _ => NatsReply::Error(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// One NATS request from inside `from_host`'s namespace to the server at
/// `url` (one connection per call; a plain-Python client, no dependency).
/// Blocks the calling thread for up to `timeout` plus ~50 ms of start-up.
pub fn nats_call(
    lab: &Lab,
    from_host: &str,
    url: &str,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> NatsReply {
    let mut cmd = request_command(lab, from_host, url, subject, timeout);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let _ = stdin.write_all(body.as_bytes());
    drop(stdin);
    request_outcome(&child.wait_with_output().expect("python3 runs"))
}

/// The reply to a NATS request, `None` on timeout, no responders or error.
pub fn nats_request(
    lab: &Lab,
    from_host: &str,
    url: &str,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> Option<String> {
    nats_call(lab, from_host, url, subject, body, timeout).ok()
}

/// [`nats_call`] without blocking the runtime.
pub async fn nats_call_async(
    lab: &Lab,
    from_host: &str,
    url: &str,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> NatsReply {
    use tokio::io::AsyncWriteExt;
    let cmd = request_command(lab, from_host, url, subject, timeout);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let _ = stdin.write_all(body.as_bytes()).await;
    drop(stdin);
    request_outcome(&child.wait_with_output().await.expect("python3 runs"))
}

/// [`nats_request`] without blocking the runtime.
pub async fn nats_request_async(
    lab: &Lab,
    from_host: &str,
    url: &str,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> Option<String> {
    nats_call_async(lab, from_host, url, subject, body, timeout)
        .await
        .ok()
}

/// Starts a responder inside `host` that answers every request on
/// `subject` with `reply` (`"@echo"`: with the request's body), and waits
/// until its subscription is registered at its server. Interest reaches the
/// other servers of a cluster a moment later.
pub fn nats_responder(
    lab: &Lab,
    host: &str,
    url: &str,
    subject: &str,
    reply: &str,
    log: &Path,
) -> NsChild {
    let mut cmd = lab.command(host, python_bin());
    cmd.args(["-u", "-c", PY_CLIENT, "serve", url, subject, reply]);
    let child = spawn_logged(&mut cmd, log);
    child.wait_for_log("ready", Duration::from_secs(10));
    child
}

/// A NATS client in plain Python 3 (text protocol over one TCP socket), and
/// the probes that run inside namespaces. Modes:
/// - `req URL SUBJECT TIMEOUT` (body on stdin): prints the reply payload;
///   exit 0 reply, 1 timeout, 2 no responders (503 status), 3 error.
/// - `serve URL SUBJECT REPLY`: answers every request; prints `ready` once
///   the server has the subscription (PING/PONG after SUB).
/// - `cluster CLUSTERED NAME=MONITOR_URL,...`: prints `ready leader=NAME`
///   or `wait: REASON`.
/// - `tcp ADDR PORT TIMEOUT`: prints connected, refused, timeout or error.
const PY_CLIENT: &str = r#"
import json, os, socket, sys, time, urllib.error, urllib.request

class ProtoError(Exception):
    pass

class Conn:
    def __init__(self, url, deadline):
        hostport = url.split('://', 1)[-1].split(',')[0]
        host, _, port = hostport.rpartition(':')
        self.deadline = deadline
        self.buf = b''
        self.sock = socket.create_connection((host, int(port)), timeout=self.left())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        info = self.line()
        if not info.startswith(b'INFO'):
            raise ProtoError(info)
        self.send(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                  b'"no_responders":true,"lang":"python-lab","version":"1","protocol":1}\r\n')

    def left(self):
        if self.deadline is None:
            return None
        t = self.deadline - time.monotonic()
        if t <= 0:
            raise socket.timeout('deadline')
        return t

    def fill(self):
        self.sock.settimeout(self.left())
        data = self.sock.recv(65536)
        if not data:
            raise ProtoError('connection closed by server')
        self.buf += data

    def line(self):
        while b'\r\n' not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b'\r\n', 1)
        return line

    def take(self, n):
        while len(self.buf) < n + 2:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def send(self, data):
        self.sock.settimeout(self.left())
        self.sock.sendall(data)

    def next(self):
        """('PONG',) or ('MSG', subject, reply_to, headers, payload)."""
        while True:
            line = self.line()
            op = line.split(b' ', 1)[0].upper()
            if op == b'PING':
                self.send(b'PONG\r\n')
            elif op == b'PONG':
                return ('PONG',)
            elif op in (b'+OK', b'INFO'):
                continue
            elif op == b'-ERR':
                raise ProtoError(line.decode(errors='replace'))
            elif op == b'MSG':
                p = line.split()
                data = self.take(int(p[-1]))
                return ('MSG', p[1], p[3] if len(p) == 5 else None, b'', data)
            elif op == b'HMSG':
                p = line.split()
                hlen, total = int(p[-2]), int(p[-1])
                data = self.take(total)
                return ('MSG', p[1], p[3] if len(p) == 6 else None, data[:hlen], data[hlen:])
            else:
                raise ProtoError('unexpected: ' + line.decode(errors='replace'))

def req(url, subject, timeout):
    body = sys.stdin.buffer.read()
    deadline = time.monotonic() + float(timeout)
    try:
        conn = Conn(url, deadline)
    except Exception as e:
        print('connect %s: %r' % (url, e), file=sys.stderr)
        sys.exit(3)
    inbox = ('_INBOX.' + os.urandom(10).hex()).encode()
    try:
        conn.send(b'SUB %s 1\r\nPUB %s %s %d\r\n%s\r\n'
                  % (inbox, subject.encode(), inbox, len(body), body))
        while True:
            m = conn.next()
            if m[0] != 'MSG':
                continue
            headers, data = m[3], m[4]
            if headers.startswith(b'NATS/1.0 503'):
                sys.exit(2)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            sys.exit(0)
    except socket.timeout:
        sys.exit(1)
    except Exception as e:
        print('request: %r' % (e,), file=sys.stderr)
        sys.exit(3)

def serve(url, subject, reply):
    conn = Conn(url, None)
    conn.send(b'SUB %s 1\r\nPING\r\n' % subject.encode())
    while conn.next()[0] != 'PONG':
        pass
    print('ready', flush=True)
    while True:
        m = conn.next()
        if m[0] == 'MSG' and m[2]:
            out = m[4] if reply == '@echo' else reply.encode()
            conn.send(b'PUB %s %d\r\n%s\r\n' % (m[2], len(out), out))

def cluster(clustered, spec):
    servers = [item.split('=', 1) for item in spec.split(',')]
    names = [name for name, _ in servers]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    leaders = set()
    for name, mon in servers:
        def get(path):
            with opener.open(mon + path, timeout=2) as r:
                return json.loads(r.read())
        try:
            get('/healthz')
            if clustered == '1':
                routes = {r.get('remote_name') for r in (get('/routez').get('routes') or [])}
                missing = [n for n in names if n != name and n not in routes]
                if missing:
                    return 'wait: %s has no route to %s' % (name, missing)
                meta = get('/jsz').get('meta_cluster') or {}
                if not meta.get('leader'):
                    return 'wait: %s knows no meta leader' % name
                leaders.add(meta['leader'])
            else:
                leaders.add(name)
        except urllib.error.HTTPError as e:
            return 'wait: %s %s %s' % (name, e.code, e.read()[:200].decode(errors='replace'))
        except Exception as e:
            return 'wait: %s %r' % (name, e)
    if len(leaders) != 1:
        return 'wait: leaders disagree: %s' % sorted(leaders)
    return 'ready leader=' + leaders.pop()

def tcp(addr, port, timeout):
    try:
        socket.create_connection((addr, int(port)), timeout=float(timeout)).close()
        return 'connected'
    except ConnectionRefusedError:
        return 'refused'
    except socket.timeout:
        return 'timeout'
    except Exception as e:
        return 'error %r' % (e,)

mode = sys.argv[1]
if mode == 'req':
    req(*sys.argv[2:5])
elif mode == 'serve':
    serve(*sys.argv[2:5])
elif mode == 'cluster':
    print(cluster(*sys.argv[2:4]))
elif mode == 'tcp':
    print(tcp(*sys.argv[2:5]))
else:
    sys.exit('unknown mode ' + mode)
"#;
