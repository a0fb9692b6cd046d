//! Reading the nodes' log lines, shared by `support.rs` and
//! `netns_support.rs` (each includes it with `#[path]`).

use std::collections::BTreeMap;

/// Every "agent activated" line of one node's log: (agent, epoch), in order.
pub fn activated(log: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| l.contains("agent activated")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        if let (Some(agent), Some(epoch)) = (field("agent"), field("epoch")) {
            out.push((agent, epoch.parse().expect("a numeric epoch")));
        }
    }
    out
}

/// Every activation in the logs of named nodes: agent -> [(epoch, node)].
pub fn activations_in<'a>(
    logs: impl IntoIterator<Item = (&'a str, String)>,
) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (node, log) in logs {
        for (agent, epoch) in activated(&log) {
            out.entry(agent).or_default().push((epoch, node.to_owned()));
        }
    }
    out
}
