//! `counter`: a number that callers add to and read.

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, Context, Durability};

/// A counter: `{"add": N}` and `{"get": {}}` both reply `{"value": TOTAL}`.
///
/// `REPLICATED` picks its durability: see [`Counter`] and
/// [`ReplicatedCounter`].
#[derive(Debug)]
pub struct CounterKind<const REPLICATED: bool>;

/// A counter whose total is kept on the node's disk (`local` durability).
pub type Counter = CounterKind<false>;

/// A counter whose every change is also acknowledged by the replicated log
/// (`replicated` durability): it survives the loss of its host's disk.
pub type ReplicatedCounter = CounterKind<true>;

/// What a counter accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterMessage {
    /// Adds to the total (a negative number subtracts).
    Add(i64),
    /// Reads the total.
    Get {},
}

/// A counter's answer: the total after the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReply {
    /// The total.
    pub value: i64,
}

impl<const REPLICATED: bool> Agent for CounterKind<REPLICATED> {
    const KIND: &'static str = if REPLICATED { "rcounter" } else { "counter" };
    const DURABILITY: Durability = if REPLICATED {
        Durability::Replicated
    } else {
        Durability::Local
    };
    type State = i64;
    type Message = CounterMessage;
    type Reply = CounterReply;

    fn is_idempotent(msg: &CounterMessage) -> bool {
        matches!(msg, CounterMessage::Get {})
    }

    async fn handle(
        total: &mut i64,
        _: &Context,
        msg: CounterMessage,
    ) -> Result<CounterReply, AgentError> {
        if let CounterMessage::Add(n) = msg {
            *total = total
                .checked_add(n)
                .ok_or_else(|| AgentError::new(format!("adding {n} overflows the counter")))?;
        }
        Ok(CounterReply { value: *total })
    }
}
