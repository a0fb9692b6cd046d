//! `board`: a durable queue of tasks that workers pull from.
//!
//! A task goes queued → running → done or failed (or cancelled). Delivery:
//! 1. a submission carries an id (the submitter's, or generated); a second
//!    submission with a known id changes nothing and answers the task's
//!    state, so a submitter may retry freely;
//! 2. an idle worker asks for a task with its node's facts and its handler
//!    types ([`BoardMessage::Take`]); the board hands it the first queued
//!    task it can run (highest priority, then oldest), marks it running
//!    with a deadline (the task's timeout plus [`DEADLINE_GRACE`]);
//! 3. a running task whose deadline passes (its worker or node died) is
//!    queued again, up to its retry limit, then failed;
//! 4. the first result for a task is recorded; any later one (a retry that
//!    raced, a worker re-sending after a board failover) is counted as a
//!    duplicate and ignored. The board's durability is `replicated`, so a
//!    recorded result survives the loss of the board's node.
//!
//! The state is bounded so that it always fits one replicated write (NATS
//! refuses messages over 1 MiB): at most [`MAX_STATE_BYTES`] of tasks, of
//! which at most [`MAX_FINISHED`] finished ones, oldest evicted first, with
//! outputs cut to [`MAX_OUTPUT_BYTES`]. A submission that does not fit is
//! refused with "the board is full". Idempotent submission holds for the
//! tasks still retained.
//!
//! Which workers are alive is kept in memory only (it changes with every
//! poll, and writing it would cost a replicated write per poll). After a
//! failover the board therefore waits [`LIVE_WINDOW`] before it calls a
//! requirement unsatisfiable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, Context, Durability, NodeFacts};
use crate::json::Json;

mod logic;
#[cfg(test)]
mod tests;

/// The largest task payload, as JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// The most bytes of tasks (payloads, outputs, names) the board keeps.
pub const MAX_STATE_BYTES: usize = 640 * 1024;
/// The most finished tasks kept for `show` and `list`.
pub const MAX_FINISHED: usize = 1000;
/// The most open (queued or running) tasks.
pub const MAX_OPEN: usize = 5000;
/// How much of a task's output (as JSON text) is kept.
pub const MAX_OUTPUT_BYTES: usize = 1024;
/// A task's timeout when the submission does not say.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest task timeout.
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How many times a task is tried again when the submission does not say.
pub const DEFAULT_RETRIES: u32 = 3;
/// The most retries a submission may ask for.
pub const MAX_RETRIES: u32 = 100;
/// Added to a task's timeout before the board gives up on its worker.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(2);
/// A worker not heard from for this long is not counted as alive.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);
/// How often deadlines and unsatisfiable tasks are checked (on messages).
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// The longest task id.
const MAX_ID_LEN: usize = 128;

/// The task board; one usually runs as `board/main`.
#[derive(Debug)]
pub struct Board;

/// What a task needs from the node that runs it; every field given must
/// match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// The zone, such as `fr-par-1`.
    #[serde(default)]
    pub zone: Option<String>,
    /// The region, such as `fr-par`.
    #[serde(default)]
    pub region: Option<String>,
    /// The node kind, `elastic-metal` or `instance`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Capabilities the node must all have, such as `gpu`.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl Requirements {
    /// Whether a node with these facts satisfies the requirements.
    pub fn matches(&self, facts: &NodeFacts) -> bool {
        self.zone.as_ref().is_none_or(|z| *z == facts.zone)
            && self.region.as_ref().is_none_or(|r| *r == facts.region)
            && self.kind.as_ref().is_none_or(|k| *k == facts.kind)
            && self
                .capabilities
                .iter()
                .all(|c| facts.capabilities.contains(c))
    }
}

