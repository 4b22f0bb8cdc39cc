//! Plan conditions with the Go controller's semantics, plus a proper `lastTransitionTime`:
//! `Validated`, `LatestResolved` and `Complete`, each with status, reason and message.

use jiff::Timestamp;

pub use crate::api::conditions::{
    COMPLETE, CRD_CURRENT, LATEST_RESOLVED, RECONCILING, STALLED, VALIDATED,
};
use crate::api::{Condition, Plan, PlanStatus};

/// RFC 3339 with whole seconds, as condition times, node entries and claims are written.
pub fn stamp(now: Timestamp) -> String {
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// A condition's wanted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub status: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
}

impl<'a> Wanted<'a> {
    pub fn new(status: &'a str, reason: &'a str, message: &'a str) -> Self {
        Self {
            status,
            reason,
            message,
        }
    }
}

/// The condition of a type, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of a type has this status.
pub fn is(conditions: &[Condition], type_: &str, status: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == status)
}

/// Makes sure a condition exists (as `Unknown`), as the Go controller does on first sight.
pub fn ensure(conditions: &mut Vec<Condition>, type_: &str, now: &str) {
    if get(conditions, type_).is_none() {
        conditions.push(Condition {
            type_: type_.to_owned(),
            status: "Unknown".to_owned(),
            last_update_time: Some(now.to_owned()),
            last_transition_time: Some(now.to_owned()),
            observed_generation: None,
            reason: None,
            message: None,
        });
    }
}

/// Sets a condition; returns whether its status changed (a transition). A new status or message
/// stamps `lastUpdateTime`, a new status also `lastTransitionTime`; a new reason alone stamps
/// nothing, as in the Go controller.
pub fn set(conditions: &mut Vec<Condition>, type_: &str, wanted: &Wanted<'_>, now: &str) -> bool {
    ensure(conditions, type_, now);
    let Some(condition) = conditions.iter_mut().find(|c| c.type_ == type_) else {
        return false;
    };
    let transition = condition.status != wanted.status;
    let message_changed = condition.message.as_deref().unwrap_or_default() != wanted.message;
    if transition || message_changed {
        condition.last_update_time = Some(now.to_owned());
    }
    if transition {
        condition.last_transition_time = Some(now.to_owned());
    }
    condition.status = wanted.status.to_owned();
    condition.reason = (!wanted.reason.is_empty()).then(|| wanted.reason.to_owned());
    condition.message = (!wanted.message.is_empty()).then(|| wanted.message.to_owned());
    transition
}

/// A status as the Go controller's CRD keeps it: without the fields this controller added.
fn go_schema(status: &PlanStatus) -> PlanStatus {
    let mut kept = PlanStatus {
        nodes: None,
        observed_generation: None,
        progress: None,
        ..status.clone()
    };
    for condition in kept.conditions.iter_mut().flatten() {
        condition.observed_generation = None;
    }
    kept
}

