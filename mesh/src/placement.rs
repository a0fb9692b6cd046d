//! Placement glue: the topology crate's ranks applied to this node's view.
//!
//! The candidates are this node and every peer it has a link to, with the
//! zone, kind, capabilities and draining state each one announces. Every
//! node that sees the same peers ranks them alike, so an agent that is not
//! live anywhere goes to the same node whoever routes its first message.
//!
//! In a mesh of mixed releases, the candidates for an agent are only those
//! running the newest state version of its kind among them (see
//! [`crate::membership::able_to_run`]): an agent never moves onto a node
//! that could not read the state a newer node wrote.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use actors::AgentId;
use topology::{NodeInfo, Policy};

use crate::directory::Location;
use crate::link::Link;
use crate::node::Shared;

impl Shared {
    /// This node as placement sees it.
    pub(crate) fn node_info(&self) -> NodeInfo {
        let c = &self.config;
        NodeInfo {
            name: c.name.clone(),
            zone: c.zone.clone(),
            kind: c.kind,
            capabilities: c.capabilities.clone(),
            draining: self.draining.load(Ordering::Acquire),
        }
    }

    /// This node and every linked peer known to membership.
    pub(crate) fn placement_view(&self, links: &HashMap<String, Link>) -> Vec<NodeInfo> {
        let members = self.members.read().expect("members lock");
        let mut nodes = Vec::with_capacity(links.len() + 1);
        nodes.push(self.node_info());
        for name in links.keys() {
            let Some(member) = members.get(name) else {
                continue;
            };
            let info = &member.info;
            nodes.push(NodeInfo {
                name: info.name.clone(),
                zone: info.zone.clone(),
                kind: info.kind,
                capabilities: info.capabilities.clone(),
                draining: info.draining,
            });
        }
        nodes
    }

    /// This node and every linked peer that can run `kind`'s newest state
    /// version among them.
    pub(crate) fn placement_view_for(
        &self,
        kind: &str,
        links: &HashMap<String, Link>,
    ) -> Vec<NodeInfo> {
        self.able_to_run(kind, self.placement_view(links))
    }

    /// The nodes of `nodes` that run the newest state version of `kind`
    /// among them.
    pub(crate) fn able_to_run(&self, kind: &str, mut nodes: Vec<NodeInfo>) -> Vec<NodeInfo> {
        let own = self.registry.get(kind).map_or(0, |k| k.state_version());
        let members = self.members.read().expect("members lock");
        let versions: Vec<(&str, u16)> = nodes
            .iter()
            .map(|n| {
                let version = if n.name == self.config.name {
                    own
                } else {
                    members
                        .get(&n.name)
                        .map_or(0, |m| m.info.state_version(kind))
                };
                (n.name.as_str(), version)
            })
            .collect();
        let able: HashSet<String> = crate::membership::able_to_run(&versions)
            .into_iter()
            .map(str::to_owned)
            .collect();
        drop(members);
        nodes.retain(|n| able.contains(&n.name));
        nodes
    }

    /// How many agents of `kind` are live here.
    pub(crate) fn live_of_kind(&self, kind: &str) -> usize {
        self.directory
            .names()
            .iter()
            .filter(|id| id.kind() == kind)
            .count()
    }

    /// Whether this node may activate one more agent of `kind`.
    pub(crate) fn has_room_for(&self, kind: &str, policy: &Policy) -> bool {
        policy
            .max_per_node
            .is_none_or(|max| self.live_of_kind(kind) < max)
    }

    /// Where an agent with no live owner goes: the first node of its rank
    /// with room for it, or near `lost_from`'s zone when its owner is gone.
    pub(crate) fn place(
        &self,
        id: &AgentId,
        links: &HashMap<String, Link>,
        lost_from: Option<String>,
    ) -> Location {
        let policy = self.config.topology.policy(id.kind());
        let nodes = self.placement_view_for(id.kind(), links);
        let origin = lost_from.and_then(|lost| {
            let members = self.members.read().expect("members lock");
            members.zone_of(&lost).map(str::to_owned)
        });
        let ranked = crate::node::with_placement_key(id, |key| match origin {
            Some(zone) => topology::rank_near(key, policy, &nodes, &zone),
            None => topology::rank(key, policy, &nodes),
        });
        // Only this node's load is known here; a peer that is full passes
        // the agent on to the next of the rank when it arrives.
        let me = &self.config.name;
        let room_here = self.has_room_for(id.kind(), policy);
        let chosen = ranked
            .iter()
            .find(|n| &n.name != me || room_here)
            .or(ranked.first());
        match chosen {
            Some(node) if &node.name == me => Location::Local,
            Some(node) => Location::Remote(node.name.clone()),
            None => Location::Nowhere(format!(
                "no live node satisfies the placement policy of kind {}",
                id.kind()
            )),
        }
    }

    /// Whether an agent arriving for activation must go elsewhere: the
    /// policy does not admit this node (a peer's view was stale), a linked
    /// peer runs a newer state version of its kind, or this node is full.
    /// `Ok` names the node to pass it to (the next of its rank), `Err` says
    /// why no node can take it; `None` activates here.
    pub(crate) fn redirect(&self, id: &AgentId) -> Option<Result<String, String>> {
        let policy = self.config.topology.policy(id.kind());
        let me = self.node_info();
        let links = self.links.read().expect("link table lock");
        let nodes = self.placement_view_for(id.kind(), &links);
        drop(links);
        let able = nodes.iter().any(|n| n.name == me.name);
        let admitted = policy.admits(&me) && able;
        if admitted && self.has_room_for(id.kind(), policy) {
            return None;
        }
        let ranked = topology::rank(&id.to_string(), policy, &nodes);
        let next = match ranked.iter().position(|n| n.name == me.name) {
            Some(i) => ranked.get(i + 1),
            None => ranked.first(),
        };
        Some(match next {
            Some(node) => Ok(node.name.clone()),
            None if admitted => Err(format!(
                "every node that may host {} agents is at its limit",
                id.kind()
            )),
            None => Err(format!(
                "no live node satisfies the placement policy of kind {}",
                id.kind()
            )),
        })
    }
}
