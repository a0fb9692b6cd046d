//! The cluster at a glance, as `meshctl status` shows it.
//!
//! Three sources, each covering what the others miss:
//! - the roster (every node that joined in the last day, with its zone,
//!   last snapshot and last sign of life), so dead nodes and dead zones
//!   still show;
//! - one node's member view, for who is alive or suspect right now;
//! - each node's own [`NodeStatus`], for its agents, snapshot age and
//!   readiness; a node that does not answer is unreachable (still in the
//!   view), down (not in it) or left (it said so in the roster).
//!
//! Building the report is pure, so the rules are tested without a cluster;
//! `meshctl` does the asking.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::gateway::{MemberView, MembersReply, NodeStatus};
use crate::roster;

/// A snapshot older than this many snapshot intervals is a warning: one
/// periodic snapshot was missed, so something is wrong.
pub const STALE_SNAPSHOT_INTERVALS: u64 = 2;

/// A node up this long without a link to the viewing node is a warning:
/// links come up within a second or two of a join.
pub const LINK_GRACE_S: u64 = 10;

/// What `meshctl status` gathered.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The cluster's name.
    pub cluster: String,
    /// One node's member view, if any node answered.
    pub view: Option<MembersReply>,
    /// The roster's entries.
    pub roster: Vec<roster::Entry>,
    /// The nodes that answered, by name.
    pub answers: BTreeMap<String, NodeStatus>,
    /// NATS servers that are down, each with why.
    pub nats_down: Vec<String>,
    /// The time now, in Unix milliseconds.
    pub now_ms: u64,
}

/// How a node looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Answers, ready, and heard from recently.
    Alive,
    /// Answers, but its heartbeats are late.
    Suspect,
    /// Answers, but a readiness check fails.
    NotReady,
    /// Still in the member view, but does not answer.
    Unreachable,
    /// Gone without saying goodbye.
    Down,
    /// Left gracefully.
    Left,
}

impl NodeState {
    fn is_up(self) -> bool {
        matches!(
            self,
            NodeState::Alive | NodeState::Suspect | NodeState::NotReady
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Suspect => "suspect",
            NodeState::NotReady => "not-ready",
            NodeState::Unreachable => "unreachable",
            NodeState::Down => "down",
            NodeState::Left => "left",
        }
    }
}

/// How a zone looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneState {
    /// Every node that did not leave is up.
    Up,
    /// Some nodes are up, some are not.
    Degraded,
    /// No node is up, and some did not leave gracefully.
    Down,
    /// Every node left: the zone has no nodes.
    Empty,
}

impl ZoneState {
    fn as_str(self) -> &'static str {
        match self {
            ZoneState::Up => "up",
            ZoneState::Degraded => "degraded",
            ZoneState::Down => "down",
            ZoneState::Empty => "empty",
        }
    }
}

/// One node's line.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Its name.
    pub name: String,
    /// How it looks.
    pub state: NodeState,
    /// Its live agents (as of its last roster write when it is not up).
    pub agents: Option<u64>,
    /// Seconds since its last snapshot, if it took one since it started.
    pub snapshot_age_s: Option<u64>,
    /// Seconds since it was last heard of, when it is not up.
    pub last_seen_s: Option<u64>,
    /// Its release.
    pub software: String,
}

/// One zone and its nodes.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneReport {
    /// The zone's name.
    pub zone: String,
    /// How it looks.
    pub state: ZoneState,
    /// Its nodes, by name.
    pub nodes: Vec<NodeReport>,
}

/// The whole cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The cluster's name.
    pub cluster: String,
    /// The node whose member view was used.
    pub seen_by: Option<String>,
    /// Every zone, by name.
    pub zones: Vec<ZoneReport>,
    /// What needs attention, one sentence each.
    pub warnings: Vec<String>,
}

