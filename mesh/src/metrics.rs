//! What a node counts about itself: Prometheus metrics, and a JSON copy of
//! the counters for `meshctl` and tests.
//!
//! Counters and histograms are updated where things happen; gauges that
//! describe the node as a whole (members, live agents, store size, snapshot
//! age) are computed when they are scraped, so they cost nothing between
//! scrapes.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

/// The smallest latency bucket, in seconds (100 µs).
const FIRST_BUCKET: f64 = 0.000_1;
/// How many latency buckets, each twice the previous (up to about 3 s).
const BUCKETS: u16 = 16;

/// Metrics that change as things happen.
#[derive(Debug)]
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
    /// Agents this node took over from a dead or departed owner.
    pub failovers: Counter,
    /// Agents that crashed.
    pub agent_crashes: Counter,
    /// Crashed agents that will restart (the others are past their limit).
    pub agent_restarts: Counter,
    /// Times the NATS connection came back after it was lost.
    pub nats_reconnects: Counter,
    /// Idle agents stopped with their state left in storage.
    pub passivations: Counter,
    /// Links up now.
    pub links_up: Gauge,
    /// Gateway requests served.
    pub gateway_requests: Counter,
    /// Gateway requests answered with an error.
    pub gateway_errors: Counter,
    /// Gateway calls refused at once because the node was busy (too many
    /// calls or call bytes in flight); also counted in `gateway_errors`.
    pub gateway_busy: Counter,
    /// Gateway calls in flight now.
    pub gateway_inflight: Gauge,
    /// Snapshots written.
    pub snapshots: Counter,
    /// Snapshots that failed.
    pub snapshot_failures: Counter,
    /// Bytes of data objects written by snapshots.
    pub snapshot_bytes: Counter,
    /// How long snapshots took.
    pub snapshot_seconds: Histogram,
    /// How long calls made on this node took, reply or error.
    pub call_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        let latency = || Histogram::new(exponential_buckets(FIRST_BUCKET, 2.0, BUCKETS));
        Stats {
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            calls_in: Counter::default(),
            calls_out: Counter::default(),
            activations: Counter::default(),
            failovers: Counter::default(),
            agent_crashes: Counter::default(),
            agent_restarts: Counter::default(),
            nats_reconnects: Counter::default(),
            passivations: Counter::default(),
            links_up: Gauge::default(),
            gateway_requests: Counter::default(),
            gateway_errors: Counter::default(),
            gateway_busy: Counter::default(),
            gateway_inflight: Gauge::default(),
            snapshots: Counter::default(),
            snapshot_failures: Counter::default(),
            snapshot_bytes: Counter::default(),
            snapshot_seconds: Histogram::new(exponential_buckets(0.01, 2.0, BUCKETS)),
            call_seconds: latency(),
        }
    }
}

/// The whole-node gauges, read at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Members by (zone, state), this node included.
    pub members: Vec<(String, String, i64)>,
    /// Live agents by kind.
    pub agents: Vec<(String, i64)>,
    /// Whether the NATS connection is up.
    pub nats_connected: bool,
    /// Whether this node's ownership lease is valid.
    pub lease_valid: bool,
    /// The state store's size on disk.
    pub store_bytes: u64,
    /// Free and total bytes of the file system holding the data directory,
    /// when the system tells.
    pub disk: Option<(u64, u64)>,
    /// Seconds since the last snapshot was written; with none written yet,
    /// since the node started (0 while there is nothing to snapshot), so a
    /// node whose snapshots never succeed still looks stale.
    pub snapshot_age_seconds: f64,
}

type Labels = Vec<(String, String)>;

