//! `meshctl tasks`: submit, follow and cancel tasks on the board.

use std::time::{Duration, Instant};

use clap::Subcommand;
use mesh::gateway::{CallRequest, Response};
use mesh::subjects;
use serde_json::{json, Value};

use super::{Ctl, Failure};

/// The board every command talks to.
const BOARD: &str = "board/main";

/// Task commands.
#[derive(Debug, Subcommand)]
pub(crate) enum TasksCommand {
    /// Queue a task (or --count of them) and print its id.
    Submit {
        /// The task type: sleep, sha256, exec, or one a node registered.
        task_type: String,
        /// The payload, as JSON (for example '{"ms": 100}').
        payload: String,
        /// The task's id (a known id is not queued twice); with --count,
        /// ids are ID-1 to ID-N.
        #[arg(long)]
        id: Option<String>,
        /// Run only in this zone.
        #[arg(long)]
        zone: Option<String>,
        /// Run only in this region.
        #[arg(long)]
        region: Option<String>,
        /// Run only on this node kind (elastic-metal or instance).
        #[arg(long)]
        kind: Option<String>,
        /// Run only on nodes with this capability (repeatable).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// How long one attempt may take, such as 30s.
        #[arg(long = "task-timeout", value_parser = humantime::parse_duration)]
        task_timeout: Option<Duration>,
        /// How many times to try again after a failure or a lost worker.
        #[arg(long)]
        retries: Option<u32>,
        /// Submit this many copies.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// With --count: submit at most this many per second.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// List tasks, oldest first.
    List {
        /// Only tasks in this state.
        #[arg(long, value_parser = ["queued", "running", "done", "failed", "cancelled"])]
        state: Option<String>,
        /// At most this many (the newest).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print one task in full, as JSON.
    Show {
        /// The task's id.
        id: String,
    },
    /// Cancel a task that has not finished.
    Cancel {
        /// The task's id.
        id: String,
    },
    /// Print the board's counts, as JSON.
    Stats,
    /// Print progress every second: tasks per second, per zone, done and
    /// failed.
    Watch {
        /// Stop once nothing is queued or running and nothing was submitted
        /// since the previous line.
        #[arg(long)]
        until_idle: bool,
        /// Time between two lines, such as 1s.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        every: Duration,
    },
}

impl TasksCommand {
    /// Checks what can be checked before touching the network.
    pub(crate) fn check(&self) -> Result<(), Failure> {
        if let TasksCommand::Submit {
            payload,
            count,
            rate,
            ..
        } = self
        {
            serde_json::from_str::<Value>(payload)
                .map_err(|e| Failure(2, format!("the payload is not valid JSON: {e}")))?;
            if *count == 0 {
                return Err(Failure(2, "--count must be at least 1".into()));
            }
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(Failure(2, "--rate must be a positive number".into()));
            }
        }
        Ok(())
    }
}

/// How long a task command keeps trying while the board fails over to
/// another node (a node's default lease is 1 s; `add-zone.py` sets 15 s).
const BOARD_RETRY_FOR: Duration = Duration::from_secs(30);
/// The pause between two tries.
const BOARD_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What a failed board request may have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// The mesh says it did nothing (`unavailable`): safe to send again.
    No,
    /// The answer was lost (`node_lost`, `timeout`, no answer at all):
    /// safe to send again only when the request is idempotent.
    Unknown,
    /// A final answer: sending again would not help.
    Final,
}

impl Ctl {
    /// Sends one message to the board and returns its reply, trying again
    /// for up to [`BOARD_RETRY_FOR`] while the board moves after a node
    /// died. A message that is not `idempotent` is sent again only when
    /// the mesh says it was not applied.
    async fn board(&self, msg: Value, idempotent: bool) -> Result<Value, Failure> {
        let deadline = Instant::now() + BOARD_RETRY_FOR;
        loop {
            let (failure, applied) = match self.board_once(&msg).await {
                Ok(value) => return Ok(value),
                Err(failed) => failed,
            };
            let again = match applied {
                Applied::No => true,
                Applied::Unknown => idempotent,
                Applied::Final => false,
            };
            if !again || Instant::now() >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(BOARD_RETRY_PAUSE).await;
        }
    }

    /// Sends one message to the board once.
    async fn board_once(&self, msg: &Value) -> Result<Value, (Failure, Applied)> {
        let request = CallRequest {
            v: None,
            agent: BOARD.into(),
            msg: msg.clone(),
            timeout_ms: Some(self.wait.saturating_sub(Duration::from_secs(1)).as_millis() as u64),
            cast: false,
        };
        let body = serde_json::to_vec(&request).expect("call requests encode");
        let response = self
            .request(subjects::gateway(&self.cluster), body)
            .await
            .map_err(|failure| {
                // 3: the connection failed mid-request, 4: no answer in
                // time (the answering node may have died); 5 (no node of
                // the cluster listens) is final, as for a mistyped cluster.
                let applied = match failure.0 {
                    3 | 4 => Applied::Unknown,
                    _ => Applied::Final,
                };
                (failure, applied)
            })?;
        match response {
            Response::Ok(value) => Ok(value),
            Response::Error(e) => {
                let applied = match e.code.as_str() {
                    "unavailable" => Applied::No,
                    "node_lost" | "timeout" => Applied::Unknown,
                    _ => Applied::Final,
                };
                let failure = match e.code.as_str() {
                    "timeout" => Failure(4, e.message),
                    _ => Failure::mesh(format!("{} ({})", e.message, e.code)),
                };
                Err((failure, applied))
            }
        }
    }

