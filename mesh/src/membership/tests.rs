use super::*;

fn announcement(name: &str, incarnation: u64) -> Announcement {
    Announcement {
        v: ANNOUNCEMENT_VERSION,
        name: name.into(),
        zone: "fr-par-1".into(),
        kind: NodeKind::Instance,
        capabilities: vec![],
        link: "127.0.0.1:7400".parse().unwrap(),
        software: "0.1.0".into(),
        wire_min: 1,
        wire_max: 1,
        incarnation,
        started_ms: 0,
        draining: false,
        state_versions: BTreeMap::new(),
    }
}

const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn a_new_name_joins_and_heartbeats_keep_it() {
    let t0 = Instant::now();
    let mut view = Membership::new("me", TIMEOUT);
    assert_eq!(
        view.observe(announcement("a", 1), t0),
        vec![Change::Joined(announcement("a", 1))]
    );
    assert!(view.observe(announcement("a", 1), t0 + TIMEOUT).is_empty());
    assert!(view
        .expire(t0 + TIMEOUT * 2 - Duration::from_millis(1))
        .is_empty());
    assert_eq!(view.len(), 1);
}

#[test]
fn own_announcements_are_not_members() {
    let mut view = Membership::new("me", TIMEOUT);
    assert!(view
        .observe(announcement("me", 1), Instant::now())
        .is_empty());
    assert!(view.is_empty());
}

#[test]
fn silence_makes_a_member_suspect_then_removes_it() {
    let t0 = Instant::now();
    let mut view = Membership::new("me", TIMEOUT);
    view.observe(announcement("a", 1), t0);
    let member = view.get("a").unwrap().clone();
    assert_eq!(view.status(&member, t0 + TIMEOUT / 4), Status::Alive);
    assert_eq!(view.status(&member, t0 + TIMEOUT * 3 / 4), Status::Suspect);
    assert!(view.expire(t0 + TIMEOUT).is_empty());
    let gone = view.expire(t0 + TIMEOUT + Duration::from_millis(1));
    assert_eq!(
        gone,
        vec![Change::Left {
            name: "a".into(),
            incarnation: 1,
            reason: LeaveReason::Timeout
        }]
    );
    assert!(view.is_empty());
}

#[test]
fn a_restart_replaces_the_member_and_stale_heartbeats_are_ignored() {
    let t0 = Instant::now();
    let mut view = Membership::new("me", TIMEOUT);
    view.observe(announcement("a", 1), t0);
    let changes = view.observe(announcement("a", 2), t0);
    assert_eq!(changes.len(), 2);
    assert!(matches!(
        changes[0],
        Change::Left {
            incarnation: 1,
            reason: LeaveReason::Restarted,
            ..
        }
    ));
    assert!(view.observe(announcement("a", 1), t0).is_empty());
    assert_eq!(view.get("a").unwrap().info.incarnation, 2);
}

#[test]
fn a_goodbye_removes_only_the_incarnation_that_said_it() {
    let mut view = Membership::new("me", TIMEOUT);
    view.observe(announcement("a", 2), Instant::now());
    assert_eq!(view.goodbye("a", 1), None);
    assert!(view.goodbye("a", 2).is_some());
    assert!(view.is_empty());
    assert_eq!(view.goodbye("a", 2), None);
}

#[test]
fn forgiving_after_our_own_pause_keeps_everyone() {
    let t0 = Instant::now();
    let mut view = Membership::new("me", TIMEOUT);
    view.observe(announcement("a", 1), t0);
    let resumed = t0 + TIMEOUT * 10;
    view.forgive(resumed);
    assert!(view.expire(resumed + TIMEOUT / 2).is_empty());
}

/// An announcement of the release before state versions were announced,
/// as it went over NATS: kept to prove this release still reads it.
const PREVIOUS_RELEASE_ANNOUNCEMENT: &str = r#"{"v":1,"name":"old","zone":"fr-par-1",
"kind":"instance","capabilities":[],"link":"127.0.0.1:7401","software":"0.1.0",
"wire_min":1,"wire_max":1,"incarnation":7,"started_ms":5}"#;

/// This release's announcement, pinned: a change here must stay readable by
/// the previous release (new fields optional, nothing renamed or removed).
const ANNOUNCEMENT_FIXTURE: &str = r#"{"v":1,"name":"new","zone":"fr-par-2","kind":"elastic-metal","capabilities":["gpu"],"link":"10.0.0.2:7400","software":"0.2.0","wire_min":1,"wire_max":2,"incarnation":9,"started_ms":6,"state_versions":{"counter":2,"echo":1}}"#;

#[test]
fn announcements_of_the_previous_release_still_read() {
    let old: Announcement = serde_json::from_str(PREVIOUS_RELEASE_ANNOUNCEMENT).unwrap();
    assert_eq!((old.wire_min, old.wire_max), (1, 1));
    assert_eq!(old.state_version("counter"), 1, "previous kinds were at 1");
}

#[test]
fn the_announcement_keeps_its_json_layout() {
    let info = Announcement {
        v: ANNOUNCEMENT_VERSION,
        name: "new".into(),
        zone: "fr-par-2".into(),
        kind: NodeKind::ElasticMetal,
        capabilities: vec!["gpu".into()],
        link: "10.0.0.2:7400".parse().unwrap(),
        software: "0.2.0".into(),
        wire_min: 1,
        wire_max: 2,
        incarnation: 9,
        started_ms: 6,
        draining: false,
        state_versions: [("counter".into(), 2), ("echo".into(), 1)].into(),
    };
    assert_eq!(serde_json::to_string(&info).unwrap(), ANNOUNCEMENT_FIXTURE);
    assert_eq!(info.state_version("counter"), 2);
    assert_eq!(info.state_version("relay"), 0, "a kind it does not host");
    // The previous release ignores fields it does not know: its own struct
    // had no `deny_unknown_fields`, so the fixture must parse as it did.
    let mut value: serde_json::Value = serde_json::from_str(ANNOUNCEMENT_FIXTURE).unwrap();
    value.as_object_mut().unwrap().remove("state_versions");
    let reread: Announcement = serde_json::from_value(value).unwrap();
    assert_eq!(reread.name, "new");
}

#[test]
fn placement_keeps_only_nodes_running_the_newest_state_version() {
    let mixed = [("old-1", 1), ("new-1", 2), ("new-2", 2), ("none", 0)];
    assert_eq!(able_to_run(&mixed), vec!["new-1", "new-2"]);
    let same = [("a", 1), ("b", 1)];
    assert_eq!(able_to_run(&same), vec!["a", "b"]);
    assert!(able_to_run(&[("x", 0)]).is_empty());
}

#[test]
fn a_departed_node_s_zone_is_remembered_for_failover() {
    let t0 = Instant::now();
    let mut view = Membership::new("me", TIMEOUT);
    let mut a = announcement("a", 1);
    a.zone = "nl-ams-2".into();
    view.observe(a, t0);
    assert!(view.goodbye("a", 1).is_some());
    assert!(view.get("a").is_none());
    assert_eq!(view.zone_of("a"), Some("nl-ams-2"));
    view.observe(announcement("b", 1), t0);
    view.expire(t0 + TIMEOUT * 2);
    assert_eq!(view.zone_of("b"), Some("fr-par-1"));
    assert_eq!(view.zone_of("never-seen"), None);
}