impl std::fmt::Display for Requirements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (key, value) in [
            ("zone", &self.zone),
            ("region", &self.region),
            ("kind", &self.kind),
        ] {
            if let Some(value) = value {
                parts.push(format!("{key} {value}"));
            }
        }
        for c in &self.capabilities {
            parts.push(format!("capability {c}"));
        }
        if parts.is_empty() {
            parts.push("no requirements".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// A submission: `{"type": "sleep", "payload": {"ms": 10}}` plus options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The task's id; generated when absent. A known id is not queued twice.
    #[serde(default)]
    pub id: Option<String>,
    /// Which handler runs it (`sleep`, `sha256`, `exec`, or a user's).
    #[serde(rename = "type")]
    pub task_type: String,
    /// The handler's input.
    #[serde(default)]
    pub payload: Json,
    /// What the node running it must offer.
    #[serde(default)]
    pub requires: Requirements,
    /// Higher runs first; equal priorities run oldest first.
    #[serde(default)]
    pub priority: i32,
    /// How long one attempt may take, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How many times it is tried again after a failure or a lost worker.
    #[serde(default)]
    pub retries: Option<u32>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// A worker has it.
    Running,
    /// Finished with an output.
    Done,
    /// Failed on its last attempt, or could not run anywhere.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskState {
    /// Whether the task is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A task as the board keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// Its handler type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The handler's input.
    pub payload: Json,
    /// What the node running it must offer.
    pub requires: Requirements,
    /// Its priority.
    pub priority: i32,
    /// One attempt's timeout, in milliseconds.
    pub timeout_ms: u64,
    /// How many retries it may have.
    pub retries: u32,
    /// Where it is.
    pub state: TaskState,
    /// How many times a worker was given it.
    pub attempts: u32,
    /// Submission order, for equal priorities.
    pub seq: u64,
    /// When it was submitted (Unix milliseconds).
    pub submitted_ms: u64,
    /// When its last attempt started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// When the running attempt is given up (Unix milliseconds).
    pub deadline_ms: Option<u64>,
    /// The worker of the last attempt, or the one whose result counted.
    pub worker: Option<String>,
    /// That worker's zone.
    pub zone: Option<String>,
    /// The output, cut to [`MAX_OUTPUT_BYTES`] (as a string if cut).
    pub output: Option<Json>,
    /// Why it failed, or the last attempt's error.
    pub error: Option<String>,
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task's id.
    pub id: String,
    /// Its handler type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The handler's input.
    pub payload: Json,
    /// How long the attempt may take, in milliseconds.
    pub timeout_ms: u64,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

/// What a worker reports for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskResult {
    /// The handler's output.
    Ok(Json),
    /// The handler's error.
    Err(String),
}

/// Counts since the board was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Tasks accepted.
    pub submitted: u64,
    /// Results recorded as done.
    pub done: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Attempts given up (deadline passed) or failed and tried again.
    pub requeued: u64,
    /// Results ignored because the task had one already.
    pub duplicates: u64,
    /// Finished tasks dropped to keep the board's size bounded.
    pub evicted: u64,
}

/// The board's numbers, for progress displays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardStats {
    /// Counts since the board was created.
    pub totals: Totals,
    /// Tasks now queued.
    pub queued: u64,
    /// Tasks now running.
    pub running: u64,
    /// Done tasks by the zone of the worker that ran them.
    pub done_by_zone: BTreeMap<String, u64>,
    /// Live workers by zone.
    pub workers_by_zone: BTreeMap<String, u64>,
    /// Whether the board has listened for a whole [`LIVE_WINDOW`], so that
    /// it knows every live worker.
    pub warm: bool,
    /// The board's node.
    pub node: String,
    /// Bytes of tasks kept, against [`MAX_STATE_BYTES`].
    pub bytes: u64,
}

