//! Links: one authenticated `ractor_cluster` connection per pair of nodes.
//!
//! Each node runs a `NodeServer` (the cluster secret is its cookie) and an
//! endpoint actor that joins the process group `<cluster>/<node>`; groups
//! are shared over links, so a peer's endpoint appears here as a remote
//! actor and frames are cast to it. The protocol:
//! 1. membership says a peer joined; the node whose name sorts first dials,
//!    so a pair makes one link, and redials with backoff and jitter;
//! 2. `ractor_cluster` authenticates both ends with the secret and reports
//!    the session ready;
//! 3. each side sends [`Hello`] to the peer's endpoint and marks the link up
//!    when the peer's hello arrives and a common frame version exists;
//!    a peer whose announced versions share none with ours is not dialed at
//!    all, and both sides log why when they see its announcement;
//! 4. a dropped session, or the peer leaving membership, takes the link
//!    down and fails every call waiting on it, so no call outlives its link.
//!
//! The invariant: a link is in the table only between the peer's hello and
//! the session's end, so a frame sent on it reaches that incarnation or
//! fails the caller.
//!
//! Batching: on a link of version [`wire::BATCH_VERSION`] or later, casts
//! wait in the link's [`Outbox`] for a flush task, which sends whatever
//! has queued by then as one [`Frame::Batch`]; any other frame (a call, a
//! reply, a ping) flushes the queue at once, itself last, so frames keep
//! their order on the link and only one-way messages ever wait, for no
//! longer than the runtime takes to run the flush task. A link that goes
//! down flushes its queue first, so a cast queued before is sent to the
//! peer as it would have been unbatched (and is lost with the session only
//! if the session is already gone, as an unbatched one would be).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{BytesConvertable, NodeEventSubscription, NodeServer, NodeServerMessage};
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::LinkSecurity;
use crate::membership::Change;
use crate::node::Shared;
use crate::tls::LinkTls;
use crate::wire::{self, Frame, Hello, Incoming, VersionRange};

/// The first redial delay; it doubles up to [`MAX_REDIAL_DELAY`].
const FIRST_REDIAL_DELAY: Duration = Duration::from_millis(300);
/// The longest redial delay.
const MAX_REDIAL_DELAY: Duration = Duration::from_secs(5);
/// How often the manager looks for peers to dial and links to ping.
const DIAL_TICK: Duration = Duration::from_millis(50);
/// How many pings fit in one link timeout.
const PINGS_PER_TIMEOUT: u32 = 4;
/// How long a connection may take to authenticate before it is closed, so
/// idle or trickling strangers cannot hold sockets and buffers.
const AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// Raw bytes of one frame, as cast to a peer's endpoint.
pub struct LinkFrame(pub Vec<u8>);

/// Only the size: a debug dump never shows what a link carries.
impl std::fmt::Debug for LinkFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkFrame({} bytes)", self.0.len())
    }
}

impl BytesConvertable for LinkFrame {
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        LinkFrame(bytes)
    }
}

/// A usable link to a peer.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    /// The peer's endpoint actor (remote).
    pub(crate) endpoint: ActorRef<LinkFrame>,
    /// The frame version both ends speak.
    pub(crate) version: u16,
    /// The peer's incarnation, from its hello.
    pub(crate) incarnation: u64,
    /// Casts waiting to be sent together.
    pub(crate) outbox: Arc<Outbox>,
}

/// The most frames one batch carries.
const MAX_BATCH_FRAMES: usize = 512;
/// A batch is sent once its frames reach this many bytes; a frame that
/// would take a batch past it goes after the batch, so a batch is never
/// larger than this plus one frame.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Frames queued for one link, each encoded as if sent alone.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    /// Whether a flush task is on its way.
    scheduled: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    frames: Vec<Vec<u8>>,
    bytes: usize,
}

