use super::*;
use crate::gateway::MemberView;

const NOW: u64 = 1_000_000_000;

fn entry(name: &str, zone: &str, seen_s_ago: u64, left: bool) -> roster::Entry {
    roster::Entry {
        name: name.into(),
        zone: zone.into(),
        kind: "instance".into(),
        software: "0.1.0".into(),
        started_ms: 0,
        seen_ms: NOW - seen_s_ago * 1000,
        snapshot_ms: Some(NOW - 600_000),
        agents: 7,
        left,
    }
}

fn member(name: &str, zone: &str) -> MemberView {
    MemberView {
        name: name.into(),
        zone: zone.into(),
        kind: "instance".into(),
        capabilities: vec![],
        status: "alive".into(),
        linked: true,
        address: "127.0.0.1:7400".into(),
        software: "0.1.0".into(),
        wire: "1-2".into(),
        state_versions: Default::default(),
        age_s: 60,
        this: false,
        lease: Some(true),
        draining: false,
    }
}

fn answer(name: &str, zone: &str) -> NodeStatus {
    NodeStatus {
        node: name.into(),
        zone: zone.into(),
        software: "0.1.0".into(),
        uptime_s: 60,
        agents: 3,
        failed: 0,
        has_records: true,
        snapshot_age_s: Some(10),
        snapshot_interval_s: 300,
        not_ready: vec![],
    }
}

/// Two zones: a-1 (alive, in the view) and whatever the test adds.
fn inputs(roster: Vec<roster::Entry>, extra_members: &[MemberView]) -> Inputs {
    let mut members = vec![member("a-1", "fr-par-1")];
    members.extend_from_slice(extra_members);
    Inputs {
        cluster: "c".into(),
        view: Some(MembersReply {
            node: "a-1".into(),
            members,
        }),
        roster,
        answers: [("a-1".to_owned(), answer("a-1", "fr-par-1"))].into(),
        nats_down: vec![],
        now_ms: NOW,
    }
}

fn zone<'a>(report: &'a Report, name: &str) -> &'a ZoneReport {
    report.zones.iter().find(|z| z.zone == name).unwrap()
}

#[test]
fn a_zone_whose_nodes_crashed_shows_as_down_from_the_roster() {
    let roster = vec![
        entry("a-1", "fr-par-1", 1, false),
        entry("w-1", "pl-waw-1", 40, false),
        entry("w-2", "pl-waw-1", 41, false),
    ];
    let report = assess(inputs(roster, &[]));
    assert_eq!(zone(&report, "fr-par-1").state, ZoneState::Up);
    let waw = zone(&report, "pl-waw-1");
    assert_eq!(waw.state, ZoneState::Down);
    assert!(waw.nodes.iter().all(|n| n.state == NodeState::Down));
    assert_eq!(waw.nodes[0].snapshot_age_s, Some(600));
    assert_eq!(waw.nodes[0].last_seen_s, Some(40));
    assert!(report
        .warnings
        .contains(&"zone pl-waw-1 is down: none of its nodes answers".to_owned()));
    assert!(report
        .warnings
        .contains(&"node w-1 is down: last seen 40s ago".to_owned()));
    assert_eq!(nodes_to_ask(report_view().as_ref(), &[]), vec!["a-1"]);
}

fn report_view() -> Option<MembersReply> {
    inputs(vec![], &[]).view
}

#[test]
fn a_zone_whose_nodes_all_left_has_no_nodes_and_a_half_dead_one_is_degraded() {
    let roster = vec![
        entry("a-1", "fr-par-1", 1, false),
        entry("a-2", "fr-par-1", 30, false),
        entry("w-1", "pl-waw-1", 40, true),
    ];
    let report = assess(inputs(roster.clone(), &[member("a-2", "fr-par-1")]));
    assert_eq!(zone(&report, "pl-waw-1").state, ZoneState::Empty);
    assert_eq!(zone(&report, "fr-par-1").state, ZoneState::Degraded);
    let a2 = &zone(&report, "fr-par-1").nodes[1];
    assert_eq!(a2.state, NodeState::Unreachable, "in the view, silent");
    assert!(report
        .warnings
        .contains(&"zone pl-waw-1 has no nodes: all of them left".to_owned()));
    assert_eq!(
        nodes_to_ask(report_view().as_ref(), &roster),
        vec!["a-1", "a-2"],
        "a node that left is not asked"
    );
}