/// The merge patch that writes `wanted` as a Plan's status, guarded by the Plan's
/// resourceVersion; `None` when the stored status is the same. Fields left out of `wanted` are
/// removed (null). While the CRD prunes `status.nodes` (`pruned`: the Go controller's CRD), the
/// stored status never has them nor the other fields this controller added, so those are left
/// out of the comparison and an unchanged status is not written again.
pub fn status_patch(plan: &Plan, wanted: &PlanStatus, pruned: bool) -> Option<serde_json::Value> {
    let unchanged = match plan.status.as_ref() {
        Some(stored) if pruned => go_schema(stored) == go_schema(wanted),
        stored => stored == Some(wanted),
    };
    if unchanged {
        return None;
    }
    let mut status = serde_json::to_value(wanted).unwrap_or_default();
    if let Some(fields) = status.as_object_mut() {
        for key in [
            "conditions",
            "latestVersion",
            "latestHash",
            "applying",
            "nodes",
            "observedGeneration",
            "progress",
            "hooks",
            "cancelled",
            "canary",
            "history",
        ] {
            fields.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    Some(serde_json::json!({
        "metadata": {"resourceVersion": plan.metadata.resource_version},
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_created_unknown_then_stamped_on_change() {
        let mut conditions = Vec::new();
        ensure(&mut conditions, COMPLETE, "t0");
        assert_eq!(conditions[0].status, "Unknown");
        assert!(set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("False", "SyncJob", ""),
            "t1"
        ));
        assert_eq!(conditions[0].last_update_time.as_deref(), Some("t1"));
        assert_eq!(conditions[0].last_transition_time.as_deref(), Some("t1"));
        // Reason only: nothing stamped.
        assert!(!set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("False", "JobFailed", ""),
            "t2"
        ));
        assert_eq!(conditions[0].reason.as_deref(), Some("JobFailed"));
        assert_eq!(conditions[0].last_update_time.as_deref(), Some("t1"));
        // Message: update time only.
        assert!(!set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("False", "JobFailed", "boom"),
            "t3"
        ));
        assert_eq!(conditions[0].last_update_time.as_deref(), Some("t3"));
        assert_eq!(conditions[0].last_transition_time.as_deref(), Some("t1"));
        // Status: both.
        assert!(set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("True", "Complete", ""),
            "t4"
        ));
        assert_eq!(conditions[0].last_transition_time.as_deref(), Some("t4"));
        assert_eq!(conditions[0].message, None);
        assert!(is(&conditions, COMPLETE, "True"));
        assert!(!is(&conditions, VALIDATED, "True"));
    }

    fn plan(status: serde_json::Value) -> Plan {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": "p", "resourceVersion": "42"},
            "spec": {}, "status": status,
        }))
        .unwrap()
    }

    fn wanted(value: serde_json::Value) -> PlanStatus {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_changed_status_is_written_whole_with_the_resource_version() {
        let stored = plan(serde_json::json!({"latestVersion": "v1", "applying": ["a"]}));
        let patch = status_patch(
            &stored,
            &wanted(serde_json::json!({"latestVersion": "v2"})),
            false,
        )
        .unwrap();
        assert_eq!(
            patch,
            serde_json::json!({
                "metadata": {"resourceVersion": "42"},
                "status": {"latestVersion": "v2", "conditions": null, "latestHash": null,
                           "applying": null, "nodes": null, "observedGeneration": null,
                           "progress": null, "hooks": null, "cancelled": null,
                           "canary": null, "history": null},
            })
        );
    }

    #[test]
    fn a_written_status_clears_every_field_it_does_not_set() {
        // A field left out of the merge patch would keep its stored value for good.
        let schema = serde_json::to_value(schemars::schema_for!(PlanStatus)).unwrap();
        let fields: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let stored = plan(serde_json::json!({"latestVersion": "v1"}));
        let patch = status_patch(&stored, &PlanStatus::default(), false).unwrap();
        for field in fields {
            assert!(
                patch["status"].get(field).is_some(),
                "status.{field} is not cleared by the status patch"
            );
        }
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let status = serde_json::json!({"latestVersion": "v1", "nodes": [{"name": "a", "phase": "Upgrading"}]});
        assert_eq!(
            status_patch(&plan(status.clone()), &wanted(status), false),
            None
        );
    }

    #[test]
    fn node_entries_a_pruning_crd_drops_do_not_count_as_a_change() {
        let stored = plan(serde_json::json!({"latestVersion": "v1"}));
        let with_nodes = wanted(
            serde_json::json!({"latestVersion": "v1", "nodes": [{"name": "a", "phase": "Upgrading"}]}),
        );
        assert_eq!(status_patch(&stored, &with_nodes, true), None);
        assert!(status_patch(&stored, &with_nodes, false).is_some());
        // So do the other fields this controller added to the Go controller's status.
        let added = wanted(serde_json::json!({
            "latestVersion": "v1", "observedGeneration": 3, "progress": "1/2",
        }));
        assert_eq!(status_patch(&stored, &added, true), None);
        assert!(status_patch(&stored, &added, false).is_some());
    }
}
