//! Ownership: which node may run an agent, decided in NATS JetStream KV.
//!
//! The bucket `mesh-<cluster>-owners` holds one lease per node
//! (`node.<name>`) and one entry per activated agent (`agent.<key>`). The
//! protocol that keeps an agent live on at most one node:
//! 1. each node renews its lease every `lease / 4` (at most a second
//!    apart), retries a failed renewal at once, and counts a renewal from
//!    the moment it *sent* it; when no renewal has succeeded for
//!    `lease - margin`, it stops serving every agent (it fences itself);
//! 2. the other nodes watch the leases and note, on their own monotonic
//!    clock, when each one last *changed*; a lease unchanged for
//!    `lease + margin` is expired, which is later than the owner's own
//!    fencing by at least `2 * margin`;
//! 3. activating an agent writes `agent.<key> = {node, incarnation}` with
//!    create (no entry) or compare-and-set on the revision read (the owner's
//!    lease expired, it left, or it restarted as a new incarnation); the
//!    revision written is the activation's epoch, a fencing token carried by
//!    every state write;
//! 4. an entry whose owner is alive is never overwritten: the message goes
//!    to the owner instead;
//! 5. reads may be served by a lagging replica, so no decision to run an
//!    agent rests on a read alone: every activation, even by the node that
//!    already owns the entry, is a compare-and-set write.
//!
//! While this node cannot reach NATS it learns nothing about leases, so it
//! judges none: every lease counts as renewed when the connection returns.
//! KV traffic in steady state is one lease write per node per `lease / 4`
//! (or per second); agent entries are written only on activation and
//! takeover.
//!
//! A lease survives the loss of the bucket's stream leader (a JetStream
//! election: followers wait 4 to 9 s before they campaign) when `lease -
//! margin` covers a renewal period, the election and a retry: with a lease
//! of 15 s or more. A shorter lease lapses on every node meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::AgentId;
use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::state::bucket_key;

/// The safety margin, as a share of the lease: an owner fences itself this
/// much before the lease ends, and peers wait this much after it, so two
/// margins separate the two even when a renewal is seen late.
const LEASE_MARGIN: f64 = 0.10;
/// How many times the first lease write is tried.
const FIRST_LEASE_ATTEMPTS: u32 = 40;
/// The pause between two first-lease attempts.
const FIRST_LEASE_RETRY: Duration = Duration::from_millis(250);
/// The longest pause between two lease renewals, whatever the lease: a
/// lease long enough to ride out a leader election is renewed often enough
/// that little of it is spent before the election starts.
const RENEW_PERIOD_MAX: Duration = Duration::from_secs(1);
/// The pause before a failed lease renewal is tried again (such as while
/// the bucket's stream elects a leader).
const RENEW_RETRY: Duration = Duration::from_millis(200);
/// How long a re-watch waits after the watch failed.
const REWATCH_DELAY: Duration = Duration::from_millis(200);
/// How often the watcher checks the NATS connection.
const CONNECTION_CHECK: Duration = Duration::from_millis(100);

/// The name of a cluster's ownership bucket.
pub fn bucket_name(cluster: &str) -> String {
    format!("mesh-{cluster}-owners")
}

/// The value of `agent.<key>`: who runs the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The owning node.
    pub node: String,
    /// The owning process's incarnation.
    pub incarnation: u64,
}

/// The value of `node.<name>`: a node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    incarnation: u64,
}

/// What a peer's lease looks like from here.
#[derive(Debug, Clone)]
struct PeerLease {
    incarnation: u64,
    revision: u64,
    changed: Instant,
}

/// A successful claim of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The activation's epoch (the owner entry's revision).
    pub epoch: u64,
    /// The lease generation it holds under.
    pub generation: u64,
    /// Whether another owner had it before (taken over, or released), so
    /// its newest state may be in a snapshot written moments ago.
    pub inherited: bool,
    /// The previous owner and its activation's epoch, when taken over:
    /// state older than that epoch misses that owner's changes.
    pub previous: Option<(String, u64)>,
}

/// Why an activation may not go ahead here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A live node owns the agent; send its messages there.
    OwnedBy(String),
    /// The ownership bucket cannot be reached or this node's lease lapsed.
    Unavailable(String),
}

/// This node's own lease, on its monotonic clock.
///
/// A renewal counts from the moment it was sent. Each time the lease is
/// renewed after it had lapsed, the generation grows: an activation made
/// under an older generation may have been taken over meanwhile, so it never
/// serves again, even if the renewal lands before its next message.
#[derive(Debug)]
pub struct LeaseClock {
    base: Instant,
    lease: Duration,
    margin: Duration,
    /// Milliseconds after `base` (plus one) at which the last successful
    /// renewal was sent; 0 when there is none.
    renewed_ms: AtomicU64,
    generation: AtomicU64,
}

