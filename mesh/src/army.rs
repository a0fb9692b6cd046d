//! The army's runtime side: keeps this node's workers pulling tasks.
//!
//! A node with `workers = N` hosts `worker/<node>.0` to `<node>.<N-1>`
//! (the worker kind pins them here). For each, one loop sends
//! `{"work": {}}`: a worker that ran a task is asked again at once; one
//! the board had nothing for is asked again after a pause that doubles up
//! to [`MAX_IDLE_PAUSE`]. The board also wakes idle workers when a task
//! arrives, so the pause bounds only the cost of polling, not latency.

use std::sync::Arc;
use std::time::Duration;

use actors::worker::{Worker, WorkerMessage, WorkerReply, REPORT_DEADLINE};
use actors::{Agent, AgentId};
use tracing::debug;

use crate::node::Shared;

/// The first pause of an idle worker.
const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause of an idle worker; well inside the board's live
/// window, so an idle worker is never taken for dead.
pub const MAX_IDLE_PAUSE: Duration = Duration::from_secs(1);
/// The pause after a failed attempt (the board unreachable, the node not
/// linked yet).
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// The name of worker `index` of `node`: `worker/<node>.<index>`.
pub fn worker_id(node: &str, index: usize) -> AgentId {
    AgentId::new(Worker::KIND, &format!("{node}.{index}"))
        .expect("node names are valid agent name parts")
}

/// Starts one loop per configured worker; none without the worker kind.
pub(crate) fn spawn_workers(shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    if shared.registry.get(Worker::KIND).is_none() {
        return Vec::new();
    }
    (0..shared.config.workers)
        .map(|i| {
            tokio::spawn(keep_working(
                shared.clone(),
                worker_id(&shared.config.name, i),
            ))
        })
        .collect()
}

/// Sends `work` to one worker for as long as the node runs.
async fn keep_working(shared: Arc<Shared>, worker: AgentId) {
    let work = actors::codec::encode(&WorkerMessage::Work {}).expect("work encodes");
    // A worker may hold a task up to its longest timeout and then report.
    let wait = actors::board::MAX_TASK_TIMEOUT + REPORT_DEADLINE;
    let mut pause = FIRST_IDLE_PAUSE;
    loop {
        if shared.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if shared.draining.load(std::sync::atomic::Ordering::Acquire) {
            // A draining node takes no new tasks; its workers stay put.
            tokio::time::sleep(MAX_IDLE_PAUSE).await;
            continue;
        }
        let reply = shared.call(worker.clone(), work.clone(), wait).await;
        let reply = reply.and_then(|bytes| {
            actors::codec::decode::<WorkerReply>(&bytes).map_err(|e| actors::CallError::Internal {
                reason: e.to_string(),
            })
        });
        match reply {
            Ok(WorkerReply::Worked { .. }) => {
                pause = FIRST_IDLE_PAUSE;
                continue;
            }
            Ok(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_IDLE_PAUSE);
            }
            Err(e) => {
                debug!(agent = %worker, error = %e, "worker could not work");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}
