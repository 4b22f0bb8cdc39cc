//! Plan conditions with the Go controller's semantics, plus a proper `lastTransitionTime`:
//! `Validated`, `LatestResolved` and `Complete`, each with status, reason and message.

use crate::api::Condition;

pub const VALIDATED: &str = "Validated";
pub const LATEST_RESOLVED: &str = "LatestResolved";
pub const COMPLETE: &str = "Complete";

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
}