/// A task in a list: everything but payload and output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Its id.
    pub id: String,
    /// Its handler type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Where it is.
    pub state: TaskState,
    /// Attempts so far.
    pub attempts: u32,
    /// The worker of the last attempt.
    pub worker: Option<String>,
    /// That worker's zone.
    pub zone: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What a board accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardMessage {
    /// Queue a task (from submitters); replies `submitted`.
    Submit(TaskSpec),
    /// An idle worker asks for a task; replies `assigned` (maybe null).
    Take {
        /// The worker, `worker/<node>.<i>`.
        worker: String,
        /// Its node's facts.
        facts: NodeFacts,
        /// The task types it can run.
        types: Vec<String>,
    },
    /// A worker reports a result; replies `recorded`.
    Complete {
        /// The worker.
        worker: String,
        /// The task.
        id: String,
        /// The outcome.
        result: TaskResult,
    },
    /// Cancel a task that has not finished; replies `task`.
    Cancel {
        /// The task.
        id: String,
    },
    /// One task in full; replies `task`.
    Show {
        /// The task.
        id: String,
    },
    /// Tasks, oldest first, optionally in one state; replies `listed`.
    List {
        /// Only tasks in this state.
        #[serde(default)]
        state: Option<TaskState>,
        /// At most this many (the newest ones).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Counts for progress displays; replies `stats`.
    Stats {},
}

/// A board's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardReply {
    /// A submission was accepted, or the id was known already.
    Submitted {
        /// The task's id.
        id: String,
        /// Its state now.
        state: TaskState,
        /// Whether the id was known (nothing was queued).
        known: bool,
    },
    /// The task for the asking worker, or none.
    Assigned(Option<Assignment>),
    /// Whether the reported result was recorded (false: a duplicate).
    Recorded {
        /// Recorded, or ignored as a duplicate.
        recorded: bool,
    },
    /// One task.
    Task(Box<Task>),
    /// Some tasks.
    Listed {
        /// The tasks.
        tasks: Vec<TaskSummary>,
        /// How many matched before the limit.
        matched: usize,
    },
    /// The board's numbers.
    Stats(BoardStats),
}

/// A worker the board heard from, kept in memory only.
#[derive(Debug, Clone)]
struct Seen {
    facts: NodeFacts,
    types: Vec<String>,
    at: Instant,
    /// It found nothing to do at its last take: a submission wakes it.
    idle: bool,
    /// It runs a task until about then, so it does not poll meanwhile.
    busy_until: Option<Instant>,
}

/// What the board knows without writing it down.
#[derive(Debug, Default)]
struct Memory {
    workers: HashMap<String, Seen>,
    /// When this activation started listening.
    since: Option<Instant>,
    last_sweep: Option<Instant>,
}

/// The board's state: its tasks, retained within bounds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BoardState {
    tasks: BTreeMap<String, Task>,
    /// Finished task ids, oldest first, for eviction.
    finished: VecDeque<String>,
    next_seq: u64,
    bytes: u64,
    totals: Totals,
    done_by_zone: BTreeMap<String, u64>,
    #[serde(skip)]
    memory: Memory,
}

/// The wall clock in Unix milliseconds; deadlines survive failover, so
/// they are wall-clock times.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Agent for Board {
    const KIND: &'static str = "board";
    const DURABILITY: Durability = Durability::Replicated;
    type State = BoardState;
    type Message = BoardMessage;
    type Reply = BoardReply;

    fn is_idempotent(msg: &BoardMessage) -> bool {
        // Results and submissions with an id are deduplicated by task id; a
        // take hands out a task, and a submission without an id gets a new
        // one each time.
        match msg {
            BoardMessage::Submit(spec) => spec.id.is_some(),
            BoardMessage::Take { .. } => false,
            _ => true,
        }
    }

    async fn handle(
        state: &mut BoardState,
        ctx: &Context,
        msg: BoardMessage,
    ) -> Result<BoardReply, AgentError> {
        let now = (Instant::now(), now_ms());
        state.memory.since.get_or_insert(now.0);
        state.sweep(now);
        match msg {
            BoardMessage::Submit(spec) => state.submit(ctx, spec, now),
            BoardMessage::Take {
                worker,
                facts,
                types,
            } => Ok(BoardReply::Assigned(state.take(worker, facts, types, now))),
            BoardMessage::Complete { worker, id, result } => {
                let recorded = state.complete(ctx, &worker, &id, result, now);
                Ok(BoardReply::Recorded { recorded })
            }
            BoardMessage::Cancel { id } => state
                .cancel(&id, now)
                .map(|t| BoardReply::Task(Box::new(t))),
            BoardMessage::Show { id } => state.show(&id).map(|t| BoardReply::Task(Box::new(t))),
            BoardMessage::List { state: only, limit } => Ok(state.list(only, limit)),
            BoardMessage::Stats {} => Ok(BoardReply::Stats(state.stats(ctx, now.0))),
        }
    }
}
