//! The army: a task board and workers across zones, with real processes.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh::gateway::Response;
use serde_json::{json, Value};
use support::{meshctl, ok, wait_until, Client, MeshNode, Nats, NodeSpec};

const BOARD: &str = "board/main";

/// Starts one node per (name, zone, extra flags) and waits until they are
/// linked and the board knows all their workers.
async fn army(
    nats: &Nats,
    cluster: &str,
    nodes: &[(&str, &str, &[&str])],
) -> (Vec<MeshNode>, Client) {
    let started: Vec<MeshNode> = nodes
        .iter()
        .map(|(name, zone, extra)| {
            let mut spec = NodeSpec::new(cluster, name, zone);
            spec.extra = extra.iter().map(|s| (*s).to_owned()).collect();
            MeshNode::start(nats, spec)
        })
        .collect();
    let client = Client::connect(nats, cluster).await;
    client.converged(&started.iter().collect::<Vec<_>>()).await;
    (started, client)
}

async fn stats(client: &Client) -> Value {
    let reply = client
        .call_until_ok(None, BOARD, json!({"stats": {}}), Duration::from_secs(30))
        .await;
    reply["stats"].clone()
}

/// Waits until the board has listened long enough to know every worker,
/// and sees `workers` of them.
async fn warm(client: &Client, workers: u64) {
    wait_until(
        "the board to know every worker",
        Duration::from_secs(30),
        || async {
            let s = stats(client).await;
            let seen: u64 = s["workers_by_zone"]
                .as_object()?
                .values()
                .filter_map(Value::as_u64)
                .sum();
            (s["warm"] == json!(true) && seen == workers).then_some(())
        },
    )
    .await;
}

async fn submit(client: &Client, spec: Value) -> Response {
    client.call(None, BOARD, json!({"submit": spec})).await
}

/// Waits until `done + failed` reaches `n`, then returns the stats.
async fn finished(client: &Client, n: u64, within: Duration) -> Value {
    wait_until(&format!("{n} tasks to finish"), within, || async {
        let s = stats(client).await;
        let t = &s["totals"];
        let over = t["done"].as_u64()? + t["failed"].as_u64()? + t["cancelled"].as_u64()?;
        (over >= n).then_some(s)
    })
    .await
}

async fn task(client: &Client, id: &str) -> Value {
    let reply = client
        .call_until_ok(
            None,
            BOARD,
            json!({"show": {"id": id}}),
            Duration::from_secs(30),
        )
        .await;
    reply["task"].clone()
}

