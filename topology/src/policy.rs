//! Placement policies: where the agents of one kind may and should run.
//!
//! A policy narrows the candidate nodes, then orders them. Ranking, in
//! order of precedence:
//! 1. only nodes the policy admits (node kind, capabilities, and the zones
//!    or regions when it pins them) are candidates; draining nodes are
//!    dropped unless no other node is admitted;
//! 2. preferred zones come first, then other zones of preferred regions,
//!    then everything else;
//! 3. a policy that spreads picks a zone by rendezvous hashing over zones,
//!    so every zone gets an equal share of the kind's agents whatever its
//!    number of nodes, then a node within the zone; otherwise a node by
//!    rendezvous hashing over all nodes of the tier.
//!
//! Every step depends only on the candidates and the agent's key, never on
//! the order the candidates come in, so every node computes the same rank.
//! A node that joins takes agents only for itself and a node that leaves
//! gives away only its own: each step is a rendezvous pick.

use std::cmp::Reverse;

use crate::kind::NodeKind;
use crate::placement::{distance, score, Distance};
use crate::zone::region_of;

/// A node as placement sees it: where it is and what it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name, unique within its cluster.
    pub name: String,
    /// Its zone, such as `fr-par-1`.
    pub zone: String,
    /// The kind of host.
    pub kind: NodeKind,
    /// Capability labels, such as `gpu`.
    pub capabilities: Vec<String>,
    /// Whether it is being drained: it takes no agents while others can.
    pub draining: bool,
}

impl NodeInfo {
    /// A node with no capabilities that is not draining.
    pub fn new(name: &str, zone: &str, kind: NodeKind) -> Self {
        NodeInfo {
            name: name.to_owned(),
            zone: zone.to_owned(),
            kind,
            capabilities: Vec::new(),
            draining: false,
        }
    }
}

/// Where the agents of one kind may and should run.
///
/// The default policy admits every node and prefers none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Node kinds allowed to host the agents; empty allows every kind.
    pub node_kinds: Vec<NodeKind>,
    /// Capabilities a host must have, all of them.
    pub capabilities: Vec<String>,
    /// Zones preferred (or, when pinned, required).
    pub zones: Vec<String>,
    /// Regions preferred (or, when pinned, required).
    pub regions: Vec<String>,
    /// Whether `zones` and `regions` are required rather than preferred.
    pub pinned: bool,
    /// Whether the agents spread evenly over zones rather than over nodes.
    pub spread: bool,
    /// The most agents of the kind one node may host.
    pub max_per_node: Option<usize>,
}

/// How well a node's place matches a policy's wishes: lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Preference {
    Zone,
    Region,
    Elsewhere,
}

impl Policy {
    /// Whether `node` may host agents under this policy, draining aside.
    pub fn admits(&self, node: &NodeInfo) -> bool {
        let kind_ok = self.node_kinds.is_empty() || self.node_kinds.contains(&node.kind);
        let capabilities_ok = self
            .capabilities
            .iter()
            .all(|c| node.capabilities.contains(c));
        let place_ok = !self.pinned || self.preference(&node.zone) != Preference::Elsewhere;
        kind_ok && capabilities_ok && place_ok
    }

    /// Whether the policy names zones or regions at all.
    fn has_location(&self) -> bool {
        !self.zones.is_empty() || !self.regions.is_empty()
    }

    fn preference(&self, zone: &str) -> Preference {
        if !self.has_location() || self.zones.iter().any(|z| z == zone) {
            Preference::Zone
        } else if self.regions.iter().any(|r| r == region_of(zone)) {
            Preference::Region
        } else {
            Preference::Elsewhere
        }
    }
}

/// The score of a zone for an agent: zones and nodes hash apart, so a zone
/// named like a node does not share its score.
fn zone_score(zone: &str, key: &str) -> u64 {
    score(&format!("zone/{zone}"), key)
}

/// The candidates a policy admits: draining nodes only when nothing else
/// is admitted.
fn admitted<'a>(policy: &Policy, nodes: &'a [NodeInfo]) -> Vec<&'a NodeInfo> {
    let all: Vec<&NodeInfo> = nodes.iter().filter(|n| policy.admits(n)).collect();
    if all.iter().all(|n| n.draining) {
        return all;
    }
    all.into_iter().filter(|n| !n.draining).collect()
}

/// Ranks `nodes` for agent `key`: the first hosts it; the rest follow in
/// the order they would take it over. Nodes the policy does not admit are
/// left out, so the rank is empty when no node can host the agent.
pub fn rank<'a>(key: &str, policy: &Policy, nodes: &'a [NodeInfo]) -> Vec<&'a NodeInfo> {
    rank_by(key, policy, nodes, |_| Distance::SameZone)
}

/// Ranks `nodes` for agent `key` when it leaves a node of zone `origin`:
/// among equally preferred nodes, those of the same zone come first, then
/// those of the same region, then the rest.
pub fn rank_near<'a>(
    key: &str,
    policy: &Policy,
    nodes: &'a [NodeInfo],
    origin: &str,
) -> Vec<&'a NodeInfo> {
    rank_by(key, policy, nodes, |zone| distance(origin, zone))
}

fn rank_by<'a>(
    key: &str,
    policy: &Policy,
    nodes: &'a [NodeInfo],
    distance: impl Fn(&str) -> Distance,
) -> Vec<&'a NodeInfo> {
    let mut ranked: Vec<_> = admitted(policy, nodes)
        .into_iter()
        .map(|n| {
            let zone = if policy.spread {
                zone_score(&n.zone, key)
            } else {
                0
            };
            let order = (
                policy.preference(&n.zone),
                distance(&n.zone),
                Reverse(zone),
                // Ties (practically impossible) go to the smaller name.
                Reverse(score(&n.name, key)),
                n.name.as_str(),
            );
            (order, n)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0));
    ranked.into_iter().map(|(_, n)| n).collect()
}

/// The node that hosts agent `key`: the first of its rank with room for one
/// more agent of its kind, `load` telling how many each node hosts.
pub fn place_with_load<'a>(
    key: &str,
    policy: &Policy,
    nodes: &'a [NodeInfo],
    load: impl Fn(&NodeInfo) -> usize,
) -> Option<&'a NodeInfo> {
    let room = |n: &NodeInfo| policy.max_per_node.is_none_or(|max| load(n) < max);
    rank(key, policy, nodes).into_iter().find(|n| room(n))
}

#[cfg(test)]
mod tests;