#[test]
fn stale_or_missing_snapshots_and_failed_checks_are_warned_about() {
    let mut input = inputs(vec![], &[member("b-1", "nl-ams-1")]);
    let mut stale = answer("b-1", "nl-ams-1");
    stale.snapshot_age_s = Some(601);
    input.answers.insert("b-1".into(), stale);
    let mut never = answer("a-1", "fr-par-1");
    never.snapshot_age_s = None;
    never.uptime_s = 3600;
    never.not_ready = vec!["lease: this node holds no valid ownership lease".into()];
    input.answers.insert("a-1".into(), never);
    input.nats_down = vec!["NATS server nats://x:4222 is unreachable".into()];
    let report = assess(input);
    let text = report.warnings.join("\n");
    assert!(
        text.contains("node b-1 has no snapshot for 10m 1s (interval 5m)"),
        "{text}"
    );
    assert!(
        text.contains("node a-1 has taken no snapshot since it started 1h ago"),
        "{text}"
    );
    assert!(text.contains("node a-1 is not ready: lease:"), "{text}");
    assert!(text.contains("nats://x:4222"), "{text}");
    assert_eq!(
        zone(&report, "fr-par-1").nodes[0].state,
        NodeState::NotReady
    );

    // An empty store needs no snapshot; a fresh one is fine.
    let mut input = inputs(vec![], &[]);
    let mut empty = answer("a-1", "fr-par-1");
    (empty.has_records, empty.snapshot_age_s, empty.uptime_s) = (false, None, 3600);
    input.answers.insert("a-1".into(), empty);
    let report = assess(input);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(render(&report).contains("no warnings"));
}

#[test]
fn without_any_node_answering_the_roster_still_shows_every_zone() {
    let mut input = inputs(vec![entry("a-1", "fr-par-1", 5, false)], &[]);
    input.view = None;
    input.answers.clear();
    let report = assess(input);
    assert_eq!(zone(&report, "fr-par-1").state, ZoneState::Down);
    let text = render(&report);
    assert!(text.contains("no node of cluster c answered"), "{text}");
    assert!(text.contains("fr-par-1     down"), "{text}");
}

#[test]
fn a_node_that_answers_without_a_link_or_membership_is_warned_about() {
    // b-1 is a member without a link (a wrong CA); c-1 is in the roster and
    // answers on the cluster's subjects but is no member (another cluster
    // secret).
    let mut unlinked = member("b-1", "nl-ams-1");
    unlinked.linked = false;
    let roster = vec![entry("c-1", "pl-waw-1", 1, false)];
    let mut input = inputs(roster, &[unlinked]);
    input
        .answers
        .insert("b-1".into(), answer("b-1", "nl-ams-1"));
    input
        .answers
        .insert("c-1".into(), answer("c-1", "pl-waw-1"));
    let report = assess(input);
    let text = report.warnings.join("\n");
    assert!(text.contains("node b-1 has no link to a-1"), "{text}");
    assert!(
        text.contains("node c-1 answers but is not a member as seen by a-1"),
        "{text}"
    );
    assert!(!text.contains("node a-1"), "{text}");

    // Just started: links are still coming up.
    let mut unlinked = member("b-1", "nl-ams-1");
    unlinked.linked = false;
    let mut input = inputs(vec![], &[unlinked]);
    let mut fresh = answer("b-1", "nl-ams-1");
    fresh.uptime_s = LINK_GRACE_S - 1;
    input.answers.insert("b-1".into(), fresh);
    assert!(assess(input).warnings.is_empty());
}
