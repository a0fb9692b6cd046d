//! `worker`: runs tasks from the board through its node's task handlers.
//!
//! Workers are a node's capacity: a node configured with `workers = N`
//! hosts `worker/<node>.0` to `worker/<node>.<N-1>` and keeps each busy
//! (its runtime sends [`WorkerMessage::Work`] in a loop, pausing while the
//! board has nothing). A worker is pinned to its node: it never fails over,
//! and the board queues a dead node's tasks again once their deadline
//! passes. One message runs at most one task:
//! 1. ask `board/main` for a task, with the node's facts and handler types;
//! 2. run it through the handler, within the task's timeout;
//! 3. report the result, retrying while the board is unreachable (it may be
//!    failing over); the board records the first result for a task only.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, CallError, Context};
use crate::board::{Assignment, Board, BoardMessage, BoardReply, TaskResult};
use crate::json::Json;
use crate::tasks::TaskError;

/// The name of the board workers pull from (`board/main`).
pub const BOARD: &str = "main";
/// How long a worker waits for one answer from the board.
pub const BOARD_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker keeps trying to report a result.
pub const REPORT_DEADLINE: Duration = Duration::from_secs(60);
/// The pause between two attempts to report.
const REPORT_RETRY: Duration = Duration::from_millis(200);

/// A worker; see the module documentation.
#[derive(Debug)]
pub struct Worker;

/// What a worker accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage {
    /// Take one task from the board and run it (from the node's runtime).
    Work {},
    /// The board has a task this worker can run (a cast from the board).
    Wake {},
    /// Run a task directly, without the board; replies `output`.
    Run {
        /// The handler type.
        #[serde(rename = "type")]
        task_type: String,
        /// Its input.
        #[serde(default)]
        payload: Json,
        /// How long it may take, in milliseconds.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// A worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerReply {
    /// The board had no task for this worker.
    Idle {},
    /// A task ran and its result was reported.
    Worked {
        /// The task.
        id: String,
        /// Whether it succeeded.
        ok: bool,
        /// Whether the board recorded it (false: it had a result already).
        recorded: bool,
    },
    /// The output of a direct run.
    Output(Json),
}

impl Agent for Worker {
    const KIND: &'static str = "worker";
    type State = ();
    type Message = WorkerMessage;
    type Reply = WorkerReply;

    fn pinned_node(name: &str) -> Option<&str> {
        name.rsplit_once('.').map(|(node, _)| node)
    }

    async fn handle(
        _: &mut (),
        ctx: &Context,
        msg: WorkerMessage,
    ) -> Result<WorkerReply, AgentError> {
        match msg {
            WorkerMessage::Work {} | WorkerMessage::Wake {} => work_once(ctx).await,
            WorkerMessage::Run {
                task_type,
                payload,
                timeout_ms,
            } => {
                let timeout = timeout_ms.map_or(crate::board::DEFAULT_TASK_TIMEOUT, |ms| {
                    Duration::from_millis(ms)
                });
                let output = run(ctx, &task_type, payload, timeout)
                    .await
                    .map_err(|e| AgentError(e.0))?;
                Ok(WorkerReply::Output(Json(output)))
            }
        }
    }
}

/// Takes a task from the board, runs it and reports the result.
async fn work_once(ctx: &Context) -> Result<WorkerReply, AgentError> {
    let take = BoardMessage::Take {
        worker: ctx.id().to_string(),
        facts: ctx.facts().clone(),
        types: ctx.tasks().types(),
    };
    let reply = ctx.call::<Board>(BOARD, &take, BOARD_CALL_TIMEOUT).await?;
    let BoardReply::Assigned(Some(Assignment {
        id,
        task_type,
        payload,
        timeout_ms,
        ..
    })) = reply
    else {
        return Ok(WorkerReply::Idle {});
    };
    let timeout = Duration::from_millis(timeout_ms);
    let result = match run(ctx, &task_type, payload, timeout).await {
        Ok(output) => TaskResult::Ok(Json(output)),
        Err(e) => TaskResult::Err(e.0),
    };
    let ok = matches!(result, TaskResult::Ok(_));
    let recorded = report(ctx, &id, result).await?;
    Ok(WorkerReply::Worked { id, ok, recorded })
}

/// Runs one task through this node's handler for its type.
async fn run(
    ctx: &Context,
    task_type: &str,
    payload: Json,
    timeout: Duration,
) -> Result<serde_json::Value, TaskError> {
    let Some(handler) = ctx.tasks().get(task_type) else {
        return Err(TaskError(format!(
            "node {} has no handler for task type \"{task_type}\"",
            ctx.node()
        )));
    };
    match tokio::time::timeout(timeout, handler.run(payload.0)).await {
        Ok(result) => result,
        Err(_) => Err(TaskError(format!(
            "timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Reports a result until the board answers or [`REPORT_DEADLINE`] passes.
async fn report(ctx: &Context, id: &str, result: TaskResult) -> Result<bool, CallError> {
    let message = BoardMessage::Complete {
        worker: ctx.id().to_string(),
        id: id.to_owned(),
        result,
    };
    let started = Instant::now();
    loop {
        match ctx.call::<Board>(BOARD, &message, BOARD_CALL_TIMEOUT).await {
            Ok(BoardReply::Recorded { recorded }) => return Ok(recorded),
            Ok(other) => {
                return Err(CallError::Internal {
                    reason: format!("the board answered a result with {other:?}"),
                })
            }
            // The board may be failing over: its new home answers soon.
            Err(e) if e.is_retryable() && started.elapsed() < REPORT_DEADLINE => {
                tokio::time::sleep(REPORT_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}
