//! Rebalancing and draining: live agents move to where placement now puts
//! them, one handoff at a time, never live in two places.
//!
//! An agent moves when its rank's first node is another node that either
//! joined recently (a new node or zone came up, or a node was undrained),
//! or when this node is draining. A failover that put an agent near its
//! dead owner is not undone: only joins and drains move agents. A handoff:
//! 1. the agent is marked moving: messages for it are held, not activated;
//! 2. its actor is drained (queued messages are answered) and stops;
//! 3. with `local` state, a snapshot is taken so the new host finds the
//!    newest state (the snapshot target must be shared between nodes);
//! 4. its ownership entry is released, and the node waits until its own
//!    view of the table shows it;
//! 5. held messages are routed again: they reach the new host, where the
//!    first one activates the agent with a claim (a new, higher epoch).
//!
//! The invariant: ownership is released only after the actor stopped, and
//! a new activation needs the entry free (a compare-and-set), so two live
//! copies never exist. Moves go in batches, [`BATCH`] per [`INTERVAL`], so
//! the mesh keeps serving while a node drains or a zone fills.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::{AgentId, CallError, Durability};
use tracing::{debug, info, warn};

use crate::directory::Location;
use crate::node::Shared;
use crate::supervision::Delivery;

/// How often the rebalancer looks for agents to move.
const INTERVAL: Duration = Duration::from_millis(250);
/// The most agents moved per interval.
const BATCH: usize = 16;
/// How long a moving agent may take to answer its queued messages.
const DRAIN_AGENT: Duration = Duration::from_secs(2);
/// How long to wait for this node's view to show a released entry.
const RELEASE_SEEN: Duration = Duration::from_secs(2);
/// How often held messages look whether their agent has moved.
const HOLD_POLL: Duration = Duration::from_millis(10);
/// How long a joined node attracts agents while it is not linked yet.
const ATTRACT_UNLINKED: Duration = Duration::from_secs(60);

/// What the rebalancer knows: agents in flight, and nodes that attract.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    moving: Mutex<HashSet<AgentId>>,
    /// Nodes that joined or were undrained, since when.
    attractors: Mutex<HashMap<String, Instant>>,
    /// The last incarnation seen of each node: a node coming back from a
    /// partition with the same incarnation does not attract.
    seen: Mutex<HashMap<String, u64>>,
    /// Agents moved away from this node since it started.
    pub(crate) moved: std::sync::atomic::AtomicU64,
}

impl Moves {
    /// Whether agent `id` is being handed off.
    pub(crate) fn is_moving(&self, id: &AgentId) -> bool {
        self.moving.lock().expect("moves lock").contains(id)
    }

    /// A node joined: agents placed on it may move there.
    pub(crate) fn joined(&self, node: &str, incarnation: u64) {
        let before = self
            .seen
            .lock()
            .expect("moves lock")
            .insert(node.to_owned(), incarnation);
        if before != Some(incarnation) {
            self.attract(node);
        }
    }

    /// A node became a placement target again (joined, undrained).
    pub(crate) fn attract(&self, node: &str) {
        self.attractors
            .lock()
            .expect("moves lock")
            .insert(node.to_owned(), Instant::now());
    }
}

/// Why a live agent stays where it is although it should move.
fn unmovable(shared: &Shared, durability: Durability) -> Option<&'static str> {
    if durability == Durability::Local && !shared.config.snapshots_shared {
        return Some("local state and snapshots private to this node");
    }
    None
}

/// What a scan of the live agents found.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Agents to move now, with their new host.
    pub(crate) moves: Vec<(AgentId, String)>,
    /// Agents that should move but cannot, with the reason.
    pub(crate) blocked: Vec<(AgentId, String)>,
    /// Nodes some agent should move to.
    targets: BTreeSet<String>,
    /// Whether the scan stopped early at a full batch.
    full: bool,
}