/// The nodes worth asking: every member in the view, and every roster
/// entry that did not leave.
pub fn nodes_to_ask(view: Option<&MembersReply>, roster: &[roster::Entry]) -> Vec<String> {
    let mut names: BTreeSet<String> = roster
        .iter()
        .filter(|e| !e.left)
        .map(|e| e.name.clone())
        .collect();
    if let Some(view) = view {
        names.extend(view.members.iter().map(|m| m.name.clone()));
    }
    names.into_iter().collect()
}

fn ago(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// Puts the sources together and finds what needs attention.
pub fn assess(inputs: Inputs) -> Report {
    let secs = |ms: u64| inputs.now_ms.saturating_sub(ms) / 1000;
    let roster: BTreeMap<&str, &roster::Entry> =
        inputs.roster.iter().map(|e| (e.name.as_str(), e)).collect();
    let members = inputs.view.as_ref().map(|v| &v.members[..]).unwrap_or(&[]);
    let seen_by = inputs.view.as_ref().map(|v| v.node.as_str());
    let mut warnings = Vec::new();
    let mut zones: BTreeMap<String, Vec<NodeReport>> = BTreeMap::new();

    let mut names: BTreeSet<&str> = roster.keys().copied().collect();
    names.extend(members.iter().map(|m| m.name.as_str()));
    for name in names {
        let member = members.iter().find(|m| m.name == name);
        let entry = roster.get(name);
        let (zone, report) = match (inputs.answers.get(name), member, entry) {
            (Some(answer), _, _) => {
                let state = if !answer.not_ready.is_empty() {
                    let checks = answer.not_ready.join("; ");
                    warnings.push(format!("node {name} is not ready: {checks}"));
                    NodeState::NotReady
                } else if member.is_some_and(|m| m.status == "suspect") {
                    NodeState::Suspect
                } else {
                    NodeState::Alive
                };
                if let Some(why) = stale_snapshot(answer) {
                    warnings.push(format!("node {name} {why}"));
                }
                if let Some(why) = seen_by.and_then(|by| cut_off(answer, member, by)) {
                    warnings.push(format!("node {name} {why}"));
                }
                let report = NodeReport {
                    name: name.to_owned(),
                    state,
                    agents: Some(answer.agents),
                    snapshot_age_s: answer.snapshot_age_s,
                    last_seen_s: None,
                    software: answer.software.clone(),
                };
                (answer.zone.clone(), report)
            }
            (None, member, entry) => {
                let state = match (member, entry) {
                    (Some(_), _) => NodeState::Unreachable,
                    (None, Some(e)) if e.left => NodeState::Left,
                    _ => NodeState::Down,
                };
                let last_seen_s = entry.map(|e| secs(e.seen_ms));
                match (state, last_seen_s) {
                    (NodeState::Left, _) => {}
                    (_, Some(s)) => warnings.push(format!(
                        "node {name} is {}: last seen {} ago",
                        state.as_str(),
                        ago(s)
                    )),
                    (_, None) => warnings.push(format!("node {name} is {}", state.as_str())),
                }
                let zone = member
                    .map(|m| m.zone.clone())
                    .or_else(|| entry.map(|e| e.zone.clone()))
                    .unwrap_or_default();
                let report = NodeReport {
                    name: name.to_owned(),
                    state,
                    agents: entry.map(|e| e.agents),
                    snapshot_age_s: entry.and_then(|e| e.snapshot_ms).map(secs),
                    last_seen_s,
                    software: member
                        .map(|m| m.software.clone())
                        .or_else(|| entry.map(|e| e.software.clone()))
                        .unwrap_or_default(),
                };
                (zone, report)
            }
        };
        zones.entry(zone).or_default().push(report);
    }

    let zones: Vec<ZoneReport> = zones
        .into_iter()
        .map(|(zone, nodes)| {
            let up = nodes.iter().filter(|n| n.state.is_up()).count();
            let gone = nodes.iter().filter(|n| n.state == NodeState::Left).count();
            let state = match up {
                0 if gone == nodes.len() => ZoneState::Empty,
                0 => ZoneState::Down,
                _ if up + gone == nodes.len() => ZoneState::Up,
                _ => ZoneState::Degraded,
            };
            match state {
                ZoneState::Down => {
                    warnings.push(format!("zone {zone} is down: none of its nodes answers"))
                }
                ZoneState::Empty => {
                    warnings.push(format!("zone {zone} has no nodes: all of them left"))
                }
                _ => {}
            }
            ZoneReport { zone, state, nodes }
        })
        .collect();
    if inputs.view.is_none() {
        warnings.push(format!(
            "no node of cluster {} answered: the cluster is down or NATS is cut off",
            inputs.cluster
        ));
    }
    warnings.extend(inputs.nats_down);
    Report {
        cluster: inputs.cluster,
        seen_by: inputs.view.map(|v| v.node),
        zones,
        warnings,
    }
}

/// Why a node that answers is cut off from the viewing node, if it is.
///
/// Such a node still takes gateway requests and claims the agents it is
/// asked for, which the viewing node then cannot reach.
fn cut_off(answer: &NodeStatus, member: Option<&MemberView>, seen_by: &str) -> Option<String> {
    if answer.uptime_s < LINK_GRACE_S {
        return None;
    }
    match member {
        None => Some(format!(
            "answers but is not a member as seen by {seen_by}: does it have \
             another cluster secret? (its log says \"refused announcement\")"
        )),
        Some(m) if !m.linked && !m.this => Some(format!(
            "has no link to {seen_by}: agents it hosts are unavailable there \
             (TLS certificates or network; see both nodes' logs)"
        )),
        Some(_) => None,
    }
}

/// Why a node's snapshots look stale, if they do.
fn stale_snapshot(status: &NodeStatus) -> Option<String> {
    let limit = status
        .snapshot_interval_s
        .saturating_mul(STALE_SNAPSHOT_INTERVALS);
    if !status.has_records || status.snapshot_interval_s == 0 {
        return None;
    }
    match status.snapshot_age_s {
        Some(age) if age > limit => Some(format!(
            "has no snapshot for {} (interval {})",
            ago(age),
            ago(status.snapshot_interval_s)
        )),
        None if status.uptime_s > limit => Some(format!(
            "has taken no snapshot since it started {} ago (interval {})",
            ago(status.uptime_s),
            ago(status.snapshot_interval_s)
        )),
        _ => None,
    }
}

/// The report as one screen of text.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let seen_by = report.seen_by.as_deref().unwrap_or("no node");
    let nodes: usize = report.zones.iter().map(|z| z.nodes.len()).sum();
    let _ = writeln!(
        out,
        "cluster {}: {} zones, {nodes} nodes (members as seen by {seen_by})",
        report.cluster,
        report.zones.len()
    );
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:<20} {:<12} {:>6} {:<14} {:<10}",
        "ZONE", "STATE", "NODE", "STATE", "AGENTS", "SNAPSHOT", "VERSION"
    );
    for zone in &report.zones {
        for (i, node) in zone.nodes.iter().enumerate() {
            let (name, state) = if i == 0 {
                (zone.zone.as_str(), zone.state.as_str())
            } else {
                ("", "")
            };
            let agents = node.agents.map_or("-".into(), |n| n.to_string());
            let snapshot = node
                .snapshot_age_s
                .map_or("never".into(), |s| format!("{} ago", ago(s)));
            let _ = writeln!(
                out,
                "{name:<12} {state:<9} {:<20} {:<12} {agents:>6} {snapshot:<14} {:<10}",
                node.name,
                node.state.as_str(),
                node.software
            );
        }
    }
    if report.warnings.is_empty() {
        let _ = writeln!(out, "no warnings");
    } else {
        let _ = writeln!(out, "warnings:");
        for warning in &report.warnings {
            let _ = writeln!(out, "  - {warning}");
        }
    }
    out
}

#[cfg(test)]
mod tests;
