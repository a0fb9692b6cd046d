//! Supervision: live agents as actors, under one supervisor per node.
//!
//! The supervisor activates agents (spawns their actor, linked to itself)
//! and hears when one stops or crashes. A crashed agent is removed from the
//! directory; the next message activates it again with fresh state. Every
//! message carries a [`ReplySlot`] that answers the caller exactly once: with
//! the handler's result, or with [`CallError::Crashed`] if the handler
//! panicked and the message was dropped unanswered.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::registry::Instance;
use actors::{AgentId, CallError, Context, Kind};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::node::Shared;
use crate::state;
use crate::storage::Record;
use crate::wire::Frame;

/// Where the answer to a message goes.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// Nobody waits (a cast).
    Nobody,
    /// A caller on this node.
    Local(oneshot::Sender<Result<Vec<u8>, CallError>>),
    /// A caller on another node, by call id.
    Remote {
        /// The node waiting.
        node: String,
        /// Its call id.
        id: u64,
    },
}

/// Answers the caller exactly once, even if the handler panics.
#[derive(Debug)]
pub(crate) struct ReplySlot {
    to: Option<ReplyTo>,
    agent: Option<AgentId>,
    shared: Arc<Shared>,
}

impl ReplySlot {
    pub(crate) fn new(to: ReplyTo, shared: Arc<Shared>) -> Self {
        ReplySlot {
            to: Some(to),
            agent: None,
            shared,
        }
    }

    /// Sends `result` to whoever waits.
    pub(crate) fn send(mut self, result: Result<Vec<u8>, CallError>) {
        if let Some(to) = self.to.take() {
            deliver_reply(&self.shared, to, result);
        }
    }
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let agent = self
                .agent
                .as_ref()
                .map_or_else(|| "agent".to_owned(), |a| a.to_string());
            deliver_reply(&self.shared, to, Err(CallError::Crashed { agent }));
        }
    }
}

fn deliver_reply(shared: &Shared, to: ReplyTo, result: Result<Vec<u8>, CallError>) {
    match to {
        ReplyTo::Nobody => {}
        ReplyTo::Local(tx) => {
            let _ = tx.send(result);
        }
        ReplyTo::Remote { node, id } => {
            // The caller's deadline covers a lost reply; nothing to do here.
            let _ = shared.send_frame(&node, &Frame::Reply { id, result });
        }
    }
}

/// One message for an agent.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) to: AgentId,
    pub(crate) payload: Vec<u8>,
    pub(crate) reply: ReplySlot,
}

impl ractor::Message for Delivery {}

/// A live agent: the actor that runs one agent's handler.
struct AgentActor;

/// An agent actor's state; the agent's own state is loaded on the first
/// message, so that activation never blocks the supervisor on storage.
struct AgentState {
    id: AgentId,
    kind: Arc<dyn Kind>,
    ctx: Context,
    shared: Arc<Shared>,
    live: Option<Live>,
}

/// The agent's state, once loaded.
struct Live {
    instance: Box<dyn Instance>,
    epoch: u64,
    seq: u64,
    revision: Option<u64>,
}

impl AgentState {
    async fn activate(&mut self) -> Result<&mut Live, CallError> {
        if self.live.is_none() {
            let durability = self.kind.durability();
            let loaded = state::load(&self.shared, &self.id, durability).await?;
            let stored = loaded
                .record
                .as_ref()
                .map(|r| (r.state_version, r.state.as_slice()));
            let instance = self.kind.instantiate(stored)?;
            let epoch = loaded.record.as_ref().map_or(0, |r| r.epoch) + 1;
            self.shared.stats.activations.inc();
            info!(
                agent = %self.id,
                epoch,
                from = if loaded.record.is_some() { loaded.source } else { "new" },
                "agent activated"
            );
            self.live = Some(Live {
                instance,
                epoch,
                seq: 0,
                revision: loaded.revision,
            });
        }
        Ok(self.live.as_mut().expect("activated above"))
    }
}

impl Actor for AgentActor {
    type Msg = Delivery;
    type State = AgentState;
    type Arguments = AgentState;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        state: AgentState,
    ) -> Result<AgentState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Delivery>,
        mut delivery: Delivery,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        delivery.reply.agent = Some(delivery.to);
        let durability = state.kind.durability();
        let state_version = state.kind.state_version();
        let ctx = state.ctx.clone();
        let shared = state.shared.clone();
        let id = state.id.clone();
        let live = match state.activate().await {
            Ok(live) => live,
            Err(e) => {
                warn!(agent = %id, error = %e, "activation failed");
                delivery.reply.send(Err(e));
                myself.stop(Some("activation failed".into()));
                return Ok(());
            }
        };

        let outcome = live.instance.handle(&ctx, &delivery.payload).await;
        if let Some(new_state) = outcome.state {
            live.seq += 1;
            let record = Record {
                epoch: live.epoch,
                seq: live.seq,
                state_version,
                state: new_state,
            };
            let saved = state::save(&shared, &id, durability, record, &mut live.revision).await;
            if let Err(e) = saved {
                // The change exists only in memory: drop it with the agent.
                warn!(agent = %id, error = %e, "state not saved; agent stopped");
                delivery.reply.send(Err(e));
                myself.stop(Some("state not saved".into()));
                return Ok(());
            }
        }
        delivery.reply.send(outcome.reply);
        Ok(())
    }
}

