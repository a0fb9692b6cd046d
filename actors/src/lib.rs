//! Agents: what they are, how they are written, and the built-in kinds.
//!
//! An agent is a named actor, addressed as `kind/name` (`counter/alice`),
//! whose kind fixes its message, reply and state types. This crate knows
//! nothing of NATS or sockets; the `mesh` crate hosts agents and carries
//! their messages. Layout, in the order a message meets it:
//! - [`id`]: agent names (`kind/name`) and their validation;
//! - [`codec`]: the one place that knows the binary encoding (bincode);
//! - [`agent`]: the [`Agent`] trait, its [`Context`], and call errors;
//! - [`json`]: a JSON value that also travels in the binary codec;
//! - [`registry`]: the kinds a node can host, with type erasure so the
//!   runtime can route raw bytes and JSON;
//! - [`tasks`]: task handlers, which workers run (`sleep`, `sha256`,
//!   `exec` built in);
//! - built-in kinds: [`echo`], [`counter`], [`relay`], [`probe`], and the
//!   army: [`board`] (a durable task queue) and [`worker`].

pub mod agent;
pub mod board;
pub mod codec;
pub mod counter;
pub mod echo;
pub mod id;
pub mod json;
pub mod probe;
pub mod registry;
pub mod relay;
pub mod tasks;
pub mod worker;

pub use agent::{Agent, AgentError, CallError, Caller, Context, Durability, NodeFacts};
pub use id::{AgentId, AgentIdError};
pub use json::Json;
pub use registry::{Kind, Outcome, Registry};

/// A registry holding every built-in agent kind.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<echo::Echo>();
    registry.register::<counter::Counter>();
    registry.register::<counter::ReplicatedCounter>();
    registry.register::<relay::Relay>();
    registry.register::<probe::Probe>();
    registry.register::<board::Board>();
    registry.register::<worker::Worker>();
    registry
}
