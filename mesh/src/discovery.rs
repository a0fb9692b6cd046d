//! Discovery: nodes find each other by announcing themselves on NATS.
//!
//! 1. A node publishes its [`Announcement`] every heartbeat, and once more
//!    at once when it sees a node it did not know, so a newcomer learns the
//!    cluster within a round trip instead of a heartbeat.
//! 2. Every node feeds announcements into its [`Membership`] and expires
//!    silent members after the member timeout; a frozen process stops
//!    announcing, so it leaves every view even though its sockets stay open.
//! 3. A stopping node publishes a goodbye, which removes it at once.
//! 4. Announcements and goodbyes are signed with the cluster secret and
//!    timestamped ([`crate::signing`]); a forged, altered, stale or replayed
//!    one is ignored and logged, so nobody without the secret can make
//!    nodes dial an attacker or drop a member.
//! 5. A signed announcement of a format version this node does not read
//!    (see [`ANNOUNCEMENT_VERSION`]) is ignored, and said so once per
//!    sender, so a node of an incompatible release is visibly left out, not
//!    silently; the version is read only after the signature checks out.
//! 6. A node that notices its own clock jumped (it was paused) forgives its
//!    peers' silence instead of declaring them all dead; so does a node that
//!    lost NATS, until it is back: placement freezes rather than splits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::link::LinkEvent;
use crate::membership::{Announcement, Change, ANNOUNCEMENT_VERSION};
use crate::node::Shared;
use crate::signing::{self, ReplayGuard, Signer, SigningError};
use crate::subjects;

/// The shortest gap between two log lines about refused messages, so a
/// flood of forgeries cannot flood the log.
const REFUSAL_LOG_GAP: Duration = Duration::from_secs(1);

/// The longest gap between two membership checks.
const MAX_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A stopping node's last word.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goodbye {
    /// The node's name.
    pub name: String,
    /// The incarnation that stops.
    pub incarnation: u64,
}

/// The discovery task, to stop it with a goodbye.
#[derive(Debug)]
pub(crate) struct Handle {
    leave: oneshot::Sender<oneshot::Sender<()>>,
}

impl Handle {
    /// Publishes the goodbye and stops announcing.
    pub(crate) async fn leave(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.leave.send(done_tx).is_ok() {
            let _ = done_rx.await;
        }
    }
}

/// Subscribes and starts announcing.
pub(crate) async fn spawn(shared: Arc<Shared>, nats: async_nats::Client) -> anyhow::Result<Handle> {
    let cluster = &shared.config.cluster;
    let announcements = nats.subscribe(subjects::announce(cluster)).await?;
    let goodbyes = nats.subscribe(subjects::goodbye(cluster)).await?;
    let (leave, leave_rx) = oneshot::channel();
    let task = Discovery {
        signer: Signer::new(&shared.config.secret),
        last_signed_ms: Default::default(),
        guard: ReplayGuard::default(),
        refusals: Refusals::default(),
        shared,
        nats,
        last_check: Instant::now(),
        frozen: false,
        impostor: None,
        foreign: std::collections::HashSet::new(),
    };
    tokio::spawn(task.run(announcements, goodbyes, leave_rx));
    Ok(Handle { leave })
}

struct Discovery {
    shared: Arc<Shared>,
    nats: async_nats::Client,
    last_check: Instant,
    /// Whether membership is frozen because NATS is unreachable.
    frozen: bool,
    /// The incarnation of another process seen announcing our name.
    impostor: Option<u64>,
    signer: Signer,
    /// The last timestamp this node signed: each is newer than the one
    /// before, or receivers would take a quick second message for a replay.
    last_signed_ms: std::sync::atomic::AtomicU64,
    guard: ReplayGuard,
    refusals: Refusals,
    /// Senders (name, version) already reported for an unreadable version.
    foreign: std::collections::HashSet<(String, u16)>,
}

/// Counts refused messages and logs each reason at most once per
/// [`REFUSAL_LOG_GAP`].
#[derive(Debug, Default)]
struct Refusals {
    last_log: HashMap<&'static str, Instant>,
    unlogged: u64,
}

