//! Agent names: `kind/name`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest accepted agent name, kind and slash included.
pub const MAX_AGENT_ID_LEN: usize = 256;

/// The name of an agent: its kind and its name within the kind.
///
/// Both parts are non-empty and made of ASCII letters, digits and `-_.:@`,
/// so that they are safe in log lines, NATS subjects and storage keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId {
    kind: String,
    name: String,
}

/// An agent name that is not of the form `kind/name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent name \"{given}\": {reason}")]
pub struct AgentIdError {
    /// What was given (cut to a readable length).
    pub given: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

impl AgentId {
    /// Builds an agent name from its two parts, checking both.
    pub fn new(kind: &str, name: &str) -> Result<Self, AgentIdError> {
        let fail = |reason| {
            // Cut by characters: a byte cut may fall inside one and panic.
            let given = format!("{kind}/{name}").chars().take(64).collect();
            Err(AgentIdError { given, reason })
        };
        if kind.len() + name.len() + 1 > MAX_AGENT_ID_LEN {
            return fail("longer than 256 bytes");
        }
        if !valid_part(kind) || !valid_part(name) {
            return fail("expected kind/name with letters, digits and -_.:@ only");
        }
        Ok(AgentId {
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The agent's kind, such as `counter`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The agent's name within its kind, such as `alice`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

impl FromStr for AgentId {
    type Err = AgentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((kind, name)) => AgentId::new(kind, name),
            None => AgentId::new(s, "").map_err(|mut e| {
                e.given = s.chars().take(64).collect();
                e
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_as_kind_slash_name() {
        let id: AgentId = "counter/alice".parse().unwrap();
        assert_eq!((id.kind(), id.name()), ("counter", "alice"));
        assert_eq!(id.to_string(), "counter/alice");
    }

    #[test]
    fn a_long_bad_name_is_cut_between_characters_not_inside_one() {
        // Found by fuzzing the gateway: "ƛ" spans bytes 63 and 64.
        let bad = format!("counter/{}ƛ{}", "x".repeat(55), "y".repeat(10));
        let err = bad.parse::<AgentId>().unwrap_err();
        assert_eq!(err.given.chars().count(), 64);
        let long = format!("{}/{}", "é".repeat(100), "é".repeat(100));
        assert!(long.parse::<AgentId>().is_err());
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "counter",
            "/alice",
            "counter/",
            "a/b/c",
            "co unter/x",
            "x/ä",
        ] {
            let err = bad.parse::<AgentId>().unwrap_err();
            assert!(err.to_string().starts_with("invalid agent name"), "{err}");
        }
        let long = format!("k/{}", "n".repeat(300));
        assert!(long.parse::<AgentId>().is_err());
    }
}
