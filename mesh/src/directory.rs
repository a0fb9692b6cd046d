//! The directory: where an agent lives.
//!
//! Two parts: the agents live on this node (a table kept by supervision),
//! and placement over the nodes this node can reach, which every node
//! computes alike from the same member list.
//!
//! The live table is indexed both ways (by agent and by actor), so that an
//! actor's end is forgotten in constant time however many agents are live,
//! and it remembers when each agent was last looked up, which is what
//! passivation reads to find idle agents.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::AgentId;
use ractor::{ActorId, ActorRef};

use crate::supervision::Delivery;

/// Where a message for an agent goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// This node hosts it (it is live here, or placement picks this node).
    Local,
    /// Another node hosts it.
    Remote(String),
    /// No node may host it now (no live node satisfies its kind's
    /// placement policy), for this reason.
    Nowhere(String),
}

/// One live agent.
#[derive(Debug)]
struct Entry {
    actor: ActorRef<Delivery>,
    /// When the agent was last looked up, in milliseconds since the
    /// directory was made.
    touched_ms: u64,
    /// The epoch it was activated under, once activated.
    epoch: Option<u64>,
}

/// An agent found idle by [`Directory::idle`].
#[derive(Debug)]
pub(crate) struct Idle {
    /// The agent.
    pub(crate) id: Arc<AgentId>,
    /// Its actor.
    pub(crate) actor: ActorRef<Delivery>,
    /// When it was last looked up.
    pub(crate) touched_ms: u64,
}

/// The live agents, indexed by name and by actor.
#[derive(Debug, Default)]
struct Live {
    by_agent: HashMap<Arc<AgentId>, Entry>,
    by_actor: HashMap<ActorId, Arc<AgentId>>,
}

/// The agents live on this node.
#[derive(Debug)]
pub(crate) struct Directory {
    live: Mutex<Live>,
    /// Agents past their restart limit, with the reason.
    failed: Mutex<BTreeMap<AgentId, String>>,
    /// The origin of `touched_ms`.
    born: Instant,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            live: Mutex::default(),
            failed: Mutex::default(),
            born: Instant::now(),
        }
    }
}

impl Directory {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The actor of agent `id`, if it is live here; counts as a use of the
    /// agent for passivation.
    pub(crate) fn live(&self, id: &AgentId) -> Option<ActorRef<Delivery>> {
        let now = self.now_ms();
        let mut live = self.live.lock().expect("directory lock");
        let entry = live.by_agent.get_mut(id)?;
        entry.touched_ms = now;
        Some(entry.actor.clone())
    }

    /// Whether agent `id` is live here, without counting as a use.
    pub(crate) fn is_live(&self, id: &AgentId) -> bool {
        self.live
            .lock()
            .expect("directory lock")
            .by_agent
            .contains_key(id)
    }

    /// Records a newly activated agent.
    pub(crate) fn insert(&self, id: AgentId, actor: ActorRef<Delivery>) {
        let touched_ms = self.now_ms();
        let id = Arc::new(id);
        let mut live = self.live.lock().expect("directory lock");
        live.by_actor.insert(actor.get_id(), id.clone());
        let entry = Entry {
            actor,
            touched_ms,
            epoch: None,
        };
        if let Some(old) = live.by_agent.insert(id, entry) {
            live.by_actor.remove(&old.actor.get_id());
        }
    }

    /// Forgets the agent whose actor is `actor`; returns its name.
    pub(crate) fn remove_actor(&self, actor: ActorId) -> Option<AgentId> {
        let mut live = self.live.lock().expect("directory lock");
        let id = live.by_actor.remove(&actor)?;
        live.by_agent.remove(&id);
        drop(live);
        Some(Arc::unwrap_or_clone(id))
    }

    /// The agents not looked up for `idle` or longer, with their actors
    /// and the time of their last use (for [`Directory::remove_if_idle`]).
    pub(crate) fn idle(&self, idle: Duration) -> Vec<Idle> {
        let cutoff = self.now_ms().saturating_sub(idle.as_millis() as u64);
        let live = self.live.lock().expect("directory lock");
        live.by_agent
            .iter()
            .filter(|(_, e)| e.touched_ms <= cutoff)
            .map(|(id, e)| Idle {
                id: id.clone(),
                actor: e.actor.clone(),
                touched_ms: e.touched_ms,
            })
            .collect()
    }

    /// Forgets the agent of `actor` if nobody looked it up since
    /// `touched_ms`; returns whether it did.
    pub(crate) fn remove_if_idle(&self, actor: ActorId, touched_ms: u64) -> bool {
        {
            let live = self.live.lock().expect("directory lock");
            let unused = live
                .by_actor
                .get(&actor)
                .and_then(|id| live.by_agent.get(id))
                .is_some_and(|e| e.touched_ms == touched_ms);
            if !unused {
                return false;
            }
        }
        self.remove_actor(actor).is_some()
    }

    /// Records the epoch agent `id` was activated under.
    pub(crate) fn set_epoch(&self, id: &AgentId, epoch: u64) {
        let mut live = self.live.lock().expect("directory lock");
        if let Some(entry) = live.by_agent.get_mut(id) {
            entry.epoch = Some(epoch);
        }
    }

    /// The epoch of agent `id`, once activated.
    pub(crate) fn epoch(&self, id: &AgentId) -> Option<u64> {
        let live = self.live.lock().expect("directory lock");
        live.by_agent.get(id).and_then(|e| e.epoch)
    }

    /// The names of all agents live here, sorted.
    pub(crate) fn names(&self) -> Vec<AgentId> {
        let mut names: Vec<_> = self
            .live
            .lock()
            .expect("directory lock")
            .by_agent
            .keys()
            .map(|id| AgentId::clone(id))
            .collect();
        names.sort();
        names
    }

    /// Marks agent `id` failed, with the reason.
    pub(crate) fn mark_failed(&self, id: AgentId, reason: String) {
        self.failed
            .lock()
            .expect("directory lock")
            .insert(id, reason);
    }

    /// Why agent `id` is failed, if it is.
    pub(crate) fn failure(&self, id: &AgentId) -> Option<String> {
        self.failed.lock().expect("directory lock").get(id).cloned()
    }

    /// Every failed agent, with the reason.
    pub(crate) fn failed(&self) -> Vec<(AgentId, String)> {
        let failed = self.failed.lock().expect("directory lock");
        failed.iter().map(|(a, r)| (a.clone(), r.clone())).collect()
    }

    /// How many agents are live here.
    pub(crate) fn len(&self) -> usize {
        self.live.lock().expect("directory lock").by_agent.len()
    }
}
