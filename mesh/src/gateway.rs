//! The gateway: the way into the mesh from outside, as JSON over NATS.
//!
//! Any NATS client can call an agent: a request on `mesh.<cluster>.gateway`
//! (served by one node of the cluster) or `mesh.<cluster>.node.<n>.gateway`
//! (served by node `n`) with a [`CallRequest`] body gets a [`Response`].
//! Operator queries ([`AdminRequest`]) use the `admin` subjects the same way.
//! A bad request gets an error response naming the problem; it never
//! disturbs the node.
//!
//! Both kinds of request may carry `"v"`, the request format version
//! ([`GATEWAY_VERSION`]); absent means 1. A node refuses a version it does
//! not speak with `unsupported_version`, so a newer client never has its
//! request half understood by an older node.
//!
//! A node serves at most `gateway_max_inflight` calls, holding at most
//! `gateway_max_inflight_bytes` of their bodies, at once; operator queries
//! have their own [`MAX_ADMIN_INFLIGHT`]. A request beyond its bound is
//! answered `unavailable` before its JSON is read, so a flood of calls
//! costs the node a refusal each, and leaves the runtime to links, leases
//! and operators.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::{AgentId, CallError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::directory::Location;
use crate::metrics::StatsSnapshot;
use crate::node::Shared;
use crate::subjects;

/// The gateway request format this build speaks.
pub const GATEWAY_VERSION: u16 = 1;
/// The deepest JSON nesting a request may have.
pub const MAX_JSON_DEPTH: usize = 32;
/// The largest operator request, in bytes.
pub const MAX_ADMIN_BYTES: usize = 64 * 1024;
/// How many operator queries a node serves at once, apart from calls so
/// that `meshctl status` answers on a node busy with calls.
pub const MAX_ADMIN_INFLIGHT: usize = 16;

/// A call from outside: `{"agent": "counter/alice", "msg": {"add": 5}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// The request format version; absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u16>,
    /// The target agent, `kind/name`.
    pub agent: String,
    /// The message, in the agent kind's JSON form.
    pub msg: serde_json::Value,
    /// How long to wait for the reply; absent means the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Fire and forget: answer `{"ok": null}` once the message is sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cast: bool,
}

/// An operator query: `{"op": "members"}` (`"v"` is read before this).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum AdminRequest {
    /// The answering node's member list, itself included.
    Members,
    /// The agents live on the answering node.
    Agents,
    /// Where the answering node would send a message for `agent`.
    Locate {
        /// The agent, `kind/name`.
        agent: String,
    },
    /// The answering node's counters.
    Stats,
    /// The answering node's health at a glance, for `meshctl status`.
    Status,
    /// Take a snapshot of the answering node now.
    Snapshot,
    /// The complete snapshots of `node` (default: the answering node).
    Snapshots {
        /// Whose snapshots.
        #[serde(default)]
        node: Option<String>,
    },
    /// Restore the answering node (or one of its agents) from a snapshot.
    Restore {
        /// Whose snapshots to read (default: the answering node's).
        #[serde(default)]
        from: Option<String>,
        /// Which snapshot (default: the newest that reads back whole).
        #[serde(default)]
        snapshot: Option<String>,
        /// Restore only this agent.
        #[serde(default)]
        agent: Option<String>,
        /// A subject that receives `{"done": bytes, "total": bytes}`.
        #[serde(default)]
        progress: Option<String>,
    },
    /// Drain the answering node: move its agents away, take no new ones.
    /// Asking again reports progress.
    Drain,
    /// Stop draining the answering node: it takes agents again.
    Undrain,
}

/// The answer to [`AdminRequest::Drain`] and [`AdminRequest::Undrain`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainReply {
    /// The answering node.
    pub node: String,
    /// Whether it is draining now.
    pub draining: bool,
    /// How many agents are still live on it.
    pub agents: usize,
    /// How many agents it has moved away since it started.
    pub moved: u64,
    /// Agents that cannot move, with the reason.
    #[serde(default)]
    pub blocked: Vec<FailedAgent>,
}

/// A snapshot as `meshctl snapshots` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotView {
    /// Its id.
    pub id: String,
    /// Whose records it holds.
    pub node: String,
    /// When it was taken, in Unix milliseconds.
    pub created_ms: u64,
    /// How many agents.
    pub agents: u64,
    /// Data bytes.
    pub bytes: u64,
    /// The release that wrote it.
    pub software: String,
}

