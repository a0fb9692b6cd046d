//! What the benches say about the machine and the code they ran on.

use std::path::Path;
use std::process::Command;

/// The machine and revision a report was measured on.
#[derive(Debug)]
pub(crate) struct Machine {
    /// Logical CPUs.
    pub(crate) cpus: usize,
    /// The CPU model.
    pub(crate) cpu: String,
    /// Total memory, as /proc/meminfo says it.
    pub(crate) memory: String,
    /// The kernel release.
    pub(crate) kernel: String,
    /// `rustc --version`.
    pub(crate) rustc: String,
    /// The git revision, noting uncommitted changes.
    pub(crate) revision: String,
}

/// Reads what it can about this machine; "unknown" for the rest.
pub(crate) fn describe(workspace: &Path) -> Machine {
    let unknown = || "unknown".to_owned();
    let root = workspace.to_string_lossy();
    let revision = match output_of("git", &["-C", &root, "rev-parse", "--short", "HEAD"]) {
        Some(head) => match output_of("git", &["-C", &root, "status", "--porcelain", "--", "."]) {
            Some(_) => format!("{head} with uncommitted changes"),
            None => head,
        },
        None => unknown(),
    };
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(unknown),
        memory: proc_field("/proc/meminfo", "MemTotal").unwrap_or_else(unknown),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| unknown()),
        rustc: output_of("rustc", &["--version"]).unwrap_or_else(unknown),
        revision,
    }
}

/// The first line of `file` whose key (before a colon) is `key`, value only.
fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// The trimmed standard output of a command, if it runs and succeeds.
pub(crate) fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}
