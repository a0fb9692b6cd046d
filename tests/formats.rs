//! Stored formats: bytes written by every released format, read back.
//!
//! `tests/fixtures/` holds, for each format version still read, what that
//! version wrote: state records, a whole snapshot, link frames, and the
//! binary and JSON encodings of agent messages and call errors. These tests
//! read them with today's code, so a change that breaks reading what an
//! older release wrote (or that silently changes what this one writes, like
//! reordering enum variants) fails here, not in a mixed mesh.
//!
//! A fixture of a released format is never edited. When a format version
//! is raised, run once with `MESH_WRITE_FIXTURES=1` to record the new
//! version's fixtures next to the old ones; the tests then demand one for
//! every version between the oldest still read and the newest written.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actors::board::{
    BoardMessage, BoardReply, BoardState, Requirements, TaskResult, TaskSpec, TaskState,
};
use actors::counter::{CounterMessage, CounterReply};
use actors::probe::ProbeMessage;
use actors::relay::RelayMessage;
use actors::worker::WorkerMessage;
use actors::{codec, Agent, AgentError, AgentId, CallError, Caller, Context, Json, NodeFacts};
use futures::future::BoxFuture;
use mesh::config::SnapshotTarget;
use mesh::snapshot::{self, Catalog, MIN_SNAPSHOT_FORMAT, SNAPSHOT_FORMAT};
use mesh::storage::{Record, Store, RECORD_VERSION};
use mesh::wire::{self, Frame, Hello, Incoming, MAX_WIRE_VERSION, MIN_WIRE_VERSION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn writing() -> bool {
    std::env::var_os("MESH_WRITE_FIXTURES").is_some_and(|v| v == "1")
}

/// The stored bytes at `path`; if missing, recorded from `current` when
/// writing is asked for, else a test failure with instructions.
fn stored(path: &Path, current: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    if let Ok(bytes) = std::fs::read(path) {
        return bytes;
    }
    assert!(
        writing(),
        "no fixture {}: a format version was raised without recording the new \
         version's fixtures; run this test once with MESH_WRITE_FIXTURES=1 and commit them",
        path.display()
    );
    let bytes = current();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A text fixture of `label<TAB>hex[<TAB>json]` lines.
fn table(path: &Path, current: &[(String, String)]) -> Vec<(String, String)> {
    let text = stored(path, || {
        let lines: Vec<String> = current.iter().map(|(l, v)| format!("{l}\t{v}\n")).collect();
        lines.concat().into_bytes()
    });
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|line| {
            let (label, value) = line.split_once('\t').unwrap();
            (label.to_owned(), value.to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------- records

/// A mesh with no peers: agents under test call nobody.
struct Nobody;

impl Caller for Nobody {
    fn call(
        &self,
        to: AgentId,
        _: Vec<u8>,
        _: std::time::Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>> {
        Box::pin(async move {
            Err(CallError::Unavailable {
                agent: to.to_string(),
                reason: "no mesh in this test".into(),
            })
        })
    }

    fn cast(&self, to: AgentId, _: Vec<u8>) -> Result<(), CallError> {
        Err(CallError::Unavailable {
            agent: to.to_string(),
            reason: "no mesh in this test".into(),
        })
    }
}

fn context(agent: &str) -> Context {
    let registry = Arc::new(actors::builtin_registry());
    Context::new(
        agent.parse().unwrap(),
        "n1".into(),
        Arc::new(Nobody),
        registry,
    )
}

/// Sends `msg` (JSON) to a live instance; returns the reply as JSON and
/// the new state, if it changed.
async fn ask(
    kind: &str,
    instance: &mut Box<dyn actors::registry::Instance>,
    msg: serde_json::Value,
) -> (serde_json::Value, Option<Vec<u8>>) {
    let registry = actors::builtin_registry();
    let kind = registry.get(kind).unwrap();
    let id: AgentId = format!("{}/fixture", kind.name()).parse().unwrap();
    let payload = kind.message_from_json(&id, &msg).unwrap();
    let outcome = instance.handle(&context(&id.to_string()), &payload).await;
    let reply = kind.reply_to_json(&id, &outcome.reply.unwrap()).unwrap();
    (reply, outcome.state)
}

/// The records this release writes for the fixtures: a counter at 42 and
/// a board holding two tasks, one of them done.
async fn current_records() -> Vec<(String, Record)> {
    let registry = actors::builtin_registry();
    let counter = registry.get("counter").unwrap();
    let mut instance = counter.instantiate(None).unwrap();
    let (_, state) = ask("counter", &mut instance, json!({"add": 42})).await;
    let counter_record = Record {
        epoch: 3,
        seq: 7,
        state_version: counter.state_version(),
        state: state.unwrap(),
    };

    let board = registry.get("board").unwrap();
    let mut instance = board.instantiate(None).unwrap();
    for id in ["t1", "t2"] {
        let submit = json!({"submit": {"id": id, "type": "sleep", "payload": {"ms": 1}}});
        ask("board", &mut instance, submit).await;
    }
    let facts = json!({"node": "n1", "zone": "z", "region": "r", "kind": "k", "capabilities": []});
    let take = json!({"take": {"worker": "worker/n1.0", "facts": facts, "types": ["sleep"]}});
    ask("board", &mut instance, take).await;
    let complete =
        json!({"complete": {"worker": "worker/n1.0", "id": "t1", "result": {"ok": "fine"}}});
    let (_, state) = ask("board", &mut instance, complete).await;
    let board_record = Record {
        epoch: 5,
        seq: 4,
        state_version: board.state_version(),
        state: state.unwrap(),
    };
    vec![
        ("counter/fixture".into(), counter_record),
        ("board/fixture".into(), board_record),
    ]
}

/// Checks that `record` is the counter or board fixture's content, by
/// running the kind on it.
async fn check_record_content(agent: &str, record: &Record) {
    let registry = actors::builtin_registry();
    let kind = agent.split('/').next().unwrap();
    let mut instance = registry
        .get(kind)
        .unwrap()
        .instantiate(Some((record.state_version, &record.state)))
        .unwrap_or_else(|e| panic!("{agent}: {e}"));
    match kind {
        "counter" => {
            let (reply, _) = ask(kind, &mut instance, json!({"get": {}})).await;
            assert_eq!(reply, json!({"value": 42}), "{agent}");
        }
        "board" => {
            let (reply, _) = ask(kind, &mut instance, json!({"show": {"id": "t1"}})).await;
            let task = &reply["task"];
            assert_eq!(task["state"], "done", "{reply}");
            assert_eq!(task["output"], "fine", "{reply}");
            assert_eq!(task["worker"], "worker/n1.0", "{reply}");
            let (reply, _) = ask(kind, &mut instance, json!({"show": {"id": "t2"}})).await;
            assert_eq!(reply["task"]["state"], "queued", "{reply}");
            assert_eq!(reply["task"]["payload"], json!({"ms": 1}), "{reply}");
            let (reply, _) = ask(kind, &mut instance, json!({"stats": {}})).await;
            assert_eq!(reply["stats"]["totals"]["submitted"], 2, "{reply}");
            assert_eq!(reply["stats"]["totals"]["done"], 1, "{reply}");
        }
        other => panic!("no check for {other}"),
    }
}

#[tokio::test]
async fn state_records_of_every_format_read_back() {
    let current = current_records().await;
    for version in 1..=RECORD_VERSION {
        for (agent, record) in &current {
            let kind = agent.split('/').next().unwrap();
            let path = fixtures().join(format!("records/v{version}-{kind}.bin"));
            let bytes = stored(&path, || record.encode());
            let read = Record::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check_record_content(agent, &read).await;
            if version == RECORD_VERSION {
                // This release writes the stored layout byte for byte, the
                // record and the state inside it.
                assert_eq!(read.encode(), bytes, "{}: re-encoding", path.display());
                let state = match kind {
                    "counter" => codec::encode(&codec::decode::<i64>(&read.state).unwrap()),
                    _ => codec::encode(&codec::decode::<BoardState>(&read.state).unwrap()),
                };
                assert_eq!(
                    state.unwrap(),
                    read.state,
                    "{}: state layout",
                    path.display()
                );
            }
        }
    }
}

// -------------------------------------------------------------- snapshots

fn snapshot_dir(format: u16) -> PathBuf {
    fixtures().join(format!("snapshots/format-{format}"))
}

#[tokio::test]
async fn snapshots_of_every_format_restore() {
    let dir = snapshot_dir(SNAPSHOT_FORMAT);
    if !dir.exists() {
        assert!(
            writing(),
            "no snapshot fixture of format {SNAPSHOT_FORMAT} in {}; run this test once \
             with MESH_WRITE_FIXTURES=1 and commit it",
            dir.display()
        );
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        for (agent, record) in current_records().await {
            store.write(&agent.parse().unwrap(), record).await.unwrap();
        }
        let target = SnapshotTarget::File(dir.clone());
        let snapshots = snapshot::open_target(&target, "fixture").unwrap();
        snapshots.take("n1", &store).await.unwrap();
    }

    for format in MIN_SNAPSHOT_FORMAT..=SNAPSHOT_FORMAT {
        let dir = snapshot_dir(format);
        assert!(dir.exists(), "no snapshot fixture of format {format}");
        let target = SnapshotTarget::File(dir.clone());
        let snapshots = snapshot::open_target(&target, "fixture").unwrap();

        // A whole restore, as a new node does it...
        let (manifest, records, skipped) = snapshots
            .newest_readable("n1", None, &|_, _| {})
            .await
            .unwrap_or_else(|e| panic!("format {format}: {e}"));
        assert_eq!(manifest.format, format);
        assert!(skipped.is_empty(), "{skipped:?}");
        let mut agents: Vec<String> = records.iter().map(|(a, _)| a.to_string()).collect();
        agents.sort();
        assert_eq!(agents, ["board/fixture", "counter/fixture"]);
        for (agent, record) in &records {
            check_record_content(&agent.to_string(), record).await;
        }

        // ...and one agent at a time, as activation finds it.
        let catalog = Catalog::load(&snapshots).await.unwrap();
        let (m, entry) = catalog.find(&"counter/fixture".parse().unwrap()).unwrap();
        let record = snapshots.record(m, entry).await.unwrap();
        check_record_content("counter/fixture", &record).await;
    }
}

// ----------------------------------------------------------------- frames

/// One frame of every variant, by label.
fn frames() -> Vec<(&'static str, Frame)> {
    let to: AgentId = "counter/x".parse().unwrap();
    vec![
        (
            "call",
            Frame::Call {
                id: 7,
                from: "a".into(),
                to: to.clone(),
                timeout_ms: 1000,
                hops: 1,
                trace: 300,
                payload: vec![1, 2, 3],
            },
        ),
        (
            "cast",
            Frame::Cast {
                to: to.clone(),
                payload: vec![42],
            },
        ),
        (
            "reply_ok",
            Frame::Reply {
                id: 9,
                result: Ok(vec![5]),
            },
        ),
        (
            "reply_err",
            Frame::Reply {
                id: 9,
                result: Err(CallError::NodeLost {
                    agent: "counter/x".into(),
                    node: "n2".into(),
                }),
            },
        ),
        (
            "ping",
            Frame::Ping {
                nonce: 3,
                from: "b".into(),
            },
        ),
        (
            "pong",
            Frame::Pong {
                nonce: 3,
                from: "c".into(),
            },
        ),
        (
            "traced_cast",
            Frame::TracedCast {
                to,
                trace: 0x0102_0304,
                payload: vec![42],
            },
        ),
    ]
}

#[test]
fn frames_of_every_version_keep_their_bytes() {
    let hello = Hello {
        node: "n".into(),
        incarnation: 258,
        min_version: MIN_WIRE_VERSION,
        max_version: MAX_WIRE_VERSION,
        software: "0.1.0".into(),
    };
    let path = fixtures().join("frames/hello.bin");
    let bytes = stored(&path, || wire::encode_hello(&hello));
    let Incoming::Hello(read) = wire::decode(&bytes).unwrap() else {
        panic!("the hello fixture is not a hello");
    };
    assert_eq!((read.node.as_str(), read.incarnation), ("n", 258));

    for version in MIN_WIRE_VERSION..=MAX_WIRE_VERSION {
        let current: Vec<(String, String)> = frames()
            .into_iter()
            .map(|(label, f)| (label.to_owned(), hex(&wire::encode(version, &f).unwrap())))
            .collect();
        let path = fixtures().join(format!("frames/v{version}.hex"));
        let stored = table(&path, &current);
        assert_eq!(stored.len(), current.len(), "{}", path.display());
        for ((label, bytes), (expected_label, frame)) in stored.iter().zip(frames()) {
            assert_eq!(label, expected_label, "{}", path.display());
            let bytes = unhex(bytes);
            // What an older node sent still reads as the same frame...
            let Incoming::Frame(read) = wire::decode(&bytes).unwrap() else {
                panic!("{label} in version {version} is not a frame");
            };
            let expected = match frame {
                // (version 1 carries a traced cast as a plain cast)
                Frame::TracedCast { to, payload, .. } if version < 2 => Frame::Cast { to, payload },
                frame => frame,
            };
            assert_eq!(read, expected, "{label} in version {version}");
            // ...and this release still writes it byte for byte.
            assert_eq!(
                wire::encode(version, &expected).unwrap(),
                bytes,
                "{label} in version {version}: frame layout changed; add a version instead"
            );
        }
    }

    // A batch (version 3 on) of frames, each as it is sent alone.
    for version in wire::BATCH_VERSION..=MAX_WIRE_VERSION {
        let inner: Vec<Frame> = frames().into_iter().map(|(_, f)| f).collect();
        let encode = |frames: &[Frame]| {
            let alone = frames
                .iter()
                .map(|f| wire::encode(version, f).unwrap())
                .collect();
            wire::encode_batch(version, alone).unwrap()
        };
        let path = fixtures().join(format!("frames/v{version}-batch.bin"));
        let bytes = stored(&path, || encode(&inner));
        let Incoming::Frame(Frame::Batch(bodies)) = wire::decode(&bytes).unwrap() else {
            panic!("the batch of version {version} is not a batch");
        };
        let read: Vec<Frame> = wire::unbatch(bodies).map(Result::unwrap).collect();
        assert_eq!(read, inner, "the batch of version {version}");
        assert_eq!(
            encode(&read),
            bytes,
            "the batch of version {version}: layout changed; add a version instead"
        );
    }
}

// --------------------------------------------------------------- messages

/// `value`'s binary and JSON encodings as `hex<TAB>json`.
fn encodings<T: Serialize>(value: &T) -> String {
    let binary = codec::encode(value).unwrap();
    format!(
        "{}\t{}",
        hex(&binary),
        serde_json::to_string(value).unwrap()
    )
}

/// Checks a stored `hex<TAB>json` against type `T`: both decode, and
/// re-encode to the same bytes and text.
fn check<T: Serialize + DeserializeOwned>(label: &str, stored: &str) {
    let rule = "a variant was reordered, renamed or a field changed: see actors::codec";
    let (binary, text) = stored.split_once('\t').unwrap();
    let from_binary: T = codec::decode(&unhex(binary))
        .unwrap_or_else(|e| panic!("{label}: stored bytes no longer decode ({e}); {rule}"));
    let from_json: T = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{label}: stored JSON no longer reads ({e}); {rule}"));
    assert_eq!(encodings(&from_binary), stored, "{label}: {rule}");
    assert_eq!(encodings(&from_json), stored, "{label}: {rule}");
}

fn task_spec() -> TaskSpec {
    TaskSpec {
        id: Some("t1".into()),
        task_type: "sleep".into(),
        payload: Json(json!({"ms": 10})),
        requires: Requirements {
            zone: Some("fr-par-1".into()),
            region: None,
            kind: None,
            capabilities: vec!["gpu".into()],
        },
        priority: 2,
        timeout_ms: Some(1000),
        retries: Some(1),
    }
}

/// Every message, reply and error variant of the built-in kinds, with the
/// function that checks it, by label.
type Checker = fn(&str, &str);

fn messages() -> Vec<(&'static str, String, Checker)> {
    let facts = NodeFacts {
        node: "n1".into(),
        zone: "fr-par-1".into(),
        region: "fr-par".into(),
        kind: "instance".into(),
        capabilities: vec!["gpu".into()],
    };
    let e = |agent: &str| agent.to_owned();
    let errors = vec![
        CallError::UnknownKind { kind: "k".into() },
        CallError::BadMessage {
            agent: e("a/b"),
            reason: "r".into(),
        },
        CallError::Agent {
            agent: e("a/b"),
            message: "m".into(),
        },
        CallError::Timeout {
            agent: e("a/b"),
            ms: 5,
        },
        CallError::NodeLost {
            agent: e("a/b"),
            node: "n".into(),
        },
        CallError::Unavailable {
            agent: e("a/b"),
            reason: "r".into(),
        },
        CallError::TooLarge { size: 9, max: 8 },
        CallError::Crashed { agent: e("a/b") },
        CallError::Internal { reason: "r".into() },
        CallError::Failed {
            agent: e("a/b"),
            reason: "r".into(),
        },
    ];
    let mut out: Vec<(&'static str, String, Checker)> = vec![
        (
            "counter.add",
            encodings(&CounterMessage::Add(-5)),
            check::<CounterMessage>,
        ),
        (
            "counter.get",
            encodings(&CounterMessage::Get {}),
            check::<CounterMessage>,
        ),
        (
            "counter.reply",
            encodings(&CounterReply { value: 42 }),
            check::<CounterReply>,
        ),
        (
            "board.submit",
            encodings(&BoardMessage::Submit(task_spec())),
            check::<BoardMessage>,
        ),
        (
            "board.take",
            encodings(&BoardMessage::Take {
                worker: "worker/n1.0".into(),
                facts,
                types: vec!["sleep".into()],
            }),
            check::<BoardMessage>,
        ),
        (
            "board.complete_ok",
            encodings(&BoardMessage::Complete {
                worker: "worker/n1.0".into(),
                id: "t1".into(),
                result: TaskResult::Ok(Json(json!([1]))),
            }),
            check::<BoardMessage>,
        ),
        (
            "board.complete_err",
            encodings(&BoardMessage::Complete {
                worker: "worker/n1.0".into(),
                id: "t1".into(),
                result: TaskResult::Err("boom".into()),
            }),
            check::<BoardMessage>,
        ),
        (
            "board.cancel",
            encodings(&BoardMessage::Cancel { id: "t1".into() }),
            check::<BoardMessage>,
        ),
        (
            "board.show",
            encodings(&BoardMessage::Show { id: "t1".into() }),
            check::<BoardMessage>,
        ),
        (
            "board.list",
            encodings(&BoardMessage::List {
                state: Some(TaskState::Cancelled),
                limit: Some(3),
            }),
            check::<BoardMessage>,
        ),
        (
            "board.stats",
            encodings(&BoardMessage::Stats {}),
            check::<BoardMessage>,
        ),
        (
            "board.submitted",
            encodings(&BoardReply::Submitted {
                id: "t1".into(),
                state: TaskState::Queued,
                known: false,
            }),
            check::<BoardReply>,
        ),
        (
            "board.assigned",
            encodings(&BoardReply::Assigned(None)),
            check::<BoardReply>,
        ),
        (
            "board.recorded",
            encodings(&BoardReply::Recorded { recorded: true }),
            check::<BoardReply>,
        ),
        (
            "worker.work",
            encodings(&WorkerMessage::Work {}),
            check::<WorkerMessage>,
        ),
        (
            "worker.wake",
            encodings(&WorkerMessage::Wake {}),
            check::<WorkerMessage>,
        ),
        (
            "worker.run",
            encodings(&WorkerMessage::Run {
                task_type: "sleep".into(),
                payload: Json(json!({"ms": 1})),
                timeout_ms: None,
            }),
            check::<WorkerMessage>,
        ),
        (
            "probe.whoami",
            encodings(&ProbeMessage::Whoami {}),
            check::<ProbeMessage>,
        ),
        (
            "probe.panic",
            encodings(&ProbeMessage::Panic("p".into())),
            check::<ProbeMessage>,
        ),
        (
            "probe.fail",
            encodings(&ProbeMessage::Fail("f".into())),
            check::<ProbeMessage>,
        ),
        (
            "relay",
            encodings(&RelayMessage {
                to: "counter/x".into(),
                msg: Json(json!({"get": {}})),
                timeout_ms: Some(100),
            }),
            check::<RelayMessage>,
        ),
        (
            "echo",
            encodings(&Json(json!({"a": [1, "b"]}))),
            check::<Json>,
        ),
    ];
    let labels = [
        "error.unknown_kind",
        "error.bad_message",
        "error.agent",
        "error.timeout",
        "error.node_lost",
        "error.unavailable",
        "error.too_large",
        "error.crashed",
        "error.internal",
        "error.failed",
    ];
    for (label, error) in labels.into_iter().zip(errors) {
        out.push((label, encodings(&error), check::<CallError>));
    }
    out
}

#[test]
fn agent_messages_and_errors_keep_their_encodings() {
    let current = messages();
    let rows: Vec<(String, String)> = current
        .iter()
        .map(|(label, value, _)| ((*label).to_owned(), value.clone()))
        .collect();
    let path = fixtures().join("messages.tsv");
    let stored = table(&path, &rows);
    // Every stored row must still read.
    for (label, value) in &stored {
        let (_, _, checker) = current
            .iter()
            .find(|(l, _, _)| l == label)
            .unwrap_or_else(|| panic!("{label} is stored but no longer tested"));
        checker(label, value);
    }
    // A new variant gets a new line, appended; nothing is ever rewritten.
    let missing: Vec<&(String, String)> = rows
        .iter()
        .filter(|(label, _)| !stored.iter().any(|(l, _)| l == label))
        .collect();
    if writing() && !missing.is_empty() {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for (label, value) in &missing {
            writeln!(file, "{label}\t{value}").unwrap();
        }
        return;
    }
    let labels: Vec<&str> = missing.iter().map(|(l, _)| l.as_str()).collect();
    assert!(
        labels.is_empty(),
        "{labels:?} have no stored encoding in {}: run once with MESH_WRITE_FIXTURES=1",
        path.display()
    );
}

// ------------------------------------------------------------- migration

/// The counter as a later release might write it: version 2 of its state
/// also counts the additions. It reads version 1 by migrating.
struct CounterV2;

#[derive(Debug, Default, Serialize, Deserialize)]
struct CounterV2State {
    total: i64,
    adds: u64,
}

impl Agent for CounterV2 {
    const KIND: &'static str = "counter";
    const STATE_VERSION: u16 = 2;
    const DURABILITY: actors::Durability = actors::Durability::Local;
    type State = CounterV2State;
    type Message = CounterMessage;
    type Reply = CounterReply;

    fn migrate(version: u16, state: &[u8]) -> Result<CounterV2State, AgentError> {
        match version {
            1 => {
                let total: i64 =
                    codec::decode(state).map_err(|e| AgentError::new(e.to_string()))?;
                Ok(CounterV2State { total, adds: 0 })
            }
            v => Err(AgentError::new(format!(
                "counter cannot read state version {v}"
            ))),
        }
    }

    async fn handle(
        state: &mut CounterV2State,
        _: &Context,
        msg: CounterMessage,
    ) -> Result<CounterReply, AgentError> {
        if let CounterMessage::Add(n) = msg {
            state.total += n;
            state.adds += 1;
        }
        Ok(CounterReply { value: state.total })
    }
}

#[tokio::test]
async fn a_newer_state_version_migrates_the_stored_one_and_an_older_release_refuses_it() {
    let bytes = std::fs::read(fixtures().join("records/v1-counter.bin")).unwrap();
    let record = Record::decode(&bytes).unwrap();
    assert_eq!(record.state_version, 1);

    let mut registry = actors::registry::Registry::new();
    registry.register::<CounterV2>();
    let kind = registry.get("counter").unwrap();
    let mut instance = kind
        .instantiate(Some((record.state_version, &record.state)))
        .unwrap();
    let id: AgentId = "counter/fixture".parse().unwrap();
    let ctx = Context::new(
        id.clone(),
        "n1".into(),
        Arc::new(Nobody),
        Arc::new(registry),
    );
    let add = codec::encode(&CounterMessage::Add(1)).unwrap();
    let outcome = instance.handle(&ctx, &add).await;
    let reply: CounterReply = codec::decode(&outcome.reply.unwrap()).unwrap();
    assert_eq!(reply.value, 43, "the migrated total");
    let written = outcome.state.expect("the state changed");

    // The built-in (version 1) counter refuses version 2 clearly instead of
    // misreading it; placement keeps the agent off such nodes meanwhile.
    let old = actors::builtin_registry();
    let err = old
        .get("counter")
        .unwrap()
        .instantiate(Some((2, &written)))
        .err()
        .expect("an older release cannot read version 2");
    assert!(
        err.to_string().contains("cannot read state version 2"),
        "{err}"
    );
}