impl From<&crate::snapshot::Manifest> for SnapshotView {
    fn from(m: &crate::snapshot::Manifest) -> Self {
        SnapshotView {
            id: m.id.clone(),
            node: m.node.clone(),
            created_ms: m.created_ms,
            agents: m.agents,
            bytes: m.bytes,
            software: m.software.clone(),
        }
    }
}

/// Every gateway answer: `{"ok": ...}` or `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    /// The reply.
    Ok(serde_json::Value),
    /// Why there is no reply.
    Error(ErrorBody),
}

/// What went wrong, with a stable code and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unknown_kind`, `timeout`, ...
    pub code: String,
    /// One readable line.
    pub message: String,
}

impl Response {
    fn error(code: &str, message: impl Into<String>) -> Self {
        Response::Error(ErrorBody {
            code: code.into(),
            message: message.into(),
        })
    }
}

impl From<CallError> for Response {
    fn from(e: CallError) -> Self {
        Response::error(e.code(), e.to_string())
    }
}

/// One member as `meshctl members` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// The node's name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Its kind of host.
    pub kind: String,
    /// Its capability labels.
    pub capabilities: Vec<String>,
    /// `alive` or `suspect`.
    pub status: String,
    /// Whether the answering node has a link to it (true for itself).
    pub linked: bool,
    /// Its link address.
    pub address: String,
    /// Its release.
    pub software: String,
    /// The link frame versions it speaks, such as `1-2`.
    #[serde(default)]
    pub wire: String,
    /// The state version of each agent kind it runs.
    #[serde(default)]
    pub state_versions: std::collections::BTreeMap<String, u16>,
    /// Seconds since it started.
    pub age_s: u64,
    /// Whether this is the answering node.
    #[serde(default)]
    pub this: bool,
    /// Whether its ownership lease is valid as the answering node sees it.
    #[serde(default)]
    pub lease: Option<bool>,
    /// Whether it is draining (placement gives it no agents).
    #[serde(default)]
    pub draining: bool,
}

/// The answer to [`AdminRequest::Members`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersReply {
    /// The answering node.
    pub node: String,
    /// Every member, the answering node included, by name.
    pub members: Vec<MemberView>,
}

/// The answer to [`AdminRequest::Agents`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentsReply {
    /// The answering node.
    pub node: String,
    /// Its live agents.
    pub agents: Vec<String>,
    /// Agents past their restart limit, with the reason.
    #[serde(default)]
    pub failed: Vec<FailedAgent>,
    /// The epoch of each live agent, in the order of `agents` (0 while
    /// it activates).
    #[serde(default)]
    pub epochs: Vec<u64>,
}

/// The answer to [`AdminRequest::Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node.
    pub node: String,
    /// Its zone.
    pub zone: String,
    /// Its release.
    pub software: String,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// How many agents are live on it.
    pub agents: u64,
    /// How many agents are past their restart limit.
    pub failed: u64,
    /// Whether its store holds records (an empty store needs no snapshot).
    pub has_records: bool,
    /// Seconds since its last snapshot, if it took one since it started.
    pub snapshot_age_s: Option<u64>,
    /// Its periodic snapshot interval, in seconds.
    pub snapshot_interval_s: u64,
    /// The readiness checks that fail, as `/readyz` names them.
    pub not_ready: Vec<String>,
}

/// An agent that crashed past its restart limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedAgent {
    /// The agent.
    pub agent: String,
    /// Its crash history.
    pub reason: String,
}

/// Subscribes to the gateway and admin subjects and serves them.
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    nats: async_nats::Client,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let c = &shared.config;
    let queue = subjects::GATEWAY_QUEUE.to_owned();
    let calls = futures::stream::select(
        nats.queue_subscribe(subjects::gateway(&c.cluster), queue.clone())
            .await?,
        nats.subscribe(subjects::node_gateway(&c.cluster, &c.name))
            .await?,
    );
    let admin = futures::stream::select(
        nats.queue_subscribe(subjects::admin(&c.cluster), queue)
            .await?,
        nats.subscribe(subjects::node_admin(&c.cluster, &c.name))
            .await?,
    );
    let tagged = futures::stream::select(calls.map(|m| (false, m)), admin.map(|m| (true, m)));
    Ok(tokio::spawn(serve(shared, nats, tagged)))
}

