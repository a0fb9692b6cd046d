//! Counters a node keeps about itself, read by `meshctl` and tests.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

/// A number that only grows.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A number that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a node counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames received on links.
    pub frames_in: Counter,
    /// Frames sent on links.
    pub frames_out: Counter,
    /// Calls that arrived from other nodes.
    pub calls_in: Counter,
    /// Calls sent to other nodes.
    pub calls_out: Counter,
    /// Agents activated on this node.
    pub activations: Counter,
    /// Agents that crashed.
    pub agent_crashes: Counter,
    /// Links up now.
    pub links_up: Gauge,
    /// Gateway requests served.
    pub gateway_requests: Counter,
    /// Gateway requests answered with an error.
    pub gateway_errors: Counter,
}

/// A point-in-time copy of [`Stats`], as JSON.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Frames received on links.
    pub frames_in: u64,
    /// Frames sent on links.
    pub frames_out: u64,
    /// Calls that arrived from other nodes.
    pub calls_in: u64,
    /// Calls sent to other nodes.
    pub calls_out: u64,
    /// Agents activated on this node.
    pub activations: u64,
    /// Agents that crashed.
    pub agent_crashes: u64,
    /// Links up now.
    pub links_up: i64,
    /// Gateway requests served.
    pub gateway_requests: u64,
    /// Gateway requests answered with an error.
    pub gateway_errors: u64,
    /// Agents live now.
    pub agents_live: u64,
}

impl Stats {
    /// Copies every value.
    pub fn snapshot(&self, agents_live: usize) -> StatsSnapshot {
        StatsSnapshot {
            frames_in: self.frames_in.get(),
            frames_out: self.frames_out.get(),
            calls_in: self.calls_in.get(),
            calls_out: self.calls_out.get(),
            activations: self.activations.get(),
            agent_crashes: self.agent_crashes.get(),
            links_up: self.links_up.get(),
            gateway_requests: self.gateway_requests.get(),
            gateway_errors: self.gateway_errors.get(),
            agents_live: agents_live as u64,
        }
    }
}
