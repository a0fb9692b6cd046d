//! Supervision: live agents as actors, under one supervisor per node.
//!
//! The supervisor activates agents (spawns their actor, linked to itself)
//! and hears when one stops or crashes. A crashed agent is removed from the
//! directory; the next message activates it again with fresh state. Every
//! message carries a [`ReplySlot`] that answers the caller exactly once: with
//! the handler's result, with [`CallError::Crashed`] if the handler panicked
//! on it, or with [`CallError::Unavailable`] (not applied) if it was dropped
//! before the agent began handling it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use actors::registry::Instance;
use actors::{AgentId, CallError, Context, Kind};
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::directory::Idle;
use crate::node::Shared;
use crate::ownership::Refusal;
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
    /// Not a message: the agent was found idle, last looked up at this
    /// time (see [`crate::directory::Directory::remove_if_idle`]), and
    /// stops if it still is.
    Passivate(u64),
}

/// Answers the caller exactly once, even if the handler panics.
#[derive(Debug)]
pub(crate) struct ReplySlot {
    to: Option<ReplyTo>,
    /// The agent called, named in the answer if the message is lost; set
    /// for calls only (nobody hears about a lost cast).
    agent: Option<AgentId>,
    /// Whether the agent began handling the message.
    started: bool,
    shared: Arc<Shared>,
}

impl ReplySlot {
    pub(crate) fn new(to: ReplyTo, shared: Arc<Shared>) -> Self {
        ReplySlot {
            to: Some(to),
            agent: None,
            started: false,
            shared,
        }
    }

    /// A slot for a call to `agent`.
    pub(crate) fn for_call(to: ReplyTo, agent: &AgentId, shared: Arc<Shared>) -> Self {
        let mut slot = ReplySlot::new(to, shared);
        slot.agent = Some(agent.clone());
        slot
    }

    /// The last use the sweeper saw, if this slot marks a passivation.
    fn passivation(&self) -> Option<u64> {
        match self.to {
            Some(ReplyTo::Passivate(touched_ms)) => Some(touched_ms),
            _ => None,
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
            let error = unanswered(self.agent.as_ref(), self.started);
            deliver_reply(&self.shared, to, Err(error));
        }
    }
}

/// The answer to a message dropped unanswered: the handler panicked on it
/// (`started`), or it was still queued when the agent stopped (its lease
/// lapsed, it failed, the node stopped), so it was not applied and may be
/// sent again.
fn unanswered(agent: Option<&AgentId>, started: bool) -> CallError {
    let agent = agent.map_or_else(|| "agent".to_owned(), ToString::to_string);
    if started {
        CallError::Crashed { agent }
    } else {
        let reason = "it stopped before handling the message (not applied)".to_owned();
        CallError::Unavailable { agent, reason }
    }
}

