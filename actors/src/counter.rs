//! `counter`: a number that callers add to and read.

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, Context};

/// A counter: `{"add": N}` and `{"get": {}}` both reply `{"value": TOTAL}`.
#[derive(Debug)]
pub struct Counter;

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

impl Agent for Counter {
    const KIND: &'static str = "counter";
    type State = i64;
    type Message = CounterMessage;
    type Reply = CounterReply;

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