impl Link {
    /// Sends `frame`, encoded; a cast (`batch`) may wait for others to
    /// share a batch with (see the module's documentation).
    pub(crate) fn send(&self, frame: Vec<u8>, batch: bool) -> Result<(), String> {
        if self.version < wire::BATCH_VERSION {
            return self.cast(frame);
        }
        let mut queue = self.outbox.queue.lock().expect("outbox lock");
        if !queue.frames.is_empty() && queue.bytes + frame.len() > MAX_BATCH_BYTES {
            self.flush(&mut queue)?;
        }
        queue.bytes += frame.len();
        queue.frames.push(frame);
        let full = queue.frames.len() >= MAX_BATCH_FRAMES || queue.bytes >= MAX_BATCH_BYTES;
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if batch && !full => runtime,
            _ => return self.flush(&mut queue),
        };
        drop(queue);
        if !self.outbox.scheduled.swap(true, Ordering::AcqRel) {
            let link = self.clone();
            runtime.spawn(async move {
                // Cleared first: a cast queued from here on schedules
                // another flush, and one queued before is sent by this one.
                link.outbox.scheduled.store(false, Ordering::Release);
                if let Err(e) = link.flush_now() {
                    debug!(error = %e, "queued casts were not sent");
                }
            });
        }
        Ok(())
    }

    /// Sends every queued frame now.
    pub(crate) fn flush_now(&self) -> Result<(), String> {
        let mut queue = self.outbox.queue.lock().expect("outbox lock");
        self.flush(&mut queue)
    }

    /// Sends every queued frame, as one batch if there are several. Runs
    /// with the queue locked, so that frames leave in queue order.
    fn flush(&self, queue: &mut Queue) -> Result<(), String> {
        queue.bytes = 0;
        let bytes = match queue.frames.len() {
            0 => return Ok(()),
            1 => queue.frames.pop().expect("one frame"),
            _ => wire::encode_batch(self.version, std::mem::take(&mut queue.frames))
                .map_err(|e| e.to_string())?,
        };
        self.cast(bytes)
    }

    fn cast(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.endpoint
            .cast(LinkFrame(bytes))
            .map_err(|_| "the link is closing".to_owned())
    }
}

/// Sends what a link leaving the table still has queued, to the session
/// it was queued for.
pub(crate) fn flush_dropped(peer: &str, link: &Link) {
    if let Err(e) = link.flush_now() {
        debug!(peer = %peer, error = %e, "casts queued on a closed link were lost");
    }
}

/// The process group of a node's endpoint.
pub(crate) fn group(cluster: &str, node: &str) -> String {
    format!("{cluster}/{node}")
}

/// What the link manager reacts to.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Membership changed.
    Member(Change),
    /// A `ractor_cluster` session changed state.
    Session(SessionEvent),
    /// A peer's hello arrived on our endpoint.
    Hello(Hello),
    /// A peer answered a ping.
    Pong(String),
    /// The node is stopping.
    Shutdown,
}

/// A `ractor_cluster` session event, reduced to what we use.
#[derive(Debug)]
pub(crate) struct SessionEvent {
    state: SessionState,
    at: Instant,
    is_server: bool,
    session: ActorId,
    peer: Option<String>,
    address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    Opened,
    Authenticated,
    Ready,
    Closed,
}

/// Forwards `NodeServer` events to the manager's channel.
struct EventForwarder(mpsc::UnboundedSender<LinkEvent>);

impl EventForwarder {
    fn send(&self, state: SessionState, ses: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send(LinkEvent::Session(SessionEvent {
            state,
            at: Instant::now(),
            is_server: ses.is_server,
            session: ses.actor.get_id(),
            // ractor_cluster names a peer `<node>@<host>`; we want `<node>`.
            peer: ses
                .peer_name
                .map(|n| n.name.split('@').next().unwrap_or_default().to_owned()),
            address: ses.peer_addr,
        }));
    }
}

impl NodeEventSubscription for EventForwarder {
    fn node_session_opened(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(SessionState::Opened, ses);
    }

    fn node_session_disconnected(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(SessionState::Closed, ses);
    }

    fn node_session_authenticated(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(SessionState::Authenticated, ses);
    }

    fn node_session_ready(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(SessionState::Ready, ses);
    }
}

/// The actor that receives every frame peers send to this node.
pub(crate) struct Endpoint;

