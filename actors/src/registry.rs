//! The kinds a node can host, behind a type-erased interface.
//!
//! The runtime moves agent messages as encoded bytes and the gateway speaks
//! JSON; a [`Kind`] converts between the two and runs a kind's handler on
//! bytes, so the runtime never needs the kind's Rust types.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize as _;

use crate::agent::{Agent, CallError, Context, Durability};
use crate::codec;
use crate::id::AgentId;
use crate::tasks::{TaskHandler, TaskHandlers};

/// An agent kind with its types erased.
pub trait Kind: Send + Sync + 'static {
    /// The kind's name.
    fn name(&self) -> &'static str;
    /// How much of its state survives.
    fn durability(&self) -> Durability;
    /// Converts a JSON message into the encoded message.
    fn message_from_json(
        &self,
        to: &AgentId,
        msg: &serde_json::Value,
    ) -> Result<Vec<u8>, CallError>;
    /// Converts an encoded reply into JSON.
    fn reply_to_json(&self, to: &AgentId, reply: &[u8]) -> Result<serde_json::Value, CallError>;
    /// The version of the kind's state encoding.
    fn state_version(&self) -> u16;
    /// How many crashes in how long the supervisor restarts.
    fn restart_limit(&self) -> (u32, std::time::Duration);
    /// Whether the encoded message may be delivered twice.
    fn is_idempotent(&self, payload: &[u8]) -> bool;
    /// The node agent `name` of this kind is pinned to, if any.
    fn pinned_node<'a>(&self, name: &'a str) -> Option<&'a str>;
    /// A live instance, from a stored state (`version`, bytes) or fresh.
    fn instantiate(&self, stored: Option<(u16, &[u8])>) -> Result<Box<dyn Instance>, CallError>;
}

/// What handling one message produced.
#[derive(Debug)]
pub struct Outcome {
    /// The encoded reply, or the error for the caller.
    pub reply: Result<Vec<u8>, CallError>,
    /// The new encoded state, when it changed and the kind keeps state.
    pub state: Option<Vec<u8>>,
}

/// A live agent with its types erased: its state and its handler.
pub trait Instance: Send + 'static {
    /// Decodes `payload`, runs the handler and encodes the reply.
    fn handle<'a>(&'a mut self, ctx: &'a Context, payload: &'a [u8]) -> BoxFuture<'a, Outcome>;
}

struct TypedKind<A>(PhantomData<fn() -> A>);

struct TypedInstance<A: Agent> {
    state: A::State,
    /// The state as last persisted; `None` for memory-only kinds, which
    /// never pay for encoding their state.
    persisted: Option<Vec<u8>>,
}

fn bad_message(to: &AgentId, reason: impl ToString) -> CallError {
    CallError::BadMessage {
        agent: to.to_string(),
        reason: reason.to_string(),
    }
}

impl<A: Agent> Kind for TypedKind<A> {
    fn name(&self) -> &'static str {
        A::KIND
    }

    fn durability(&self) -> Durability {
        A::DURABILITY
    }

    fn message_from_json(
        &self,
        to: &AgentId,
        msg: &serde_json::Value,
    ) -> Result<Vec<u8>, CallError> {
        let typed: A::Message = A::Message::deserialize(msg).map_err(|e| bad_message(to, e))?;
        codec::encode(&typed).map_err(|e| bad_message(to, e))
    }

    fn reply_to_json(&self, to: &AgentId, reply: &[u8]) -> Result<serde_json::Value, CallError> {
        let typed: A::Reply = codec::decode(reply).map_err(|e| CallError::Internal {
            reason: format!("reply from {to}: {e}"),
        })?;
        serde_json::to_value(&typed).map_err(|e| CallError::Internal {
            reason: format!("reply from {to}: {e}"),
        })
    }

    fn state_version(&self) -> u16 {
        A::STATE_VERSION
    }

    fn restart_limit(&self) -> (u32, std::time::Duration) {
        (A::MAX_RESTARTS, A::RESTART_WINDOW)
    }

    fn is_idempotent(&self, payload: &[u8]) -> bool {
        codec::decode::<A::Message>(payload).is_ok_and(|m| A::is_idempotent(&m))
    }

    fn pinned_node<'a>(&self, name: &'a str) -> Option<&'a str> {
        A::pinned_node(name)
    }

    fn instantiate(&self, stored: Option<(u16, &[u8])>) -> Result<Box<dyn Instance>, CallError> {
        let unreadable = |reason: String| CallError::Internal {
            reason: format!("stored {} state is unreadable: {reason}", A::KIND),
        };
        let state = match stored {
            None => A::State::default(),
            Some((version, bytes)) if version == A::STATE_VERSION => {
                codec::decode(bytes).map_err(|e| unreadable(e.to_string()))?
            }
            Some((version, bytes)) => A::migrate(version, bytes).map_err(|e| unreadable(e.0))?,
        };
        let persisted = match A::DURABILITY {
            Durability::Memory => None,
            _ => Some(codec::encode(&state).map_err(|e| unreadable(e.to_string()))?),
        };
        Ok(Box::new(TypedInstance::<A> { state, persisted }))
    }
}

impl<A: Agent> Instance for TypedInstance<A> {
    fn handle<'a>(&'a mut self, ctx: &'a Context, payload: &'a [u8]) -> BoxFuture<'a, Outcome> {
        async move {
            let msg: A::Message = match codec::decode(payload) {
                Ok(msg) => msg,
                Err(e) => {
                    return Outcome {
                        reply: Err(bad_message(ctx.id(), e)),
                        state: None,
                    }
                }
            };
            let reply = match A::handle(&mut self.state, ctx, msg).await {
                Ok(reply) => codec::encode(&reply).map_err(|e| CallError::Internal {
                    reason: e.to_string(),
                }),
                Err(e) => Err(CallError::Agent {
                    agent: ctx.id().to_string(),
                    message: e.0,
                }),
            };
            Outcome {
                reply,
                state: self.changed_state(),
            }
        }
        .boxed()
    }
}

impl<A: Agent> TypedInstance<A> {
    /// The newly encoded state if it differs from the persisted one.
    fn changed_state(&mut self) -> Option<Vec<u8>> {
        let persisted = self.persisted.as_mut()?;
        let now = codec::encode(&self.state).ok()?;
        if now == *persisted {
            return None;
        }
        persisted.clone_from(&now);
        Some(now)
    }
}

/// The kinds a node can host, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Kind>>,
    tasks: TaskHandlers,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds kind `A`, replacing any kind of the same name.
    pub fn register<A: Agent>(&mut self) -> &mut Self {
        self.kinds
            .insert(A::KIND, Arc::new(TypedKind::<A>(PhantomData)));
        self
    }

    /// The kind called `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.get(name)
    }

    /// The kind of agent `id`, or [`CallError::UnknownKind`].
    pub fn kind_of(&self, id: &AgentId) -> Result<&Arc<dyn Kind>, CallError> {
        self.get(id.kind()).ok_or_else(|| CallError::UnknownKind {
            kind: id.kind().to_owned(),
        })
    }

    /// Adds a task handler for workers on this node, under `task_type`,
    /// replacing any handler of that type (built-in ones included).
    pub fn register_task(&mut self, task_type: &str, handler: impl TaskHandler) -> &mut Self {
        self.tasks.register(task_type, handler);
        self
    }

    /// The task handlers of this node.
    pub fn tasks(&self) -> &TaskHandlers {
        &self.tasks
    }

    /// The task handlers, to add to before the node starts.
    pub fn tasks_mut(&mut self) -> &mut TaskHandlers {
        &mut self.tasks
    }

    /// The names of all registered kinds, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}