/// The ids of the done tasks the board lists.
async fn done_ids(client: &Client) -> Vec<String> {
    let list = json!({"list": {"state": "done", "limit": 5000}});
    let reply = client
        .call_until_ok(None, BOARD, list, Duration::from_secs(30))
        .await;
    reply["listed"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every submitted id is done exactly once: the board counted each result
/// once, listed each id once, and ignored any later result.
async fn assert_each_done_once(client: &Client, ids: &BTreeSet<String>) {
    let s = stats(client).await;
    assert_eq!(s["totals"]["done"], json!(ids.len()), "{s}");
    assert_eq!(s["totals"]["failed"], json!(0), "{s}");
    let done = done_ids(client).await;
    let distinct: BTreeSet<String> = done.iter().cloned().collect();
    assert_eq!(done.len(), distinct.len(), "a task is listed twice");
    assert_eq!(&distinct, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_tasks_across_three_zones_each_complete_once() {
    let nats = Nats::start().await;
    let workers: &[&str] = &["--workers", "4"];
    let (_nodes, client) = army(
        &nats,
        "army1",
        &[
            ("par", "fr-par-1", workers),
            ("ams", "nl-ams-1", workers),
            ("waw", "pl-waw-1", workers),
        ],
    )
    .await;
    warm(&client, 12).await;

    let ids: BTreeSet<String> = (0..1000).map(|i| format!("job-{i}")).collect();
    let client = std::sync::Arc::new(client);
    let submitters: Vec<_> = ids
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            let (client, chunk) = (client.clone(), chunk.to_vec());
            tokio::spawn(async move {
                for id in chunk {
                    let spec = json!({"id": id, "type": "sleep", "payload": {"ms": 0}});
                    ok(submit(&client, spec).await);
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
    // Submitting a known id again queues nothing.
    let again = ok(submit(&client, json!({"id": "job-7", "type": "sleep"})).await);
    assert_eq!(again["submitted"]["known"], json!(true));

    let s = finished(&client, 1000, Duration::from_secs(180)).await;
    assert_eq!(s["totals"]["submitted"], json!(1000));
    for zone in ["fr-par-1", "nl-ams-1", "pl-waw-1"] {
        assert!(
            s["done_by_zone"][zone].as_u64().unwrap_or(0) > 0,
            "{zone}: {s}"
        );
    }
    assert_each_done_once(&client, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requirements_pick_matching_workers_and_unsatisfiable_ones_are_reported() {
    let nats = Nats::start().await;
    let (_nodes, client) = army(
        &nats,
        "army2",
        &[
            ("par", "fr-par-1", &["--workers", "2"]),
            ("ams", "nl-ams-1", &["--workers", "2"]),
            (
                "gpu",
                "pl-waw-1",
                &["--workers", "2", "--capabilities", "gpu"],
            ),
        ],
    )
    .await;
    warm(&client, 6).await;

    for i in 0..20 {
        let spec = json!({"id": format!("ams-{i}"), "type": "sleep",
                          "payload": {"ms": 5}, "requires": {"zone": "nl-ams-1"}});
        ok(submit(&client, spec).await);
        let spec = json!({"id": format!("gpu-{i}"), "type": "sha256",
                          "payload": {"data": "x", "rounds": 100},
                          "requires": {"capabilities": ["gpu"]}});
        ok(submit(&client, spec).await);
    }
    finished(&client, 40, Duration::from_secs(60)).await;
    for i in 0..20 {
        let t = task(&client, &format!("ams-{i}")).await;
        assert_eq!(
            (&t["state"], &t["zone"]),
            (&json!("done"), &json!("nl-ams-1")),
            "{t}"
        );
        assert!(
            t["worker"].as_str().unwrap().starts_with("worker/ams."),
            "{t}"
        );
        let t = task(&client, &format!("gpu-{i}")).await;
        assert_eq!(t["state"], json!("done"), "{t}");
        assert!(
            t["worker"].as_str().unwrap().starts_with("worker/gpu."),
            "{t}"
        );
    }

    // Nobody is in fr-par-3, nobody has two GPUs' worth of "tpu": refused
    // at once, with the reason, through the gateway and meshctl alike.
    let spec = json!({"type": "sleep", "requires": {"zone": "fr-par-3"}});
    let Response::Error(e) = submit(&client, spec).await else {
        panic!("an unsatisfiable task was accepted");
    };
    assert!(e.message.contains("no live worker can run it"), "{e:?}");
    assert!(e.message.contains("zone fr-par-3"), "{e:?}");
    let out = meshctl(
        &nats.url(),
        "army2",
        &["tasks", "submit", "sleep", "{}", "--capability", "tpu"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("capability tpu"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_task_completes_once_after_kill_9_of_a_worker_node_then_the_board_node() {
    let nats = Nats::start().await;
    let workers: &[&str] = &["--workers", "3"];
    let (nodes, client) = army(
        &nats,
        "army3",
        &[
            ("node-0", "fr-par-1", workers),
            ("node-1", "nl-ams-1", workers),
            ("node-2", "pl-waw-1", workers),
        ],
    )
    .await;
    warm(&client, 9).await;

    // Each attempt may take a second; a lost worker's tasks go back to the
    // queue when that second and the grace have passed.
    let ids: BTreeSet<String> = (0..300).map(|i| format!("t{i}")).collect();
    for id in &ids {
        let spec = json!({"id": id, "type": "sleep", "payload": {"ms": 200},
                          "timeout_ms": 1000, "retries": 10});
        ok(submit(&client, spec).await);
    }
    finished(&client, 30, Duration::from_secs(60)).await;

    let board_node = stats(&client).await["node"].as_str().unwrap().to_owned();
    let worker_node = nodes.iter().find(|n| n.name() != board_node).unwrap();
    // Counted before the kill: a stats call after it may wait out a lost
    // answer while the survivors finish every task, and 30 more than all
    // would never come.
    let done = stats(&client).await["totals"]["done"].as_u64().unwrap();
    worker_node.signal(libc::SIGKILL);
    finished(&client, (done + 30).min(300), Duration::from_secs(60)).await;

    let board = nodes.iter().find(|n| n.name() == board_node).unwrap();
    board.signal(libc::SIGKILL);
    let s = finished(&client, 300, Duration::from_secs(120)).await;
    let survivor = s["node"].as_str().unwrap();
    assert!(
        survivor != board_node && survivor != worker_node.name(),
        "{s}"
    );
    // The killed worker node's tasks went back to the queue.
    assert!(s["totals"]["requeued"].as_u64().unwrap() > 0, "{s}");
    assert_each_done_once(&client, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meshctl_tasks_submit_and_watch_ride_out_a_kill_9_of_the_board_node() {
    let nats = Nats::start().await;
    let workers: &[&str] = &["--workers", "2"];
    let (nodes, client) = army(
        &nats,
        "army7",
        &[
            ("node-0", "fr-par-1", workers),
            ("node-1", "nl-ams-1", workers),
            ("node-2", "pl-waw-1", workers),
        ],
    )
    .await;
    warm(&client, 6).await;

    // As in `local-mesh.sh army`: a paced submitter and a progress watcher.
    let url = nats.url();
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["--nats", &url, "--cluster", "army7", "tasks"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meshctl starts")
    };
    // A task on the killed node's workers is requeued when its timeout
    // passes: 5 s rather than the default minute keeps the test short.
    let submit = [
        "submit",
        "sleep",
        r#"{"ms": 10}"#,
        "--id",
        "load",
        "--task-timeout",
        "5s",
    ];
    let submitter = spawn(&[&submit[..], &["--count", "150", "--rate", "25"]].concat());
    let watcher = spawn(&["watch", "--until-idle"]);
    finished(&client, 20, Duration::from_secs(60)).await;

    // Requests meanwhile meet the dead node, its lost answers and an
    // unavailable board until it moves; both commands ride that out.
    let board_node = stats(&client).await["node"].as_str().unwrap().to_owned();
    let board = nodes.iter().find(|n| n.name() == board_node).unwrap();
    board.signal(libc::SIGKILL);
    for (what, child) in [("submit", submitter), ("watch", watcher)] {
        let exited = tokio::task::spawn_blocking(move || child.wait_with_output());
        let out = tokio::time::timeout(Duration::from_secs(120), exited)
            .await
            .unwrap_or_else(|_| panic!("meshctl tasks {what} still runs after 120 s"))
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "meshctl tasks {what}: {stderr}");
    }

    let s = finished(&client, 150, Duration::from_secs(120)).await;
    assert_ne!(s["node"], json!(board_node), "{s}");
    let ids: BTreeSet<String> = (1..=150).map(|i| format!("load-{i}")).collect();
    assert_each_done_once(&client, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_is_off_by_default_and_refuses_commands_outside_its_allow_list() {
    let nats = Nats::start().await;
    let (_nodes, client) = army(
        &nats,
        "army4",
        &[
            ("plain", "fr-par-1", &["--workers", "1"]),
            (
                "execs",
                "nl-ams-1",
                &["--workers", "1", "--exec-allow", "echo"],
            ),
        ],
    )
    .await;
    warm(&client, 2).await;

    let exec = |id: &str, zone: &str, cmd: &str| {
        json!({"id": id, "type": "exec", "retries": 0, "requires": {"zone": zone},
               "payload": {"cmd": cmd, "args": ["hello"]}})
    };
    ok(submit(&client, exec("off", "fr-par-1", "echo")).await);
    ok(submit(&client, exec("allowed", "nl-ams-1", "echo")).await);
    ok(submit(&client, exec("refused", "nl-ams-1", "touch")).await);
    finished(&client, 3, Duration::from_secs(30)).await;

    let off = task(&client, "off").await;
    assert_eq!(off["state"], json!("failed"), "{off}");
    assert!(
        off["error"].as_str().unwrap().contains("exec is disabled"),
        "{off}"
    );
    let allowed = task(&client, "allowed").await;
    assert_eq!(allowed["state"], json!("done"), "{allowed}");
    assert_eq!(allowed["output"]["stdout"], json!("hello\n"));
    let refused = task(&client, "refused").await;
    assert_eq!(refused["state"], json!("failed"), "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("exec refuses \"touch\""), "{refused}");
    assert!(!std::path::Path::new("hello").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_submissions_get_clear_errors_and_the_board_keeps_working() {
    let nats = Nats::start().await;
    let (_nodes, client) = army(&nats, "army5", &[("solo", "fr-par-1", &["--workers", "2"])]).await;
    warm(&client, 2).await;
    let url = nats.url();
    let error = |r: Response| match r {
        Response::Error(e) => format!("{}: {}", e.code, e.message),
        Response::Ok(v) => panic!("expected an error, got {v}"),
    };

    let unknown = error(submit(&client, json!({"type": "paint"})).await);
    assert!(unknown.contains("unknown task type \"paint\""), "{unknown}");
    assert!(
        unknown.contains("sleep"),
        "names the known types: {unknown}"
    );
    let big = "x".repeat(100 * 1024);
    let oversized = error(submit(&client, json!({"type": "sleep", "payload": big})).await);
    assert!(
        oversized.contains("over the limit of 65536 bytes"),
        "{oversized}"
    );
    let shapeless = error(submit(&client, json!({"typo": "sleep"})).await);
    assert!(shapeless.starts_with("bad_message"), "{shapeless}");
    let bad_id = error(submit(&client, json!({"id": "a b", "type": "sleep"})).await);
    assert!(bad_id.contains("invalid task id"), "{bad_id}");
    let raw = client.raw_call("solo", b"{not json").await;
    assert_eq!(support::error_code(raw), "bad_request");

    let out = meshctl(&url, "army5", &["tasks", "submit", "sleep", "{oops"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the payload is not valid JSON"), "{stderr}");
    let out = meshctl(&url, "army5", &["tasks", "show", "nothing-here"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task \"nothing-here\""));

    // The board still works: through meshctl, submit, cancel, list, show.
    let args = ["tasks", "submit", "sleep", r#"{"ms": 1}"#, "--id", "fine"];
    let out = support::meshctl_ok(&url, "army5", &args);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "fine queued");
    let args = [
        "tasks",
        "submit",
        "sleep",
        r#"{"ms": 60000}"#,
        "--id",
        "long",
        "--count",
        "3",
    ];
    support::meshctl_ok(&url, "army5", &args);
    let out = support::meshctl_ok(&url, "army5", &["tasks", "cancel", "long-3"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "long-3 cancelled"
    );
    wait_until("fine to be done", Duration::from_secs(30), || async {
        (task(&client, "fine").await["state"] == json!("done")).then_some(())
    })
    .await;
    let out = support::meshctl_ok(&url, "army5", &["tasks", "list", "--state", "cancelled"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("long-3") && !text.contains("long-1"),
        "{text}"
    );
    let out = support::meshctl_ok(&url, "army5", &["tasks", "show", "fine"]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["output"], json!({"slept_ms": 1}));
}