impl Actor for Endpoint {
    type Msg = LinkFrame;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<LinkFrame>,
        shared: Arc<Shared>,
    ) -> Result<Arc<Shared>, ActorProcessingErr> {
        let group = group(&shared.config.cluster, &shared.config.name);
        ractor::pg::join(group, vec![myself.get_cell()]);
        Ok(shared)
    }

    async fn handle(
        &self,
        _: ActorRef<LinkFrame>,
        frame: LinkFrame,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        shared.stats.frames_in.inc();
        // A batch's frames are read where they lie in the link message.
        if let Some(frames) = wire::batch_frames(&frame.0) {
            match frames {
                Ok(frames) => receive_batch(shared, frames),
                Err(e) => warn!(error = %e, bytes = frame.0.len(), "dropped a bad link frame"),
            }
            return Ok(());
        }
        match wire::decode(&frame.0) {
            Ok(Incoming::Hello(hello)) => {
                let _ = shared.link_events.send(LinkEvent::Hello(hello));
            }
            Ok(Incoming::Frame(Frame::Batch(frames))) => receive_batch(shared, frames),
            Ok(Incoming::Frame(frame)) => shared.receive(frame),
            // A bad frame is the sender's bug or an attack; dropping it
            // keeps every other call on the link going.
            Err(e) => warn!(error = %e, bytes = frame.0.len(), "dropped a bad link frame"),
        }
        Ok(())
    }
}

/// Acts on the frames of a batch, in order.
fn receive_batch<B: AsRef<[u8]>>(shared: &Shared, frames: Vec<B>) {
    // The link message is counted already; count its frames.
    shared
        .stats
        .frames_in
        .inc_by(frames.len().saturating_sub(1) as u64);
    let mut group = crate::node::Group::default();
    for frame in wire::unbatch(frames) {
        match frame {
            Ok(frame) => shared.receive_via(frame, &mut group),
            // Like a bad frame alone: the others still count.
            Err(e) => warn!(error = %e, "dropped a bad frame of a batch"),
        }
    }
    shared.send_group(&mut group);
}

/// Dial bookkeeping for one peer this node is responsible for dialing.
#[derive(Debug)]
struct Dial {
    next: Instant,
    attempt: u32,
}

/// Everything the manager knows about sessions and dials.
struct Manager {
    shared: Arc<Shared>,
    server: ActorRef<NodeServerMessage>,
    /// Link TLS, unless links are plaintext.
    tls: Option<LinkTls>,
    /// Our TLS listener's task.
    acceptor: Option<tokio::task::JoinHandle<()>>,
    sessions: HashMap<ActorId, SessionEvent>,
    dials: HashMap<String, Dial>,
    /// When each linked peer last answered (or the link came up).
    heard: HashMap<String, Instant>,
    /// When pings were last sent.
    pinged: Instant,
    /// Members that share no frame version with this node: never dialed.
    incompatible: HashSet<String>,
}

