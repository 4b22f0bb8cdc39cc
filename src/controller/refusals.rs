//! Jobs the API server refused to create, and Jobs whose pod the Job controller cannot create
//! (a quota, Pod Security admission, an admission webhook), by Plan and Job name. The decision
//! reads them ([`Refusal`]) to say so in the node's entry, the Complete condition and a warning
//! event; a refused create is tried again after a backoff (at once when the Plan's pod template
//! changes), and a pod's refusal is looked up from the Job's `FailedCreate` events at most every
//! [`LOOKUP_EVERY`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::controller::decide::Refusal;

/// First wait before a refused Job is created again; doubled after each refusal.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest wait between two tries.
const LAST_RETRY: Duration = Duration::from_secs(300);
/// How long a Job may have no pod before its events are read for why.
pub const NO_POD_GRACE: Duration = Duration::from_secs(10);
/// How often the events of a Job without a pod are read again.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug)]
struct Kept {
    refusal: Refusal,
    /// Refusals of this Job's create in a row.
    refused: u32,
}

/// The refusals of every Plan, by Plan UID and then Job name.
#[derive(Default)]
pub struct Refusals {
    kept: Mutex<HashMap<String, BTreeMap<String, Kept>>>,
    /// When each Job's events were last read, by Job UID.
    looked_up: Mutex<HashMap<String, Instant>>,
}

impl Refusals {
    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Kept>>> {
        crate::sync::lock(&self.kept)
    }

    /// A Plan's refusals, by Job name.
    pub fn of(&self, plan_uid: &str) -> BTreeMap<String, Refusal> {
        self.kept()
            .get(plan_uid)
            .map(|jobs| {
                jobs.iter()
                    .map(|(job, kept)| (job.clone(), kept.refusal.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The API server refused to create a Job with this pod template: it is tried again after a
    /// backoff that doubles with each refusal in a row.
    pub fn job_refused(
        &self,
        plan_uid: &str,
        job: &str,
        template: &str,
        message: &str,
        now: Timestamp,
    ) {
        let mut kept = self.kept();
        let jobs = kept.entry(plan_uid.to_owned()).or_default();
        let refused = jobs.get(job).map_or(0, |k| k.refused) + 1;
        let wait = FIRST_RETRY
            .saturating_mul(1 << (refused - 1).min(10))
            .min(LAST_RETRY);
        let retry_at = now
            .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
            .unwrap_or(now);
        jobs.insert(
            job.to_owned(),
            Kept {
                refusal: Refusal::Job {
                    template: template.to_owned(),
                    message: message.to_owned(),
                    retry_at,
                },
                refused,
            },
        );
    }

    /// A Job was created, or its pod exists: nothing of it is refused any more.
    pub fn clear(&self, plan_uid: &str, job: &str) {
        let mut kept = self.kept();
        if let Some(jobs) = kept.get_mut(plan_uid) {
            jobs.remove(job);
            if jobs.is_empty() {
                kept.remove(plan_uid);
            }
        }
    }

    /// The Job controller cannot create a Job's pod, as its event says.
    pub fn pod_refused(&self, plan_uid: &str, job: &str, message: &str) {
        self.kept().entry(plan_uid.to_owned()).or_default().insert(
            job.to_owned(),
            Kept {
                refusal: Refusal::Pod {
                    message: message.to_owned(),
                },
                refused: 0,
            },
        );
    }

    /// Whether the events of a Job without a pod are to be read now (at most every
    /// [`LOOKUP_EVERY`] per Job).
    pub fn lookup_due(&self, job_uid: &str, now: Instant) -> bool {
        let mut looked_up = crate::sync::lock(&self.looked_up);
        if looked_up.len() > 10_000 {
            looked_up.clear();
        }
        match looked_up.get(job_uid) {
            Some(last) if now.duration_since(*last) < LOOKUP_EVERY => false,
            _ => {
                looked_up.insert(job_uid.to_owned(), now);
                true
            }
        }
    }

    /// Forgets a deleted Plan's refusals.
    pub fn forget(&self, plan_uid: &str) {
        self.kept().remove(plan_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_refused_create_is_retried_after_a_doubling_backoff() {
        let refusals = Refusals::default();
        let now = at("2026-12-01T10:00:00Z");
        refusals.job_refused("plan", "job", "t1", "forbidden", now);
        let retry = |r: &Refusals| match r.of("plan").remove("job") {
            Some(Refusal::Job { retry_at, .. }) => retry_at,
            other => panic!("{other:?}"),
        };
        assert_eq!(retry(&refusals), at("2026-12-01T10:00:05Z"));
        refusals.job_refused("plan", "job", "t1", "forbidden", now);
        assert_eq!(retry(&refusals), at("2026-12-01T10:00:10Z"));
        for _ in 0..20 {
            refusals.job_refused("plan", "job", "t1", "forbidden", now);
        }
        assert_eq!(retry(&refusals), at("2026-12-01T10:05:00Z"), "capped");
        refusals.clear("plan", "job");
        assert!(refusals.of("plan").is_empty());
        refusals.job_refused("plan", "job", "t1", "forbidden", now);
        assert_eq!(retry(&refusals), at("2026-12-01T10:00:05Z"), "starts over");
    }

    #[test]
    fn pod_refusals_are_kept_until_cleared_and_lookups_are_spaced() {
        let refusals = Refusals::default();
        refusals.pod_refused("plan", "job", "exceeded quota");
        assert_eq!(
            refusals.of("plan").get("job"),
            Some(&Refusal::Pod {
                message: "exceeded quota".into()
            })
        );
        refusals.forget("plan");
        assert!(refusals.of("plan").is_empty());
        let now = Instant::now();
        assert!(refusals.lookup_due("uid", now));
        assert!(!refusals.lookup_due("uid", now + Duration::from_secs(1)));
        assert!(refusals.lookup_due("uid", now + LOOKUP_EVERY));
    }
}
