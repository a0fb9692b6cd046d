//! A node: what it shares between its parts, and how a message is routed.
//!
//! Routing a call, in order:
//! 1. the encoded message is checked against the size cap, so an oversized
//!    one fails at the sender and never reaches a link;
//! 2. the directory says where the agent lives: live here, or placed by
//!    rendezvous hashing over this node and the peers it has a link to;
//! 3. here: the message goes to the agent's actor (activated if needed);
//!    elsewhere: a `Call` frame goes over the link and the reply slot waits
//!    in `pending` under a fresh id;
//! 4. the reply, the deadline, or the loss of the link ends the wait,
//!    whichever comes first; a late reply finds no slot and is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actors::{AgentId, CallError, Caller, Registry};
use futures::future::BoxFuture;
use futures::FutureExt;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::directory::{Directory, Location};
use crate::link::{self, Link, LinkEvent, LinkFrame};
use crate::membership::{Announcement, Membership, ANNOUNCEMENT_VERSION};
use crate::metrics::Stats;
use crate::ownership::{self, Ownership};
use crate::snapshot::{self, Catalog, Manifest, RestoreReport, SnapshotError, Snapshots};
use crate::storage::{Record, Store};
use crate::supervision::{Delivery, ReplySlot, ReplyTo, Supervisor, SupervisorMessage};
use crate::wire::{self, Frame};
use crate::{discovery, gateway};

/// How often a retry looks for the agent's new owner.
const RETRY_POLL: Duration = Duration::from_millis(25);
/// How many times a call may be forwarded between nodes.
const MAX_HOPS: u8 = 3;

/// A call waiting for its reply from another node.
#[derive(Debug)]
struct Pending {
    node: String,
    agent: String,
    reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
}

/// State shared by every part of a node.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) incarnation: u64,
    pub(crate) started_ms: u64,
    pub(crate) registry: Arc<Registry>,
    pub(crate) members: RwLock<Membership>,
    pub(crate) links: RwLock<HashMap<String, Link>>,
    pub(crate) directory: Directory,
    pub(crate) stats: Stats,
    pub(crate) link_events: mpsc::UnboundedSender<LinkEvent>,
    pub(crate) store: Store,
    pub(crate) snapshots: Snapshots,
    pub(crate) catalog: tokio::sync::Mutex<Catalog>,
    pub(crate) bucket: Option<async_nats::jetstream::kv::Store>,
    pub(crate) ownership: Option<Arc<Ownership>>,
    /// Serializes snapshots and restores of this node.
    pub(crate) snapshot_lock: tokio::sync::Mutex<()>,
    pub(crate) last_snapshot_ms: AtomicU64,
    /// Woken after each snapshot, so the roster shows it at once.
    pub(crate) roster_wake: tokio::sync::Notify,
    /// Set once shutdown begins: no new activations.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// Set once the node has announced itself.
    pub(crate) announced: std::sync::atomic::AtomicBool,
    /// When this node last refused an announcement on its cluster's
    /// subject (Unix ms; 0: never): a node with another secret is there.
    pub(crate) refused_ms: AtomicU64,
    /// Since when this node has seen other nodes of its cluster while it
    /// had a link to none of them (Unix ms; 0: it has not).
    pub(crate) cut_off_ms: AtomicU64,
    /// Set while the node is drained: placement skips it.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Wakes discovery to announce at once (the draining state changed).
    pub(crate) announce_now: tokio::sync::Notify,
    /// Agents being handed off, and nodes that attract agents.
    pub(crate) moves: crate::rebalance::Moves,
    /// What agents may know about this node (zone, kind, capabilities).
    pub(crate) facts: Arc<actors::NodeFacts>,
    name: Arc<str>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_call: AtomicU64,
    supervisor: OnceLock<ActorRef<SupervisorMessage>>,
    me: Weak<Shared>,
}

/// The most casts one actor message carries (see [`Group`]).
const MAX_GROUP: usize = 256;

/// Casts that arrived together for one live agent, not yet sent to its
/// actor: they go as one actor message, which spares the mailbox work of
/// one message per cast. Held only while one batch's frames are handled,
/// and always sent before any frame handled after them, so every agent
/// still sees its messages in link order.
#[derive(Default)]
pub(crate) struct Group(Option<(ActorRef<Delivery>, Delivery)>);

/// The mesh as seen from code running on one node.
#[derive(Debug, Clone)]
struct NodeCaller(Weak<Shared>);

