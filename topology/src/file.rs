//! The topology file: zones beyond the built-in ones, the inventory of
//! nodes, and a placement policy per agent kind, in TOML.
//!
//! ```toml
//! [[zone]]                 # Scaleway's zones need no entry
//! name = "local-1"
//! region = "local"
//!
//! [[node]]                 # optional inventory, checked against policies
//! name = "par1-a"
//! zone = "fr-par-1"
//! kind = "elastic-metal"
//! capabilities = ["gpu"]
//!
//! [policy.worker]          # agents of kind `worker`
//! node_kinds = ["instance"]
//! zones = ["fr-par-1"]
//! pinned = false
//! spread = true
//! max_per_node = 100
//! ```
//!
//! Checking a file finds the first problem and names it in one line.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::kind::NodeKind;
use crate::policy::{rank, NodeInfo, Policy};
use crate::zone::{region_of, validate_zone, SCALEWAY_ZONES};

/// What is wrong with a topology file, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The text is not TOML of the expected shape.
    #[error("line {line}: {message}")]
    Syntax {
        /// The line of the problem (1-based).
        line: usize,
        /// What the parser says.
        message: String,
    },
    /// A zone name is malformed.
    #[error("{place}: {error}")]
    BadZone {
        /// Which entry names it.
        place: String,
        /// What is wrong with the name.
        error: crate::zone::ZoneError,
    },
    /// A zone that is neither built in nor declared.
    #[error("{place}: unknown zone \"{zone}\": not a Scaleway zone and not declared in [[zone]]")]
    UnknownZone {
        /// Which entry names it.
        place: String,
        /// The zone.
        zone: String,
    },
    /// A region no known zone belongs to.
    #[error("{place}: unknown region \"{region}\": no known zone belongs to it")]
    UnknownRegion {
        /// Which entry names it.
        place: String,
        /// The region.
        region: String,
    },
    /// A zone said to be in a region its name does not belong to.
    #[error(
        "{place}: zone \"{zone}\" is outside region \"{region}\" (its region is \"{actual}\")"
    )]
    ZoneOutsideRegion {
        /// Which entry says so.
        place: String,
        /// The zone.
        zone: String,
        /// The region given.
        region: String,
        /// The region of the zone's name.
        actual: String,
    },
    /// Two nodes with one name.
    #[error("duplicate node name \"{0}\"")]
    DuplicateNode(String),
    /// A node kind that does not exist.
    #[error("{place}: unknown node kind \"{kind}\": expected elastic-metal or instance")]
    UnknownKind {
        /// Which entry names it.
        place: String,
        /// The kind given.
        kind: String,
    },
    /// A policy that no node of the inventory satisfies.
    #[error("policy {kind}: no node satisfies it ({needs})")]
    Unsatisfiable {
        /// The agent kind.
        kind: String,
        /// What the policy requires.
        needs: String,
    },
    /// A value out of its range.
    #[error("{place}: {message}")]
    Invalid {
        /// Which entry.
        place: String,
        /// What is wrong.
        message: String,
    },
}

/// The file as written, before checking.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    zone: Vec<RawZone>,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    policy: BTreeMap<String, RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: String,
    region: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    zone: String,
    #[serde(default)]
    region: Option<String>,
    kind: String,
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    node_kinds: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    pinned: bool,
    #[serde(default)]
    spread: bool,
    #[serde(default)]
    max_per_node: Option<usize>,
}

/// A checked topology: known zones, the node inventory, and policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Zones declared beyond the built-in ones.
    zones: BTreeSet<String>,
    /// The node inventory, in file order.
    pub nodes: Vec<NodeInfo>,
    /// The placement policy of each agent kind that has one.
    pub policies: BTreeMap<String, Policy>,
    /// The policy of kinds without one of their own.
    default_policy: Policy,
}

