//! `meshctl`: talks to an agent mesh through NATS.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh::gateway::{
    AdminRequest, AgentsReply, CallRequest, DrainReply, MembersReply, Response, SnapshotView,
};
use mesh::subjects;

#[path = "meshctl/status.rs"]
mod status;
#[path = "meshctl/tasks.rs"]
mod tasks;

/// Talks to an agent mesh through NATS.
///
/// Exit status: 0 success, 1 the mesh answered with an error, 2 bad
/// arguments, 3 NATS unreachable, 4 timeout, 5 no node of the cluster
/// answered.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// NATS server URLs (comma separated).
    #[arg(
        long,
        env = "MESH_NATS",
        value_delimiter = ',',
        default_value = mesh::config::DEFAULT_NATS
    )]
    nats: Vec<String>,
    /// NATS credentials and TLS.
    #[command(flatten)]
    nats_auth: mesh::nats_auth::NatsAuthArgs,
    /// The cluster to talk to.
    #[arg(long, env = "MESH_CLUSTER", default_value = mesh::config::DEFAULT_CLUSTER)]
    cluster: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for answers, such as 5s or 500ms.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the nodes of the cluster.
    Members,
    /// List which agents are live on which node.
    Agents,
    /// Show the cluster at a glance: zones, nodes, agents, snapshot ages
    /// and warnings.
    Status,
    /// Send a JSON message to an agent and print its JSON reply.
    Call {
        /// The agent, as kind/name (for example counter/alice).
        agent: String,
        /// The message, as JSON (for example '{"add": 5}').
        message: String,
        /// Enter the mesh through this node instead of any.
        #[arg(long)]
        node: Option<String>,
    },
    /// Take a snapshot of a node now.
    Snapshot {
        /// The node (default: any).
        #[arg(long)]
        node: Option<String>,
    },
    /// Look at snapshots.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Restore a node, or one agent, from a snapshot.
    Restore {
        /// The node to restore (with --agent: default the agent's host).
        #[arg(long, required_unless_present = "agent")]
        node: Option<String>,
        /// Restore only this agent, on the node that hosts it.
        #[arg(long)]
        agent: Option<String>,
        /// Whose snapshots to read (default: the restored node's own).
        #[arg(long)]
        from: Option<String>,
        /// The snapshot id (default: the newest that reads back whole).
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Print a completion script for a shell (bash, zsh, fish, ...).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Move every agent off a node (before maintenance) and report
    /// progress until none is left; the node takes no new agents.
    Drain {
        /// The node to drain.
        node: String,
        /// How long to wait for the last agent to leave, such as 5m.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Let a drained node take agents again.
    Undrain {
        /// The node.
        node: String,
    },
    /// Work with topology files.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Submit, list, show and cancel tasks on the task board.
    ///
    /// While the board moves to another node (its node died), these
    /// commands try again for up to 30 s; a submission without --id is
    /// sent again only when the mesh says it was not applied.
    Tasks {
        #[command(subcommand)]
        command: tasks::TasksCommand,
    },
    /// Send a JSON message to an agent without waiting for a reply.
    Send {
        /// The agent, as kind/name.
        agent: String,
        /// The message, as JSON.
        message: String,
        /// Enter the mesh through this node instead of any.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Check a topology file; a problem is named in one line (exit 2).
    Check {
        /// The topology file (TOML).
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotsCommand {
    /// List the complete snapshots of a node, newest first.
    List {
        /// The node whose snapshots to list (default: the answering node).
        #[arg(long)]
        node: Option<String>,
    },
}

/// A failure with its exit status.
struct Failure(u8, String);

impl Failure {
    fn mesh(message: impl Into<String>) -> Self {
        Failure(1, message.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("meshctl: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        let mut command = Cli::command();
        clap_complete::generate(shell, &mut command, "meshctl", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Topology {
        command: TopologyCommand::Check { file },
    } = &cli.command
    {
        return check_topology(file);
    }
    let valid_cluster = !cli.cluster.is_empty()
        && cli
            .cluster
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_cluster {
        let why = "use lowercase letters, digits, '-' or '_'";
        return Err(Failure(
            2,
            format!("invalid cluster \"{}\": {why}", cli.cluster),
        ));
    }
    if cli.timeout < Duration::from_millis(1) {
        return Err(Failure(2, "--timeout must be at least 1ms".into()));
    }
    if cli.timeout > MAX_TIMEOUT {
        return Err(Failure(2, "--timeout must be at most 24h".into()));
    }
    // Check arguments before touching the network.
    let call = match &cli.command {
        Command::Call {
            agent,
            message,
            node,
        }
        | Command::Send {
            agent,
            message,
            node,
        } => {
            let msg: serde_json::Value = serde_json::from_str(message)
                .map_err(|e| Failure(2, format!("the message is not valid JSON: {e}")))?;
            agent
                .parse::<actors::AgentId>()
                .map_err(|e| Failure(2, e.to_string()))?;
            let request = CallRequest {
                v: None,
                agent: agent.clone(),
                msg,
                timeout_ms: Some(cli.timeout.as_millis() as u64),
                cast: matches!(cli.command, Command::Send { .. }),
            };
            Some((request, node.clone()))
        }
        Command::Tasks { command } => {
            command.check()?;
            None
        }
        _ => None,
    };
    let auth = mesh::nats_auth::NatsAuth::resolve(cli.nats_auth.clone(), |k| std::env::var(k).ok())
        .map_err(|e| Failure(2, e.to_string()))?;
    let client = mesh::connect_nats(&cli.nats, "meshctl", &auth)
        .await
        .map_err(|e| Failure(3, format!("{e:#}")))?;
    let ctl = Ctl {
        client,
        auth,
        cluster: cli.cluster.clone(),
        // The mesh's own deadline answers first; this one covers a lost node.
        wait: cli.timeout + Duration::from_secs(1),
    };
    match cli.command {
        Command::Members => ctl.members(cli.json).await,
        Command::Agents => ctl.agents(cli.json).await,
        Command::Status => ctl.status(&cli.nats, cli.json).await,
        Command::Snapshot { node } => ctl.snapshot(node).await,
        Command::Completions { .. } | Command::Topology { .. } => {
            unreachable!("answered before connecting")
        }
        Command::Drain { node, wait } => ctl.drain(&node, wait).await,
        Command::Undrain { node } => ctl.undrain(&node).await,
        Command::Snapshots {
            command: SnapshotsCommand::List { node },
        } => ctl.snapshots(node, cli.json).await,
        Command::Restore {
            node,
            agent,
            from,
            snapshot,
        } => ctl.restore(node, agent, from, snapshot).await,
        Command::Call { .. } | Command::Send { .. } => {
            let (request, node) = call.expect("parsed above");
            ctl.call(request, node, cli.json).await
        }
        Command::Tasks { command } => ctl.tasks(command, cli.json).await,
    }
}

/// Checks a topology file and summarizes it.
fn check_topology(file: &std::path::Path) -> Result<(), Failure> {
    let topology = mesh::config::read_topology(file).map_err(|e| Failure(2, e.to_string()))?;
    println!(
        "{}: ok: {} nodes, {} policies ({})",
        file.display(),
        topology.nodes.len(),
        topology.policies.len(),
        topology
            .policies
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The longest `--timeout`: a call's deadline, well inside what a
/// `Duration` and the gateway's `timeout_ms` hold.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How often `meshctl drain` asks for progress.
const DRAIN_POLL: Duration = Duration::from_millis(500);

struct Ctl {
    client: async_nats::Client,
    /// NATS credentials, for probes that open their own connection.
    auth: mesh::nats_auth::NatsAuth,
    cluster: String,
    wait: Duration,
}

impl Ctl {
    async fn request(&self, subject: String, body: Vec<u8>) -> Result<Response, Failure> {
        use async_nats::client::RequestErrorKind;
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(self.wait));
        let reply = self
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => Failure(
                    5,
                    format!(
                        "no node of cluster \"{}\" answered on {subject}",
                        self.cluster
                    ),
                ),
                RequestErrorKind::TimedOut => Failure(
                    4,
                    format!(
                        "no answer on {subject} within {}",
                        humantime::format_duration(self.wait)
                    ),
                ),
                _ => Failure(3, format!("request on {subject} failed: {e}")),
            })?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| Failure::mesh(format!("unreadable answer from the mesh: {e}")))
    }

    async fn admin(
        &self,
        subject: String,
        request: &AdminRequest,
    ) -> Result<serde_json::Value, Failure> {
        let body = serde_json::to_vec(request).expect("admin requests encode");
        match self.request(subject, body).await? {
            Response::Ok(value) => Ok(value),
            Response::Error(e) => Err(Failure::mesh(format!("{} ({})", e.message, e.code))),
        }
    }

    async fn members_reply(&self) -> Result<MembersReply, Failure> {
        let value = self
            .admin(subjects::admin(&self.cluster), &AdminRequest::Members)
            .await?;
        serde_json::from_value(value)
            .map_err(|e| Failure::mesh(format!("unreadable member list: {e}")))
    }

    async fn members(&self, json: bool) -> Result<(), Failure> {
        let reply = self.members_reply().await?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&reply.members).expect("encodes")
            );
            return Ok(());
        }
        println!(
            "{:<20} {:<10} {:<14} {:<8} {:<6} {:<7} {:<22} {:>8} {:<8} {:<5} STATE",
            "NAME",
            "ZONE",
            "KIND",
            "STATUS",
            "LINKED",
            "LEASE",
            "ADDRESS",
            "AGE",
            "VERSION",
            "WIRE",
        );
        for m in &reply.members {
            let lease = match m.lease {
                Some(true) => "ok",
                Some(false) => "expired",
                None => "-",
            };
            println!(
                "{:<20} {:<10} {:<14} {:<8} {:<6} {:<7} {:<22} {:>8} {:<8} {:<5} {}",
                m.name,
                m.zone,
                m.kind,
                if m.draining { "draining" } else { &m.status },
                if m.this {
                    "self"
                } else if m.linked {
                    "yes"
                } else {
                    "no"
                },
                lease,
                m.address,
                humantime::format_duration(Duration::from_secs(m.age_s)).to_string(),
                m.software,
                if m.wire.is_empty() { "-" } else { &m.wire },
                state_summary(&m.state_versions),
            );
        }
        println!("(as seen by {})", reply.node);
        Ok(())
    }

    async fn agents(&self, json: bool) -> Result<(), Failure> {
        let members = self.members_reply().await?;
        let asks = members.members.iter().map(|m| {
            self.admin(
                subjects::node_admin(&self.cluster, &m.name),
                &AdminRequest::Agents,
            )
        });
        // (agent, node, status)
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let answers = futures::future::join_all(asks).await;
        for (member, answer) in members.members.iter().zip(answers) {
            let reply = answer.and_then(|v| {
                serde_json::from_value::<AgentsReply>(v)
                    .map_err(|e| Failure::mesh(format!("unreadable agent list: {e}")))
            });
            match reply {
                Ok(reply) => {
                    let node = reply.node;
                    let epochs = reply.epochs.iter().map(|e| format!("live, epoch {e}"));
                    let status = epochs.chain(std::iter::repeat("live".to_owned()));
                    rows.extend(
                        reply
                            .agents
                            .into_iter()
                            .zip(status)
                            .map(|(a, s)| (a, node.clone(), s)),
                    );
                    rows.extend(
                        reply
                            .failed
                            .into_iter()
                            .map(|f| (f.agent, node.clone(), format!("failed: {}", f.reason))),
                    );
                }
                Err(Failure(_, why)) => {
                    eprintln!("meshctl: node {} did not answer: {why}", member.name)
                }
            }
        }
        rows.sort();
        if json {
            let list: Vec<_> = rows
                .iter()
                .map(|(agent, node, status)| {
                    serde_json::json!({"agent": agent, "node": node, "status": status})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list).expect("encodes"));
            return Ok(());
        }
        println!("{:<40} {:<20} STATUS", "AGENT", "NODE");
        for (agent, node, status) in rows {
            println!("{agent:<40} {node:<20} {status}");
        }
        Ok(())
    }

    fn admin_subject(&self, node: Option<&str>) -> String {
        match node {
            Some(node) => subjects::node_admin(&self.cluster, node),
            None => subjects::admin(&self.cluster),
        }
    }

    async fn snapshot(&self, node: Option<String>) -> Result<(), Failure> {
        let subject = self.admin_subject(node.as_deref());
        let value = self.admin(subject, &AdminRequest::Snapshot).await?;
        let view: SnapshotView = serde_json::from_value(value)
            .map_err(|e| Failure::mesh(format!("unreadable answer: {e}")))?;
        println!(
            "snapshot {} of {}: {} agents, {} bytes",
            view.id, view.node, view.agents, view.bytes
        );
        Ok(())
    }

    async fn snapshots(&self, node: Option<String>, json: bool) -> Result<(), Failure> {
        // The named node answers if it can: with per-node file:// storage
        // only it sees its own snapshots. With shared storage (S3) any node
        // can answer for a node that is gone.
        let request = AdminRequest::Snapshots { node: node.clone() };
        let value = match self
            .admin(self.admin_subject(node.as_deref()), &request)
            .await
        {
            Err(Failure(5, _)) if node.is_some() => {
                self.admin(self.admin_subject(None), &request).await?
            }
            answer => answer?,
        };
        let list: Vec<SnapshotView> = serde_json::from_value(value)
            .map_err(|e| Failure::mesh(format!("unreadable answer: {e}")))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&list).expect("encodes"));
            return Ok(());
        }
        println!(
            "{:<24} {:<20} {:>8} {:>12} {:<8} AGE",
            "ID", "NODE", "AGENTS", "BYTES", "VERSION"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        for s in list {
            let age = Duration::from_secs(now.saturating_sub(s.created_ms) / 1000);
            println!(
                "{:<24} {:<20} {:>8} {:>12} {:<8} {}",
                s.id,
                s.node,
                s.agents,
                s.bytes,
                s.software,
                humantime::format_duration(age)
            );
        }
        Ok(())
    }

    async fn restore(
        &self,
        node: Option<String>,
        agent: Option<String>,
        from: Option<String>,
        snapshot: Option<String>,
    ) -> Result<(), Failure> {
        if let Some(agent) = &agent {
            agent
                .parse::<actors::AgentId>()
                .map_err(|e| Failure(2, e.to_string()))?;
        }
        // An agent is restored where it lives, so its next message sees it.
        let node = match (node, &agent) {
            (Some(node), _) => node,
            (None, Some(agent)) => {
                let request = AdminRequest::Locate {
                    agent: agent.clone(),
                };
                let value = self.admin(subjects::admin(&self.cluster), &request).await?;
                value["node"].as_str().unwrap_or_default().to_owned()
            }
            (None, None) => return Err(Failure(2, "give --node or --agent".into())),
        };
        // The node reports progress to an inbox of ours while it downloads.
        let inbox = self.client.new_inbox();
        let mut reports = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Failure(3, format!("cannot subscribe for progress: {e}")))?;
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("the template is valid"),
        );
        let shown = bar.clone();
        let watcher = tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(msg) = reports.next().await {
                let report: serde_json::Value =
                    serde_json::from_slice(&msg.payload).unwrap_or_default();
                shown.set_length(report["total"].as_u64().unwrap_or(0));
                shown.set_position(report["done"].as_u64().unwrap_or(0));
            }
        });
        let request = AdminRequest::Restore {
            from,
            snapshot,
            agent,
            progress: Some(inbox),
        };
        let started = std::time::Instant::now();
        let subject = subjects::node_admin(&self.cluster, &node);
        let value = self.admin(subject, &request).await;
        watcher.abort();
        bar.finish_and_clear();
        let value = value?;
        let report: mesh::snapshot::RestoreReport = serde_json::from_value(value)
            .map_err(|e| Failure::mesh(format!("unreadable answer: {e}")))?;
        for skipped in &report.skipped {
            eprintln!("meshctl: skipped unreadable snapshot {skipped}");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "restored {} agents on {node} from snapshot {} ({} bytes in {secs:.1}s, {:.1} MB/s)",
            report.agents,
            report.snapshot,
            report.bytes,
            report.bytes as f64 / 1e6 / secs.max(1e-3)
        );
        Ok(())
    }

    async fn drain_request(&self, node: &str, on: bool) -> Result<DrainReply, Failure> {
        let request = if on {
            AdminRequest::Drain
        } else {
            AdminRequest::Undrain
        };
        let subject = subjects::node_admin(&self.cluster, node);
        let value = self.admin(subject, &request).await?;
        serde_json::from_value(value).map_err(|e| Failure::mesh(format!("unreadable answer: {e}")))
    }

    async fn drain(&self, node: &str, wait: Duration) -> Result<(), Failure> {
        let started = std::time::Instant::now();
        let mut shown = None;
        loop {
            let reply = self.drain_request(node, true).await?;
            if shown != Some(reply.agents) {
                println!("draining {node}: {} agents left", reply.agents);
                shown = Some(reply.agents);
            }
            if reply.agents == 0 {
                println!("{node} is drained ({} agents moved)", reply.moved);
                return Ok(());
            }
            // Agents that cannot move keep the node from draining: say so.
            if !reply.blocked.is_empty() && reply.blocked.len() == reply.agents {
                for b in &reply.blocked {
                    eprintln!("meshctl: {} cannot move: {}", b.agent, b.reason);
                }
                return Err(Failure::mesh(format!(
                    "{node} keeps {} agents that cannot move",
                    reply.agents
                )));
            }
            if started.elapsed() > wait {
                return Err(Failure(
                    4,
                    format!(
                        "{node} still has {} agents after {}",
                        reply.agents,
                        humantime::format_duration(wait)
                    ),
                ));
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    async fn undrain(&self, node: &str) -> Result<(), Failure> {
        let reply = self.drain_request(node, false).await?;
        println!("{node} takes agents again ({} live)", reply.agents);
        Ok(())
    }

    async fn call(
        &self,
        request: CallRequest,
        node: Option<String>,
        json: bool,
    ) -> Result<(), Failure> {
        let subject = match &node {
            Some(node) => subjects::node_gateway(&self.cluster, node),
            None => subjects::gateway(&self.cluster),
        };
        let body = serde_json::to_vec(&request).expect("call requests encode");
        let response = self.request(subject, body).await?;
        if json {
            println!("{}", serde_json::to_string(&response).expect("encodes"));
        }
        match response {
            Response::Ok(value) => {
                if !json && !request.cast {
                    println!("{}", serde_json::to_string(&value).expect("encodes"));
                }
                Ok(())
            }
            Response::Error(e) if e.code == "timeout" => Err(Failure(4, e.message)),
            Response::Error(e) => Err(Failure::mesh(format!("{} ({})", e.message, e.code))),
        }
    }
}

/// Agent state versions in a few characters: `*=1` when every kind is at
/// 1, `*=1 counter=2` when one differs; `-` from a release that does not
/// announce them.
fn state_summary(versions: &std::collections::BTreeMap<String, u16>) -> String {
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for v in versions.values() {
        *counts.entry(*v).or_default() += 1;
    }
    let Some((&common, _)) = counts
        .iter()
        .max_by_key(|(v, n)| (**n, std::cmp::Reverse(**v)))
    else {
        return "-".into();
    };
    let mut out = format!("*={common}");
    for (kind, v) in versions.iter().filter(|(_, v)| **v != common) {
        out.push_str(&format!(" {kind}={v}"));
    }
    out
}
