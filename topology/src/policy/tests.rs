//! Placement properties, checked over seeded random clusters and policies.

use std::collections::HashMap;

use super::*;
use crate::zone::SCALEWAY_ZONES;

/// A small deterministic generator (SplitMix64): the same seed always gives
/// the same cases, so a failure can be replayed.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn node(&mut self, i: usize) -> NodeInfo {
        let zone = SCALEWAY_ZONES[self.below(SCALEWAY_ZONES.len())];
        let kind = if self.chance(50) {
            NodeKind::Instance
        } else {
            NodeKind::ElasticMetal
        };
        let mut node = NodeInfo::new(&format!("n{i}-{}", self.below(1000)), zone, kind);
        if self.chance(30) {
            node.capabilities.push("gpu".into());
        }
        node.draining = self.chance(10);
        node
    }

    fn nodes(&mut self) -> Vec<NodeInfo> {
        let n = 1 + self.below(12);
        (0..n).map(|i| self.node(i)).collect()
    }

    fn policy(&mut self) -> Policy {
        let mut policy = Policy::default();
        if self.chance(30) {
            policy.node_kinds.push(NodeKind::Instance);
        }
        if self.chance(20) {
            policy.capabilities.push("gpu".into());
        }
        if self.chance(40) {
            let zone = SCALEWAY_ZONES[self.below(SCALEWAY_ZONES.len())];
            policy.zones.push(zone.into());
        }
        if self.chance(30) {
            policy
                .regions
                .push(["fr-par", "nl-ams", "pl-waw"][self.below(3)].into());
        }
        policy.pinned = policy.has_location() && self.chance(40);
        policy.spread = self.chance(50);
        policy
    }
}

const CASES: usize = 300;
const KEYS: usize = 60;

fn names(ranked: &[&NodeInfo]) -> Vec<String> {
    ranked.iter().map(|n| n.name.clone()).collect()
}

#[test]
fn the_rank_does_not_depend_on_the_order_of_the_nodes() {
    let mut cases = Cases(1);
    for _ in 0..CASES {
        let (nodes, policy) = (cases.nodes(), cases.policy());
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        shuffled.rotate_left(cases.below(nodes.len()));
        for k in 0..KEYS {
            let key = format!("worker/{k}");
            assert_eq!(
                names(&rank(&key, &policy, &nodes)),
                names(&rank(&key, &policy, &shuffled)),
                "{key} under {policy:?}"
            );
        }
    }
}

#[test]
fn a_joining_node_takes_agents_only_for_itself() {
    let mut cases = Cases(2);
    for _ in 0..CASES {
        let (nodes, policy) = (cases.nodes(), cases.policy());
        let mut joined = nodes.clone();
        let newcomer = cases.node(99);
        joined.push(newcomer.clone());
        for k in 0..KEYS {
            let key = format!("worker/{k}");
            let before = rank(&key, &policy, &nodes).first().map(|n| n.name.clone());
            let after = rank(&key, &policy, &joined).first().map(|n| n.name.clone());
            // A non-draining newcomer may also release agents that sat on
            // draining nodes only because nothing else was admitted.
            let from_draining = before
                .as_ref()
                .is_some_and(|b| nodes.iter().any(|n| &n.name == b && n.draining));
            if before != after && !from_draining {
                assert_eq!(after.as_deref(), Some(newcomer.name.as_str()), "{key}");
            }
        }
    }
}

#[test]
fn a_leaving_node_gives_away_only_its_own_agents() {
    let mut cases = Cases(3);
    for _ in 0..CASES {
        let (nodes, policy) = (cases.nodes(), cases.policy());
        let gone = cases.below(nodes.len());
        let mut left = nodes.clone();
        let leaver = left.remove(gone);
        // The last admitted non-draining node leaving lets draining nodes
        // back in: every agent may move then; skip that corner.
        let open = |list: &[NodeInfo]| list.iter().any(|n| policy.admits(n) && !n.draining);
        if open(&nodes) != open(&left) {
            continue;
        }
        for k in 0..KEYS {
            let key = format!("worker/{k}");
            let before = rank(&key, &policy, &nodes).first().map(|n| n.name.clone());
            let after = rank(&key, &policy, &left).first().map(|n| n.name.clone());
            if before.as_deref() != Some(leaver.name.as_str()) {
                assert_eq!(before, after, "{key} moved when {} left", leaver.name);
            }
        }
    }
}

#[test]
fn constraints_are_always_honoured() {
    let mut cases = Cases(4);
    for _ in 0..CASES {
        let (nodes, policy) = (cases.nodes(), cases.policy());
        let any_open = nodes.iter().any(|n| policy.admits(n) && !n.draining);
        for k in 0..KEYS {
            let key = format!("worker/{k}");
            let ranked = rank(&key, &policy, &nodes);
            for node in &ranked {
                assert!(policy.admits(node), "{} under {policy:?}", node.name);
                assert!(
                    !(any_open && node.draining),
                    "draining {} ranked",
                    node.name
                );
            }
            // Every admitted node is ranked: failover can reach them all.
            let admitted = nodes
                .iter()
                .filter(|n| policy.admits(n) && (!any_open || !n.draining));
            assert_eq!(ranked.len(), admitted.count());
            if let (Some(first), false) = (ranked.first(), policy.pinned) {
                // A preferred place that is available always wins.
                let best = nodes
                    .iter()
                    .filter(|n| policy.admits(n) && (!any_open || !n.draining))
                    .map(|n| policy.preference(&n.zone))
                    .min()
                    .unwrap();
                assert_eq!(policy.preference(&first.zone), best);
            }
        }
    }
}

