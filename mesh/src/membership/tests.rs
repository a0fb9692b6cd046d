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