    pub(crate) async fn tasks(&self, command: TasksCommand, json: bool) -> Result<(), Failure> {
        match command {
            TasksCommand::Submit {
                task_type,
                payload,
                id,
                zone,
                region,
                kind,
                capabilities,
                priority,
                task_timeout,
                retries,
                count,
                rate,
            } => {
                let payload: Value = serde_json::from_str(&payload).expect("checked before");
                let spec = json!({
                    "type": task_type,
                    "payload": payload,
                    "requires": {
                        "zone": zone, "region": region, "kind": kind,
                        "capabilities": capabilities,
                    },
                    "priority": priority,
                    "timeout_ms": task_timeout.map(|t| t.as_millis() as u64),
                    "retries": retries,
                });
                self.submit(spec, id, count, rate, json).await
            }
            TasksCommand::List { state, limit } => {
                let list = json!({"list": {"state": state, "limit": limit}});
                let reply = self.board(list, true);
                print_list(&reply.await?["listed"]["tasks"], json);
                Ok(())
            }
            TasksCommand::Show { id } => {
                let reply = self.board(json!({"show": {"id": id}}), true).await?;
                println!("{}", pretty(&reply["task"]));
                Ok(())
            }
            TasksCommand::Cancel { id } => {
                let reply = self.board(json!({"cancel": {"id": id}}), true).await?;
                let task = &reply["task"];
                match json {
                    true => println!("{task}"),
                    false => println!(
                        "{} {}",
                        task["id"].as_str().unwrap_or_default(),
                        task["state"].as_str().unwrap_or_default()
                    ),
                }
                Ok(())
            }
            TasksCommand::Stats => {
                let reply = self.board(json!({"stats": {}}), true).await?;
                println!("{}", pretty(&reply["stats"]));
                Ok(())
            }
            TasksCommand::Watch { until_idle, every } => self.watch(until_idle, every).await,
        }
    }

    async fn submit(
        &self,
        mut spec: Value,
        id: Option<String>,
        count: u64,
        rate: Option<f64>,
        json: bool,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        for i in 1..=count {
            spec["id"] = match (&id, count) {
                (Some(id), 1) => json!(id),
                (Some(id), _) => json!(format!("{id}-{i}")),
                (None, _) => Value::Null,
            };
            // A known id is not queued twice, so a submission with an id
            // may be sent again when its answer was lost.
            let idempotent = id.is_some();
            let reply = self.board(json!({"submit": spec}), idempotent).await?;
            let submitted = &reply["submitted"];
            if json {
                println!("{submitted}");
            } else if count == 1 {
                let known = submitted["known"] == json!(true);
                let note = if known {
                    " (known id: not queued again)"
                } else {
                    ""
                };
                let id = submitted["id"].as_str().unwrap_or_default();
                println!(
                    "{id} {}{note}",
                    submitted["state"].as_str().unwrap_or_default()
                );
            }
            if let Some(rate) = rate {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
        }
        if count > 1 && !json {
            let secs = started.elapsed().as_secs_f64();
            println!("submitted {count} tasks in {secs:.1}s");
        }
        Ok(())
    }

    /// Prints one progress line per interval.
    async fn watch(&self, until_idle: bool, every: Duration) -> Result<(), Failure> {
        let mut last: Option<(Instant, u64)> = None;
        let mut submitted_before = None;
        loop {
            let stats = self.board(json!({"stats": {}}), true).await?;
            let s = &stats["stats"];
            let count = |v: &Value| v.as_u64().unwrap_or(0);
            let done = count(&s["totals"]["done"]);
            let now = Instant::now();
            let per_second = last.map_or(0.0, |(t, d)| {
                done.saturating_sub(d) as f64 / now.duration_since(t).as_secs_f64()
            });
            last = Some((now, done));
            let zones = |key: &str| -> String {
                let map = s[key].as_object().cloned().unwrap_or_default();
                let parts: Vec<String> = map.iter().map(|(z, n)| format!("{z} {n}")).collect();
                if parts.is_empty() {
                    "-".into()
                } else {
                    parts.join(", ")
                }
            };
            println!(
                "{per_second:6.1} tasks/s | done {done} failed {} queued {} running {} \
                 requeued {} duplicates {} | done by zone: {} | workers: {} | board on {}",
                count(&s["totals"]["failed"]),
                count(&s["queued"]),
                count(&s["running"]),
                count(&s["totals"]["requeued"]),
                count(&s["totals"]["duplicates"]),
                zones("done_by_zone"),
                zones("workers_by_zone"),
                s["node"].as_str().unwrap_or("?"),
            );
            let submitted = count(&s["totals"]["submitted"]);
            let idle = count(&s["queued"]) + count(&s["running"]) == 0;
            if until_idle && idle && submitted_before == Some(submitted) {
                return Ok(());
            }
            submitted_before = Some(submitted);
            tokio::time::sleep(every).await;
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values encode")
}

fn print_list(tasks: &Value, json: bool) {
    if json {
        println!("{}", pretty(tasks));
        return;
    }
    println!(
        "{:<24} {:<8} {:<10} {:>8} {:<24} {:<10} ERROR",
        "ID", "TYPE", "STATE", "ATTEMPTS", "WORKER", "ZONE"
    );
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    for t in tasks.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<8} {:<10} {:>8} {:<24} {:<10} {}",
            text(&t["id"]),
            text(&t["type"]),
            text(&t["state"]),
            t["attempts"].as_u64().unwrap_or(0),
            text(&t["worker"]),
            text(&t["zone"]),
            t["error"].as_str().unwrap_or("")
        );
    }
}