#[test]
fn no_node_ever_hosts_more_than_the_maximum() {
    let mut cases = Cases(5);
    for _ in 0..CASES {
        let (nodes, mut policy) = (cases.nodes(), cases.policy());
        let max = 1 + cases.below(4);
        policy.max_per_node = Some(max);
        let capacity = rank("x/x", &policy, &nodes).len() * max;
        let mut load: HashMap<String, usize> = HashMap::new();
        for k in 0..KEYS {
            let key = format!("worker/{k}");
            let placed = place_with_load(&key, &policy, &nodes, |n| {
                load.get(&n.name).copied().unwrap_or(0)
            });
            match placed {
                Some(node) => *load.entry(node.name.clone()).or_default() += 1,
                None => assert!(k >= capacity, "{key} unplaced with room left"),
            }
        }
        assert!(load.values().all(|&l| l <= max), "{load:?} over {max}");
    }
}

#[test]
fn failover_tries_the_same_zone_then_the_same_region_then_elsewhere() {
    let mut cases = Cases(6);
    for _ in 0..CASES {
        let nodes = cases.nodes();
        let mut policy = cases.policy();
        // Preferences come before distance; check distance alone here.
        policy.zones.clear();
        policy.regions.clear();
        policy.pinned = false;
        let origin = SCALEWAY_ZONES[cases.below(SCALEWAY_ZONES.len())];
        for k in 0..KEYS {
            let key = format!("worker/{k}");
            let ranked = rank_near(&key, &policy, &nodes, origin);
            let distances: Vec<Distance> =
                ranked.iter().map(|n| distance(origin, &n.zone)).collect();
            assert!(
                distances.windows(2).all(|w| w[0] <= w[1]),
                "{key} from {origin}: {distances:?}"
            );
        }
    }
}

#[test]
fn spreading_gives_every_zone_an_equal_share() {
    // Five nodes in fr-par-1, one in each of two other zones: spreading
    // puts about a third of the agents in each zone.
    let mut nodes: Vec<NodeInfo> = (0..5)
        .map(|i| NodeInfo::new(&format!("par-{i}"), "fr-par-1", NodeKind::Instance))
        .collect();
    nodes.push(NodeInfo::new("ams", "nl-ams-1", NodeKind::Instance));
    nodes.push(NodeInfo::new("waw", "pl-waw-1", NodeKind::Instance));
    let spread = Policy {
        spread: true,
        ..Policy::default()
    };
    let mut per_zone: HashMap<String, usize> = HashMap::new();
    for k in 0..3000 {
        let first = rank(&format!("worker/{k}"), &spread, &nodes)[0];
        *per_zone.entry(first.zone.clone()).or_default() += 1;
    }
    assert!(per_zone.values().all(|&c| c > 850), "{per_zone:?}");
    // Without spreading, fr-par-1's five nodes take about five sevenths.
    let flat = (0..3000)
        .filter(|k| rank(&format!("worker/{k}"), &Policy::default(), &nodes)[0].zone == "fr-par-1")
        .count();
    assert!(flat > 1900, "{flat}");
}

#[test]
fn preferred_zones_win_and_pinned_policies_never_leave_them() {
    let nodes = vec![
        NodeInfo::new("par", "fr-par-1", NodeKind::Instance),
        NodeInfo::new("par2", "fr-par-2", NodeKind::Instance),
        NodeInfo::new("ams", "nl-ams-1", NodeKind::ElasticMetal),
    ];
    let prefer = Policy {
        zones: vec!["nl-ams-1".into()],
        regions: vec!["fr-par".into()],
        ..Policy::default()
    };
    let ranked = names(&rank("worker/a", &prefer, &nodes));
    assert_eq!(ranked[0], "ams");
    assert_eq!(ranked.len(), 3, "preferences exclude nobody");
    let pinned = Policy {
        pinned: true,
        ..prefer.clone()
    };
    let mut without_ams = nodes.clone();
    without_ams.retain(|n| n.name != "ams");
    let ranked = names(&rank("worker/a", &pinned, &without_ams));
    assert!(ranked.iter().all(|n| n.starts_with("par")), "{ranked:?}");
    let metal = Policy {
        node_kinds: vec![NodeKind::ElasticMetal],
        ..Policy::default()
    };
    assert!(rank("worker/a", &metal, &without_ams).is_empty());
}

#[test]
fn a_draining_node_is_skipped_unless_it_is_the_only_one() {
    let mut nodes = vec![
        NodeInfo::new("a", "fr-par-1", NodeKind::Instance),
        NodeInfo::new("b", "fr-par-1", NodeKind::Instance),
    ];
    nodes[0].draining = true;
    for k in 0..100 {
        let ranked = names(&rank(&format!("counter/{k}"), &Policy::default(), &nodes));
        assert_eq!(ranked, ["b"]);
    }
    nodes[1].draining = true;
    assert_eq!(rank("counter/x", &Policy::default(), &nodes).len(), 2);
}