impl Caller for NodeCaller {
    fn call(
        &self,
        to: AgentId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>> {
        let shared = self.0.upgrade();
        async move {
            match shared {
                Some(shared) => shared.call(to, payload, timeout).await,
                None => Err(stopping(&to)),
            }
        }
        .boxed()
    }

    fn cast(&self, to: AgentId, payload: Vec<u8>) -> Result<(), CallError> {
        match self.0.upgrade() {
            Some(shared) => shared.cast(to, payload),
            None => Err(stopping(&to)),
        }
    }
}

/// Runs `f` with `id` as text (the placement key), written into a reused
/// buffer: placement runs for every message to an agent not live here.
pub(crate) fn with_placement_key<R>(id: &AgentId, f: impl FnOnce(&str) -> R) -> R {
    use std::fmt::Write as _;
    thread_local! {
        static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    KEY.with_borrow_mut(|key| {
        key.clear();
        let _ = write!(key, "{id}");
        f(key)
    })
}

fn stopping(to: &AgentId) -> CallError {
    CallError::Unavailable {
        agent: to.to_string(),
        reason: "the node is stopping".into(),
    }
}

impl Shared {
    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    /// A [`Caller`] for agents on this node.
    pub(crate) fn caller(&self) -> Arc<dyn Caller> {
        Arc::new(NodeCaller(self.me.clone()))
    }

    /// This node's announcement.
    pub(crate) fn announcement(&self) -> Announcement {
        let c = &self.config;
        Announcement {
            v: ANNOUNCEMENT_VERSION,
            name: c.name.clone(),
            zone: c.zone.clone(),
            kind: c.kind,
            capabilities: c.capabilities.clone(),
            link: c.advertise,
            software: crate::SOFTWARE_VERSION.into(),
            wire_min: c.wire_versions.min,
            wire_max: c.wire_versions.max,
            incarnation: self.incarnation,
            started_ms: self.started_ms,
            draining: self.draining.load(Ordering::Acquire),
            state_versions: self
                .registry
                .names()
                .filter_map(|k| Some((k.to_owned(), self.registry.get(k)?.state_version())))
                .collect(),
        }
    }

    /// Where messages for agent `id` go: where it is live, else to its
    /// owner if that node is alive and linked, else where placement puts it
    /// among this node and the peers it has a link to.
    pub(crate) fn locate(&self, id: &AgentId) -> Location {
        if self.directory.is_live(id) {
            return Location::Local;
        }
        if let Some(node) = self.pinned_node(id) {
            return match node == self.config.name {
                true => Location::Local,
                false => Location::Remote(node.to_owned()),
            };
        }
        let links = self.links.read().expect("link table lock");
        let mut lost_from = None;
        if let Some(ownership) = &self.ownership {
            if let Some(owner) = ownership.cached_owner(id) {
                if owner.node == self.config.name {
                    return Location::Local;
                }
                if links.contains_key(&owner.node) && ownership.is_alive(&owner.node) {
                    return Location::Remote(owner.node);
                }
                lost_from = Some(owner.node);
            }
        }
        self.place(id, &links, lost_from)
    }

    /// The placement rule of kinds that pin their agents to one node
    /// (workers): such an agent lives there or nowhere, never failing over.
    pub(crate) fn pinned_node<'a>(&self, id: &'a AgentId) -> Option<&'a str> {
        self.registry.get(id.kind())?.pinned_node(id.name())
    }