async fn serve(
    shared: Arc<Shared>,
    nats: async_nats::Client,
    mut requests: impl futures::Stream<Item = (bool, async_nats::Message)> + Unpin,
) {
    let c = &shared.config;
    let calls = Arc::new(Gate {
        what: "gateway calls",
        max_count: c.gateway_max_inflight,
        max_bytes: c.gateway_max_inflight_bytes,
        inflight: shared.stats.gateway_inflight.clone(),
        used: Mutex::default(),
    });
    // Admin bodies are capped at MAX_ADMIN_BYTES, so the count bounds them.
    let admins = Arc::new(Gate {
        what: "operator queries",
        max_count: MAX_ADMIN_INFLIGHT,
        max_bytes: usize::MAX,
        inflight: Default::default(),
        used: Mutex::default(),
    });
    while let Some((is_admin, msg)) = requests.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };

        // Refuse what is too large or too much before reading it; the
        // reply is small, so the loop sends it itself.
        let (gate, cap) = if is_admin {
            (&admins, MAX_ADMIN_BYTES)
        } else {
            (&calls, shared.config.max_message_bytes.saturating_mul(2))
        };
        let ticket = check_size(msg.payload.len(), cap).and_then(|()| {
            gate.try_admit(msg.payload.len())
                .map_err(|busy| busy.response(&shared.config.name))
        });
        let ticket = match ticket {
            Ok(ticket) => ticket,
            Err(response) => {
                answer(&shared, &nats, &msg.subject, reply_to, response).await;
                continue;
            }
        };

        let shared = shared.clone();
        let nats = nats.clone();
        tokio::spawn(async move {
            let response = if is_admin {
                admin(&shared, &nats, &msg.payload).await
            } else {
                call(&shared, &msg.payload).await
            };
            answer(&shared, &nats, &msg.subject, reply_to, response).await;
            // The request leaves the gate only once answered, whatever the
            // answer (a panic above drops the ticket too).
            drop(ticket);
        });
    }
}

/// Counts and logs a response and sends it to `reply_to`.
async fn answer(
    shared: &Shared,
    nats: &async_nats::Client,
    subject: &async_nats::Subject,
    reply_to: async_nats::Subject,
    response: Response,
) {
    shared.stats.gateway_requests.inc();
    if let Response::Error(e) = &response {
        shared.stats.gateway_errors.inc();
        if e.code == BUSY {
            shared.stats.gateway_busy.inc();
        }
        if ["too_large", "bad_request", "forbidden"].contains(&e.code.as_str()) {
            warn!(
                subject = %subject,
                reply_to = %reply_to,
                code = %e.code,
                message = %e.message,
                "refused a gateway request"
            );
        } else {
            debug!(code = %e.code, message = %e.message, "gateway request failed");
        }
    }
    let body = serde_json::to_vec(&response).expect("responses encode");
    if let Err(e) = nats.publish(reply_to, body.into()).await {
        warn!(error = %e, "cannot send a gateway reply");
    }
}

/// The code of a request refused because the node is busy: retryable.
const BUSY: &str = "unavailable";

/// Bounds the requests of one kind served at once, by count and by body
/// bytes.
#[derive(Debug)]
struct Gate {
    /// What the refusal calls these requests.
    what: &'static str,
    /// The most requests at once.
    max_count: usize,
    /// The most body bytes at once.
    max_bytes: usize,
    /// Mirrors the count, for metrics.
    inflight: prometheus_client::metrics::gauge::Gauge,
    /// Requests and body bytes in flight now.
    used: Mutex<(usize, usize)>,
}

