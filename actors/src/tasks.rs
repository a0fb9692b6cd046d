//! Task handlers: what a worker does with a task of a given type.
//!
//! A node's workers run tasks through the handlers registered on its
//! [`crate::Registry`]. Three are built in:
//! - `sleep`: `{"ms": N}` waits N milliseconds (load tests);
//! - `sha256`: `{"data": "text", "rounds": N}` hashes the text N times,
//!   feeding each digest to the next round (CPU work);
//! - `exec`: `{"cmd": "echo", "args": ["hi"], "timeout_ms": 5000}` runs a
//!   program from the node's allow-list and captures its output. With an
//!   empty allow-list (the default) it refuses every command.
//!
//! Users add their own with [`crate::Registry::register_task`]; a handler
//! is any `Fn(serde_json::Value) -> impl Future<Output = Result<Value,
//! TaskError>>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};

/// The longest `sleep` task.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The most rounds a `sha256` task may ask for.
pub const MAX_SHA256_ROUNDS: u64 = 100_000_000;
/// How much of an `exec` command's stdout and stderr is kept, each.
pub const MAX_EXEC_OUTPUT: usize = 64 * 1024;
/// How long an `exec` command runs when the task does not say.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a task failed, as one line for the submitter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

impl TaskError {
    /// An error with the given text.
    pub fn new(text: impl Into<String>) -> Self {
        TaskError(text.into())
    }
}

/// Runs tasks of one type: takes the task's JSON payload, returns its JSON
/// output.
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one task.
    fn run(&self, payload: Value) -> BoxFuture<'static, Result<Value, TaskError>>;
}

impl<F, Fut> TaskHandler for F
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    fn run(&self, payload: Value) -> BoxFuture<'static, Result<Value, TaskError>> {
        self(payload).boxed()
    }
}

/// The task handlers of a node, by task type.
#[derive(Clone, Default)]
pub struct TaskHandlers {
    handlers: BTreeMap<String, Arc<dyn TaskHandler>>,
}

impl std::fmt::Debug for TaskHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl TaskHandlers {
    /// Adds `handler` for `task_type`, replacing any earlier one.
    pub fn register(&mut self, task_type: &str, handler: impl TaskHandler) {
        self.handlers
            .insert(task_type.to_owned(), Arc::new(handler));
    }

    /// Adds the built-in handlers, keeping any handler already registered
    /// under the same type; `exec` runs only programs in `exec_allow`.
    pub fn add_builtins(&mut self, exec_allow: &[String]) {
        let policy = Arc::new(ExecPolicy {
            allow: exec_allow.to_vec(),
        });
        let builtins: [(&str, Arc<dyn TaskHandler>); 3] = [
            ("sleep", Arc::new(sleep)),
            ("sha256", Arc::new(sha256)),
            ("exec", Arc::new(move |p| policy.clone().run(p))),
        ];
        for (name, handler) in builtins {
            self.handlers.entry(name.to_owned()).or_insert(handler);
        }
    }

    /// The handler for `task_type`, if any.
    pub fn get(&self, task_type: &str) -> Option<&Arc<dyn TaskHandler>> {
        self.handlers.get(task_type)
    }

    /// The task types handled here, sorted.
    pub fn types(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }
}

