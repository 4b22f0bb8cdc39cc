//! Several windows (`spec.windows`, the union with `window`) and `onClose`.

use super::*;

/// NOW is Monday 2026-11-23 10:00 UTC.
fn windows(windows: Value) -> Value {
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    plan["windows"] = windows;
    plan
}

#[test]
fn a_rollout_starts_while_any_window_is_open() {
    let mut plan = windows(json!([
        {"days": ["tu"], "startTime": "01:00", "endTime": "02:00"},
        // 10:00 UTC is 11:00 in Berlin (CET).
        {"days": ["mo"], "startTime": "10:30", "endTime": "11:30", "timeZone": "Europe/Berlin"},
    ]));
    plan["window"] = json!({"days": ["sa"], "startTime": "01:00", "endTime": "02:00"});
    let mut w = World::new(plan).nodes(&["a", "b"]);
    assert_eq!(created(&w.step()).len(), 2, "the Berlin window is open");
    let mut w2 = World::new(windows(json!([
        {"days": ["tu"], "startTime": "01:00", "endTime": "02:00"},
        {"days": ["mo"], "startTime": "11:31", "endTime": "12:00", "timeZone": "Europe/Berlin"},
    ])))
    .nodes(&["a"]);
    let d = w2.step();
    assert!(created(&d).is_empty());
    assert_eq!(condition(&d, COMPLETE).1, "Waiting");
}

#[test]
fn a_window_that_stops_on_close_lets_begun_upgrades_finish_and_starts_nothing_more() {
    let plan = windows(json!([
        {"days": ["mo"], "startTime": "09:00", "endTime": "10:30", "onClose": "Stop"},
        {"days": ["su"], "startTime": "00:00", "endTime": "23:59"},
    ]));
    let mut w = World::new(plan).nodes(&["a", "b", "c"]);
    w.drains_finish = false;
    let d = w.settle();
    let applying = d.status.applying.clone().unwrap();
    assert_eq!(applying.len(), 2);
    upgrade_runs(&mut w, &applying[0]);

    // 10:31: the Monday window has closed, and it says Stop.
    w.now = "2026-11-23T10:31:00Z".into();
    let d = w.step();
    let hash = d.status.latest_hash.clone().unwrap();
    assert_eq!(deleted(&d), [job::job_name("p", &applying[1], &hash)]);
    assert!(
        d.before
            .iter()
            .any(|c| matches!(c, Change::DeleteJob { unless_begun: true, why, .. } if why.contains("onClose: Stop"))),
        "{:?}",
        d.before
    );
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "Waiting");
    assert!(message.contains("(onClose: Stop)"), "{message}");
    assert!(
        message.contains(&format!(
            "the upgrades that began on {} finish",
            applying[0]
        )),
        "{message}"
    );
    w.finish_job(&applying[0], true, "2026-11-23T10:35:00Z");
    w.now = "2026-11-23T10:40:00Z".into();
    let d = w.step();
    assert!(
        created(&d).is_empty(),
        "nothing starts until a window opens"
    );
    assert_eq!(condition(&d, COMPLETE).1, "Waiting");
    // Sunday's window opens: the rest runs.
    w.now = "2026-11-29T08:00:00Z".into();
    assert_eq!(created(&w.step()).len(), 2);
}

#[test]
fn a_window_that_continues_on_close_lets_the_rollout_run_on() {
    let plan = windows(json!([
        {"days": ["mo"], "startTime": "09:00", "endTime": "10:30", "onClose": "Continue"},
    ]));
    let mut w = World::new(plan).nodes(&["a", "b", "c"]);
    let d = w.settle();
    let applying = d.status.applying.clone().unwrap();
    w.now = "2026-11-23T10:31:00Z".into();
    w.finish_job(&applying[0], true, "2026-11-23T10:31:00Z");
    let d = w.step();
    assert_eq!(
        created(&d).len(),
        1,
        "as the Go controller: a started rollout runs on"
    );
}