/// Requests to the supervisor.
#[derive(Debug)]
pub(crate) enum SupervisorMessage {
    /// Deliver to an agent, activating it first if it is not live.
    Deliver(Delivery),
}

impl ractor::Message for SupervisorMessage {}

/// The parent of every live agent on a node.
pub(crate) struct Supervisor;

/// The first restart delay after a crash; it doubles with each crash in the
/// window, up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(20);
/// The longest restart delay.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(2);

/// The supervisor's memory of crashes.
pub(crate) struct SupervisorState {
    shared: Arc<Shared>,
    /// Recent crash times per agent, within its restart window.
    crashes: HashMap<AgentId, VecDeque<Instant>>,
    /// When each recently crashed agent may start again.
    not_before: HashMap<AgentId, Instant>,
}

impl SupervisorState {
    /// Records a crash of `agent` and decides: restart later, or fail.
    fn crashed(&mut self, agent: AgentId, error: &str) {
        self.shared.stats.agent_crashes.inc();
        let Ok(kind) = self.shared.registry.kind_of(&agent) else {
            return;
        };
        let (max, window) = kind.restart_limit();
        let now = Instant::now();
        let history = self.crashes.entry(agent.clone()).or_default();
        history.push_back(now);
        while history
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            history.pop_front();
        }
        let count = history.len() as u32;
        if count > max {
            let reason = format!(
                "crashed {count} times within {}s (limit {max}); last: {error}",
                window.as_secs()
            );
            error!(agent = %agent, crashes = count, "agent failed: restart limit reached");
            self.shared.directory.mark_failed(agent, reason);
            return;
        }
        let delay = FIRST_RESTART_DELAY
            .saturating_mul(1 << (count - 1).min(16))
            .min(MAX_RESTART_DELAY);
        warn!(
            agent = %agent,
            crashes = count,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "agent crashed; restarting"
        );
        self.not_before.insert(agent, now + delay);
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _: ActorRef<SupervisorMessage>,
        shared: Arc<Shared>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            shared,
            crashes: HashMap::new(),
            not_before: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMessage>,
        message: SupervisorMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Deliver(delivery) => {
                if let Some(delivery) = state.hold_back(&myself, delivery) {
                    activate_and_deliver(&state.shared, &myself, delivery).await
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<SupervisorMessage>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.shared.directory.remove_actor(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(agent) = state.shared.directory.remove_actor(cell.get_id()) {
                    state.crashed(agent, &error.to_string());
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    /// Answers deliveries to failed agents, and delays those to agents in
    /// their restart backoff; returns the delivery to go ahead with.
    fn hold_back(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        delivery: Delivery,
    ) -> Option<Delivery> {
        if let Some(reason) = self.shared.directory.failure(&delivery.to) {
            let agent = delivery.to.to_string();
            delivery
                .reply
                .send(Err(CallError::Failed { agent, reason }));
            return None;
        }
        let wait = self
            .not_before
            .get(&delivery.to)
            .map(|t| t.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero());
        let Some(wait) = wait else {
            self.not_before.remove(&delivery.to);
            return Some(delivery);
        };
        let myself = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Err(ractor::MessagingErr::SendErr(SupervisorMessage::Deliver(d))) =
                myself.send_message(SupervisorMessage::Deliver(delivery))
            {
                let agent = d.to.to_string();
                d.reply.send(Err(CallError::Unavailable {
                    agent,
                    reason: "the node is stopping".into(),
                }));
            }
        });
        None
    }
}

async fn activate_and_deliver(
    shared: &Arc<Shared>,
    supervisor: &ActorRef<SupervisorMessage>,
    delivery: Delivery,
) {
    // Another message may have activated the agent while this one queued.
    if let Some(actor) = shared.directory.live(&delivery.to) {
        if let Err(e) = actor.send_message(delivery) {
            retry_delivery(shared, e);
        }
        return;
    }
    let kind = match shared.registry.kind_of(&delivery.to) {
        Ok(kind) => kind.clone(),
        Err(e) => return delivery.reply.send(Err(e)),
    };
    let ctx = Context::new(
        delivery.to.clone(),
        shared.name_arc(),
        shared.caller(),
        shared.registry.clone(),
    );
    let state = AgentState {
        id: delivery.to.clone(),
        kind,
        ctx,
        shared: shared.clone(),
        live: None,
    };
    match Actor::spawn_linked(None, AgentActor, state, supervisor.get_cell()).await {
        Ok((actor, _)) => {
            shared.directory.insert(delivery.to.clone(), actor.clone());
            if let Err(e) = actor.send_message(delivery) {
                retry_delivery(shared, e);
            }
        }
        Err(e) => {
            let reason = format!("cannot start agent: {e}");
            delivery.reply.send(Err(CallError::Internal { reason }));
        }
    }
}

/// A delivery bounced off an agent that stopped meanwhile: answer the caller.
fn retry_delivery(_: &Arc<Shared>, error: ractor::MessagingErr<Delivery>) {
    if let ractor::MessagingErr::SendErr(delivery) = error {
        debug!(agent = %delivery.to, "agent stopped before the message arrived");
        let agent = delivery.to.to_string();
        delivery.reply.send(Err(CallError::Unavailable {
            agent,
            reason: "the agent stopped; try again".into(),
        }));
    }
}
