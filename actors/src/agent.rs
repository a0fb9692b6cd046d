//! The agent trait, the context a handler runs in, and call errors.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::id::AgentId;
use crate::registry::Registry;

/// How much of an agent's state survives, chosen per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Nothing survives the process.
    Memory,
    /// Written to the node's store before the reply.
    Local,
    /// Also acknowledged by a replicated log before the reply.
    Replicated,
}

/// A kind of agent: its message, reply and state types and its handler.
///
/// One value of `State` exists per live agent; the runtime owns it and lends
/// it to [`Agent::handle`] for one message at a time, so a handler never
/// races with itself.
///
/// # Compatibility
/// Messages cross nodes that may run different releases. Follow the rules
/// in [`crate::codec`]: add enum variants at the end, never reuse one.
pub trait Agent: Send + 'static {
    /// The kind's name, the part before the slash in `kind/name`.
    const KIND: &'static str;
    /// How much of the state survives (see [`Durability`]).
    const DURABILITY: Durability = Durability::Memory;
    /// The version of `State`'s encoding; raise it when `State` changes
    /// shape, and teach [`Agent::migrate`] to read the older versions.
    const STATE_VERSION: u16 = 1;
    /// How many crashes within [`Agent::RESTART_WINDOW`] the supervisor
    /// restarts; one more marks the agent failed.
    const MAX_RESTARTS: u32 = 5;
    /// The window over which crashes are counted.
    const RESTART_WINDOW: Duration = Duration::from_secs(10);
    /// The agent's state; a new agent starts from `Default`.
    type State: Serialize + DeserializeOwned + Default + Send + 'static;
    /// What the agent accepts.
    type Message: Serialize + DeserializeOwned + Send + 'static;
    /// What the agent answers.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// Reads a state stored by an older release, as `version`.
    ///
    /// The default knows no older version: such a state is refused, never
    /// misread.
    fn migrate(version: u16, _state: &[u8]) -> Result<Self::State, AgentError> {
        Err(AgentError::new(format!(
            "{} cannot read state version {version} (it reads {})",
            Self::KIND,
            Self::STATE_VERSION
        )))
    }

    /// Whether handling `msg` twice has the same effect as once; the mesh
    /// retries such a message once on the new owner when its node is lost.
    fn is_idempotent(_msg: &Self::Message) -> bool {
        false
    }

    /// The node an agent of this kind called `name` must live on, if the
    /// kind pins its agents; `None` (the default) lets placement choose.
    ///
    /// A pinned agent never fails over: while its node is away, calls to
    /// it fail with [`CallError::Unavailable`].
    fn pinned_node(_name: &str) -> Option<&str> {
        None
    }

    /// Handles one message and returns the reply.
    ///
    /// An error is returned to the caller; a panic crashes the agent, which
    /// its supervisor restarts.
    fn handle(
        state: &mut Self::State,
        ctx: &Context,
        msg: Self::Message,
    ) -> impl Future<Output = Result<Self::Reply, AgentError>> + Send;
}

/// An error a handler returns to its caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(pub String);

impl AgentError {
    /// An error with the given text.
    pub fn new(text: impl Into<String>) -> Self {
        AgentError(text.into())
    }
}

impl From<CallError> for AgentError {
    fn from(e: CallError) -> Self {
        AgentError(e.to_string())
    }
}

/// Why a call or a cast did not produce a reply.
///
/// It crosses links inside reply frames, so variants are only ever added at
/// the end (see [`crate::codec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// No node of the mesh knows this agent kind.
    #[error("unknown agent kind \"{kind}\"")]
    UnknownKind {
        /// The kind that was asked for.
        kind: String,
    },
    /// The message does not decode as one the agent accepts.
    #[error("{agent} does not understand the message: {reason}")]
    BadMessage {
        /// The target agent.
        agent: String,
        /// What the decoder said.
        reason: String,
    },
    /// The handler returned an error.
    #[error("{agent} answered with an error: {message}")]
    Agent {
        /// The agent that answered.
        agent: String,
        /// The handler's error text.
        message: String,
    },
    /// No reply came within the deadline.
    #[error("no reply from {agent} within {ms} ms")]
    Timeout {
        /// The target agent.
        agent: String,
        /// The deadline that passed.
        ms: u64,
    },
    /// The node hosting the agent left the mesh before replying; retryable.
    #[error("node {node} hosting {agent} left before replying")]
    NodeLost {
        /// The target agent.
        agent: String,
        /// The node that was lost.
        node: String,
    },
    /// The agent cannot be reached now; retryable.
    #[error("{agent} is unavailable: {reason}")]
    Unavailable {
        /// The target agent.
        agent: String,
        /// Why.
        reason: String,
    },
    /// The encoded message is over the mesh's size cap.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The agent crashed while handling the message.
    #[error("{agent} crashed while handling the message")]
    Crashed {
        /// The agent that crashed.
        agent: String,
    },
    /// Something inside the mesh went wrong.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
    /// The agent crashed more often than its restart limit allows; it stays
    /// down until an operator resets it or its node restarts.
    #[error("{agent} failed: {reason}")]
    Failed {
        /// The agent.
        agent: String,
        /// The crash history.
        reason: String,
    },
}

