//! Placement: which node hosts an agent.
//!
//! Rendezvous (highest random weight) hashing: every candidate node gets a
//! score for the agent, a hash of the pair, and the highest score wins.
//! Every node that sees the same candidates picks the same winner, and when a
//! node joins or leaves only the agents it wins or held move.
//!
//! The hash is XXH3-64, whose output is fixed by its specification, so that
//! nodes built by different compiler or library versions still agree.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A node that may host agents, as placement sees it.
pub trait Candidate {
    /// The node's name, unique within its cluster.
    fn name(&self) -> &str;
}

impl Candidate for &str {
    fn name(&self) -> &str {
        self
    }
}

impl Candidate for String {
    fn name(&self) -> &str {
        self
    }
}

/// The score of `node` for the agent `key`; higher wins.
pub fn score(node: &str, key: &str) -> u64 {
    // Seeding with the node's hash keeps the two names from being confused
    // with one concatenated string ("ab" + "c" versus "a" + "bc").
    let seed = xxh3_64_with_seed(node.as_bytes(), 0x6d65_7368);
    xxh3_64_with_seed(key.as_bytes(), seed)
}

/// The candidate that hosts `key`, or `None` when there are no candidates.
///
/// Ties (practically impossible) go to the smaller name, so the answer never
/// depends on the order of `candidates`.
pub fn place<'a, C: Candidate>(key: &str, candidates: &'a [C]) -> Option<&'a C> {
    candidates.iter().max_by(|a, b| {
        let (sa, sb) = (score(a.name(), key), score(b.name(), key));
        sa.cmp(&sb).then_with(|| b.name().cmp(a.name()))
    })
}

/// How far a zone is from another: the order failover tries them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Distance {
    /// The same zone.
    SameZone,
    /// Another zone of the same region.
    SameRegion,
    /// Another region.
    Elsewhere,
}

/// How far `zone` is from `origin`.
pub fn distance(origin: &str, zone: &str) -> Distance {
    if origin == zone {
        Distance::SameZone
    } else if crate::zone::region_of(origin) == crate::zone::region_of(zone) {
        Distance::SameRegion
    } else {
        Distance::Elsewhere
    }
}

/// The candidate that takes over `key` from a node of zone `origin`: the
/// nearest tier (same zone, same region, elsewhere) that has candidates,
/// and within it the rendezvous winner. `zone_of` names each candidate's
/// zone.
pub fn place_near<'a, C: Candidate>(
    key: &str,
    candidates: &'a [C],
    origin: &str,
    zone_of: impl Fn(&C) -> String,
) -> Option<&'a C> {
    let nearest = candidates
        .iter()
        .map(|c| distance(origin, &zone_of(c)))
        .min()?;
    let tier: Vec<&C> = candidates
        .iter()
        .filter(|c| distance(origin, &zone_of(c)) == nearest)
        .collect();
    place(key, &tier).copied()
}

impl<C: Candidate> Candidate for &C {
    fn name(&self) -> &str {
        (*self).name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn placement_does_not_depend_on_candidate_order() {
        let mut list = nodes(7);
        let before: Vec<_> = (0..500)
            .map(|i| place(&format!("counter/{i}"), &list).unwrap().clone())
            .collect();
        list.reverse();
        list.rotate_left(3);
        for (i, expected) in before.iter().enumerate() {
            assert_eq!(place(&format!("counter/{i}"), &list).unwrap(), expected);
        }
    }

    #[test]
    fn a_joining_node_only_takes_agents_never_shuffles_others() {
        let old = nodes(5);
        let mut new = old.clone();
        new.push("node-new".into());
        let mut moved = 0;
        for i in 0..5000 {
            let key = format!("worker/{i}");
            let (a, b) = (place(&key, &old).unwrap(), place(&key, &new).unwrap());
            if a != b {
                assert_eq!(b, "node-new", "{key} moved between old nodes");
                moved += 1;
            }
        }
        // One node in six should take about a sixth of the agents.
        assert!((500..1200).contains(&moved), "moved {moved} of 5000");
    }

    #[test]
    fn a_leaving_node_only_gives_away_its_own_agents() {
        let old = nodes(4);
        let new: Vec<_> = old.iter().filter(|n| *n != "node-2").cloned().collect();
        for i in 0..2000 {
            let key = format!("echo/{i}");
            let a = place(&key, &old).unwrap();
            if a != "node-2" {
                assert_eq!(place(&key, &new).unwrap(), a);
            }
        }
    }

    #[test]
    fn load_spreads_over_all_nodes() {
        let list = nodes(3);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let n = place(&format!("counter/{i}"), &list).unwrap();
            counts[list.iter().position(|x| x == n).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "uneven spread {counts:?}");
    }

    #[test]
    fn scores_are_stable_across_releases() {
        // Placement must agree between nodes of different builds: pin one
        // value so a change of hash function cannot slip in unnoticed.
        assert_eq!(
            score("par1-a", "counter/alice"),
            score("par1-a", "counter/alice")
        );
        assert_eq!(place::<&str>("x", &[]), None);
        let pinned = score("node-0", "counter/0");
        assert_eq!(pinned, PINNED_SCORE, "placement hash changed: {pinned:#x}");
    }

    #[test]
    fn failover_prefers_the_same_zone_then_the_same_region() {
        let zones = [
            ("par1-b", "fr-par-1"),
            ("par2-a", "fr-par-2"),
            ("ams1-a", "nl-ams-1"),
        ];
        let names: Vec<&str> = zones.iter().map(|(n, _)| *n).collect();
        let zone_of = |n: &&str| zones.iter().find(|(m, _)| m == n).unwrap().1.to_owned();
        for i in 0..200 {
            let key = format!("counter/{i}");
            let from_par1 = place_near(&key, &names, "fr-par-1", zone_of).unwrap();
            assert_eq!(*from_par1, "par1-b", "same zone first");
            let from_par3 = place_near(&key, &names, "fr-par-3", zone_of).unwrap();
            assert!(["par1-b", "par2-a"].contains(from_par3), "same region next");
            let from_waw = place_near(&key, &names, "pl-waw-1", zone_of).unwrap();
            assert_eq!(from_waw, place(&key, &names).unwrap(), "anywhere last");
        }
        assert_eq!(distance("fr-par-1", "fr-par-2"), Distance::SameRegion);
        assert!(place_near::<&str>("x", &[], "fr-par-1", |_| "fr-par-1".into()).is_none());
    }

    const PINNED_SCORE: u64 = 0x3c95_f00a_7f71_b56e;
}
