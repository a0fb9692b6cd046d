//! `mesh-node`: runs one node of an agent mesh.

use clap::Parser;
use mesh::{Config, LogFormat, Node, NodeArgs};

/// Runs one node of an agent mesh.
///
/// Settings come from a TOML file (--config), then MESH_* environment
/// variables, then these flags, each overriding the one before.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    /// Log line format.
    #[arg(long, env = "MESH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    mesh::install_tracing(cli.log_format);
    let config = match Config::load(cli.node, |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mesh-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let node = match Node::start(config, actors::builtin_registry()).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("mesh-node: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    wait_for_stop_signal().await;
    node.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// Waits for SIGTERM or SIGINT.
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