/// Starts the link listener and the manager task.
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
) -> anyhow::Result<(ActorRef<NodeServerMessage>, ActorRef<LinkFrame>)> {
    let config = &shared.config;
    let tls = match &config.links {
        LinkSecurity::Tls { ca, cert, key } => Some(LinkTls::load(ca, cert, key)?),
        LinkSecurity::Insecure => None,
    };
    // With TLS, our own listener runs each handshake in its own task;
    // ractor_cluster's (which would run them one at a time) only listens
    // on a loopback port, behind the same TLS.
    let (listener, port, ip, mode) = match &tls {
        Some(tls) => (
            Some(
                tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot start the link listener on {}: {e}", config.listen)
                    })?,
            ),
            0,
            std::net::IpAddr::from([127, 0, 0, 1]),
            Some(ractor_cluster::IncomingEncryptionMode::Tls(tls.acceptor())),
        ),
        None => (None, config.listen.port(), config.listen.ip(), None),
    };
    let server = NodeServer::new(
        port,
        config.secret.expose().to_owned(),
        config.name.clone(),
        config.advertise.ip().to_string(),
        mode,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(ip)
    .with_max_inbound_frame_size(wire::MAX_FRAME_BYTES as u64);
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the link listener on {}: {e}", config.listen))?;
    let acceptor = match (&tls, listener) {
        (Some(tls), Some(listener)) => {
            Some(tokio::spawn(tls.clone().serve(listener, server.clone())))
        }
        _ => None,
    };
    server.cast(NodeServerMessage::SubscribeToEvents {
        id: "mesh-links".into(),
        subscription: Box::new(EventForwarder(shared.link_events.clone())),
    })?;
    let (endpoint, _) = Actor::spawn(None, Endpoint, shared.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the link endpoint: {e}"))?;

    let manager = Manager {
        shared,
        server: server.clone(),
        tls,
        acceptor,
        sessions: HashMap::new(),
        dials: HashMap::new(),
        heard: HashMap::new(),
        pinged: Instant::now(),
        incompatible: HashSet::new(),
    };
    tokio::spawn(manager.run(events));
    Ok((server, endpoint))
}

impl Manager {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<LinkEvent>) {
        let mut tick = tokio::time::interval(DIAL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(LinkEvent::Member(change)) => self.member_changed(change),
                    Some(LinkEvent::Session(event)) => self.session_changed(event),
                    Some(LinkEvent::Hello(hello)) => self.hello_received(hello),
                    Some(LinkEvent::Pong(peer)) => {
                        if let Some(heard) = self.heard.get_mut(&peer) {
                            *heard = Instant::now();
                        }
                    }
                    Some(LinkEvent::Shutdown) | None => break,
                },
                _ = tick.tick() => {
                    self.close_unauthenticated();
                    self.dial_due();
                    self.ping_links();
                }
            }
        }
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        debug!("link manager stopped");
    }

    fn member_changed(&mut self, change: Change) {
        match change {
            Change::Joined(info) => {
                let theirs = VersionRange {
                    min: info.wire_min,
                    max: info.wire_max,
                };
                if self.refuse_if_incompatible(&info.name, &info.software, theirs) {
                    return;
                }
                if self.shared.config.name < info.name {
                    self.dials.insert(
                        info.name,
                        Dial {
                            next: Instant::now(),
                            attempt: 0,
                        },
                    );
                }
            }
            Change::Left {
                name, incarnation, ..
            } => {
                // A newer incarnation may have linked already: keep it.
                let newer = self
                    .shared
                    .links
                    .read()
                    .expect("link table lock")
                    .get(&name)
                    .is_some_and(|link| link.incarnation > incarnation);
                if newer {
                    return;
                }
                self.incompatible.remove(&name);
                self.dials.remove(&name);
                self.drop_link(&name, "peer left the membership");
                // Close the session too: a frozen peer keeps its socket open,
                // and its next incarnation must not inherit it.
                for (id, session) in &self.sessions {
                    if session.peer.as_deref() == Some(name.as_str()) {
                        if let Some(cell) = ractor::registry::where_is_pid(*id) {
                            cell.stop(Some("peer left".into()));
                        }
                    }
                }
            }
        }
    }

    fn session_changed(&mut self, event: SessionEvent) {
        match event.state {
            SessionState::Opened => {
                debug!(address = %event.address, "link session opened");
                self.sessions.insert(event.session, event);
            }
            SessionState::Authenticated => {
                if !self.identity_checked(&event) {
                    return;
                }
                if let Some(known) = self.sessions.get_mut(&event.session) {
                    known.state = SessionState::Authenticated;
                    known.peer = event.peer;
                }
            }
            SessionState::Ready => self.session_ready(event),
            SessionState::Closed => self.session_closed(event),
        }
    }

    /// With TLS, whether an accepted session's certificate names the node
    /// its secret handshake claims to be; a session that fails is closed.
    fn identity_checked(&self, event: &SessionEvent) -> bool {
        let (Some(tls), true) = (&self.tls, event.is_server) else {
            return true;
        };
        let peer = event.peer.as_deref().unwrap_or_default();
        match tls.check_identity(&event.address, peer) {
            Ok(()) => true,
            Err(why) => {
                warn!(
                    address = %event.address,
                    peer = %peer,
                    reason = %why,
                    "link refused: certificate and node name disagree"
                );
                if let Some(cell) = ractor::registry::where_is_pid(event.session) {
                    cell.stop(Some("certificate mismatch".into()));
                }
                false
            }
        }
    }

    fn session_ready(&mut self, event: SessionEvent) {
        let Some(peer) = event.peer.clone() else {
            return;
        };
        if let Some(known) = self.sessions.get_mut(&event.session) {
            known.state = SessionState::Ready;
            known.peer = Some(peer.clone());
        }
        let Some(endpoint) = self.remote_endpoint(&peer) else {
            warn!(peer = %peer, "link ready but the peer's endpoint is not known");
            return;
        };
        let ours = self.shared.config.wire_versions;
        let hello = Hello {
            node: self.shared.config.name.clone(),
            incarnation: self.shared.incarnation,
            min_version: ours.min,
            max_version: ours.max,
            software: crate::SOFTWARE_VERSION.into(),
        };
        if endpoint
            .cast(LinkFrame(wire::encode_hello(&hello)))
            .is_err()
        {
            warn!(peer = %peer, "could not send hello");
        }
    }

    fn session_closed(&mut self, event: SessionEvent) {
        if let Some(tls) = &self.tls {
            tls.forget(&event.address);
        }
        let known = self.sessions.remove(&event.session);
        let authenticated = known
            .as_ref()
            .is_some_and(|s| s.state != SessionState::Opened);
        let peer = event.peer.or(known.and_then(|s| s.peer));
        if !authenticated {
            warn!(
                address = %event.address,
                peer = peer.as_deref().unwrap_or("unknown"),
                "link refused: the connection closed before authenticating (a wrong \
                 cluster secret, a bad frame, or not a mesh node)"
            );
            return;
        }
        if let Some(peer) = peer {
            // Another session to the same peer may have won an election.
            let other = self.sessions.values().any(|s| {
                s.peer.as_deref() == Some(peer.as_str()) && s.state == SessionState::Ready
            });
            if !other {
                self.drop_link(&peer, "session closed");
            }
        }
    }

    /// Logs and remembers a peer that shares no frame version with this
    /// node; returns whether it is one. Both sides of a refused pair log it,
    /// each from the other's announcement or hello.
    fn refuse_if_incompatible(&mut self, peer: &str, software: &str, theirs: VersionRange) -> bool {
        let ours = self.shared.config.wire_versions;
        if ours.negotiate(theirs).is_some() {
            return false;
        }
        if self.incompatible.insert(peer.to_owned()) {
            warn!(
                peer = %peer,
                peer_software = %software,
                peer_versions = %theirs,
                our_versions = %ours,
                "link refused: no common frame version; upgrade one node or the other",
            );
        }
        self.dials.remove(peer);
        true
    }

    fn hello_received(&mut self, hello: Hello) {
        let theirs = VersionRange {
            min: hello.min_version,
            max: hello.max_version,
        };
        if self.refuse_if_incompatible(&hello.node, &hello.software, theirs) {
            self.close_sessions(&hello.node);
            return;
        }
        let version = self
            .shared
            .config
            .wire_versions
            .negotiate(theirs)
            .expect("compatibility was checked");
        let Some(endpoint) = self.remote_endpoint(&hello.node) else {
            warn!(peer = %hello.node, "hello from a peer whose endpoint is not known");
            return;
        };
        let mut links = self.shared.links.write().expect("link table lock");
        // A repeated hello on the same session keeps the queue, so casts
        // already in it are not overtaken by later frames.
        let outbox = links
            .get(&hello.node)
            .filter(|old| {
                old.endpoint.get_id() == endpoint.get_id()
                    && old.version == version
                    && old.incarnation == hello.incarnation
            })
            .map(|old| old.outbox.clone())
            .unwrap_or_default();
        let link = Link {
            endpoint,
            version,
            incarnation: hello.incarnation,
            outbox,
        };
        let replaced = links.insert(hello.node.clone(), link);
        drop(links);
        if let Some(old) = &replaced {
            flush_dropped(&hello.node, old);
        }
        self.dials.remove(&hello.node);
        self.heard.insert(hello.node.clone(), Instant::now());
        if replaced.is_none() {
            self.shared.stats.links_up.inc();
            info!(peer = %hello.node, version, software = %hello.software, "link up");
        }
    }

    /// Pings every linked peer, and cuts links that stopped answering:
    /// `ractor_cluster` notices a closed socket, but not a frozen process or
    /// a network that drops packets.
    fn ping_links(&mut self) {
        let timeout = self.shared.config.link_timeout;
        let now = Instant::now();
        if now.duration_since(self.pinged) >= timeout / PINGS_PER_TIMEOUT {
            self.pinged = now;
            let ping = Frame::Ping {
                nonce: rand::random(),
                from: self.shared.config.name.clone(),
            };
            for peer in self.heard.keys() {
                let _ = self.shared.send_frame(peer, &ping);
            }
        }
        let silent: Vec<String> = self
            .heard
            .iter()
            .filter(|(_, heard)| now.duration_since(**heard) > timeout)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in silent {
            warn!(
                peer = %peer,
                timeout_ms = timeout.as_millis() as u64,
                "link silent: no answer to pings; cutting it",
            );
            self.drop_link(&peer, "no answer to pings");
            self.close_sessions(&peer);
        }
    }

    /// Closes connections that did not authenticate within
    /// [`AUTH_DEADLINE`].
    fn close_unauthenticated(&self) {
        let now = Instant::now();
        for (id, session) in &self.sessions {
            if session.state == SessionState::Opened
                && now.duration_since(session.at) > AUTH_DEADLINE
            {
                if let Some(cell) = ractor::registry::where_is_pid(*id) {
                    warn!(
                        address = %session.address,
                        "link refused: no authentication within {}s; closing",
                        AUTH_DEADLINE.as_secs()
                    );
                    cell.stop(Some("authentication deadline".into()));
                }
            }
        }
    }

    fn drop_link(&mut self, peer: &str, why: &str) {
        self.heard.remove(peer);
        let removed = self
            .shared
            .links
            .write()
            .expect("link table lock")
            .remove(peer);
        if let Some(link) = &removed {
            flush_dropped(peer, link);
            self.shared.stats.links_up.dec();
            info!(peer = %peer, reason = why, "link lost");
        }
        self.shared.fail_calls_to(peer);
        let still_member = self
            .shared
            .members
            .read()
            .expect("members lock")
            .get(peer)
            .is_some();
        let compatible = !self.incompatible.contains(peer);
        if still_member && compatible && self.shared.config.name.as_str() < peer {
            self.dials.entry(peer.to_owned()).or_insert(Dial {
                next: Instant::now() + FIRST_REDIAL_DELAY,
                attempt: 1,
            });
        }
    }

    fn close_sessions(&self, peer: &str) {
        for (id, session) in &self.sessions {
            if session.peer.as_deref() == Some(peer) {
                if let Some(cell) = ractor::registry::where_is_pid(*id) {
                    cell.stop(Some("incompatible".into()));
                }
            }
        }
    }

    /// The peer's endpoint, as the remote actor its group holds here.
    fn remote_endpoint(&self, peer: &str) -> Option<ActorRef<LinkFrame>> {
        let group = group(&self.shared.config.cluster, peer);
        ractor::pg::get_members(&group)
            .into_iter()
            .find(|cell: &ActorCell| !cell.get_id().is_local())
            .map(ActorRef::from)
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
        let links = self.shared.links.read().expect("link table lock").clone();
        let members = self.shared.members.read().expect("members lock");
        for (peer, dial) in self.dials.iter_mut() {
            if dial.next > now || links.contains_key(peer) {
                continue;
            }
            let busy = self
                .sessions
                .values()
                .any(|s| s.peer.as_deref() == Some(peer.as_str()));
            let Some(member) = members.get(peer) else {
                continue;
            };
            if busy {
                continue;
            }
            dial.attempt += 1;
            dial.next = now + redial_delay(dial.attempt);
            let address = member.info.link.to_string();
            let server = self.server.clone();
            let peer = peer.clone();
            let attempt = dial.attempt;
            let tls = self.tls.clone();
            tokio::spawn(async move {
                debug!(peer = %peer, address = %address, attempt, "dialing");
                let dialed = match &tls {
                    Some(tls) => tls.dial(&server, &address, &peer).await,
                    None => ractor_cluster::client_connect(&server, address.as_str())
                        .await
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = dialed {
                    if attempt <= 3 || attempt % 20 == 0 {
                        warn!(
                            peer = %peer,
                            address = %address,
                            attempt,
                            error = %e,
                            "cannot dial peer",
                        );
                    }
                }
            });
        }
    }
}

