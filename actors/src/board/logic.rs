//! The board's state changes: submit, take, complete, cancel, sweep.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::{
    Assignment, BoardReply, BoardState, BoardStats, Seen, Task, TaskResult, TaskSpec, TaskState,
    TaskSummary, DEADLINE_GRACE, DEFAULT_RETRIES, DEFAULT_TASK_TIMEOUT, LIVE_WINDOW, MAX_FINISHED,
    MAX_ID_LEN, MAX_OPEN, MAX_OUTPUT_BYTES, MAX_PAYLOAD_BYTES, MAX_RETRIES, MAX_STATE_BYTES,
    MAX_TASK_TIMEOUT, SWEEP_EVERY,
};
use crate::agent::{AgentError, Context, NodeFacts};
use crate::json::Json;
use crate::worker::{Worker, WorkerMessage};

/// Now, as a monotonic instant (memory) and Unix milliseconds (state).
pub(super) type Now = (Instant, u64);

/// Bytes a task is counted for, besides its strings.
const TASK_OVERHEAD: usize = 128;

fn valid_name(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

/// The bytes a task is counted for against [`MAX_STATE_BYTES`].
fn weight(task: &Task) -> u64 {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let json = |j: &Json| j.0.to_string().len();
    let requires = &task.requires;
    let requirements = text(&requires.zone)
        + text(&requires.region)
        + text(&requires.kind)
        + requires.capabilities.iter().map(String::len).sum::<usize>();
    (TASK_OVERHEAD
        + task.id.len() * 2
        + task.task_type.len()
        + json(&task.payload)
        + task.output.as_ref().map_or(0, json)
        + text(&task.error)
        + text(&task.worker)
        + text(&task.zone)
        + requirements) as u64
}

/// Cuts an output to [`MAX_OUTPUT_BYTES`] of JSON text; a cut output
/// becomes a string holding the start of the text.
fn cut_output(output: Json) -> Json {
    let text = output.0.to_string();
    if text.len() <= MAX_OUTPUT_BYTES {
        return output;
    }
    let mut end = MAX_OUTPUT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Json(serde_json::Value::String(format!("{}...", &text[..end])))
}

fn cut_error(mut error: String) -> String {
    if error.len() > MAX_OUTPUT_BYTES {
        let mut end = MAX_OUTPUT_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

impl Seen {
    fn is_live(&self, now: Instant) -> bool {
        now.duration_since(self.at) <= LIVE_WINDOW || self.busy_until.is_some_and(|t| t > now)
    }

    fn can_run(&self, task: &Task) -> bool {
        self.types.contains(&task.task_type) && task.requires.matches(&self.facts)
    }
}

impl BoardState {
    /// Changes task `id` with `change`, keeping the byte count right.
    fn change<R>(&mut self, id: &str, change: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let task = self.tasks.get_mut(id)?;
        let before = weight(task);
        let result = change(task);
        self.bytes = self.bytes - before + weight(task);
        Some(result)
    }

    /// Whether this activation has listened long enough to know every live
    /// worker.
    fn is_warm(&self, now: Instant) -> bool {
        self.memory
            .since
            .is_some_and(|t| now.duration_since(t) >= LIVE_WINDOW)
    }

    fn live_workers(&self, now: Instant) -> impl Iterator<Item = (&String, &Seen)> {
        self.memory
            .workers
            .iter()
            .filter(move |(_, s)| s.is_live(now))
    }

    /// Requeues tasks whose deadline passed and fails tasks no live worker
    /// can run; at most every [`SWEEP_EVERY`].
    pub(super) fn sweep(&mut self, now: Now) {
        if self
            .memory
            .last_sweep
            .is_some_and(|t| now.0.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.memory.last_sweep = Some(now.0);
        let overdue: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Running && t.deadline_ms.is_some_and(|d| d < now.1))
            .map(|t| t.id.clone())
            .collect();
        for id in overdue {
            let reason = self.change(&id, |t| {
                format!(
                    "attempt {} got no result from {} within its deadline",
                    t.attempts,
                    t.worker.as_deref().unwrap_or("its worker")
                )
            });
            self.retry_or_fail(&id, reason.unwrap_or_default(), now);
        }
        self.memory.workers.retain(|_, s| s.is_live(now.0));
        if !self.is_warm(now.0) {
            return;
        }
        let stranded: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Queued)
            .filter(|t| !self.live_workers(now.0).any(|(_, s)| s.can_run(t)))
            .map(|t| t.id.clone())
            .collect();
        for id in stranded {
            let reason = self.change(&id, |t| {
                format!(
                    "no live worker can run it (type {}, {})",
                    t.task_type, t.requires
                )
            });
            self.finish(&id, TaskState::Failed, reason, now);
        }
    }

    /// Queues `id` again if it has retries left, else fails it.
    fn retry_or_fail(&mut self, id: &str, reason: String, now: Now) {
        let retry = self.change(id, |t| {
            t.error = Some(cut_error(reason.clone()));
            t.deadline_ms = None;
            if t.attempts > t.retries {
                return false;
            }
            t.state = TaskState::Queued;
            true
        });
        match retry {
            Some(true) => self.totals.requeued += 1,
            Some(false) => {
                let attempts = self.tasks.get(id).map_or(0, |t| t.attempts);
                let reason = format!("{reason} (gave up after {attempts} attempts)");
                self.finish(id, TaskState::Failed, Some(reason), now);
            }
            None => {}
        }
    }

    /// Ends a task in a finished state and evicts the oldest finished tasks
    /// beyond [`MAX_FINISHED`].
    fn finish(&mut self, id: &str, state: TaskState, error: Option<String>, now: Now) {
        self.change(id, |t| {
            t.state = state;
            t.finished_ms = Some(now.1);
            t.deadline_ms = None;
            if let Some(error) = error {
                t.error = Some(cut_error(error));
            }
        });
        match state {
            TaskState::Done => self.totals.done += 1,
            TaskState::Failed => self.totals.failed += 1,
            TaskState::Cancelled => self.totals.cancelled += 1,
            TaskState::Queued | TaskState::Running => unreachable!("finish ends a task"),
        }
        self.finished.push_back(id.to_owned());
        while self.finished.len() > MAX_FINISHED {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(id) = self.finished.pop_front() else {
            return false;
        };
        if let Some(task) = self.tasks.remove(&id) {
            self.bytes -= weight(&task);
            self.totals.evicted += 1;
        }
        true
    }

    /// Accepts a submission, or answers the state of a known id.
    pub(super) fn submit(
        &mut self,
        ctx: &Context,
        spec: TaskSpec,
        now: Now,
    ) -> Result<BoardReply, AgentError> {
        if let Some(id) = &spec.id {
            if !valid_name(id, MAX_ID_LEN) {
                return Err(AgentError::new(format!(
                    "invalid task id \"{}\": use 1 to {MAX_ID_LEN} letters, digits and -_.:@",
                    id.chars().take(64).collect::<String>()
                )));
            }
            if let Some(task) = self.tasks.get(id) {
                return Ok(BoardReply::Submitted {
                    id: id.clone(),
                    state: task.state,
                    known: true,
                });
            }
        }
        let task = self.new_task(spec, now)?;
        self.check_satisfiable(&task, now.0)?;
        let open = self.tasks.len() - self.finished.len();
        if open >= MAX_OPEN {
            return Err(AgentError::new(format!(
                "the board is full ({open} open tasks); retry later"
            )));
        }
        let needed = weight(&task);
        while self.bytes + needed > MAX_STATE_BYTES as u64 && self.evict_oldest() {}
        if self.bytes + needed > MAX_STATE_BYTES as u64 {
            return Err(AgentError::new(format!(
                "the board is full ({} bytes of open tasks, limit {MAX_STATE_BYTES}); retry later",
                self.bytes
            )));
        }
        let id = task.id.clone();
        self.bytes += needed;
        self.next_seq += 1;
        self.totals.submitted += 1;
        self.tasks.insert(id.clone(), task);
        self.wake(ctx, &id, now.0);
        Ok(BoardReply::Submitted {
            id,
            state: TaskState::Queued,
            known: false,
        })
    }

    /// Checks a submission and builds its task.
    fn new_task(&mut self, spec: TaskSpec, now: Now) -> Result<Task, AgentError> {
        if !valid_name(&spec.task_type, 64) {
            return Err(AgentError::new(format!(
                "invalid task type \"{}\": use 1 to 64 letters, digits and -_.:@",
                spec.task_type.chars().take(64).collect::<String>()
            )));
        }
        let size = spec.payload.0.to_string().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(AgentError::new(format!(
                "payload of {size} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes"
            )));
        }
        let timeout = spec
            .timeout_ms
            .map_or(DEFAULT_TASK_TIMEOUT, Duration::from_millis);
        if timeout.is_zero() || timeout > MAX_TASK_TIMEOUT {
            return Err(AgentError::new(format!(
                "timeout_ms must be between 1 and {}",
                MAX_TASK_TIMEOUT.as_millis()
            )));
        }
        let retries = spec.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > MAX_RETRIES {
            return Err(AgentError::new(format!(
                "retries must be at most {MAX_RETRIES}, not {retries}"
            )));
        }
        let id = match spec.id {
            Some(id) => id,
            None => {
                let mut seq = self.next_seq;
                while self.tasks.contains_key(&format!("t-{seq}")) {
                    seq += 1;
                }
                format!("t-{seq}")
            }
        };
        Ok(Task {
            id,
            task_type: spec.task_type,
            payload: spec.payload,
            requires: spec.requires,
            priority: spec.priority,
            timeout_ms: timeout.as_millis() as u64,
            retries,
            state: TaskState::Queued,
            attempts: 0,
            seq: self.next_seq,
            submitted_ms: now.1,
            started_ms: None,
            finished_ms: None,
            deadline_ms: None,
            worker: None,
            zone: None,
            output: None,
            error: None,
        })
    }

    /// Refuses a task no live worker can run, once the board knows every
    /// live worker.
    fn check_satisfiable(&self, task: &Task, now: Instant) -> Result<(), AgentError> {
        if !self.is_warm(now) {
            return Ok(());
        }
        let mut types: Vec<&str> = Vec::new();
        let mut live = 0;
        for (_, seen) in self.live_workers(now) {
            live += 1;
            if seen.can_run(task) {
                return Ok(());
            }
            types.extend(seen.types.iter().map(String::as_str));
        }
        types.sort_unstable();
        types.dedup();
        if !types.contains(&task.task_type.as_str()) {
            return Err(AgentError::new(format!(
                "unknown task type \"{}\": no live worker has a handler for it (known: {})",
                task.task_type,
                types.join(", ")
            )));
        }
        Err(AgentError::new(format!(
            "no live worker can run it: requires {} ({live} live workers, none matching)",
            task.requires
        )))
    }

    /// Wakes one idle worker that can run task `id`.
    fn wake(&mut self, ctx: &Context, id: &str, now: Instant) {
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let chosen = self
            .memory
            .workers
            .iter_mut()
            .find(|(_, s)| s.idle && s.is_live(now) && s.can_run(task));
        if let Some((worker, seen)) = chosen {
            seen.idle = false;
            let name = worker.strip_prefix("worker/").unwrap_or(worker);
            // A lost wake-up costs only latency: the worker polls anyway.
            let _ = ctx.cast::<Worker>(name, &WorkerMessage::Wake {});
        }
    }

    /// Hands the best queued task the worker can run, if any.
    pub(super) fn take(
        &mut self,
        worker: String,
        facts: NodeFacts,
        types: Vec<String>,
        now: Now,
    ) -> Option<Assignment> {
        let seen = Seen {
            facts,
            types,
            at: now.0,
            idle: false,
            busy_until: None,
        };
        let best = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Queued && seen.can_run(t))
            .max_by_key(|t| (t.priority, Reverse(t.seq)))
            .map(|t| t.id.clone());
        let Some(id) = best else {
            self.memory
                .workers
                .insert(worker, Seen { idle: true, ..seen });
            return None;
        };
        let zone = seen.facts.zone.clone();
        let timeout = self.tasks.get(&id).map_or(0, |t| t.timeout_ms);
        let busy = Duration::from_millis(timeout) + DEADLINE_GRACE;
        let seen = Seen {
            busy_until: Some(now.0 + busy),
            ..seen
        };
        self.memory.workers.insert(worker.clone(), seen);
        self.change(&id, |t| {
            t.state = TaskState::Running;
            t.attempts += 1;
            t.started_ms = Some(now.1);
            t.deadline_ms = Some(now.1 + t.timeout_ms + DEADLINE_GRACE.as_millis() as u64);
            t.worker = Some(worker);
            t.zone = Some(zone);
            Assignment {
                id: t.id.clone(),
                task_type: t.task_type.clone(),
                payload: t.payload.clone(),
                timeout_ms: t.timeout_ms,
                attempt: t.attempts,
            }
        })
    }

    /// Records a worker's result unless the task has one; returns whether
    /// it was recorded.
    pub(super) fn complete(
        &mut self,
        ctx: &Context,
        worker: &str,
        id: &str,
        result: TaskResult,
        now: Now,
    ) -> bool {
        let zone = self.memory.workers.get_mut(worker).map(|s| {
            s.at = now.0;
            s.busy_until = None;
            s.facts.zone.clone()
        });
        let Some(task) = self.tasks.get(id) else {
            // Evicted (so long finished) or never known: not recorded again.
            self.totals.duplicates += 1;
            return false;
        };
        if task.state.is_finished() {
            self.totals.duplicates += 1;
            return false;
        }
        let current = task.worker.as_deref() == Some(worker);
        match result {
            TaskResult::Ok(output) => {
                let zone = zone.or_else(|| task.zone.clone()).unwrap_or_default();
                self.change(id, |t| {
                    t.output = Some(cut_output(output));
                    t.worker = Some(worker.to_owned());
                    t.zone = Some(zone.clone());
                    t.error = None;
                });
                *self.done_by_zone.entry(zone).or_default() += 1;
                self.finish(id, TaskState::Done, None, now);
                true
            }
            // An error from an attempt the board gave up on changes nothing:
            // the task's current attempt may still succeed.
            TaskResult::Err(_) if !current || task.state != TaskState::Running => false,
            TaskResult::Err(error) => {
                let reason = format!("attempt {} on {worker}: {error}", task.attempts);
                self.retry_or_fail(id, reason, now);
                self.wake(ctx, id, now.0);
                true
            }
        }
    }

    /// Cancels a task that has not finished; a finished one is left as is.
    pub(super) fn cancel(&mut self, id: &str, now: Now) -> Result<Task, AgentError> {
        let state = self.show(id)?.state;
        if !state.is_finished() {
            self.finish(id, TaskState::Cancelled, None, now);
        }
        self.show(id)
    }

    /// One task in full.
    pub(super) fn show(&self, id: &str) -> Result<Task, AgentError> {
        self.tasks.get(id).cloned().ok_or_else(|| {
            AgentError::new(format!(
                "no task \"{id}\" on the board (it keeps the newest {MAX_FINISHED} finished tasks)"
            ))
        })
    }

    /// Tasks oldest first, the newest `limit` of those in state `only`.
    pub(super) fn list(&self, only: Option<TaskState>, limit: Option<usize>) -> BoardReply {
        let mut tasks: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| only.is_none_or(|s| t.state == s))
            .collect();
        tasks.sort_by_key(|t| t.seq);
        let matched = tasks.len();
        let limit = limit.unwrap_or(MAX_FINISHED);
        let tasks = tasks[matched.saturating_sub(limit)..]
            .iter()
            .map(|t| TaskSummary {
                id: t.id.clone(),
                task_type: t.task_type.clone(),
                state: t.state,
                attempts: t.attempts,
                worker: t.worker.clone(),
                zone: t.zone.clone(),
                error: t.error.clone(),
            })
            .collect();
        BoardReply::Listed { tasks, matched }
    }

    /// The board's numbers now.
    pub(super) fn stats(&self, ctx: &Context, now: Instant) -> BoardStats {
        let count = |s: TaskState| self.tasks.values().filter(|t| t.state == s).count() as u64;
        let mut workers_by_zone = std::collections::BTreeMap::new();
        for (_, seen) in self.live_workers(now) {
            *workers_by_zone.entry(seen.facts.zone.clone()).or_default() += 1;
        }
        BoardStats {
            totals: self.totals.clone(),
            queued: count(TaskState::Queued),
            running: count(TaskState::Running),
            done_by_zone: self.done_by_zone.clone(),
            workers_by_zone,
            warm: self.is_warm(now),
            node: ctx.node().to_owned(),
            bytes: self.bytes,
        }
    }
}
