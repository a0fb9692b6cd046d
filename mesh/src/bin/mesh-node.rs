//! `mesh-node`: runs one node of an agent mesh.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use mesh::{Config, LogFormat, Node, NodeArgs};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Runs one node of an agent mesh.
///
/// Settings come from a TOML file (--config), then MESH_* environment
/// variables, then these flags, each overriding the one before. SIGTERM or
/// SIGINT stops the node gracefully (its agents move to other nodes); a
/// second signal, or the shutdown deadline, ends it at once.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    /// Log line format.
    #[arg(long, env = "MESH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// How long a graceful stop may take before the process exits anyway.
    #[arg(long, env = "MESH_SHUTDOWN_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration, value_name = "DURATION")]
    shutdown_timeout: Duration,
    /// Print a completion script for this shell and exit.
    #[arg(long, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
}

/// The exit status when a second signal or the deadline cuts a stop short.
const CUT_SHORT: u8 = 130;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(shell) = cli.completions {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "mesh-node",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    mesh::install_tracing(cli.log_format);
    let config = match Config::load(cli.node, |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mesh-node: {e}");
            return ExitCode::from(2);
        }
    };
    let mut signals = Signals::install();
    let node = match Node::start(config, actors::builtin_registry()).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("mesh-node: {e:#}");
            return ExitCode::from(1);
        }
    };
    signals.next().await;
    tokio::select! {
        () = node.shutdown() => ExitCode::SUCCESS,
        () = signals.next() => {
            eprintln!("mesh-node: second signal: exiting at once");
            ExitCode::from(CUT_SHORT)
        }
        () = tokio::time::sleep(cli.shutdown_timeout) => {
            eprintln!("mesh-node: graceful stop took longer than {}; exiting",
                      humantime::format_duration(cli.shutdown_timeout));
            ExitCode::from(CUT_SHORT)
        }
    }
}

/// SIGTERM and SIGINT, installed before the node starts.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Signals {
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
        }
    }

    /// Waits for the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