/// The delay before dial attempt `attempt + 1`: exponential, with jitter so
/// that nodes restarting together do not dial in lockstep.
fn redial_delay(attempt: u32) -> Duration {
    let base = FIRST_REDIAL_DELAY.saturating_mul(1 << attempt.min(6).saturating_sub(1));
    let base = base.min(MAX_REDIAL_DELAY);
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redial_delay_grows_then_stops_growing() {
        let d1 = redial_delay(1);
        assert!(d1 >= FIRST_REDIAL_DELAY.mul_f64(0.8) && d1 <= FIRST_REDIAL_DELAY.mul_f64(1.2));
        assert!(redial_delay(3) > FIRST_REDIAL_DELAY.mul_f64(1.2 * 2.0));
        for attempt in [8, 30, u32::MAX] {
            assert!(redial_delay(attempt) <= MAX_REDIAL_DELAY.mul_f64(1.2));
        }
    }

    /// A local stand-in for a peer's endpoint: hands on what it receives.
    struct Sink;

    impl Actor for Sink {
        type Msg = LinkFrame;
        type State = mpsc::UnboundedSender<Vec<u8>>;
        type Arguments = mpsc::UnboundedSender<Vec<u8>>;

        async fn pre_start(
            &self,
            _: ActorRef<LinkFrame>,
            out: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(out)
        }

        async fn handle(
            &self,
            _: ActorRef<LinkFrame>,
            frame: LinkFrame,
            out: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = out.send(frame.0);
            Ok(())
        }
    }

    async fn sink_link(version: u16) -> (Link, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (endpoint, _) = Actor::spawn(None, Sink, tx).await.unwrap();
        let link = Link {
            endpoint,
            version,
            incarnation: 1,
            outbox: Arc::default(),
        };
        (link, rx)
    }

    fn cast(i: usize, bytes: usize) -> Frame {
        Frame::Cast {
            to: format!("echo/e{i}").parse().unwrap(),
            payload: vec![7; bytes],
        }
    }

    fn call(id: u64) -> Frame {
        Frame::Call {
            id,
            from: "a".into(),
            to: "echo/e".parse().unwrap(),
            timeout_ms: 1000,
            hops: 0,
            trace: 1,
            payload: vec![1],
        }
    }

    /// Each link message received, as the frames it carries.
    async fn received(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>, n: usize) -> Vec<Vec<Frame>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let bytes = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a link message in time")
                .expect("the sink runs");
            out.push(match wire::decode(&bytes).unwrap() {
                Incoming::Frame(Frame::Batch(frames)) => {
                    wire::unbatch(frames).map(Result::unwrap).collect()
                }
                Incoming::Frame(frame) => vec![frame],
                Incoming::Hello(_) => panic!("a hello"),
            });
        }
        out
    }

    fn send(link: &Link, frame: &Frame) {
        let batch = matches!(frame, Frame::Cast { .. });
        link.send(wire::encode(link.version, frame).unwrap(), batch)
            .unwrap();
    }

    #[tokio::test]
    async fn queued_casts_leave_in_one_batch_before_the_call_that_follows() {
        let (link, mut rx) = sink_link(wire::BATCH_VERSION).await;
        let casts: Vec<Frame> = (0..100).map(|i| cast(i, 10)).collect();
        for frame in &casts {
            send(&link, frame);
        }
        // The current-thread runtime has not run the flush task yet: the
        // call flushes the queue, itself last.
        send(&link, &call(1));
        let mut expected = casts.clone();
        expected.push(call(1));
        assert_eq!(received(&mut rx, 1).await, vec![expected]);

        // A cast alone leaves with the flush task, as a plain frame.
        send(&link, &cast(0, 10));
        assert_eq!(received(&mut rx, 1).await, vec![vec![cast(0, 10)]]);
        link.endpoint.stop(None);
    }

    #[tokio::test]
    async fn batches_stay_bounded_and_keep_the_order() {
        let (link, mut rx) = sink_link(wire::BATCH_VERSION).await;
        // 100 casts of 10 KiB: batches of at most 256 KiB, in order.
        let casts: Vec<Frame> = (0..100).map(|i| cast(i, 10 * 1024)).collect();
        for frame in &casts {
            send(&link, frame);
        }
        link.flush_now().unwrap();
        let mut got = Vec::new();
        while got.len() < casts.len() {
            let batch = received(&mut rx, 1).await.remove(0);
            let bytes: usize = batch
                .iter()
                .map(|f| wire::encode(link.version, f).unwrap().len())
                .sum();
            assert!(bytes <= MAX_BATCH_BYTES, "a batch of {bytes} bytes");
            assert!(batch.len() > 1, "casts share batches");
            got.extend(batch);
        }
        assert_eq!(got, casts);

        // A frame larger than a batch goes alone, after what was queued.
        let big = cast(1, MAX_BATCH_BYTES + 1);
        send(&link, &cast(0, 10));
        send(&link, &big);
        assert_eq!(
            received(&mut rx, 2).await,
            vec![vec![cast(0, 10)], vec![big]]
        );
        link.endpoint.stop(None);
    }

    #[tokio::test]
    async fn a_version_2_link_sends_every_frame_alone_at_once() {
        let (link, mut rx) = sink_link(wire::BATCH_VERSION - 1).await;
        send(&link, &cast(0, 10));
        send(&link, &cast(1, 10));
        send(&link, &call(2));
        assert_eq!(
            received(&mut rx, 3).await,
            vec![vec![cast(0, 10)], vec![cast(1, 10)], vec![call(2)]]
        );
        link.endpoint.stop(None);
    }
}