impl LeaseClock {
    /// A lapsed lease of length `lease`, self-fencing `margin` early.
    pub fn new(lease: Duration, margin: Duration) -> Self {
        LeaseClock {
            base: Instant::now(),
            lease,
            margin,
            renewed_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    fn since_base(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    /// Records a successful renewal sent at `sent`.
    pub fn renewed(&self, sent: Instant) {
        if !self.valid_at(sent) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let at = self.since_base(sent);
        self.renewed_ms.fetch_max(at, Ordering::AcqRel);
    }

    /// How long a peer's lease must look unchanged before it counts as
    /// expired: the lease plus the margin.
    pub fn expiry(&self) -> Duration {
        self.lease + self.margin
    }

    /// Gives the lease up.
    pub fn lapse(&self) {
        self.renewed_ms.store(0, Ordering::Release);
    }

    /// Whether the lease is valid at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        let renewed = self.renewed_ms.load(Ordering::Acquire);
        renewed != 0
            && self.since_base(now).saturating_sub(renewed)
                < (self.lease - self.margin).as_millis() as u64
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether an activation of `generation` may serve at `now`.
    pub fn serves(&self, generation: u64, now: Instant) -> bool {
        self.valid_at(now) && self.generation() == generation
    }
}

/// The ownership table as one node sees and writes it.
#[derive(Debug)]
pub struct Ownership {
    bucket: kv::Store,
    me: String,
    incarnation: u64,
    clock: LeaseClock,
    peers: Mutex<HashMap<String, PeerLease>>,
    owners: Mutex<HashMap<String, Owner>>,
    /// Since when the watch has delivered without a break; `None` while it
    /// is broken. A lease only counts as expired when the watch has been
    /// healthy for longer than a lease: otherwise a renewal may simply not
    /// have reached us.
    watching_since: Mutex<Option<Instant>>,
}

/// What every agent's key in the ownership bucket starts with.
const AGENT_PREFIX: &str = "agent.";

fn agent_key(id: &AgentId) -> String {
    format!("{AGENT_PREFIX}{}", bucket_key(id))
}

impl Ownership {
    /// Opens (or creates) the bucket and takes this node's first lease.
    pub async fn open(
        nats: &async_nats::Client,
        cluster: &str,
        me: &str,
        incarnation: u64,
        lease: Duration,
        replicas: usize,
    ) -> anyhow::Result<Arc<Ownership>> {
        let bucket = crate::state::open_kv(nats, &bucket_name(cluster), replicas).await?;
        let ownership = Arc::new(Ownership {
            bucket,
            me: me.to_owned(),
            incarnation,
            clock: LeaseClock::new(lease, lease.mul_f64(LEASE_MARGIN)),
            peers: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            watching_since: Mutex::new(None),
        });
        // A bucket just created in a JetStream cluster may refuse writes
        // until its replicas agree: retry the first lease for a while.
        let mut attempts = 0;
        while let Err(e) = ownership.renew(None).await {
            attempts += 1;
            if attempts >= FIRST_LEASE_ATTEMPTS {
                return Err(e.context("cannot take the first lease"));
            }
            debug!(attempt = attempts, error = %e, "first lease refused; retrying");
            tokio::time::sleep(FIRST_LEASE_RETRY).await;
        }
        Ok(ownership)
    }

    /// Writes this node's lease; `revision` is the last one written.
    async fn renew(&self, revision: Option<u64>) -> anyhow::Result<u64> {
        let sent = Instant::now();
        let value = serde_json::to_vec(&Lease {
            incarnation: self.incarnation,
        })
        .expect("leases encode");
        let key = format!("node.{}", self.me);
        let written = match revision {
            Some(rev) => self.bucket.update(&key, value.into(), rev).await?,
            None => self.bucket.put(&key, value.into()).await?,
        };
        self.clock.renewed(sent);
        Ok(written)
    }

    /// The current lease generation (see [`Ownership::serves`]).
    pub fn generation(&self) -> u64 {
        self.clock.generation()
    }

    /// Whether an activation made under lease `generation` may serve now:
    /// the lease is valid and has not lapsed since.
    pub fn serves(&self, generation: u64) -> bool {
        self.clock.serves(generation, Instant::now())
    }

    /// Whether this node's own lease is valid: it may serve agents.
    pub fn lease_valid(&self) -> bool {
        self.clock.valid_at(Instant::now())
    }

    /// Whether this node has watched the leases long enough, without a
    /// break, to tell an expired lease from a renewal it missed.
    fn can_judge(&self, now: Instant) -> bool {
        let since = *self.watching_since.lock().expect("watch lock");
        since.is_some_and(|t| now.saturating_duration_since(t) > self.clock.expiry())
    }

    /// Whether the lease of `peer`, as last seen, has expired.
    fn expired(&self, peer: &PeerLease) -> bool {
        self.expired_at(peer.changed, Instant::now())
    }

    /// Whether a lease last seen changing at `changed` has expired by `now`.
    fn expired_at(&self, changed: Instant, now: Instant) -> bool {
        // The cheap test first: every routed message asks.
        now.saturating_duration_since(changed) > self.clock.expiry() && self.can_judge(now)
    }

    /// Whether `node` holds a lease that has not expired, as seen here.
    pub fn is_alive(&self, node: &str) -> bool {
        if node == self.me {
            return self.lease_valid();
        }
        let changed = self
            .peers
            .lock()
            .expect("peers lock")
            .get(node)
            .map(|p| p.changed);
        changed.is_some_and(|changed| !self.expired_at(changed, Instant::now()))
    }

    /// The owner of `id` as last seen through the watch.
    pub fn cached_owner(&self, id: &AgentId) -> Option<Owner> {
        // Every routed message asks: build the key in a reused buffer.
        thread_local! {
            static KEY: std::cell::RefCell<String> = const {
                std::cell::RefCell::new(String::new())
            };
        }
        KEY.with_borrow_mut(|key| {
            key.clear();
            key.push_str(AGENT_PREFIX);
            crate::state::push_bucket_key(id, key);
            self.owners
                .lock()
                .expect("owners lock")
                .get(key.as_str())
                .cloned()
        })
    }

    /// Whether `owner` is certainly gone: its lease expired, was released,
    /// or belongs to a newer incarnation. Reads the lease when it has never
    /// been seen, so a node that just started is not taken for dead.
    async fn owner_is_gone(&self, owner: &Owner) -> Result<bool, Refusal> {
        if owner.node == self.me {
            return Ok(owner.incarnation != self.incarnation);
        }
        let known = self
            .peers
            .lock()
            .expect("peers lock")
            .get(&owner.node)
            .cloned();
        if let Some(peer) = known {
            if peer.incarnation != owner.incarnation {
                return Ok(true);
            }
            return Ok(self.expired(&peer));
        }
        let key = format!("node.{}", owner.node);
        let entry = crate::state::leader_entry(&self.bucket, &key)
            .await
            .map_err(|e| Refusal::Unavailable(format!("ownership bucket: {e}")))?;
        match entry.filter(|e| !e.deleted) {
            None => Ok(true),
            Some(e) => {
                let lease: Lease = serde_json::from_slice(&e.value)
                    .map_err(|e| Refusal::Unavailable(format!("unreadable lease: {e}")))?;
                self.saw_lease(&owner.node, lease.incarnation, e.revision);
                Ok(lease.incarnation != owner.incarnation)
            }
        }
    }

    /// Claims `id` for this node and returns the epoch and the lease
    /// generation it holds under, or says who owns it.
    pub async fn acquire(&self, id: &AgentId) -> Result<Claim, Refusal> {
        let generation = self.generation();
        if !self.serves(generation) {
            return Err(Refusal::Unavailable("this node's lease has lapsed".into()));
        }
        let (epoch, inherited, previous) = self.claim(id).await?;
        // The claim may have raced with a lapse of our own lease.
        if !self.serves(generation) {
            return Err(Refusal::Unavailable("this node's lease has lapsed".into()));
        }
        Ok(Claim {
            epoch,
            generation,
            inherited,
            previous,
        })
    }

    /// Returns the epoch, and whether another node (or incarnation) owned
    /// the agent before, released or not.
    async fn claim(&self, id: &AgentId) -> Result<(u64, bool, Option<(String, u64)>), Refusal> {
        let key = agent_key(id);
        let mine = serde_json::to_vec(&Owner {
            node: self.me.clone(),
            incarnation: self.incarnation,
        })
        .expect("owners encode");
        let unavailable = |e: String| Refusal::Unavailable(format!("ownership bucket: {e}"));
        // A lost compare-and-set means someone else wrote meanwhile: read
        // again and decide again, a few times at most.
        for _ in 0..4 {
            let entry = crate::state::leader_entry(&self.bucket, &key)
                .await
                .map_err(unavailable)?;
            // A delete marker is an owner that released the agent.
            let released = entry.is_some();
            let current = entry.filter(|e| !e.deleted);
            let Some(entry) = current else {
                match self.bucket.create(&key, mine.clone().into()).await {
                    Ok(epoch) => return Ok((epoch, released, None)),
                    Err(e) => {
                        debug!(agent = %id, error = %e, "lost the race to create an owner entry");
                        continue;
                    }
                }
            };
            let owner: Owner =
                serde_json::from_slice(&entry.value).map_err(|e| unavailable(e.to_string()))?;
            // Reads may come from a replica that lags behind its leader, so
            // even "it is already mine" is confirmed by a compare-and-set,
            // which only the leader accepts. Every activation thus gets an
            // epoch of its own.
            if owner.node == self.me && owner.incarnation == self.incarnation {
                match self
                    .bucket
                    .update(&key, mine.clone().into(), entry.revision)
                    .await
                {
                    Ok(epoch) => return Ok((epoch, false, None)),
                    Err(e) => {
                        debug!(agent = %id, error = %e, "ownership read was stale");
                        continue;
                    }
                }
            }
            if !self.owner_is_gone(&owner).await? {
                return Err(Refusal::OwnedBy(owner.node));
            }
            match self
                .bucket
                .update(&key, mine.clone().into(), entry.revision)
                .await
            {
                Ok(epoch) => {
                    let silent_ms = self
                        .peers
                        .lock()
                        .expect("peers lock")
                        .get(&owner.node)
                        .map(|p| p.changed.elapsed().as_millis() as u64);
                    info!(
                        agent = %id,
                        from = %owner.node,
                        to = %self.me,
                        epoch,
                        elapsed_ms = silent_ms.unwrap_or(0),
                        "agent taken over"
                    );
                    return Ok((epoch, true, Some((owner.node, entry.revision))));
                }
                Err(e) => debug!(agent = %id, error = %e, "lost the race to take over"),
            }
        }
        Err(Refusal::Unavailable(
            "ownership keeps changing; try again".into(),
        ))
    }

    /// Gives up `id`, so another node may take it at once (graceful stop).
    pub async fn release(&self, id: &AgentId) {
        if self.cached_owner(id).is_some_and(|o| o.node != self.me) {
            return;
        }
        if let Err(e) = self.bucket.delete(agent_key(id)).await {
            warn!(agent = %id, error = %e, "cannot release the agent");
        }
    }

    /// Gives up this node's lease: it has stopped serving.
    pub async fn leave(&self) {
        self.clock.lapse();
        if let Err(e) = self.bucket.delete(format!("node.{}", self.me)).await {
            warn!(error = %e, "cannot release the lease");
        }
    }

    fn saw_lease(&self, node: &str, incarnation: u64, revision: u64) {
        let mut peers = self.peers.lock().expect("peers lock");
        let changed = peers
            .get(node)
            .is_none_or(|p| p.revision != revision || p.incarnation != incarnation);
        if changed {
            peers.insert(
                node.to_owned(),
                PeerLease {
                    incarnation,
                    revision,
                    changed: Instant::now(),
                },
            );
        }
    }

    /// Takes one watched entry into account.
    fn observe(&self, entry: kv::Entry) {
        let put = entry.operation == kv::Operation::Put;
        if let Some(node) = entry.key.strip_prefix("node.") {
            if node == self.me {
                return;
            }
            match serde_json::from_slice::<Lease>(&entry.value) {
                Ok(lease) if put => self.saw_lease(node, lease.incarnation, entry.revision),
                _ => {
                    self.peers.lock().expect("peers lock").remove(node);
                }
            }
        } else if entry.key.starts_with("agent.") {
            let mut owners = self.owners.lock().expect("owners lock");
            match serde_json::from_slice::<Owner>(&entry.value) {
                Ok(owner) if put => {
                    owners.insert(entry.key, owner);
                }
                _ => {
                    owners.remove(&entry.key);
                }
            }
        }
    }

    /// Counts every known lease as just renewed: used when this node could
    /// not watch, so that its own blindness is not taken for their death.
    fn forgive(&self) {
        let now = Instant::now();
        for peer in self.peers.lock().expect("peers lock").values_mut() {
            peer.changed = now;
        }
    }
}

/// Renews this node's lease until `stop` fires; logs when it lapses.
pub(crate) async fn renew_forever(ownership: Arc<Ownership>) {
    let mut revision = None;
    let period = (ownership.clock.lease / 4).min(RENEW_PERIOD_MAX);
    let retry = RENEW_RETRY.min(period);
    let mut next = tokio::time::Instant::now() + period;
    let mut was_valid = true;
    loop {
        tokio::time::sleep_until(next).await;
        let started = tokio::time::Instant::now();
        let renewal = tokio::time::timeout(period, ownership.renew(revision)).await;
        // A failed renewal is tried again soon: the bucket may be electing
        // a leader, and the lease runs out meanwhile.
        next = match renewal {
            Ok(Ok(written)) => {
                revision = Some(written);
                started + period
            }
            Ok(Err(e)) => {
                // No leader, or someone wrote our lease key (a process with
                // our name?): write over it.
                debug!(error = %e, "lease renewal failed");
                revision = None;
                tokio::time::Instant::now().max(started + retry)
            }
            Err(_) => {
                // It may have been written: the revision is unknown.
                debug!("lease renewal timed out");
                revision = None;
                tokio::time::Instant::now().max(started + retry)
            }
        };
        let valid = ownership.lease_valid();
        if was_valid && !valid {
            warn!("lease lapsed: this node stops serving its agents");
        } else if !was_valid && valid {
            info!("lease renewed: this node serves again");
        }
        was_valid = valid;
    }
}

/// Watches leases and owner entries; re-watches when the watch fails or
/// NATS comes back.
pub(crate) async fn watch_forever(ownership: Arc<Ownership>, nats: async_nats::Client) {
    loop {
        // Creating a watch needs the stream's leader, which a JetStream
        // cluster may be electing: bound the wait and try again.
        let created = tokio::time::timeout(
            ownership.clock.lease,
            ownership.bucket.watch_with_history(">"),
        );
        let mut watch = match created.await {
            Ok(Ok(watch)) => watch,
            Ok(Err(e)) => {
                debug!(error = %e, "cannot watch the ownership bucket");
                tokio::time::sleep(REWATCH_DELAY).await;
                continue;
            }
            Err(_) => {
                debug!("watching the ownership bucket timed out");
                continue;
            }
        };
        let mut check = tokio::time::interval(CONNECTION_CHECK);
        let mut last_event = Instant::now();
        *ownership.watching_since.lock().expect("watch lock") = Some(Instant::now());
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        last_event = Instant::now();
                        ownership.observe(entry);
                    }
                    _ => break,
                },
                _ = check.tick() => {
                    let connected =
                        nats.connection_state() == async_nats::connection::State::Connected;
                    // Leases change every lease / 4: a silent watch is a
                    // broken one.
                    let silent = last_event.elapsed() > ownership.clock.lease * 2;
                    if !connected {
                        ownership.forgive();
                    }
                    if !connected || silent {
                        break;
                    }
                }
            }
        }
        *ownership.watching_since.lock().expect("watch lock") = None;
        ownership.forgive();
        // Wait for NATS before watching again.
        while nats.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(CONNECTION_CHECK).await;
            ownership.forgive();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1000);
    const MARGIN: Duration = Duration::from_millis(150);

    #[test]
    fn a_lease_is_valid_until_lease_minus_margin_after_the_renewal_was_sent() {
        let clock = LeaseClock::new(LEASE, MARGIN);
        let t0 = Instant::now();
        assert!(!clock.valid_at(t0), "no lease before the first renewal");
        clock.renewed(t0);
        assert!(clock.valid_at(t0 + Duration::from_millis(800)));
        assert!(!clock.valid_at(t0 + Duration::from_millis(900)));
        clock.lapse();
        assert!(!clock.valid_at(t0));
    }

    #[test]
    fn an_activation_from_before_a_lapse_never_serves_after_the_renewal() {
        let clock = LeaseClock::new(LEASE, MARGIN);
        let t0 = Instant::now();
        clock.renewed(t0);
        let activation = clock.generation();
        assert!(clock.serves(activation, t0));

        // Frozen past the lease, then renewed at once on waking.
        let woke = t0 + LEASE * 3;
        assert!(!clock.serves(activation, woke));
        clock.renewed(woke);
        assert!(clock.valid_at(woke), "the node may activate again");
        assert!(
            !clock.serves(activation, woke),
            "the old activation stays fenced"
        );
        assert!(clock.serves(clock.generation(), woke));
    }

    #[test]
    fn renewals_in_time_keep_the_generation() {
        let clock = LeaseClock::new(LEASE, MARGIN);
        let t0 = Instant::now();
        clock.renewed(t0);
        let activation = clock.generation();
        for i in 1..20 {
            clock.renewed(t0 + LEASE / 4 * i);
        }
        assert!(clock.serves(activation, t0 + LEASE / 4 * 19));
    }
}
