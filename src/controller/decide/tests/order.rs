//! `spec.dependsOn` and `spec.exclusiveGroup`: order between Plans.

use super::*;

fn peer(name: &str, complete: Option<(bool, &str)>) -> Peer {
    Peer {
        name: name.into(),
        complete: complete.map(|(ok, reason)| (ok, reason.into(), String::new())),
        ..Peer::default()
    }
}

#[test]
fn a_plan_starts_only_once_the_plans_it_depends_on_are_complete() {
    let mut plan = spec();
    plan["dependsOn"] = json!(["k3s-server", "k3s-agent"]);
    let mut w = World::new(plan).nodes(&["a"]);
    w.peers = vec![peer("k3s-server", Some((true, "Complete")))];
    let d = w.step();
    assert!(created(&d).is_empty());
    let (status, reason, message) = condition(&d, COMPLETE);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WaitingForPlans")
    );
    assert!(
        message.contains("Plan k3s-agent does not exist in namespace system-upgrade"),
        "{message}"
    );
    assert!(!message.contains("k3s-server"), "{message}");
    assert!(d.requeue <= GATE_RETRY);
    assert!(reasons(&d).contains(&"WaitingForPlans"));

    w.peers.push(Peer {
        stalled: true,
        ..peer("k3s-agent", Some((false, "JobFailed")))
    });
    let (_, _, message) = condition(&w.step(), COMPLETE);
    assert!(
        message.contains("Plan k3s-agent failed (JobFailed)"),
        "{message}"
    );
    w.peers[1] = peer("k3s-agent", None);
    let (_, _, message) = condition(&w.step(), COMPLETE);
    assert!(
        message.contains("has not reported on its current spec yet"),
        "{message}"
    );

    w.peers[1] = peer("k3s-agent", Some((true, "Complete")));
    assert_eq!(created(&w.step()), ["a"]);
    // What runs finishes when a dependency is incomplete again; nothing new starts.
    w.peers[1] = peer("k3s-agent", Some((false, "SyncJob")));
    let d = w.step();
    assert!(deleted(&d).is_empty());
    assert_eq!(d.status.applying.as_deref(), Some(&["a".to_owned()][..]));
}

#[test]
fn plans_that_wait_for_each_other_say_so() {
    let mut plan = spec();
    plan["dependsOn"] = json!(["b"]);
    let mut w = World::new(plan).nodes(&["a"]);
    w.peers = vec![
        Peer {
            depends_on: vec!["c".into()],
            ..peer("b", Some((false, "WaitingForPlans")))
        },
        Peer {
            depends_on: vec!["p".into()],
            ..peer("c", Some((false, "WaitingForPlans")))
        },
    ];
    let (_, reason, message) = condition(&w.step(), COMPLETE);
    assert_eq!(reason, "WaitingForPlans");
    assert!(
        message.contains("Plans p → b → c → p wait for each other"),
        "{message}"
    );
}

#[test]
fn one_plan_of_an_exclusive_group_runs_at_a_time() {
    let mut plan = spec();
    plan["exclusiveGroup"] = json!("maintenance");
    let mut w = World::new(plan).nodes(&["a"]);
    w.peers = vec![
        Peer {
            exclusive_group: Some("maintenance".into()),
            busy: vec!["x".into()],
            ..peer("apt", None)
        },
        Peer {
            exclusive_group: Some("other".into()),
            busy: vec!["y".into()],
            ..peer("other", None)
        },
    ];
    let d = w.step();
    assert!(created(&d).is_empty());
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "WaitingForGroup");
    assert!(
        message.contains("exclusiveGroup maintenance: Plan apt has node x under way"),
        "{message}"
    );
    assert!(!message.contains("other"), "{message}");
    w.peers[0].busy.clear();
    assert_eq!(created(&w.step()), ["a"]);
}