impl CallError {
    /// A short stable code for JSON replies and exit statuses.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::UnknownKind { .. } => "unknown_kind",
            CallError::BadMessage { .. } => "bad_message",
            CallError::Agent { .. } => "agent_error",
            CallError::Timeout { .. } => "timeout",
            CallError::NodeLost { .. } => "node_lost",
            CallError::Unavailable { .. } => "unavailable",
            CallError::TooLarge { .. } => "too_large",
            CallError::Crashed { .. } => "crashed",
            CallError::Internal { .. } => "internal",
            CallError::Failed { .. } => "failed",
        }
    }

    /// Whether trying again later (or elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::NodeLost { .. } | CallError::Unavailable { .. } | CallError::Timeout { .. }
        )
    }
}

/// The mesh as an agent sees it: how to reach other agents by name.
///
/// The `mesh` crate implements it; payloads are already encoded with
/// [`crate::codec`].
pub trait Caller: Send + Sync + 'static {
    /// Sends `payload` to `to` and waits at most `timeout` for the reply.
    fn call(
        &self,
        to: AgentId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>>;

    /// Sends `payload` to `to` without waiting for anything.
    fn cast(&self, to: AgentId, payload: Vec<u8>) -> Result<(), CallError>;
}

/// Where an agent runs: its node's name, zone, region, kind and
/// capabilities, as the node's configuration gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The node's name.
    pub node: String,
    /// Its zone, such as `fr-par-1`.
    pub zone: String,
    /// Its region, such as `fr-par`.
    pub region: String,
    /// Its host kind, such as `elastic-metal`.
    pub kind: String,
    /// Its capability labels, such as `gpu`, sorted.
    pub capabilities: Vec<String>,
}

/// What a handler knows about where it runs, and its way to other agents.
#[derive(Clone)]
pub struct Context {
    id: AgentId,
    node: Arc<str>,
    facts: Arc<NodeFacts>,
    caller: Arc<dyn Caller>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for agent `id` living on `node`.
    pub fn new(
        id: AgentId,
        node: Arc<str>,
        caller: Arc<dyn Caller>,
        registry: Arc<Registry>,
    ) -> Self {
        let facts = Arc::new(NodeFacts {
            node: node.to_string(),
            ..NodeFacts::default()
        });
        Context {
            id,
            node,
            facts,
            caller,
            registry,
        }
    }

    /// The same context, with the facts of the node it runs on.
    pub fn with_facts(mut self, facts: Arc<NodeFacts>) -> Self {
        self.facts = facts;
        self
    }

    /// The facts of the node the agent lives on (zone, kind, capabilities).
    pub fn facts(&self) -> &NodeFacts {
        &self.facts
    }

    /// The task handlers registered on this node (see [`crate::tasks`]).
    pub fn tasks(&self) -> &crate::tasks::TaskHandlers {
        self.registry.tasks()
    }

    /// The agent this context belongs to.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// The name of the node the agent lives on now.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Calls agent `A::KIND/name` with a typed message.
    pub async fn call<A: Agent>(
        &self,
        name: &str,
        msg: &A::Message,
        timeout: Duration,
    ) -> Result<A::Reply, CallError> {
        let (to, payload) = addressed::<A>(name, msg)?;
        let agent = to.to_string();
        let reply = self.caller.call(to, payload, timeout).await?;
        codec::decode(&reply).map_err(|e| CallError::Internal {
            reason: format!("reply from {agent}: {e}"),
        })
    }

    /// Sends agent `A::KIND/name` a typed message without waiting.
    pub fn cast<A: Agent>(&self, name: &str, msg: &A::Message) -> Result<(), CallError> {
        let (to, payload) = addressed::<A>(name, msg)?;
        self.caller.cast(to, payload)
    }

    /// Calls any agent with a JSON message and returns its JSON reply.
    pub async fn call_json(
        &self,
        to: &AgentId,
        msg: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, CallError> {
        let kind = self.registry.kind_of(to)?;
        let payload = kind.message_from_json(to, msg)?;
        let reply = self.caller.call(to.clone(), payload, timeout).await?;
        kind.reply_to_json(to, &reply)
    }

    /// Sends a JSON message to any agent without waiting for a reply.
    pub fn cast_json(&self, to: &AgentId, msg: &serde_json::Value) -> Result<(), CallError> {
        let kind = self.registry.kind_of(to)?;
        let payload = kind.message_from_json(to, msg)?;
        self.caller.cast(to.clone(), payload)
    }
}

/// The id of agent `A::KIND/name` and `msg` encoded for it.
fn addressed<A: Agent>(name: &str, msg: &A::Message) -> Result<(AgentId, Vec<u8>), CallError> {
    let internal = |reason: String| CallError::Internal { reason };
    let to = AgentId::new(A::KIND, name).map_err(|e| internal(e.to_string()))?;
    let payload = codec::encode(msg).map_err(|e| internal(e.to_string()))?;
    Ok((to, payload))
}
