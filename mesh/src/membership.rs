//! Membership: which nodes of the cluster are alive, as this node sees it.
//!
//! Pure bookkeeping driven by announcements and a clock, so it can be tested
//! without NATS. The rules:
//! 1. an announcement from an unknown name adds the node (`Joined`);
//! 2. a newer incarnation of a known name replaces it (`Left`, `Joined`):
//!    the process restarted, so its links and calls are void;
//! 3. an older incarnation is a stale heartbeat of a dead process: ignored;
//! 4. a goodbye removes the node at once; silence removes it after the
//!    member timeout; it is `suspect` after half of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use topology::NodeKind;

/// The format version of announcements.
///
/// It changes only when a field changes meaning or goes away, which would
/// split a mixed mesh into two that ignore each other; new fields are added
/// as optional instead (`#[serde(default)]`), and older nodes ignore them.
pub const ANNOUNCEMENT_VERSION: u16 = 1;

/// What a node says about itself on NATS, as JSON, at every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The announcement format version.
    pub v: u16,
    /// The node's name.
    pub name: String,
    /// The node's zone.
    pub zone: String,
    /// The kind of host.
    pub kind: NodeKind,
    /// Capability labels.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Where its link listens for other nodes.
    pub link: SocketAddr,
    /// The release the node runs.
    pub software: String,
    /// The oldest link frame version it speaks.
    pub wire_min: u16,
    /// The newest link frame version it speaks.
    pub wire_max: u16,
    /// Changes at every start; a larger value is a later start.
    pub incarnation: u64,
    /// When the process started, in Unix milliseconds.
    pub started_ms: u64,
    /// Whether the node is drained: placement gives it no agents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The state version each agent kind it hosts runs (reads and writes).
    /// Releases before this field existed omit it: every kind was at 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub state_versions: BTreeMap<String, u16>,
}

impl Announcement {
    /// The state version of `kind` the node runs; 0 if it cannot host the
    /// kind at all.
    pub fn state_version(&self, kind: &str) -> u16 {
        if self.state_versions.is_empty() {
            // A release from before the field: all its kinds were at 1.
            return 1;
        }
        self.state_versions.get(kind).copied().unwrap_or(0)
    }
}

/// The candidates (name, state version of the agent's kind) that run the
/// newest version among them.
///
/// An agent's state may have been written by that newest version, which an
/// older node cannot read; so placement never moves an agent onto an older
/// node while a newer one is a candidate, and every node, old or new,
/// computes the same set from the same view.
pub fn able_to_run<'a>(candidates: &[(&'a str, u16)]) -> Vec<&'a str> {
    let newest = candidates.iter().map(|(_, v)| *v).max().unwrap_or(0);
    candidates
        .iter()
        .filter(|(_, v)| *v == newest && newest > 0)
        .map(|(name, _)| *name)
        .collect()
}

/// A node in this node's view.
#[derive(Debug, Clone)]
pub struct Member {
    /// What it last announced.
    pub info: Announcement,
    /// When its latest announcement arrived.
    pub last_seen: Instant,
}

/// How a member looks from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Heard from recently.
    Alive,
    /// Silent for more than half the timeout.
    Suspect,
}

impl Status {
    /// The word used in JSON, tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
        }
    }
}

/// Why a member left the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It said goodbye.
    Goodbye,
    /// It was silent past the timeout.
    Timeout,
    /// A newer incarnation of it appeared.
    Restarted,
}

impl LeaveReason {
    /// A short word for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Goodbye => "goodbye",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Restarted => "restarted",
        }
    }
}

/// A change of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node joined.
    Joined(Announcement),
    /// A node left.
    Left {
        /// Its name.
        name: String,
        /// The incarnation that left.
        incarnation: u64,
        /// Why.
        reason: LeaveReason,
    },
}

/// The member list of one node (itself excluded).
#[derive(Debug)]
pub struct Membership {
    me: String,
    timeout: Duration,
    members: BTreeMap<String, Member>,
    /// The zone every node ever seen announced last, kept after it leaves:
    /// its agents fail over near it even once it is gone from the view.
    zones: BTreeMap<String, String>,
}

impl Membership {
    /// An empty view for node `me`, dropping silent nodes after `timeout`.
    pub fn new(me: &str, timeout: Duration) -> Self {
        Membership {
            me: me.to_owned(),
            timeout,
            members: BTreeMap::new(),
            zones: BTreeMap::new(),
        }
    }

    /// Takes an announcement into account.
    pub fn observe(&mut self, info: Announcement, now: Instant) -> Vec<Change> {
        if info.name == self.me {
            return Vec::new();
        }
        if self.zones.get(&info.name) != Some(&info.zone) {
            self.zones.insert(info.name.clone(), info.zone.clone());
        }
        let Some(known) = self.members.get_mut(&info.name) else {
            let joined = Change::Joined(info.clone());
            self.members.insert(
                info.name.clone(),
                Member {
                    info,
                    last_seen: now,
                },
            );
            return vec![joined];
        };
        if info.incarnation < known.info.incarnation {
            return Vec::new();
        }
        if info.incarnation == known.info.incarnation {
            known.info = info;
            known.last_seen = now;
            return Vec::new();
        }
        let left = Change::Left {
            name: info.name.clone(),
            incarnation: known.info.incarnation,
            reason: LeaveReason::Restarted,
        };
        *known = Member {
            info: info.clone(),
            last_seen: now,
        };
        vec![left, Change::Joined(info)]
    }

    /// Takes a goodbye into account.
    pub fn goodbye(&mut self, name: &str, incarnation: u64) -> Option<Change> {
        let member = self.members.get(name)?;
        if member.info.incarnation != incarnation {
            return None;
        }
        self.members.remove(name);
        Some(Change::Left {
            name: name.to_owned(),
            incarnation,
            reason: LeaveReason::Goodbye,
        })
    }

    /// Removes every member silent for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let timeout = self.timeout;
        let mut gone = Vec::new();
        self.members.retain(|name, m| {
            let alive = now.saturating_duration_since(m.last_seen) <= timeout;
            if !alive {
                gone.push(Change::Left {
                    name: name.clone(),
                    incarnation: m.info.incarnation,
                    reason: LeaveReason::Timeout,
                });
            }
            alive
        });
        gone
    }

    /// Treats every member as just heard from.
    ///
    /// Used after this process was paused (SIGSTOP, a long GC-like stall):
    /// the silence was ours, not theirs, so nobody is judged on it.
    pub fn forgive(&mut self, now: Instant) {
        for member in self.members.values_mut() {
            member.last_seen = now;
        }
    }

    /// How `member` looks at `now`.
    pub fn status(&self, member: &Member, now: Instant) -> Status {
        if now.saturating_duration_since(member.last_seen) > self.timeout / 2 {
            Status::Suspect
        } else {
            Status::Alive
        }
    }

    /// The zone node `name` announced last, even if it has left since.
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        self.zones.get(name).map(String::as_str)
    }

    /// The member called `name`.
    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// All members, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// How many members there are (this node excluded).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no other node is known.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests;
