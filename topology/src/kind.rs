//! Node kinds: what sort of host a node runs on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The sort of host a node runs on.
///
/// The names are the ones operators type (`elastic-metal`, `instance`); they
/// also travel in announcements, so they never change once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A bare-metal host (Scaleway Elastic Metal).
    ElasticMetal,
    /// A virtual machine (Scaleway Instance).
    Instance,
}

impl NodeKind {
    /// The name used in config files, flags and announcements.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::ElasticMetal => "elastic-metal",
            NodeKind::Instance => "instance",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node kind name that is not one of the known kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown node kind \"{0}\": expected elastic-metal or instance")]
pub struct ParseKindError(pub String);

impl FromStr for NodeKind {
    type Err = ParseKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "elastic-metal" => Ok(NodeKind::ElasticMetal),
            "instance" => Ok(NodeKind::Instance),
            other => Err(ParseKindError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in [NodeKind::ElasticMetal, NodeKind::Instance] {
            assert_eq!(kind.as_str().parse::<NodeKind>(), Ok(kind));
        }
        let err = "vm".parse::<NodeKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown node kind \"vm\": expected elastic-metal or instance"
        );
    }
}
