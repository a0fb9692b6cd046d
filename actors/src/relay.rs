//! `relay`: calls another agent and returns its reply, with where it ran.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, Context};
use crate::id::AgentId;
use crate::json::Json;

/// How long a relayed call may take when the message does not say.
pub const DEFAULT_RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards a message to another agent: agent-to-agent calls across nodes.
#[derive(Debug)]
pub struct Relay;

/// What a relay accepts: `{"to": "counter/x", "msg": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayMessage {
    /// The agent to call.
    pub to: String,
    /// The message for it.
    pub msg: Json,
    /// How long to wait, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A relay's answer: the target's reply and the relay's own node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayReply {
    /// What the target answered.
    pub reply: Json,
    /// The node on which the relay ran.
    pub relay_node: String,
}

impl Agent for Relay {
    const KIND: &'static str = "relay";
    type State = ();
    type Message = RelayMessage;
    type Reply = RelayReply;

    async fn handle(
        _: &mut (),
        ctx: &Context,
        msg: RelayMessage,
    ) -> Result<RelayReply, AgentError> {
        let to: AgentId = msg
            .to
            .parse()
            .map_err(|e| AgentError::new(format!("{e}")))?;
        let timeout = msg
            .timeout_ms
            .map_or(DEFAULT_RELAY_TIMEOUT, Duration::from_millis);
        let reply = ctx.call_json(&to, &msg.msg.0, timeout).await?;
        Ok(RelayReply {
            reply: Json(reply),
            relay_node: ctx.node().to_owned(),
        })
    }
}