fn parse<T: for<'de> Deserialize<'de>>(task: &str, payload: Value) -> Result<T, TaskError> {
    serde_json::from_value(payload).map_err(|e| TaskError(format!("bad {task} payload: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    #[serde(default)]
    ms: u64,
}

/// The `sleep` handler: waits `ms` milliseconds and answers `{"slept_ms": N}`.
async fn sleep(payload: Value) -> Result<Value, TaskError> {
    let p: SleepPayload = parse("sleep", payload)?;
    let wait = Duration::from_millis(p.ms);
    if wait > MAX_SLEEP {
        return Err(TaskError(format!(
            "sleep of {} ms is over the limit of {} ms",
            p.ms,
            MAX_SLEEP.as_millis()
        )));
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    Ok(json!({"slept_ms": p.ms}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sha256Payload {
    #[serde(default)]
    data: String,
    #[serde(default = "one")]
    rounds: u64,
}

fn one() -> u64 {
    1
}

/// The `sha256` handler: answers `{"sha256": HEX, "rounds": N}`.
async fn sha256(payload: Value) -> Result<Value, TaskError> {
    use sha2::{Digest, Sha256};
    let p: Sha256Payload = parse("sha256", payload)?;
    if p.rounds == 0 || p.rounds > MAX_SHA256_ROUNDS {
        return Err(TaskError(format!(
            "sha256 rounds must be between 1 and {MAX_SHA256_ROUNDS}, not {}",
            p.rounds
        )));
    }
    // Hashing is CPU work: keep it off the threads that run agents.
    let hashed = tokio::task::spawn_blocking(move || {
        let mut digest = Sha256::digest(p.data.as_bytes());
        for _ in 1..p.rounds {
            digest = Sha256::digest(digest);
        }
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    })
    .await
    .map_err(|e| TaskError(format!("sha256 worker thread failed: {e}")))?;
    Ok(json!({"sha256": hashed, "rounds": p.rounds}))
}

/// The programs `exec` may run on this node.
#[derive(Debug)]
struct ExecPolicy {
    /// Program names or paths, matched exactly against the task's `cmd`.
    allow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecPayload {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl ExecPolicy {
    /// Runs the command if allowed; answers `{"status", "stdout", "stderr"}`
    /// and fails when it exits with another status than 0.
    async fn run(self: Arc<Self>, payload: Value) -> Result<Value, TaskError> {
        let p: ExecPayload = parse("exec", payload)?;
        if self.allow.is_empty() {
            return Err(TaskError(
                "exec is disabled on this node (its exec_allow list is empty)".into(),
            ));
        }
        if !self.allow.contains(&p.cmd) {
            return Err(TaskError(format!(
                "exec refuses \"{}\": not in this node's exec_allow list",
                p.cmd
            )));
        }
        let timeout = p
            .timeout_ms
            .map_or(DEFAULT_EXEC_TIMEOUT, Duration::from_millis);
        let child = tokio::process::Command::new(&p.cmd)
            .args(&p.args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(timeout, child).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(TaskError(format!("cannot run \"{}\": {e}", p.cmd))),
            Err(_) => {
                return Err(TaskError(format!(
                    "\"{}\" did not finish within {} ms and was killed",
                    p.cmd,
                    timeout.as_millis()
                )))
            }
        };
        let text = |bytes: &[u8]| {
            let cut = &bytes[..bytes.len().min(MAX_EXEC_OUTPUT)];
            String::from_utf8_lossy(cut).into_owned()
        };
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        match output.status.code() {
            Some(0) => Ok(json!({"status": 0, "stdout": stdout, "stderr": stderr})),
            code => {
                let status = code.map_or("a signal".to_owned(), |c| format!("status {c}"));
                let first = stderr.lines().next().unwrap_or_default();
                Err(TaskError(format!(
                    "\"{}\" exited with {status}: {first}",
                    p.cmd
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtins(allow: &[&str]) -> TaskHandlers {
        let mut handlers = TaskHandlers::default();
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        handlers.add_builtins(&allow);
        handlers
    }

    async fn run(handlers: &TaskHandlers, task: &str, payload: Value) -> Result<Value, TaskError> {
        handlers.get(task).expect("registered").run(payload).await
    }

    #[tokio::test]
    async fn sha256_hashes_repeatedly() {
        let handlers = builtins(&[]);
        let once = run(&handlers, "sha256", json!({"data": "abc"}))
            .await
            .unwrap();
        assert_eq!(
            once["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let twice = run(&handlers, "sha256", json!({"data": "abc", "rounds": 2}));
        assert_ne!(twice.await.unwrap()["sha256"], once["sha256"]);
        let bad = run(&handlers, "sha256", json!({"rounds": 0})).await;
        assert!(bad.unwrap_err().0.contains("between 1 and"));
    }

    #[tokio::test]
    async fn exec_is_off_by_default_and_keeps_to_its_allow_list() {
        let off = builtins(&[]);
        let refused = run(&off, "exec", json!({"cmd": "echo", "args": ["hi"]})).await;
        assert!(refused.unwrap_err().0.contains("disabled"));

        let on = builtins(&["echo"]);
        let ran = run(&on, "exec", json!({"cmd": "echo", "args": ["hi"]})).await;
        assert_eq!(ran.unwrap()["stdout"], "hi\n");
        let other = run(&on, "exec", json!({"cmd": "rm", "args": ["-rf", "/tmp/x"]})).await;
        assert!(other
            .unwrap_err()
            .0
            .contains("not in this node's exec_allow"));
    }

    #[tokio::test]
    async fn user_handlers_win_over_builtins() {
        let mut handlers = TaskHandlers::default();
        handlers.register("sleep", |_: Value| async { Ok(json!("mine")) });
        handlers.add_builtins(&[]);
        assert_eq!(run(&handlers, "sleep", json!({})).await.unwrap(), "mine");
        assert_eq!(handlers.types(), ["exec", "sha256", "sleep"]);
    }
}