impl Refusals {
    fn refused(&mut self, what: &str, claimed: Option<&str>, error: &SigningError) {
        let now = Instant::now();
        let reason = error.kind();
        if let Some(last) = self.last_log.get(reason) {
            if now.duration_since(*last) < REFUSAL_LOG_GAP {
                self.unlogged += 1;
                return;
            }
        }
        self.last_log.insert(reason, now);
        warn!(
            claimed_sender = claimed.unwrap_or("unknown"),
            also_refused_since_last_line = std::mem::take(&mut self.unlogged),
            "refused {what}: {error}"
        );
    }
}

/// The sender a message body claims, for log lines only (not trusted).
fn claimed_sender(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Claim {
        name: String,
    }
    let envelope: serde_json::Value = serde_json::from_slice(body).ok()?;
    let inner = envelope.get("body")?.as_str()?;
    let claim: Claim = serde_json::from_str(inner).ok()?;
    Some(claim.name.chars().take(64).collect())
}

/// The part of an announcement every format version has.
#[derive(Debug, Deserialize)]
struct Header {
    v: u16,
    name: String,
    #[serde(default)]
    software: String,
}

impl Discovery {
    async fn run(
        mut self,
        mut announcements: async_nats::Subscriber,
        mut goodbyes: async_nats::Subscriber,
        mut leave: oneshot::Receiver<oneshot::Sender<()>>,
    ) {
        let config = &self.shared.config;
        let mut heartbeat = tokio::time::interval(config.heartbeat);
        let mut check = tokio::time::interval(MAX_CHECK_INTERVAL.min(config.heartbeat));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.announce().await,
                // The draining state changed: say so at once.
                _ = shared.announce_now.notified() => self.announce().await,
                _ = check.tick() => self.check(),
                Some(msg) = announcements.next() => self.announced(&msg.payload).await,
                Some(msg) = goodbyes.next() => self.said_goodbye(&msg.payload),
                done = &mut leave => {
                    self.goodbye().await;
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    async fn announce(&self) {
        let body =
            serde_json::to_string(&self.shared.announcement()).expect("announcement encodes");
        let subject = subjects::announce(&self.shared.config.cluster);
        let sealed = self.signer.seal(&subject, body, self.next_ts());
        match self.nats.publish(subject, sealed.into()).await {
            Ok(()) => self
                .shared
                .announced
                .store(true, std::sync::atomic::Ordering::Relaxed),
            Err(e) => warn!(error = %e, "cannot announce"),
        }
    }

    /// A signing time newer than every earlier one.
    fn next_ts(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        // Only the discovery task signs, so load then store cannot race.
        let ts = signing::now_ms().max(self.last_signed_ms.load(Relaxed) + 1);
        self.last_signed_ms.store(ts, Relaxed);
        ts
    }

    /// Checks a signed message; `None` (logged) if it must be ignored.
    fn open(&mut self, what: &str, subject: &str, payload: &[u8]) -> Option<(u64, String)> {
        match self.signer.open(subject, payload, signing::now_ms()) {
            Ok(opened) => Some(opened),
            Err(e) => {
                let now = signing::now_ms();
                self.shared
                    .refused_ms
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                let claimed = claimed_sender(payload);
                self.refusals.refused(what, claimed.as_deref(), &e);
                None
            }
        }
    }

    /// Refuses a replay of a message already seen from this sender.
    fn fresh(&mut self, what: &str, name: &str, incarnation: u64, ts_ms: u64) -> bool {
        match self
            .guard
            .check(name, incarnation, ts_ms, signing::now_ms())
        {
            Ok(()) => true,
            Err(e) => {
                self.refusals.refused(what, Some(name), &e);
                false
            }
        }
    }

    /// Whether an opened announcement is of the format this node reads;
    /// one of another format is reported once per sender and version.
    ///
    /// Only signed bodies get here, so nobody without the cluster secret
    /// can make a node log about versions.
    fn readable_version(&mut self, body: &str) -> bool {
        // The version first: a newer format need not parse as ours.
        let Ok(head) = serde_json::from_str::<Header>(body) else {
            // Not even the common part: the full parse will say why.
            return true;
        };
        if head.v == ANNOUNCEMENT_VERSION {
            return true;
        }
        if self.foreign.insert((head.name.clone(), head.v)) {
            warn!(
                peer = %head.name,
                peer_software = %head.software,
                v = head.v,
                ours = ANNOUNCEMENT_VERSION,
                "ignored announcements of a format this node does not read"
            );
        }
        false
    }

    async fn announced(&mut self, payload: &[u8]) {
        let subject = subjects::announce(&self.shared.config.cluster);
        let Some((ts_ms, body)) = self.open("announcement", &subject, payload) else {
            return;
        };
        if !self.readable_version(&body) {
            return;
        }
        let info: Announcement = match serde_json::from_str(&body) {
            Ok(info) => info,
            Err(e) => return warn!(error = %e, "ignored a malformed announcement"),
        };
        if !self.fresh("announcement", &info.name, info.incarnation, ts_ms) {
            return;
        }
        if info.name == self.shared.config.name && info.incarnation != self.shared.incarnation {
            // Two processes share a name: they will replace each other in
            // every view. Say so loudly, once per impostor.
            if self.impostor != Some(info.incarnation) {
                self.impostor = Some(info.incarnation);
                error!(
                    node = %info.name,
                    other_link = %info.link,
                    "another node announces this node's name: give every node its own name"
                );
            }
            return;
        }
        let (name, draining) = (info.name.clone(), info.draining);
        let (was_draining, changes) = {
            let mut members = self.shared.members.write().expect("members lock");
            let was = members.get(&name).is_some_and(|m| m.info.draining);
            (was, members.observe(info, Instant::now()))
        };
        if was_draining && !draining {
            // Undrained: its agents may come back.
            self.shared.moves.attract(&name);
        }
        let someone_new = changes.iter().any(|c| matches!(c, Change::Joined(_)));
        self.publish_changes(changes);
        if someone_new {
            self.announce().await;
        }
    }

    fn said_goodbye(&mut self, payload: &[u8]) {
        let subject = subjects::goodbye(&self.shared.config.cluster);
        let Some((ts_ms, body)) = self.open("goodbye", &subject, payload) else {
            return;
        };
        let Ok(bye) = serde_json::from_str::<Goodbye>(&body) else {
            return warn!("ignored a malformed goodbye");
        };
        if !self.fresh("goodbye", &bye.name, bye.incarnation, ts_ms) {
            return;
        }
        let change = self
            .shared
            .members
            .write()
            .expect("members lock")
            .goodbye(&bye.name, bye.incarnation);
        self.publish_changes(change.into_iter().collect());
    }

    fn check(&mut self) {
        self.shared.note_cut_off();
        let now = Instant::now();
        let gap = now.duration_since(self.last_check);
        self.last_check = now;
        let mut members = self.shared.members.write().expect("members lock");
        if gap > self.shared.config.member_timeout / 2 {
            warn!(
                paused_ms = gap.as_millis() as u64,
                "this node was paused; peers keep their grace period"
            );
            members.forgive(now);
            return;
        }
        // Without NATS we hear nobody: that is not evidence that anyone died.
        // Membership freezes until the connection is back.
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            if !self.frozen {
                warn!("NATS unreachable; membership frozen");
                self.frozen = true;
            }
            members.forgive(now);
            return;
        }
        if self.frozen {
            info!("NATS reachable again; membership resumes");
            self.frozen = false;
        }
        let changes = members.expire(now);
        drop(members);
        self.publish_changes(changes);
    }

    fn publish_changes(&self, changes: Vec<Change>) {
        for change in changes {
            match &change {
                Change::Joined(info) => {
                    info!(
                        peer = %info.name,
                        zone = %info.zone,
                        kind = %info.kind,
                        link = %info.link,
                        "node joined"
                    );
                    self.shared.moves.joined(&info.name, info.incarnation);
                }
                Change::Left { name, reason, .. } => {
                    info!(peer = %name, reason = reason.as_str(), "node left")
                }
            }
            let _ = self.shared.link_events.send(LinkEvent::Member(change));
        }
    }

    async fn goodbye(&self) {
        let bye = Goodbye {
            name: self.shared.config.name.clone(),
            incarnation: self.shared.incarnation,
        };
        let body = serde_json::to_string(&bye).expect("goodbye encodes");
        let subject = subjects::goodbye(&self.shared.config.cluster);
        let sealed = self.signer.seal(&subject, body, self.next_ts());
        if let Err(e) = self.nats.publish(subject, sealed.into()).await {
            warn!(error = %e, "cannot say goodbye");
        }
        let _ = self.nats.flush().await;
    }
}
