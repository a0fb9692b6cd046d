//! `counter`: a number that callers add to and read.

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, Context, Durability};

/// A counter: `{"add": N}` and `{"get": {}}` both reply `{"value": TOTAL}`.
///
/// Its total is kept on the node's disk (`local` durability).
#[derive(Debug)]
pub struct Counter;

/// A counter whose every change is also acknowledged by the replicated log
/// (`replicated` durability): it survives the loss of its host's disk.
#[derive(Debug)]
pub struct ReplicatedCounter;

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

fn apply(total: &mut i64, msg: CounterMessage) -> Result<CounterReply, AgentError> {
    if let CounterMessage::Add(n) = msg {
        *total = total
            .checked_add(n)
            .ok_or_else(|| AgentError::new(format!("adding {n} overflows the counter")))?;
    }
    Ok(CounterReply { value: *total })
}

impl Agent for Counter {
    const KIND: &'static str = "counter";
    const DURABILITY: Durability = Durability::Local;
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
        apply(total, msg)
    }
}

impl Agent for ReplicatedCounter {
    const KIND: &'static str = "rcounter";
    const DURABILITY: Durability = Durability::Replicated;
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
        apply(total, msg)
    }
}