impl Topology {
    /// Parses and checks the text of a topology file.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            TopologyError::Syntax {
                line,
                message: e.message().replace('\n', " "),
            }
        })?;
        let mut topology = Topology::default();
        for zone in &raw.zone {
            let place = format!("zone \"{}\"", zone.name);
            check_zone_shape(&place, &zone.name)?;
            check_region(&place, &zone.name, &zone.region)?;
            topology.zones.insert(zone.name.clone());
        }
        let mut names = BTreeSet::new();
        for node in raw.node {
            let place = format!("node \"{}\"", node.name);
            if node.name.is_empty() {
                return Err(invalid("node", "a node needs a name"));
            }
            if !names.insert(node.name.clone()) {
                return Err(TopologyError::DuplicateNode(node.name));
            }
            topology.check_zone(&place, &node.zone)?;
            if let Some(region) = &node.region {
                check_region(&place, &node.zone, region)?;
            }
            let kind = parse_kind(&place, &node.kind)?;
            topology.nodes.push(NodeInfo {
                capabilities: node.capabilities,
                ..NodeInfo::new(&node.name, &node.zone, kind)
            });
        }
        for (kind, raw) in raw.policy {
            let policy = topology.check_policy(&kind, raw)?;
            topology.policies.insert(kind, policy);
        }
        Ok(topology)
    }

    /// Whether `zone` is built in or declared.
    pub fn knows_zone(&self, zone: &str) -> bool {
        SCALEWAY_ZONES.contains(&zone) || self.zones.contains(zone)
    }

    /// Checks that `zone` is a known zone; `place` names who uses it.
    pub fn check_zone(&self, place: &str, zone: &str) -> Result<(), TopologyError> {
        check_zone_shape(place, zone)?;
        if !self.knows_zone(zone) {
            return Err(TopologyError::UnknownZone {
                place: place.to_owned(),
                zone: zone.to_owned(),
            });
        }
        Ok(())
    }

    fn knows_region(&self, region: &str) -> bool {
        SCALEWAY_ZONES
            .iter()
            .copied()
            .chain(self.zones.iter().map(String::as_str))
            .any(|z| region_of(z) == region)
    }

    fn check_policy(&self, kind: &str, raw: RawPolicy) -> Result<Policy, TopologyError> {
        let place = format!("policy {kind}");
        let node_kinds = raw
            .node_kinds
            .iter()
            .map(|k| parse_kind(&place, k))
            .collect::<Result<Vec<_>, _>>()?;
        for zone in &raw.zones {
            self.check_zone(&place, zone)?;
        }
        for region in &raw.regions {
            if !self.knows_region(region) {
                return Err(TopologyError::UnknownRegion {
                    place,
                    region: region.clone(),
                });
            }
        }
        if raw.pinned && raw.zones.is_empty() && raw.regions.is_empty() {
            return Err(invalid(&place, "pinned needs zones or regions to pin to"));
        }
        if raw.max_per_node == Some(0) {
            return Err(invalid(&place, "max_per_node must be at least 1"));
        }
        let policy = Policy {
            node_kinds,
            capabilities: raw.capabilities,
            zones: raw.zones,
            regions: raw.regions,
            pinned: raw.pinned,
            spread: raw.spread,
            max_per_node: raw.max_per_node,
        };
        // Only an inventory can tell that nobody satisfies a policy.
        if !self.nodes.is_empty() && rank("x/x", &policy, &self.nodes).is_empty() {
            return Err(TopologyError::Unsatisfiable {
                kind: kind.to_owned(),
                needs: needs(&policy),
            });
        }
        Ok(policy)
    }

    /// The policy of agent kind `kind`: its own, or the default one.
    pub fn policy(&self, kind: &str) -> &Policy {
        self.policies.get(kind).unwrap_or(&self.default_policy)
    }

    /// The inventory entry of node `name`, if the file lists it.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

fn invalid(place: &str, message: &str) -> TopologyError {
    TopologyError::Invalid {
        place: place.to_owned(),
        message: message.to_owned(),
    }
}

fn check_zone_shape(place: &str, zone: &str) -> Result<(), TopologyError> {
    validate_zone(zone).map_err(|error| TopologyError::BadZone {
        place: place.to_owned(),
        error,
    })
}

fn check_region(place: &str, zone: &str, region: &str) -> Result<(), TopologyError> {
    let actual = region_of(zone);
    if actual != region {
        return Err(TopologyError::ZoneOutsideRegion {
            place: place.to_owned(),
            zone: zone.to_owned(),
            region: region.to_owned(),
            actual: actual.to_owned(),
        });
    }
    Ok(())
}

fn parse_kind(place: &str, kind: &str) -> Result<NodeKind, TopologyError> {
    kind.parse().map_err(|_| TopologyError::UnknownKind {
        place: place.to_owned(),
        kind: kind.to_owned(),
    })
}

/// What a policy requires, in words.
fn needs(policy: &Policy) -> String {
    let mut parts = Vec::new();
    if !policy.node_kinds.is_empty() {
        let kinds: Vec<&str> = policy.node_kinds.iter().map(|k| k.as_str()).collect();
        parts.push(format!("node kind {}", kinds.join(" or ")));
    }
    if !policy.capabilities.is_empty() {
        parts.push(format!("capabilities {}", policy.capabilities.join(", ")));
    }
    if policy.pinned {
        let places: Vec<&str> = policy
            .zones
            .iter()
            .chain(&policy.regions)
            .map(String::as_str)
            .collect();
        parts.push(format!("pinned to {}", places.join(", ")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests;
