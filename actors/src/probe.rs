//! `probe`: an agent for testing the mesh itself.

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, Context};

/// Answers where it runs, and misbehaves on request: for tests and drills.
#[derive(Debug)]
pub struct Probe;

/// What a probe accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMessage {
    /// Replies with the probe's name, node and message count.
    Whoami {},
    /// Panics with the given text (a poison message).
    Panic(String),
    /// Returns the given text as an error.
    Fail(String),
}

/// A probe's answer to `whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The probe's name.
    pub agent: String,
    /// The node it runs on.
    pub node: String,
    /// Messages handled since this activation.
    pub handled: u64,
}

impl Agent for Probe {
    const KIND: &'static str = "probe";
    const MAX_RESTARTS: u32 = 3;
    type State = u64;
    type Message = ProbeMessage;
    type Reply = ProbeReply;

    async fn handle(
        handled: &mut u64,
        ctx: &Context,
        msg: ProbeMessage,
    ) -> Result<ProbeReply, AgentError> {
        *handled += 1;
        match msg {
            ProbeMessage::Whoami {} => Ok(ProbeReply {
                agent: ctx.id().to_string(),
                node: ctx.node().to_owned(),
                handled: *handled,
            }),
            ProbeMessage::Panic(text) => panic!("probe asked to panic: {text}"),
            ProbeMessage::Fail(text) => Err(AgentError::new(text)),
        }
    }
}
