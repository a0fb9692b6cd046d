use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;

use super::logic::Now;
use super::*;
use crate::agent::{CallError, Caller};
use crate::id::AgentId;
use crate::registry::Registry;

/// Records casts (the board's wake-ups); calls fail.
#[derive(Default)]
struct Casts(Mutex<Vec<String>>);

impl Caller for Casts {
    fn call(
        &self,
        to: AgentId,
        _: Vec<u8>,
        _: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>> {
        let agent = to.to_string();
        async move {
            Err(CallError::Unavailable {
                agent,
                reason: "test".into(),
            })
        }
        .boxed()
    }

    fn cast(&self, to: AgentId, _: Vec<u8>) -> Result<(), CallError> {
        self.0.lock().unwrap().push(to.to_string());
        Ok(())
    }
}

fn context(casts: &Arc<Casts>) -> Context {
    let id = AgentId::new("board", "main").unwrap();
    Context::new(id, "n1".into(), casts.clone(), Arc::new(Registry::new()))
}

fn facts(zone: &str, capabilities: &[&str]) -> NodeFacts {
    NodeFacts {
        node: format!("node-{zone}"),
        zone: zone.into(),
        region: topology_region(zone),
        kind: "instance".into(),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn topology_region(zone: &str) -> String {
    zone.rsplit_once('-').map_or(zone, |(r, _)| r).to_owned()
}

fn spec(id: &str, value: serde_json::Value) -> TaskSpec {
    let mut spec: TaskSpec = serde_json::from_value(value).unwrap();
    spec.id = Some(id.to_owned());
    spec
}

fn at(start: Instant, ms: u64) -> Now {
    (start + Duration::from_millis(ms), 1_000_000 + ms)
}

fn take(state: &mut BoardState, worker: &str, zone: &str, now: Now) -> Option<Assignment> {
    let types = vec!["sleep".to_owned()];
    state.sweep(now);
    state.take(worker.to_owned(), facts(zone, &[]), types, now)
}

#[test]
fn results_are_recorded_once_and_resubmission_changes_nothing() {
    let casts = Arc::new(Casts::default());
    let ctx = context(&casts);
    let mut board = BoardState::default();
    let t0 = Instant::now();
    let sleep = json!({"type": "sleep", "payload": {"ms": 1}});
    board
        .submit(&ctx, spec("a", sleep.clone()), at(t0, 0))
        .unwrap();
    let again = board.submit(&ctx, spec("a", sleep), at(t0, 1)).unwrap();
    assert!(matches!(again, BoardReply::Submitted { known: true, .. }));

    let task = take(&mut board, "worker/w.0", "fr-par-1", at(t0, 2)).unwrap();
    assert_eq!((task.id.as_str(), task.attempt), ("a", 1));
    let ok = TaskResult::Ok(Json(json!(1)));
    assert!(board.complete(&ctx, "worker/w.0", "a", ok.clone(), at(t0, 3)));
    assert!(!board.complete(&ctx, "worker/w.1", "a", ok, at(t0, 4)));
    assert_eq!(board.totals.done, 1);
    assert_eq!(board.totals.duplicates, 1);
    assert_eq!(board.done_by_zone["fr-par-1"], 1);
}

#[test]
fn an_overdue_task_is_queued_again_then_failed_past_its_retries() {
    let casts = Arc::new(Casts::default());
    let ctx = context(&casts);
    let mut board = BoardState::default();
    let t0 = Instant::now();
    let task = json!({"type": "sleep", "timeout_ms": 100, "retries": 1});
    board.submit(&ctx, spec("a", task), at(t0, 0)).unwrap();
    assert!(take(&mut board, "worker/w.0", "fr-par-1", at(t0, 1)).is_some());

    // Past the timeout plus the grace, another worker gets attempt 2.
    let late = 100 + DEADLINE_GRACE.as_millis() as u64 + 10;
    let second = take(&mut board, "worker/w.1", "fr-par-1", at(t0, late)).unwrap();
    assert_eq!(second.attempt, 2);
    assert_eq!(board.totals.requeued, 1);

    // The first worker's late success still counts, once.
    let ok = TaskResult::Ok(Json(json!("late")));
    assert!(board.complete(&ctx, "worker/w.0", "a", ok, at(t0, late + 1)));
    let t = board.show("a").unwrap();
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Done, Some("worker/w.0"))
    );

    let task = json!({"type": "sleep", "timeout_ms": 100, "retries": 0});
    board
        .submit(&ctx, spec("b", task), at(t0, late + 2))
        .unwrap();
    take(&mut board, "worker/w.0", "fr-par-1", at(t0, late + 3)).unwrap();
    take(&mut board, "worker/w.0", "fr-par-1", at(t0, 2 * late + 10));
    let t = board.show("b").unwrap();
    assert_eq!(t.state, TaskState::Failed);
    assert!(t.error.unwrap().contains("gave up after 1 attempts"));
}

#[test]
fn requirements_pick_workers_and_unsatisfiable_ones_are_refused() {
    let casts = Arc::new(Casts::default());
    let ctx = context(&casts);
    let mut board = BoardState::default();
    let t0 = Instant::now();
    board.memory.since = Some(t0);
    let gpu = json!({"type": "sleep", "requires": {"zone": "nl-ams-1"}, "priority": 5});
    board.submit(&ctx, spec("ams", gpu), at(t0, 0)).unwrap();
    board
        .submit(&ctx, spec("any", json!({"type": "sleep"})), at(t0, 1))
        .unwrap();
    let par = take(&mut board, "worker/p.0", "fr-par-1", at(t0, 2)).unwrap();
    assert_eq!(par.id, "any");
    assert!(take(&mut board, "worker/p.0", "fr-par-1", at(t0, 3)).is_none());

    // The idle worker is woken for a task it can run.
    board
        .submit(&ctx, spec("next", json!({"type": "sleep"})), at(t0, 4))
        .unwrap();
    assert_eq!(*casts.0.lock().unwrap(), ["worker/p.0"]);

    // Once warm, the board refuses what no live worker can run, and fails
    // a queued task whose only workers went away.
    let warm = LIVE_WINDOW.as_millis() as u64;
    take(&mut board, "worker/p.0", "fr-par-1", at(t0, warm));
    let nope = json!({"type": "sleep", "requires": {"capabilities": ["gpu"]}});
    let refused = board.submit(&ctx, spec("gpu", nope), at(t0, warm + 1));
    assert!(refused.unwrap_err().0.contains("no live worker can run it"));
    let unknown = board.submit(&ctx, spec("x", json!({"type": "paint"})), at(t0, warm + 2));
    assert!(unknown
        .unwrap_err()
        .0
        .contains("unknown task type \"paint\""));
    let stranded = board.show("ams").unwrap();
    assert_eq!(stranded.state, TaskState::Failed);
    assert!(stranded.error.unwrap().contains("no live worker"));
}

#[test]
fn the_board_stays_within_its_bounds() {
    let casts = Arc::new(Casts::default());
    let ctx = context(&casts);
    let mut board = BoardState::default();
    let t0 = Instant::now();
    let big = "x".repeat(MAX_PAYLOAD_BYTES + 1);
    let refused = board.submit(
        &ctx,
        spec("big", json!({"type": "sleep", "payload": big})),
        at(t0, 0),
    );
    assert!(refused.unwrap_err().0.contains("over the limit"));

    let half = "y".repeat(MAX_PAYLOAD_BYTES / 2);
    let mut full = None;
    for i in 0..100 {
        let task = json!({"type": "sleep", "payload": half});
        if let Err(e) = board.submit(&ctx, spec(&format!("t{i}"), task), at(t0, i)) {
            full = Some(e.0);
            break;
        }
    }
    assert!(full.unwrap().contains("the board is full"));
    assert!(board.bytes <= MAX_STATE_BYTES as u64);
    let encoded = crate::codec::encode(&board).unwrap();
    assert!(encoded.len() < 1024 * 1024, "{} bytes", encoded.len());
}
