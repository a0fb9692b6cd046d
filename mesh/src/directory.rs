//! The directory: where an agent lives.
//!
//! Two parts: the agents live on this node (a table kept by supervision),
//! and placement over the nodes this node can reach, which every node
//! computes alike from the same member list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

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
}

/// The agents live on this node.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    live: Mutex<HashMap<AgentId, ActorRef<Delivery>>>,
    /// Agents past their restart limit, with the reason.
    failed: Mutex<BTreeMap<AgentId, String>>,
    /// The epoch of each activated agent.
    epochs: Mutex<HashMap<AgentId, u64>>,
}

impl Directory {
    /// The actor of agent `id`, if it is live here.
    pub(crate) fn live(&self, id: &AgentId) -> Option<ActorRef<Delivery>> {
        self.live.lock().expect("directory lock").get(id).cloned()
    }

    /// Records a newly activated agent.
    pub(crate) fn insert(&self, id: AgentId, actor: ActorRef<Delivery>) {
        self.live.lock().expect("directory lock").insert(id, actor);
    }

    /// Forgets the agent whose actor is `actor`; returns its name.
    pub(crate) fn remove_actor(&self, actor: ActorId) -> Option<AgentId> {
        let mut live = self.live.lock().expect("directory lock");
        let id = live
            .iter()
            .find(|(_, a)| a.get_id() == actor)
            .map(|(id, _)| id.clone())?;
        live.remove(&id);
        self.epochs.lock().expect("directory lock").remove(&id);
        Some(id)
    }

    /// Records the epoch agent `id` was activated under.
    pub(crate) fn set_epoch(&self, id: &AgentId, epoch: u64) {
        self.epochs
            .lock()
            .expect("directory lock")
            .insert(id.clone(), epoch);
    }

    /// The epoch of agent `id`, once activated.
    pub(crate) fn epoch(&self, id: &AgentId) -> Option<u64> {
        self.epochs.lock().expect("directory lock").get(id).copied()
    }

    /// The names of all agents live here, sorted.
    pub(crate) fn names(&self) -> Vec<AgentId> {
        let mut names: Vec<_> = self
            .live
            .lock()
            .expect("directory lock")
            .keys()
            .cloned()
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
        self.live.lock().expect("directory lock").len()
    }
}