    fn check_size(&self, payload: &[u8]) -> Result<(), CallError> {
        let max = self.config.max_message_bytes;
        if payload.len() > max {
            return Err(CallError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        Ok(())
    }

    /// Calls agent `to` and waits at most `timeout` for its reply.
    ///
    /// A message the kind marks idempotent is tried once more, on the new
    /// owner, when the node that had it is lost mid-call.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call: its pending slot is removed
    /// when the reply or the link loss comes, and nothing else is held.
    pub(crate) async fn call(
        &self,
        to: AgentId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.check_size(&payload)?;
        let kind = self.registry.kind_of(&to)?;
        let started = Instant::now();
        let deadline = started + timeout;
        let retry = kind.is_idempotent(&payload).then(|| payload.clone());
        let first = self.call_once(to.clone(), payload, deadline, None).await;
        let (Err(CallError::NodeLost { node, .. }), Some(payload)) = (&first, retry) else {
            self.stats
                .call_seconds
                .observe(started.elapsed().as_secs_f64());
            return first;
        };
        // Wait until the agent has somewhere else to go, then try once more.
        let lost = node.clone();
        while Instant::now() < deadline {
            if self.locate(&to) != Location::Remote(lost.clone()) {
                debug!(agent = %to, lost = %lost, "retrying an idempotent call on the new owner");
                return self.call_once(to, payload, deadline, None).await;
            }
            tokio::time::sleep(RETRY_POLL).await;
        }
        first
    }

    /// Sends one call, to `via` if given (forwarding) or where `locate`
    /// says, and waits for the reply until `deadline`.
    pub(crate) async fn call_once(
        &self,
        to: AgentId,
        payload: Vec<u8>,
        deadline: Instant,
        via: Option<(String, u8)>,
    ) -> Result<Vec<u8>, CallError> {
        let (tx, rx) = oneshot::channel();
        let agent = to.to_string();
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (location, hops) = match via {
            Some((node, hops)) => (Location::Remote(node), hops),
            None => (self.locate(&to), 0),
        };
        let id = match location {
            Location::Local => {
                let reply = ReplySlot::for_call(ReplyTo::Local(tx), &to, self.strong());
                self.deliver(Delivery {
                    to,
                    payload,
                    reply,
                    hops,
                    timeout,
                    trace: crate::trace::current(),
                    more: Vec::new(),
                });
                None
            }
            Location::Remote(node) => Some(self.send_call(node, to, payload, timeout, tx, hops)?),
            Location::Nowhere(reason) => return Err(CallError::Unavailable { agent, reason }),
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Internal {
                reason: format!("the reply slot for {agent} was dropped"),
            }),
            Err(_) => {
                if let Some(id) = id {
                    self.pending.lock().expect("pending lock").remove(&id);
                }
                Err(CallError::Timeout {
                    agent,
                    ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Sends a delivery that reached the wrong node on to `node`, unless it
    /// has travelled too far already.
    pub(crate) fn forward(self: &Arc<Self>, delivery: Delivery, node: String) {
        let Delivery {
            to,
            payload,
            reply,
            hops,
            timeout,
            trace,
            more,
        } = delivery;
        for delivery in more {
            self.forward(delivery, node.clone());
        }
        if hops >= MAX_HOPS {
            let agent = to.to_string();
            let reason = format!("ownership moved {hops} times in flight; try again");
            return reply.send(Err(CallError::Unavailable { agent, reason }));
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            let forwarded = shared.call_once(to, payload, deadline, Some((node, hops + 1)));
            let result = crate::trace::scope(trace, forwarded).await;
            reply.send(result);
        });
    }

    fn send_call(
        &self,
        node: String,
        to: AgentId,
        payload: Vec<u8>,
        timeout: Duration,
        reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
        hops: u8,
    ) -> Result<u64, CallError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let agent = to.to_string();
        let trace = crate::trace::current();
        debug!(trace = %crate::trace::show(trace), agent = %agent, peer = %node, "call sent");
        let frame = Frame::Call {
            id,
            from: self.config.name.clone(),
            to,
            timeout_ms: timeout.as_millis() as u64,
            hops,
            trace,
            payload,
        };
        self.pending.lock().expect("pending lock").insert(
            id,
            Pending {
                node: node.clone(),
                agent: agent.clone(),
                reply,
            },
        );
        if let Err(reason) = self.send_frame(&node, &frame) {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(CallError::Unavailable { agent, reason });
        }
        self.stats.calls_out.inc();
        Ok(id)
    }

    /// Sends `payload` to `to` without waiting.
    pub(crate) fn cast(&self, to: AgentId, payload: Vec<u8>) -> Result<(), CallError> {
        self.check_size(&payload)?;
        self.registry.kind_of(&to)?;
        match self.locate(&to) {
            Location::Local => {
                self.cast_here(to, payload, crate::trace::current());
                Ok(())
            }
            Location::Remote(node) => {
                let trace = crate::trace::current();
                let frame = Frame::TracedCast { to, trace, payload };
                self.send_frame(&node, &frame).map_err(|reason| {
                    let Frame::TracedCast { to, .. } = frame else {
                        unreachable!("built as a traced cast above")
                    };
                    CallError::Unavailable {
                        agent: to.to_string(),
                        reason,
                    }
                })
            }
            Location::Nowhere(reason) => Err(CallError::Unavailable {
                agent: to.to_string(),
                reason,
            }),
        }
    }

    /// Delivers a cast of trace `trace` to an agent of this node.
    fn cast_here(&self, to: AgentId, payload: Vec<u8>, trace: u64) {
        self.deliver(self.cast_delivery(to, payload, trace));
    }

    /// A cast to an agent of this node, as its actor receives it.
    fn cast_delivery(&self, to: AgentId, payload: Vec<u8>, trace: u64) -> Delivery {
        Delivery {
            to,
            payload,
            reply: ReplySlot::new(ReplyTo::Nobody, self.strong()),
            hops: 0,
            timeout: self.config.call_timeout,
            trace,
            more: Vec::new(),
        }
    }

    /// [`Shared::cast_here`] for one of several frames that arrived
    /// together: a cast to the live agent that `group` holds casts for
    /// joins them; any other sends them first.
    fn cast_here_via(&self, to: AgentId, payload: Vec<u8>, trace: u64, group: &mut Group) {
        let delivery = self.cast_delivery(to, payload, trace);
        if let Some((_, head)) = &mut group.0 {
            if head.to == delivery.to
                && head.more.len() < MAX_GROUP
                && !self.moves.is_moving(&delivery.to)
            {
                head.more.push(delivery);
                return;
            }
        }
        self.send_group(group);
        if !self.moves.is_moving(&delivery.to) {
            if let Some(actor) = self.directory.live(&delivery.to) {
                group.0 = Some((actor, delivery));
                return;
            }
        }
        self.deliver(delivery);
    }

    /// Sends the casts `group` holds to their agent's actor, as one message;
    /// if the actor stopped meanwhile, each goes the usual way.
    pub(crate) fn send_group(&self, group: &mut Group) {
        let Some((actor, head)) = group.0.take() else {
            return;
        };
        if let Err(ractor::MessagingErr::SendErr(head)) = actor.send_message(head) {
            for delivery in head.unpack() {
                self.deliver(delivery);
            }
        }
    }

    /// The node's supervisor.
    pub(crate) fn supervisor(&self) -> &ActorRef<SupervisorMessage> {
        self.supervisor
            .get()
            .expect("supervisor starts before traffic")
    }

    /// Hands a message to a local agent, activating it if needed.
    pub(crate) fn deliver(&self, delivery: Delivery) {
        if self.moves.is_moving(&delivery.to) {
            return self.strong().hold(delivery);
        }
        let delivery = match self.directory.live(&delivery.to) {
            Some(actor) => match actor.send_message(delivery) {
                Ok(()) => return,
                // The agent stopped since the lookup: reactivate it.
                Err(ractor::MessagingErr::SendErr(delivery)) => delivery,
                Err(_) => return,
            },
            None => delivery,
        };
        let supervisor = self
            .supervisor
            .get()
            .expect("supervisor starts before traffic");
        if let Err(ractor::MessagingErr::SendErr(SupervisorMessage::Deliver(d))) =
            supervisor.send_message(SupervisorMessage::Deliver(delivery))
        {
            d.reply.send(Err(stopping(&d.to)));
        }
    }

    /// Sends a frame to `node` over its link.
    pub(crate) fn send_frame(&self, node: &str, frame: &Frame) -> Result<(), String> {
        let link = self
            .links
            .read()
            .expect("link table lock")
            .get(node)
            .cloned()
            .ok_or_else(|| format!("no link to node {node}"))?;
        let bytes = wire::encode(link.version, frame).map_err(|e| e.to_string())?;
        if bytes.len() > wire::MAX_FRAME_BYTES {
            return Err(format!(
                "frame of {} bytes is over the link limit",
                bytes.len()
            ));
        }
        let batch = matches!(frame, Frame::Cast { .. } | Frame::TracedCast { .. });
        link.send(bytes, batch)
            .map_err(|e| format!("link to node {node}: {e}"))?;
        self.stats.frames_out.inc();
        Ok(())
    }

    /// Acts on a frame that arrived from a peer.
    pub(crate) fn receive(&self, frame: Frame) {
        let mut group = Group::default();
        self.receive_via(frame, &mut group);
        self.send_group(&mut group);
    }

    /// [`Shared::receive`] for one of several frames that arrived together
    /// (a batch): consecutive casts to one live agent are held in `group`,
    /// and sent when a frame of another kind or for another agent comes,
    /// or by the caller after the last frame ([`Shared::send_group`]).
    pub(crate) fn receive_via(&self, frame: Frame, group: &mut Group) {
        if !matches!(frame, Frame::Cast { .. } | Frame::TracedCast { .. }) {
            self.send_group(group);
        }
        match frame {
            Frame::Call {
                id,
                from,
                to,
                payload,
                hops,
                timeout_ms,
                trace,
            } => {
                self.stats.calls_in.inc();
                debug!(
                    trace = %crate::trace::show(trace),
                    agent = %to,
                    peer = %from,
                    "call received"
                );
                let reply =
                    ReplySlot::for_call(ReplyTo::Remote { node: from, id }, &to, self.strong());
                self.deliver(Delivery {
                    to,
                    payload,
                    reply,
                    hops,
                    timeout: Duration::from_millis(timeout_ms),
                    trace,
                    more: Vec::new(),
                });
            }
            // A version 1 peer's cast has no trace: it starts one here.
            Frame::Cast { to, payload } => {
                self.cast_here_via(to, payload, crate::trace::fresh(), group)
            }
            Frame::TracedCast { to, trace, payload } => {
                debug!(trace = %crate::trace::show(trace), agent = %to, "cast received");
                self.cast_here_via(to, payload, trace, group)
            }
            Frame::Reply { id, result } => {
                let pending = self.pending.lock().expect("pending lock").remove(&id);
                match pending {
                    Some(p) => {
                        let _ = p.reply.send(result);
                    }
                    None => debug!(id, "reply for a call that is no longer waiting"),
                }
            }
            Frame::Ping { nonce, from } => {
                let me = self.config.name.clone();
                let _ = self.send_frame(&from, &Frame::Pong { nonce, from: me });
            }
            Frame::Pong { from, .. } => {
                let _ = self.link_events.send(LinkEvent::Pong(from));
            }
            // The endpoint opens batches; one inside a batch is refused.
            Frame::Batch(_) => warn!("dropped a batch frame outside a link message"),
        }
    }

    /// Fails every call waiting on `node`: its link is gone.
    pub(crate) fn fail_calls_to(&self, node: &str) {
        let failed: Vec<Pending> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.node == node)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in failed {
            let _ = p.reply.send(Err(CallError::NodeLost {
                agent: p.agent,
                node: node.to_owned(),
            }));
        }
    }

    /// The whole-node gauges, for a scrape.
    pub(crate) fn gauges(&self, nats_connected: bool) -> crate::metrics::Gauges {
        let now = Instant::now();
        let mut members: BTreeMap<(String, String), i64> = BTreeMap::new();
        *members
            .entry((self.config.zone.clone(), "alive".into()))
            .or_default() += 1;
        {
            let view = self.members.read().expect("members lock");
            for member in view.iter() {
                let state = view.status(member, now).as_str().to_owned();
                *members
                    .entry((member.info.zone.clone(), state))
                    .or_default() += 1;
            }
        }
        let mut agents: BTreeMap<String, i64> = BTreeMap::new();
        for id in self.directory.names() {
            *agents.entry(id.kind().to_owned()).or_default() += 1;
        }
        let last = self.last_snapshot_ms.load(Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        crate::metrics::Gauges {
            members: members.into_iter().map(|((z, s), n)| (z, s, n)).collect(),
            agents: agents.into_iter().collect(),
            nats_connected,
            lease_valid: self.ownership.as_ref().is_some_and(|o| o.lease_valid()),
            store_bytes: self.store.size_on_disk(),
            disk: disk_space(&self.config.data_dir),
            snapshot_age_seconds: match last {
                0 if self.store.is_empty() => 0.0,
                0 => now_ms.saturating_sub(self.started_ms) as f64 / 1e3,
                last => now_ms.saturating_sub(last) as f64 / 1e3,
            },
        }
    }

    /// The readiness checks that fail now, each as one line.
    pub(crate) fn readiness(&self, nats_connected: bool) -> Vec<&'static str> {
        let mut failing = Vec::new();
        if !self.announced.load(Ordering::Relaxed) {
            failing.push("joined: the node has not announced itself yet");
        }
        if !nats_connected {
            failing.push("nats: not connected to NATS");
        }
        if self.store.is_closed() {
            failing.push("store: the state store is closed");
        }
        if !self.ownership.as_ref().is_some_and(|o| o.lease_valid()) {
            failing.push("lease: this node holds no valid ownership lease");
        }
        let cut_off = self.cut_off_ms.load(Ordering::Relaxed);
        if cut_off != 0
            && crate::signing::now_ms().saturating_sub(cut_off) >= self.cut_off_grace_ms()
        {
            failing.push(
                "links: this node sees other nodes of its cluster but has a link to none \
                 (check the cluster secret, the TLS CA and this node's certificate)",
            );
        }
        failing
    }

    /// How long a node may see peers without a link to any before it says
    /// it is cut off: a dead peer leaves the view within the member
    /// timeout, and a new link comes up within the link timeout.
    fn cut_off_grace_ms(&self) -> u64 {
        (self.config.member_timeout + self.config.link_timeout).as_millis() as u64
    }

    /// Notes whether this node sees other nodes of its cluster (members,
    /// or announcements it refused lately) while it has a link to none.
    pub(crate) fn note_cut_off(&self) {
        let now = crate::signing::now_ms();
        let refused = self.refused_ms.load(Ordering::Relaxed);
        let recent = self.config.member_timeout.as_millis() as u64;
        let sees_others = !self.members.read().expect("members lock").is_empty()
            || (refused != 0 && now.saturating_sub(refused) < recent);
        let linked = !self.links.read().expect("link table lock").is_empty();
        if !sees_others || linked {
            self.cut_off_ms.store(0, Ordering::Relaxed);
        } else if self.cut_off_ms.load(Ordering::Relaxed) == 0 {
            self.cut_off_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Takes a snapshot now and prunes old ones.
    pub(crate) async fn take_snapshot(&self) -> Result<Manifest, SnapshotError> {
        let _only_one = self.snapshot_lock.lock().await;
        let started = Instant::now();
        let taken = self.snapshots.take(&self.config.name, &self.store).await;
        let manifest = match taken {
            Ok(manifest) => manifest,
            Err(e) => {
                self.stats.snapshot_failures.inc();
                return Err(e);
            }
        };
        self.stats.snapshots.inc();
        self.stats.snapshot_bytes.inc_by(manifest.bytes);
        self.stats
            .snapshot_seconds
            .observe(started.elapsed().as_secs_f64());
        self.last_snapshot_ms
            .store(manifest.created_ms, Ordering::Relaxed);
        self.roster_wake.notify_one();
        let (keep, max_age) = (self.config.snapshot_keep, self.config.snapshot_max_age);
        if let Err(e) = self
            .snapshots
            .prune(&self.config.name, keep, max_age, &manifest.id)
            .await
        {
            warn!(error = %e, "cannot prune old snapshots");
        }
        Ok(manifest)
    }

    /// Restores every record of a snapshot of `node` into this node's
    /// store, stopping live agents so they reload.
    ///
    /// A restored record takes the highest epoch seen and a later sequence
    /// number, so it wins over what the store held without fencing the
    /// agent's next activation.
    pub(crate) async fn restore(
        &self,
        node: &str,
        only: Option<&str>,
        agent: Option<&AgentId>,
        progress: snapshot::Progress<'_>,
    ) -> Result<RestoreReport, SnapshotError> {
        let _only_one = self.snapshot_lock.lock().await;
        let (manifest, records, skipped) =
            self.snapshots.newest_readable(node, only, progress).await?;
        let mut report = RestoreReport {
            snapshot: manifest.id.clone(),
            bytes: manifest.bytes,
            skipped,
            ..RestoreReport::default()
        };
        for (id, record) in records {
            if agent.is_some_and(|a| *a != id) {
                continue;
            }
            if let Some(actor) = self.directory.live(&id) {
                self.directory.remove_actor(actor.get_id());
                actor.stop(Some("restored".into()));
            }
            let stored = self.store.load(&id).ok().flatten();
            // Epochs come from ownership only: a restore never invents one,
            // or the agent's next activation would be fenced by it. The
            // restored record sorts after the stored one by its sequence.
            let record = Record {
                epoch: stored
                    .as_ref()
                    .map_or(record.epoch, |s| s.epoch.max(record.epoch)),
                seq: stored
                    .as_ref()
                    .map_or(record.seq, |s| s.seq.max(record.seq) + 1),
                ..record
            };
            self.store
                .write(&id, record)
                .await
                .map_err(|e| SnapshotError::Storage(e.to_string()))?;
            report.agents += 1;
        }
        info!(
            source = %node,
            snapshot = %report.snapshot,
            agents = report.agents,
            skipped = report.skipped.len(),
            "restored from snapshot"
        );
        Ok(report)
    }

    /// Restores this node's newest snapshot if its store is empty (a new
    /// host, a wiped disk, a quarantined database).
    async fn restore_if_empty(&self) {
        if !self.store.is_empty() {
            return;
        }
        match self
            .restore(&self.config.name, None, None, &|_, _| {})
            .await
        {
            Ok(report) => {
                info!(
                    agents = report.agents,
                    snapshot = %report.snapshot,
                    "empty store restored from snapshot",
                )
            }
            Err(SnapshotError::None(_)) => {}
            Err(e) => warn!(error = %e, "empty store, and no snapshot could be restored"),
        }
    }

    fn strong(&self) -> Arc<Shared> {
        self.me.upgrade().expect("shared state outlives its users")
    }
}

/// How long shutdown waits for one agent to finish its queued messages.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// How often the node checks its own lease.
const FENCE_CHECK: Duration = Duration::from_millis(20);

/// Stops every live agent as soon as this node's lease lapses: another node
/// may take them over once the lease has expired in its view.
async fn fence_when_lease_lapses(shared: Arc<Shared>) {
    let ownership = shared.ownership.clone().expect("fencing needs ownership");
    let mut tick = tokio::time::interval(FENCE_CHECK);
    loop {
        tick.tick().await;
        if ownership.lease_valid() {
            continue;
        }
        let live = shared.directory.names();
        if live.is_empty() {
            continue;
        }
        warn!(agents = live.len(), "lease lapsed: stopping every agent");
        for id in live {
            if let Some(actor) = shared.directory.live(&id) {
                shared.directory.remove_actor(actor.get_id());
                actor.stop(Some("lease lapsed".into()));
            }
        }
    }
}

/// A NATS event callback that counts each connection regained after a
/// loss (the first connection is not a reconnect).
fn count_reconnects(
    counter: prometheus_client::metrics::counter::Counter,
) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    move |event| {
        match event {
            async_nats::Event::Disconnected => lost.store(true, Ordering::Relaxed),
            async_nats::Event::Connected if lost.swap(false, Ordering::Relaxed) => {
                counter.inc();
            }
            _ => {}
        }
        std::future::ready(())
    }
}

/// Free and total bytes of the file system holding `dir`.
fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    Some((fs2::available_space(dir).ok()?, fs2::total_space(dir).ok()?))
}

/// Takes a snapshot every interval; a failure is retried at the next tick.
async fn periodic_snapshots(shared: Arc<Shared>) {
    let interval = shared.config.snapshot_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.store.is_empty() {
            continue;
        }
        if let Err(e) = shared.take_snapshot().await {
            warn!(
                error = %e,
                target = %shared.snapshots.target,
                "periodic snapshot failed; the node keeps serving",
            );
        }
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    nats: async_nats::Client,
    server: ActorRef<ractor_cluster::NodeServerMessage>,
    endpoint: ActorRef<LinkFrame>,
    supervisor: ActorRef<SupervisorMessage>,
    discovery: discovery::Handle,
    gateway: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The roster bucket, marked at the end that this node left.
    roster: Option<async_nats::jetstream::kv::Store>,
}

impl Node {
    /// Connects to NATS, opens the link listener and joins the cluster.
    pub async fn start(config: Config, registry: Registry) -> anyhow::Result<Node> {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let started_ms = started.as_millis() as u64;
        let incarnation = (started_ms << 16) | u64::from(rand::random::<u16>());
        if config.secret.is_development() {
            warn!("no cluster secret configured: using the development secret");
        }
        if config.links == crate::config::LinkSecurity::Insecure {
            warn!(
                "links are plaintext (insecure): anyone on the network path can read \
                 them; use TLS (tls_ca, tls_cert, tls_key) beyond a development machine"
            );
        }

        let store = Store::open(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot open the state store: {e}"))?;
        let snapshots = snapshot::open_target(&config.snapshots, &config.cluster)
            .map_err(|e| anyhow::anyhow!("snapshots at {}: {e}", config.snapshots))?;
        let stats = Stats::default();
        let client_name = format!("mesh-node {}", config.name);
        let reconnects = count_reconnects(stats.nats_reconnects.clone());
        let nats =
            crate::connect_nats_with(&config.nats, &client_name, &config.nats_auth, |options| {
                options.event_callback(reconnects)
            })
            .await?;
        let bucket =
            match crate::state::open_bucket(&nats, &config.cluster, config.kv_replicas).await {
                Ok(bucket) => Some(bucket),
                Err(e) => {
                    warn!(error = %e, "replicated agents are unavailable");
                    None
                }
            };
        let ownership = match Ownership::open(
            &nats,
            &config.cluster,
            &config.name,
            incarnation,
            config.lease,
            config.kv_replicas,
        )
        .await
        {
            Ok(ownership) => Some(ownership),
            // Without the ownership table two nodes could run one agent:
            // refuse to start rather than serve unsafely.
            Err(e) => return Err(e.context("single activation needs the ownership bucket")),
        };
        let roster = match crate::roster::open(&nats, &config.cluster, config.kv_replicas).await {
            Ok(roster) => Some(roster),
            Err(e) => {
                warn!(error = %e, "the roster is unavailable: meshctl status misses this node");
                None
            }
        };
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let mut registry = registry;
        registry.tasks_mut().add_builtins(&config.exec_allow);
        let facts = Arc::new(actors::NodeFacts {
            node: config.name.clone(),
            zone: config.zone.clone(),
            region: topology::region_of(&config.zone).to_owned(),
            kind: config.kind.to_string(),
            capabilities: config.capabilities.clone(),
        });
        let shared = Arc::new_cyclic(|me| Shared {
            members: RwLock::new(Membership::new(&config.name, config.member_timeout)),
            name: Arc::from(config.name.as_str()),
            config,
            incarnation,
            started_ms,
            registry: Arc::new(registry),
            links: RwLock::new(HashMap::new()),
            directory: Directory::default(),
            stats,
            link_events: link_tx,
            store,
            snapshots,
            catalog: tokio::sync::Mutex::new(Catalog::default()),
            bucket,
            ownership,
            snapshot_lock: tokio::sync::Mutex::new(()),
            last_snapshot_ms: AtomicU64::new(0),
            roster_wake: tokio::sync::Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            announced: std::sync::atomic::AtomicBool::new(false),
            refused_ms: AtomicU64::new(0),
            cut_off_ms: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            announce_now: tokio::sync::Notify::new(),
            moves: crate::rebalance::Moves::default(),
            facts,
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            supervisor: OnceLock::new(),
            me: me.clone(),
        });

        shared.restore_if_empty().await;
        let (supervisor, _) = Actor::spawn(None, Supervisor, shared.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the supervisor: {e}"))?;
        shared
            .supervisor
            .set(supervisor.clone())
            .expect("supervisor is set once");
        let (server, endpoint) = link::spawn(shared.clone(), link_rx).await?;
        let gateway = gateway::spawn(shared.clone(), nats.clone()).await?;
        let discovery = discovery::spawn(shared.clone(), nats.clone()).await?;
        let snapshotter = tokio::spawn(periodic_snapshots(shared.clone()));
        let mut background = vec![snapshotter];
        if let Some(after) = shared.config.passivate_after {
            let sweeper = crate::supervision::passivate_idle(shared.clone(), after);
            background.push(tokio::spawn(sweeper));
        }
        if let Some(addr) = shared.config.metrics_listen {
            background.push(crate::health::spawn(shared.clone(), nats.clone(), addr).await?);
        }
        if let Some(ownership) = &shared.ownership {
            background.push(tokio::spawn(ownership::renew_forever(ownership.clone())));
            background.push(tokio::spawn(ownership::watch_forever(
                ownership.clone(),
                nats.clone(),
            )));
            background.push(tokio::spawn(fence_when_lease_lapses(shared.clone())));
        }
        if let Some(roster) = &roster {
            let refresh = crate::roster::refresh_forever(roster.clone(), shared.clone());
            background.push(tokio::spawn(refresh));
        }
        background.push(tokio::spawn(crate::rebalance::rebalance_forever(
            shared.clone(),
        )));
        background.extend(crate::army::spawn_workers(&shared));
        info!(
            node = %shared.config.name,
            cluster = %shared.config.cluster,
            zone = %shared.config.zone,
            link = %shared.config.advertise,
            "node started"
        );
        Ok(Node {
            shared,
            nats,
            server,
            endpoint,
            supervisor,
            discovery,
            gateway,
            background,
            roster,
        })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// How many agents are live on this node now.
    pub fn live_agents(&self) -> usize {
        self.shared.directory.len()
    }

    /// A way to call agents from code running on this node.
    pub fn caller(&self) -> Arc<dyn Caller> {
        self.shared.caller()
    }

    /// Leaves the cluster, in an order that loses nothing acknowledged:
    /// 1. say goodbye, so peers stop routing here, and refuse activations;
    /// 2. stop every agent after the messages already queued for it;
    /// 3. take a final snapshot, while the lease still keeps the agents
    ///    here, so whoever takes them over finds their last state;
    /// 4. release their ownership and this node's lease, so peers take
    ///    them over at once instead of after the lease;
    /// 5. close links and NATS.
    pub async fn shutdown(self) {
        info!(node = %self.shared.config.name, "node stopping");
        self.gateway.abort();
        self.shared.stopping.store(true, Ordering::Release);
        self.discovery.leave().await;
        let agents = self.shared.directory.names();
        for id in &agents {
            if let Some(actor) = self.shared.directory.live(id) {
                let _ = actor.drain_and_wait(Some(SHUTDOWN_DRAIN)).await;
            }
        }
        if !self.shared.store.is_empty() {
            if let Err(e) = self.shared.take_snapshot().await {
                warn!(error = %e, "final snapshot failed");
            }
        }
        if let Some(ownership) = &self.shared.ownership {
            for id in &agents {
                ownership.release(id).await;
            }
            ownership.leave().await;
        }
        for task in &self.background {
            task.abort();
        }
        if let Some(roster) = &self.roster {
            crate::roster::write(roster, &self.shared, true).await;
        }
        self.supervisor.stop(None);
        let links: Vec<(String, Link)> = {
            let links = self.shared.links.read().expect("link table lock");
            links.iter().map(|(p, l)| (p.clone(), l.clone())).collect()
        };
        for (peer, link) in &links {
            link::flush_dropped(peer, link);
        }
        let _ = self.shared.link_events.send(LinkEvent::Shutdown);
        self.endpoint.stop(None);
        self.server.stop(None);
        let _ = self.nats.flush().await;
        info!(node = %self.shared.config.name, "node stopped");
    }
}
