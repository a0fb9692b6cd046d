//! Discovery: nodes find each other by announcing themselves on NATS.
//!
//! 1. A node publishes its [`Announcement`] every heartbeat, and once more
//!    at once when it sees a node it did not know, so a newcomer learns the
//!    cluster within a round trip instead of a heartbeat.
//! 2. Every node feeds announcements into its [`Membership`] and expires
//!    silent members after the member timeout; a frozen process stops
//!    announcing, so it leaves every view even though its sockets stay open.
//! 3. A stopping node publishes a goodbye, which removes it at once.
//! 4. A node that notices its own clock jumped (it was paused) forgives its
//!    peers' silence instead of declaring them all dead; so does a node that
//!    lost NATS, until it is back: placement freezes rather than splits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::link::LinkEvent;
use crate::membership::{Announcement, Change, ANNOUNCEMENT_VERSION};
use crate::node::Shared;
use crate::subjects;

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
        shared,
        nats,
        last_check: Instant::now(),
        frozen: false,
        impostor: None,
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
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.announce().await,
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
        let body = serde_json::to_vec(&self.shared.announcement()).expect("announcement encodes");
        let subject = subjects::announce(&self.shared.config.cluster);
        match self.nats.publish(subject, body.into()).await {
            Ok(()) => self
                .shared
                .announced
                .store(true, std::sync::atomic::Ordering::Relaxed),
            Err(e) => warn!(error = %e, "cannot announce"),
        }
    }

    async fn announced(&mut self, payload: &[u8]) {
        let info: Announcement = match serde_json::from_slice(payload) {
            Ok(info) => info,
            Err(e) => return warn!(error = %e, "ignored a malformed announcement"),
        };
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
        if info.v != ANNOUNCEMENT_VERSION {
            return debug!(
                peer = %info.name,
                v = info.v,
                "ignored an announcement of another version",
            );
        }
        let changes = self
            .shared
            .members
            .write()
            .expect("members lock")
            .observe(info, Instant::now());
        let someone_new = changes.iter().any(|c| matches!(c, Change::Joined(_)));
        self.publish_changes(changes);
        if someone_new {
            self.announce().await;
        }
    }

    fn said_goodbye(&mut self, payload: &[u8]) {
        let Ok(bye) = serde_json::from_slice::<Goodbye>(payload) else {
            return warn!("ignored a malformed goodbye");
        };
        let change = self
            .shared
            .members
            .write()
            .expect("members lock")
            .goodbye(&bye.name, bye.incarnation);
        self.publish_changes(change.into_iter().collect());
    }

    fn check(&mut self) {
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
                Change::Joined(info) => info!(
                    peer = %info.name,
                    zone = %info.zone,
                    kind = %info.kind,
                    link = %info.link,
                    "node joined"
                ),
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
        let body = serde_json::to_vec(&bye).expect("goodbye encodes");
        let subject = subjects::goodbye(&self.shared.config.cluster);
        if let Err(e) = self.nats.publish(subject, body.into()).await {
            warn!(error = %e, "cannot say goodbye");
        }
        let _ = self.nats.flush().await;
    }
}