impl Stats {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self, gauges: &Gauges) -> String {
        let mut registry = Registry::with_prefix("mesh");
        let counters = [
            (
                "link_frames_in",
                "Frames received on links",
                &self.frames_in,
            ),
            ("link_frames_out", "Frames sent on links", &self.frames_out),
            (
                "calls_in",
                "Calls that arrived from other nodes",
                &self.calls_in,
            ),
            ("calls_out", "Calls sent to other nodes", &self.calls_out),
            ("activations", "Agents activated", &self.activations),
            (
                "failovers",
                "Agents taken over from another node",
                &self.failovers,
            ),
            ("agent_crashes", "Agents that crashed", &self.agent_crashes),
            (
                "agent_restarts",
                "Crashed agents restarted",
                &self.agent_restarts,
            ),
            (
                "nats_reconnects",
                "NATS connections regained after a loss",
                &self.nats_reconnects,
            ),
            (
                "passivations",
                "Idle agents stopped, state left in storage",
                &self.passivations,
            ),
            (
                "gateway_requests",
                "Gateway requests served",
                &self.gateway_requests,
            ),
            (
                "gateway_errors",
                "Gateway requests answered with an error",
                &self.gateway_errors,
            ),
            (
                "gateway_busy",
                "Gateway calls refused because the node was busy",
                &self.gateway_busy,
            ),
            ("snapshots", "Snapshots written", &self.snapshots),
            (
                "snapshot_failures",
                "Snapshots that failed",
                &self.snapshot_failures,
            ),
            (
                "snapshot_bytes",
                "Bytes written by snapshots",
                &self.snapshot_bytes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register("links_up", "Links up", self.links_up.clone());
        registry.register(
            "gateway_inflight",
            "Gateway calls in flight",
            self.gateway_inflight.clone(),
        );
        registry.register("call_seconds", "Call latency", self.call_seconds.clone());
        registry.register(
            "snapshot_seconds",
            "Snapshot duration",
            self.snapshot_seconds.clone(),
        );

        let members = Family::<Labels, Gauge>::default();
        for (zone, state, n) in &gauges.members {
            let labels = vec![
                ("zone".into(), zone.clone()),
                ("state".into(), state.clone()),
            ];
            members.get_or_create(&labels).set(*n);
        }
        registry.register("members", "Members by zone and state", members);
        let agents = Family::<Labels, Gauge>::default();
        for (kind, n) in &gauges.agents {
            agents
                .get_or_create(&vec![("kind".into(), kind.clone())])
                .set(*n);
        }
        registry.register("agents_live", "Live agents by kind", agents);
        let flag = |on: bool| {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::from(on));
            gauge
        };
        registry.register(
            "nats_connected",
            "NATS connection up",
            flag(gauges.nats_connected),
        );
        registry.register(
            "lease_valid",
            "Ownership lease valid",
            flag(gauges.lease_valid),
        );
        let store = Gauge::<i64>::default();
        store.set(gauges.store_bytes as i64);
        registry.register("store_bytes", "State store size on disk", store);
        if let Some((free, total)) = gauges.disk {
            let bytes = |n: u64| {
                let gauge = Gauge::<i64>::default();
                gauge.set(n as i64);
                gauge
            };
            let (free, total) = (bytes(free), bytes(total));
            registry.register("disk_free_bytes", "Free bytes of the data disk", free);
            registry.register("disk_total_bytes", "Size of the data disk", total);
        }
        let age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        age.set(gauges.snapshot_age_seconds);
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the last snapshot (or the start, if none yet)",
            age,
        );

        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }

    /// Copies the counters.
    pub fn snapshot(&self, agents_live: usize) -> StatsSnapshot {
        StatsSnapshot {
            frames_in: self.frames_in.get(),
            frames_out: self.frames_out.get(),
            calls_in: self.calls_in.get(),
            calls_out: self.calls_out.get(),
            activations: self.activations.get(),
            agent_crashes: self.agent_crashes.get(),
            passivations: self.passivations.get(),
            links_up: self.links_up.get(),
            gateway_requests: self.gateway_requests.get(),
            gateway_errors: self.gateway_errors.get(),
            gateway_busy: self.gateway_busy.get(),
            gateway_inflight: self.gateway_inflight.get(),
            agents_live: agents_live as u64,
        }
    }
}

/// A point-in-time copy of the counters, as JSON.
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
    /// Idle agents passivated (absent from older nodes' answers).
    #[serde(default)]
    pub passivations: u64,
    /// Links up now.
    pub links_up: i64,
    /// Gateway requests served.
    pub gateway_requests: u64,
    /// Gateway requests answered with an error.
    pub gateway_errors: u64,
    /// Gateway calls refused because the node was busy (absent from older
    /// nodes' answers).
    #[serde(default)]
    pub gateway_busy: u64,
    /// Gateway calls in flight now (absent from older nodes' answers).
    #[serde(default)]
    pub gateway_inflight: i64,
    /// Agents live now.
    pub agents_live: u64,
}