fn deliver_reply(shared: &Shared, to: ReplyTo, result: Result<Vec<u8>, CallError>) {
    match to {
        ReplyTo::Nobody | ReplyTo::Passivate(_) => {}
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
    /// How many times it was forwarded between nodes.
    pub(crate) hops: u8,
    /// How long its caller waits (for forwarding).
    pub(crate) timeout: Duration,
    /// The trace it belongs to.
    pub(crate) trace: u64,
    /// Casts to the same agent that arrived right after this one (in one
    /// batch), handled in order after it: one actor message for all of
    /// them. Only sent to a live agent's actor, which handles each as if
    /// it had come alone; empty everywhere else.
    pub(crate) more: Vec<Delivery>,
}

impl ractor::Message for Delivery {}

impl Delivery {
    /// This delivery and those it carries, each alone, in order.
    pub(crate) fn unpack(mut self) -> impl Iterator<Item = Delivery> {
        let more = std::mem::take(&mut self.more);
        std::iter::once(self).chain(more)
    }
}

/// A live agent: the actor that runs one agent's handler.
struct AgentActor;

/// An agent actor's state; the agent's own state is loaded on the first
/// message, so that activation never blocks the supervisor on storage.
struct AgentState {
    id: AgentId,
    kind: Arc<dyn Kind>,
    ctx: Context,
    shared: Arc<Shared>,
    mode: Mode,
}

/// What the actor does with the messages it receives.
enum Mode {
    /// Not activated yet: the first message activates it.
    Idle,
    /// Activated: messages go to the handler.
    Serving(Live),
    /// Another node owns the agent: messages go there, then the actor ends.
    Forwarding(String),
    /// The agent cannot run here now: messages get this error, then the
    /// actor ends, and the next message starts a fresh activation.
    Refusing(CallError),
    /// The handler panicked: queued messages go back to the supervisor,
    /// which restarts the agent (after its backoff) and delivers them.
    Restarting,
    /// Passivated while idle: its state is in storage; messages queued
    /// meanwhile go back to the supervisor, which activates it again.
    Passivated,
}

/// The agent's state, once loaded.
struct Live {
    instance: Box<dyn Instance>,
    epoch: u64,
    seq: u64,
    revision: Option<u64>,
    /// The lease generation the activation holds under.
    generation: u64,
}

/// Claims agent `id`, loads its newest state and builds the instance.
async fn activate(shared: &Shared, id: &AgentId, kind: &Arc<dyn Kind>) -> Result<Live, Mode> {
    let refuse = |e: CallError| Mode::Refusing(e);
    let unavailable = |reason: String| {
        Mode::Refusing(CallError::Unavailable {
            agent: id.to_string(),
            reason,
        })
    };
    let claimed = match &shared.ownership {
        Some(ownership) => match ownership.acquire(id).await {
            Ok(claim) => Some(claim),
            Err(Refusal::OwnedBy(node)) => return Err(Mode::Forwarding(node)),
            Err(Refusal::Unavailable(reason)) => return Err(unavailable(reason)),
        },
        None => None,
    };
    let durability = kind.durability();
    let inherited = claimed.as_ref().is_some_and(|c| c.inherited);
    if claimed.as_ref().is_some_and(|c| c.previous.is_some()) {
        shared.stats.failovers.inc();
    }
    let loaded = state::load(shared, id, durability, inherited)
        .await
        .map_err(refuse)?;
    if let (Some((owner, epoch)), Some(record)) = (
        claimed.as_ref().and_then(|c| c.previous.clone()),
        loaded.record.as_ref(),
    ) {
        if record.epoch < epoch && durability != actors::Durability::Memory {
            warn!(
                agent = %id,
                previous_owner = %owner,
                previous_epoch = epoch,
                state_epoch = record.epoch,
                from = loaded.source,
                "the newest state found predates the previous owner: its changes since are not here"
            );
        }
    }
    let record = loaded.record.as_ref();
    let instance = kind
        .instantiate(record.map(|r| (r.state_version, r.state.as_slice())))
        .map_err(refuse)?;
    let (epoch, generation) = match &claimed {
        Some(claim) => (claim.epoch, claim.generation),
        None => (record.map_or(0, |r| r.epoch) + 1, 0),
    };
    // Within one epoch, sequence numbers go on from the stored record.
    let seq = record.filter(|r| r.epoch == epoch).map_or(0, |r| r.seq);
    shared.stats.activations.inc();
    info!(
        agent = %id,
        epoch,
        from = if record.is_some() { loaded.source } else { "new" },
        "agent activated"
    );
    Ok(Live {
        instance,
        epoch,
        seq,
        revision: loaded.revision,
        generation,
    })
}

impl AgentState {
    /// Leaves the directory and ends after the queued messages, which the
    /// new mode handles.
    fn wind_down(&mut self, myself: &ActorRef<Delivery>, mode: Mode) {
        self.shared.directory.remove_actor(myself.get_id());
        self.mode = mode;
        let _ = myself.drain();
    }

    /// Handles one message while serving; `Err` means the actor must stop
    /// serving, with the mode to wind down in (and the message, if it was
    /// not answered).
    async fn serve(&mut self, delivery: Delivery) -> Result<(), (Option<Delivery>, Mode)> {
        let Mode::Serving(live) = &mut self.mode else {
            unreachable!("serve is called while serving");
        };
        // A node whose lease lapsed may already have been replaced.
        if let Some(ownership) = &self.shared.ownership {
            if !ownership.serves(live.generation) {
                let error = CallError::Unavailable {
                    agent: self.id.to_string(),
                    reason: "this node's lease lapsed".into(),
                };
                return Err((Some(delivery), Mode::Refusing(error)));
            }
        }
        let handling = live.instance.handle(&self.ctx, &delivery.payload);
        let handled =
            crate::trace::scope(delivery.trace, AssertUnwindSafe(handling).catch_unwind()).await;
        let outcome = match handled {
            Ok(outcome) => outcome,
            Err(panic) => {
                let text = panic_text(&panic);
                let supervisor = self.shared.supervisor();
                let _ = supervisor.send_message(SupervisorMessage::Crashed {
                    agent: self.id.clone(),
                    error: text,
                });
                let error = CallError::Crashed {
                    agent: self.id.to_string(),
                };
                delivery.reply.send(Err(error));
                return Err((None, Mode::Restarting));
            }
        };
        if let Some(new_state) = outcome.state {
            live.seq += 1;
            let record = Record {
                epoch: live.epoch,
                seq: live.seq,
                state_version: self.kind.state_version(),
                state: new_state,
            };
            let durability = self.kind.durability();
            // Boxed: saving is by far the largest part of this future, and
            // this future is built and moved for every message, while only
            // a changed state needs a save.
            let saved = Box::pin(state::save(
                &self.shared,
                &self.id,
                durability,
                record,
                &mut live.revision,
            ))
            .await;
            if let Err(e) = saved {
                // The change exists only in memory: drop it with the agent.
                warn!(agent = %self.id, error = %e, "state not saved; agent stopped");
                delivery.reply.send(Err(e.clone()));
                return Err((None, Mode::Refusing(e)));
            }
        }
        delivery.reply.send(outcome.reply);
        Ok(())
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
        let more = std::mem::take(&mut delivery.more);
        // Boxed: an actor's task is as large as the largest future it may
        // await and keeps that size for as long as the agent lives, and
        // handling a message (let alone several) is far larger than a
        // pointer: unboxed, it made each live agent ~1.5 KB larger.
        Box::pin(async {
            handle_one(&myself, delivery, state).await;
            for delivery in more {
                handle_one(&myself, delivery, state).await;
            }
        })
        .await;
        Ok(())
    }
}

/// Handles one message to an agent's actor.
async fn handle_one(myself: &ActorRef<Delivery>, mut delivery: Delivery, state: &mut AgentState) {
    if let Some(touched_ms) = delivery.reply.passivation() {
        state.passivate(myself, touched_ms);
        return;
    }
    delivery.reply.started = true;
    if let Mode::Idle = state.mode {
        let (shared, id, kind) = (state.shared.clone(), state.id.clone(), state.kind.clone());
        // Boxed, as is serving below: an actor's task is as large as
        // the largest future it may await, and holds that size for as
        // long as the agent lives, idle or not.
        match Box::pin(activate(&shared, &id, &kind)).await {
            Ok(live) => {
                shared.directory.set_epoch(&id, live.epoch);
                state.mode = Mode::Serving(live);
            }
            Err(mode) => state.wind_down(myself, mode),
        }
    }
    match &state.mode {
        Mode::Serving(_) => {
            if let Err((unanswered, mode)) = Box::pin(state.serve(delivery)).await {
                state.wind_down(myself, mode);
                if let Some(delivery) = unanswered {
                    state.pass_on(delivery);
                }
            }
        }
        _ => state.pass_on(delivery),
    }
}

impl AgentState {
    /// Answers or forwards a message the actor will not handle itself.
    fn pass_on(&self, delivery: Delivery) {
        match &self.mode {
            Mode::Forwarding(node) => self.shared.forward(delivery, node.clone()),
            Mode::Refusing(error) => delivery.reply.send(Err(error.clone())),
            Mode::Restarting | Mode::Passivated => self.shared.deliver(delivery),
            Mode::Idle | Mode::Serving(_) => unreachable!("only called when winding down"),
        }
    }

    /// Stops the agent if nothing used it since `touched_ms`: it leaves the
    /// directory at once, and messages already queued reactivate it.
    ///
    /// Its ownership is kept, so the next message brings it back on this
    /// node, where its durable state is.
    fn passivate(&mut self, myself: &ActorRef<Delivery>, touched_ms: u64) {
        if !matches!(self.mode, Mode::Idle | Mode::Serving(_)) {
            return;
        }
        if !self
            .shared
            .directory
            .remove_if_idle(myself.get_id(), touched_ms)
        {
            return;
        }
        self.shared.stats.passivations.inc();
        debug!(agent = %self.id, "agent passivated");
        self.mode = Mode::Passivated;
        let _ = myself.drain();
    }
}

/// The text of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Requests to the supervisor.
#[derive(Debug)]
pub(crate) enum SupervisorMessage {
    /// Deliver to an agent, activating it first if it is not live.
    Deliver(Delivery),
    /// An agent's handler panicked; the agent has stopped serving.
    Crashed {
        /// The agent.
        agent: AgentId,
        /// The panic's text.
        error: String,
    },
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
        self.shared.stats.agent_restarts.inc();
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
            SupervisorMessage::Crashed { agent, error } => state.crashed(agent, &error),
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
    if shared.stopping.load(std::sync::atomic::Ordering::Acquire) {
        let agent = delivery.to.to_string();
        let reason = "the node is stopping".to_owned();
        return delivery
            .reply
            .send(Err(CallError::Unavailable { agent, reason }));
    }
    // Another message may have activated the agent while this one queued.
    if let Some(actor) = shared.directory.live(&delivery.to) {
        if let Err(e) = actor.send_message(delivery) {
            retry_delivery(e);
        }
        return;
    }
    // A message bounced off an agent that is moving away waits for the move.
    if shared.moves.is_moving(&delivery.to) {
        return shared.hold(delivery);
    }
    // The kind's policy may not admit this node, or the node may be full.
    match shared.redirect(&delivery.to) {
        None => {}
        Some(Ok(node)) => return shared.forward(delivery, node),
        Some(Err(reason)) => {
            let agent = delivery.to.to_string();
            return delivery
                .reply
                .send(Err(CallError::Unavailable { agent, reason }));
        }
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
    )
    .with_facts(shared.facts.clone());
    let state = AgentState {
        id: delivery.to.clone(),
        kind,
        ctx,
        shared: shared.clone(),
        mode: Mode::Idle,
    };
    match Actor::spawn_linked(None, AgentActor, state, supervisor.get_cell()).await {
        Ok((actor, _)) => {
            shared.directory.insert(delivery.to.clone(), actor.clone());
            if let Err(e) = actor.send_message(delivery) {
                retry_delivery(e);
            }
        }
        Err(e) => {
            let reason = format!("cannot start agent: {e}");
            delivery.reply.send(Err(CallError::Internal { reason }));
        }
    }
}

/// A delivery bounced off an agent that stopped meanwhile: answer the caller.
fn retry_delivery(error: ractor::MessagingErr<Delivery>) {
    if let ractor::MessagingErr::SendErr(delivery) = error {
        debug!(agent = %delivery.to, "agent stopped before the message arrived");
        let agent = delivery.to.to_string();
        delivery.reply.send(Err(CallError::Unavailable {
            agent,
            reason: "the agent stopped; try again".into(),
        }));
    }
}

/// Passivates durable agents idle for `after` or longer, every quarter of
/// `after`, until the node stops. An agent of a `memory` kind is never
/// passivated: its state would be lost.
pub(crate) async fn passivate_idle(shared: Arc<Shared>, after: Duration) {
    let period = (after / 4).clamp(MIN_SWEEP, MAX_SWEEP);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for Idle {
            id,
            actor,
            touched_ms,
        } in shared.directory.idle(after)
        {
            let durable = shared
                .registry
                .kind_of(&id)
                .is_ok_and(|k| k.durability() != actors::Durability::Memory);
            if !durable {
                continue;
            }
            let marker = Delivery {
                to: AgentId::clone(&id),
                payload: Vec::new(),
                reply: ReplySlot::new(ReplyTo::Passivate(touched_ms), shared.clone()),
                hops: 0,
                timeout: Duration::ZERO,
                trace: 0,
                more: Vec::new(),
            };
            // An actor that stopped meanwhile needs no passivation.
            let _ = actor.send_message(marker);
        }
    }
}

/// The shortest and longest pause between two looks for idle agents.
const MIN_SWEEP: Duration = Duration::from_millis(10);
const MAX_SWEEP: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_message_is_crashed_once_handled_and_retryable_before() {
        let id: AgentId = "counter/a".parse().unwrap();
        let error = unanswered(Some(&id), true);
        assert_eq!(error.code(), "crashed");
        assert_eq!(
            error.to_string(),
            "counter/a crashed while handling the message"
        );
        let error = unanswered(Some(&id), false);
        assert_eq!(error.code(), "unavailable");
        assert_eq!(
            error.to_string(),
            "counter/a is unavailable: it stopped before handling the message (not applied)"
        );
    }
}