/// Why a [`Gate`] refused a request.
#[derive(Debug, PartialEq, Eq)]
enum Busy {
    /// It holds its most requests.
    Count { what: &'static str, max: usize },
    /// The request's body would take it past its most bytes.
    Bytes { what: &'static str, max: usize },
}

impl Busy {
    fn response(&self, node: &str) -> Response {
        let why = match self {
            Busy::Count { what, max } => format!("{max} {what} in flight"),
            Busy::Bytes { what, max } => format!("{what} in flight would pass {max} bytes"),
        };
        Response::error(BUSY, format!("node {node} is busy: {why}; retry later"))
    }
}

/// A request's place in a [`Gate`], given back when dropped.
#[derive(Debug)]
struct Ticket {
    gate: Arc<Gate>,
    bytes: usize,
}

impl Gate {
    /// Admits a request of `bytes`, or says which bound it would break.
    fn try_admit(self: &Arc<Self>, bytes: usize) -> Result<Ticket, Busy> {
        let what = self.what;
        let mut used = self.used.lock().expect("gate lock");
        if used.0 >= self.max_count {
            let max = self.max_count;
            return Err(Busy::Count { what, max });
        }
        if used.1.saturating_add(bytes) > self.max_bytes {
            let max = self.max_bytes;
            return Err(Busy::Bytes { what, max });
        }
        used.0 += 1;
        used.1 += bytes;
        self.inflight.inc();
        Ok(Ticket {
            gate: self.clone(),
            bytes,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut used = self.gate.used.lock().expect("gate lock");
        used.0 -= 1;
        used.1 -= self.bytes;
        self.gate.inflight.dec();
    }
}

fn unsupported(v: u64) -> Response {
    Response::error(
        "unsupported_version",
        format!("request version {v} is not supported (this node speaks {GATEWAY_VERSION})"),
    )
}

/// Reads an operator query, checking and removing its optional `"v"`.
fn admin_request(body: &[u8]) -> Result<AdminRequest, Response> {
    let bad =
        |e: serde_json::Error| Response::error("bad_request", format!("invalid request: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    if let Some(v) = value.as_object_mut().and_then(|o| o.remove("v")) {
        match v.as_u64() {
            Some(v) if v == u64::from(GATEWAY_VERSION) => {}
            Some(v) => return Err(unsupported(v)),
            None => {
                let why = format!("invalid request: \"v\" must be a number, not {v}");
                return Err(Response::error("bad_request", why));
            }
        }
    }
    serde_json::from_value(value).map_err(bad)
}

/// Checks a request's size and nesting before it is parsed, so a huge or
/// deeply nested body costs a scan, not an allocation per level.
fn check_bounds(body: &[u8], limit: usize) -> Result<(), Response> {
    check_size(body.len(), limit)?;
    let depth = json_depth(body);
    if depth > MAX_JSON_DEPTH {
        return Err(Response::error(
            "bad_request",
            format!("request nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}"),
        ));
    }
    Ok(())
}

/// Refuses a request of more than `limit` bytes.
fn check_size(bytes: usize, limit: usize) -> Result<(), Response> {
    if bytes > limit {
        return Err(Response::error(
            "too_large",
            format!("request of {bytes} bytes exceeds the limit of {limit} bytes"),
        ));
    }
    Ok(())
}

/// The deepest nesting of `[` and `{` in JSON text, strings skipped.
pub fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses a call request within the node's bounds: the parser the
/// gateway uses, public for fuzzing.
pub fn parse_call(body: &[u8], max_message_bytes: usize) -> Result<CallRequest, Response> {
    // JSON text is larger than its encoding, so twice the cap is generous.
    check_bounds(body, max_message_bytes.saturating_mul(2))?;
    serde_json::from_slice(body)
        .map_err(|e| Response::error("bad_request", format!("invalid request: {e}")))
}

/// Serves one call request.
pub(crate) async fn call(shared: &Shared, body: &[u8]) -> Response {
    let request = match parse_call(body, shared.config.max_message_bytes) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if let Some(v) = request.v.filter(|v| *v != GATEWAY_VERSION) {
        return unsupported(v.into());
    }
    let to: AgentId = match request.agent.parse() {
        Ok(id) => id,
        Err(e) => return Response::error("bad_request", e.to_string()),
    };
    if let Some(allowed) = &shared.config.gateway_allow {
        if !allowed.iter().any(|k| k == to.kind()) {
            return Response::error(
                "forbidden",
                format!("agent kind {} is not open to gateway calls", to.kind()),
            );
        }
    }
    let kind = match shared.registry.kind_of(&to) {
        Ok(kind) => kind.clone(),
        Err(e) => return e.into(),
    };
    let payload = match kind.message_from_json(&to, &request.msg) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    let trace = crate::trace::fresh();
    debug!(trace = %crate::trace::show(trace), agent = %to, "gateway call");
    if request.cast {
        return match crate::trace::scope(trace, async { shared.cast(to, payload) }).await {
            Ok(()) => Response::Ok(serde_json::Value::Null),
            Err(e) => e.into(),
        };
    }
    let timeout = request
        .timeout_ms
        .map_or(shared.config.call_timeout, Duration::from_millis);
    match crate::trace::scope(trace, shared.call(to.clone(), payload, timeout)).await {
        Ok(reply) => match kind.reply_to_json(&to, &reply) {
            Ok(json) => Response::Ok(json),
            Err(e) => e.into(),
        },
        Err(e) => e.into(),
    }
}

/// Serves one operator query.
pub(crate) async fn admin(shared: &Shared, nats: &async_nats::Client, body: &[u8]) -> Response {
    if let Err(response) = check_bounds(body, MAX_ADMIN_BYTES) {
        return response;
    }
    let request = match admin_request(body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let value = match request {
        AdminRequest::Members => serde_json::to_value(members(shared)),
        AdminRequest::Agents => {
            let names = shared.directory.names();
            let epochs = names
                .iter()
                .map(|a| shared.directory.epoch(a).unwrap_or(0))
                .collect();
            serde_json::to_value(AgentsReply {
                node: shared.config.name.clone(),
                agents: names.iter().map(|a| a.to_string()).collect(),
                failed: shared
                    .directory
                    .failed()
                    .into_iter()
                    .map(|(agent, reason)| FailedAgent {
                        agent: agent.to_string(),
                        reason,
                    })
                    .collect(),
                epochs,
            })
        }
        AdminRequest::Locate { agent } => {
            let id: AgentId = match agent.parse() {
                Ok(id) => id,
                Err(e) => return Response::error("bad_request", e.to_string()),
            };
            let node = match shared.locate(&id) {
                Location::Local => shared.config.name.clone(),
                Location::Remote(node) => node,
                Location::Nowhere(reason) => return Response::error("unavailable", reason),
            };
            Ok(serde_json::json!({ "node": node }))
        }
        AdminRequest::Stats => {
            let snapshot: StatsSnapshot = shared.stats.snapshot(shared.directory.len());
            serde_json::to_value(snapshot)
        }
        AdminRequest::Status => serde_json::to_value(status(shared, nats)),
        AdminRequest::Snapshot => match shared.take_snapshot().await {
            Ok(m) => serde_json::to_value(SnapshotView::from(&m)),
            Err(e) => return Response::error("snapshot_failed", e.to_string()),
        },
        AdminRequest::Snapshots { node } => {
            let node = node.unwrap_or_else(|| shared.config.name.clone());
            match shared.snapshots.list(&node).await {
                Ok(list) => {
                    serde_json::to_value(list.iter().map(SnapshotView::from).collect::<Vec<_>>())
                }
                Err(e) => return Response::error("snapshot_failed", e.to_string()),
            }
        }
        AdminRequest::Restore {
            from,
            snapshot,
            agent,
            progress,
        } => {
            // Progress goes to the caller's inbox as {"done": n, "total": m}.
            let (report, mut reports) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
            if let Some(subject) = progress {
                let nats = nats.clone();
                tokio::spawn(async move {
                    while let Some((done, total)) = reports.recv().await {
                        let body = serde_json::json!({"done": done, "total": total});
                        let _ = nats.publish(subject.clone(), body.to_string().into()).await;
                    }
                });
            }
            let progress = move |done, total| {
                let _ = report.send((done, total));
            };
            let agent = match agent.map(|a| a.parse::<AgentId>()).transpose() {
                Ok(agent) => agent,
                Err(e) => return Response::error("bad_request", e.to_string()),
            };
            let from = from.unwrap_or_else(|| shared.config.name.clone());
            match shared
                .restore(&from, snapshot.as_deref(), agent.as_ref(), &progress)
                .await
            {
                Ok(report) if agent.is_some() && report.agents == 0 => {
                    return Response::error(
                        "not_found",
                        format!(
                            "snapshot {} of {from} does not hold that agent",
                            report.snapshot
                        ),
                    )
                }
                Ok(report) => serde_json::to_value(report),
                Err(e) => return Response::error("restore_failed", e.to_string()),
            }
        }
        AdminRequest::Drain => serde_json::to_value(drain(shared, true)),
        AdminRequest::Undrain => serde_json::to_value(drain(shared, false)),
    };
    Response::Ok(value.expect("admin replies encode"))
}

fn status(shared: &Shared, nats: &async_nats::Client) -> NodeStatus {
    let now_ms = crate::roster::now_ms();
    let last = shared
        .last_snapshot_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let connected = nats.connection_state() == async_nats::connection::State::Connected;
    NodeStatus {
        node: shared.config.name.clone(),
        zone: shared.config.zone.clone(),
        software: crate::SOFTWARE_VERSION.to_owned(),
        uptime_s: now_ms.saturating_sub(shared.started_ms) / 1000,
        agents: shared.directory.len() as u64,
        failed: shared.directory.failed().len() as u64,
        has_records: !shared.store.is_empty(),
        snapshot_age_s: (last > 0).then(|| now_ms.saturating_sub(last) / 1000),
        snapshot_interval_s: shared.config.snapshot_interval.as_secs(),
        not_ready: shared
            .readiness(connected)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

/// Sets the node's draining state, announces a change at once, and
/// reports progress.
fn drain(shared: &Shared, on: bool) -> DrainReply {
    use std::sync::atomic::Ordering;
    let was = shared.draining.swap(on, Ordering::AcqRel);
    if was != on {
        tracing::info!(draining = on, "draining state changed");
        shared.announce_now.notify_one();
    }
    let blocked = if on {
        shared.plan_moves(usize::MAX).blocked
    } else {
        Vec::new()
    };
    DrainReply {
        node: shared.config.name.clone(),
        draining: on,
        // Agents pinned to this node (workers) stay; they take no work
        // while it drains.
        agents: shared
            .directory
            .names()
            .iter()
            .filter(|id| shared.pinned_node(id).is_none())
            .count(),
        moved: shared.moves.moved.load(Ordering::Relaxed),
        blocked: blocked
            .into_iter()
            .map(|(agent, reason)| FailedAgent {
                agent: agent.to_string(),
                reason,
            })
            .collect(),
    }
}

fn members(shared: &Shared) -> MembersReply {
    let now = Instant::now();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let age = |started_ms: u64| now_ms.saturating_sub(started_ms) / 1000;
    let links = shared.links.read().expect("link table lock");
    let view = shared.members.read().expect("members lock");
    let me = shared.announcement();
    let mut out = vec![MemberView {
        name: me.name,
        zone: me.zone,
        kind: me.kind.to_string(),
        capabilities: me.capabilities,
        status: "alive".into(),
        linked: true,
        address: me.link.to_string(),
        software: me.software,
        wire: format!("{}", shared.config.wire_versions),
        state_versions: me.state_versions,
        age_s: age(me.started_ms),
        this: true,
        lease: shared.ownership.as_ref().map(|o| o.lease_valid()),
        draining: me.draining,
    }];
    for member in view.iter() {
        let info = &member.info;

        out.push(MemberView {
            name: info.name.clone(),
            zone: info.zone.clone(),
            kind: info.kind.to_string(),
            capabilities: info.capabilities.clone(),
            status: view.status(member, now).as_str().to_owned(),
            linked: links.contains_key(&info.name),
            address: info.link.to_string(),
            software: info.software.clone(),
            wire: crate::wire::VersionRange {
                min: info.wire_min,
                max: info.wire_max,
            }
            .to_string(),
            state_versions: info.state_versions.clone(),
            age_s: age(info.started_ms),
            this: false,
            lease: shared.ownership.as_ref().map(|o| o.is_alive(&info.name)),
            draining: info.draining,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    MembersReply {
        node: shared.config.name.clone(),
        members: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_count: usize, max_bytes: usize) -> Arc<Gate> {
        Arc::new(Gate {
            what: "gateway calls",
            max_count,
            max_bytes,
            inflight: Default::default(),
            used: Mutex::default(),
        })
    }

    #[test]
    fn a_gate_refuses_past_its_count_and_takes_requests_again_once_answered() {
        let gate = gate(2, 1000);
        let first = gate.try_admit(10).unwrap();
        let _second = gate.try_admit(10).unwrap();
        let busy = gate.try_admit(10).unwrap_err();
        let Response::Error(e) = busy.response("par-1") else {
            panic!("a refusal is an error");
        };
        assert_eq!(e.code, "unavailable");
        assert_eq!(
            e.message,
            "node par-1 is busy: 2 gateway calls in flight; retry later"
        );
        assert_eq!(gate.inflight.get(), 2);

        drop(first);
        assert_eq!(gate.inflight.get(), 1);
        gate.try_admit(10).unwrap();
    }

    #[test]
    fn a_gate_refuses_past_its_bytes_and_takes_them_back_when_dropped() {
        let gate = gate(10, 1000);
        let big = gate.try_admit(900).unwrap();
        let busy = gate.try_admit(200).unwrap_err();
        assert_eq!(
            busy,
            Busy::Bytes {
                what: "gateway calls",
                max: 1000
            }
        );
        let _small = gate.try_admit(100).unwrap();
        drop(big);
        let _again = gate.try_admit(900).unwrap();
        let used = *gate.used.lock().unwrap();
        assert_eq!(used, (2, 1000));
    }
}