impl Shared {
    /// Finds live agents to move: all misplaced ones while draining, else
    /// those placed on a node that attracts.
    pub(crate) fn plan_moves(&self, limit: usize) -> Plan {
        let draining = self.draining.load(Ordering::Acquire);
        let attractors: HashSet<String> = self
            .moves
            .attractors
            .lock()
            .expect("moves lock")
            .keys()
            .cloned()
            .collect();
        let mut plan = Plan::default();
        if !draining && attractors.is_empty() {
            return plan;
        }
        let links = self.links.read().expect("link table lock").clone();
        let nodes = self.placement_view(&links);
        // Per kind, those able to run its newest state version.
        let mut able: HashMap<String, Vec<topology::NodeInfo>> = HashMap::new();
        let me = &self.config.name;
        for id in self.directory.names() {
            if self.moves.is_moving(&id) || self.pinned_node(&id).is_some() {
                continue;
            }
            let policy = self.config.topology.policy(id.kind());
            let nodes = able
                .entry(id.kind().to_owned())
                .or_insert_with(|| self.able_to_run(id.kind(), nodes.clone()));
            let ranked = topology::rank(&id.to_string(), policy, nodes);
            let Some(target) = ranked.first().map(|n| n.name.clone()) else {
                continue;
            };
            if &target == me {
                if draining {
                    let why = "no other live node may host it";
                    plan.blocked.push((id, why.to_owned()));
                }
                continue;
            }
            if !(draining || attractors.contains(&target)) {
                continue;
            }
            let alive = self.ownership.as_ref().is_none_or(|o| o.is_alive(&target));
            let durability = match self.registry.kind_of(&id) {
                Ok(kind) => kind.durability(),
                Err(_) => continue,
            };
            plan.targets.insert(target.clone());
            if let Some(why) = unmovable(self, durability) {
                plan.blocked.push((id, why.to_owned()));
            } else if alive {
                if plan.moves.len() == limit {
                    plan.full = true;
                    break;
                }
                plan.moves.push((id, target));
            }
        }
        plan
    }

    /// Hands the agents of `moves` off (see the module's steps).
    pub(crate) async fn hand_off(self: &Arc<Self>, moves: Vec<(AgentId, String)>) {
        let ids: Vec<AgentId> = moves.iter().map(|(id, _)| id.clone()).collect();
        self.moves
            .moving
            .lock()
            .expect("moves lock")
            .extend(ids.iter().cloned());
        for id in &ids {
            if let Some(actor) = self.directory.live(id) {
                self.directory.remove_actor(actor.get_id());
                if actor.drain_and_wait(Some(DRAIN_AGENT)).await.is_err() {
                    actor.stop(Some("moving".into()));
                }
            }
        }
        let has_local = ids.iter().any(|id| {
            self.registry
                .kind_of(id)
                .is_ok_and(|k| k.durability() == Durability::Local)
        });
        if has_local {
            if let Err(e) = self.take_snapshot().await {
                // Nothing was released: the agents activate here again.
                warn!(error = %e, agents = ids.len(), "handoff snapshot failed; agents stay");
                self.moves.moving.lock().expect("moves lock").clear();
                return;
            }
        }
        if let Some(ownership) = &self.ownership {
            for id in &ids {
                ownership.release(id).await;
            }
            let deadline = Instant::now() + RELEASE_SEEN;
            let me = &self.config.name;
            let mine = |id: &AgentId| ownership.cached_owner(id).is_some_and(|o| &o.node == me);
            while ids.iter().any(mine) && Instant::now() < deadline {
                tokio::time::sleep(HOLD_POLL).await;
            }
        }
        for (id, target) in &moves {
            info!(agent = %id, from = %self.config.name, to = %target, "agent moved");
        }
        self.moves
            .moved
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        let mut moving = self.moves.moving.lock().expect("moves lock");
        for id in &ids {
            moving.remove(id);
        }
    }

    /// Holds a message for a moving agent until the move ends, then routes
    /// it again (to the new host, normally).
    pub(crate) fn hold(self: &Arc<Self>, delivery: Delivery) {
        let shared = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let deadline = started + delivery.timeout;
            while shared.moves.is_moving(&delivery.to) && Instant::now() < deadline {
                tokio::time::sleep(HOLD_POLL).await;
            }
            let delivery = Delivery {
                timeout: delivery.timeout.saturating_sub(started.elapsed()),
                ..delivery
            };
            debug!(agent = %delivery.to, "held message routed again");
            match shared.locate(&delivery.to) {
                Location::Local => shared.deliver(delivery),
                Location::Remote(node) => shared.forward(delivery, node),
                Location::Nowhere(reason) => {
                    let agent = delivery.to.to_string();
                    delivery
                        .reply
                        .send(Err(CallError::Unavailable { agent, reason }));
                }
            }
        });
    }
}

/// Moves misplaced agents, a batch per interval, until the node stops.
pub(crate) async fn rebalance_forever(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let plan = shared.plan_moves(BATCH);
        forget_satisfied_attractors(&shared, &plan);
        if !plan.moves.is_empty() {
            shared.hand_off(plan.moves).await;
        }
    }
}

/// Drops attractors no live agent needs to move to any more, once they
/// are linked (an unlinked node is not in the view yet).
fn forget_satisfied_attractors(shared: &Shared, plan: &Plan) {
    if plan.full {
        return;
    }
    let links = shared.links.read().expect("link table lock");
    let mut attractors = shared.moves.attractors.lock().expect("moves lock");
    attractors.retain(|node, since| {
        let linked = links.contains_key(node);
        plan.targets.contains(node) || (!linked && since.elapsed() < ATTRACT_UNLINKED)
    });
}
