//! What a Plan's last pass wrote that the caches have not shown yet.
//!
//! A pass runs as soon as something changes, and the watches deliver a pass's own writes a few
//! milliseconds apart, in any order. A pass on caches that have not caught up would create a Job
//! that exists (a 409 and a read), label a node again (and say so again), or write the status
//! against the resourceVersion it replaced (a 409 and a retry after backoff). So a pass first
//! checks that the caches show the previous pass's writes, and otherwise waits for them: the
//! watch event that shows them runs the Plan again. An expectation lapses after [`EXPECT_FOR`],
//! so a write the watches never show (the object changed again at once) delays a Plan at most
//! that long; waiting never does anything unsafe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a pass waits for the caches to show the previous pass's writes.
pub const EXPECT_FOR: Duration = Duration::from_secs(5);

/// What one pass wrote.
#[derive(Debug, Clone)]
struct Written {
    at: Instant,
    /// The resourceVersion the status write replaced.
    status_from: Option<String>,
    jobs_created: Vec<String>,
    jobs_deleted: Vec<String>,
    /// Node, label key, label value.
    labels: Vec<(String, String, String)>,
}

impl Written {
    fn new() -> Self {
        Written {
            at: Instant::now(),
            status_from: None,
            jobs_created: Vec::new(),
            jobs_deleted: Vec::new(),
            labels: Vec::new(),
        }
    }
}

/// What the caches show, for the check.
pub struct Shown<'a> {
    pub plan_version: Option<&'a str>,
    pub jobs: HashSet<&'a str>,
    /// The names of the Jobs not being deleted.
    pub live_jobs: HashSet<&'a str>,
    /// A node's labels, by node name.
    pub labels: HashMap<&'a str, &'a BTreeMap<String, String>>,
}

/// The last pass's writes of each Plan (by namespace/name).
#[derive(Default)]
pub struct Expectations {
    by_plan: Mutex<HashMap<String, Written>>,
}

impl Expectations {
    /// A pass of `plan` starts writing: what an earlier pass wrote is no longer expected.
    pub fn begin(&self, plan: &str) {
        self.update(plan, |_| {}, true);
    }

    pub fn status_written(&self, plan: &str, replaced: Option<String>) {
        self.update(plan, |w| w.status_from = replaced, false);
    }

    pub fn job_created(&self, plan: &str, job: &str) {
        self.update(plan, |w| w.jobs_created.push(job.to_owned()), false);
    }

    pub fn job_deleted(&self, plan: &str, job: &str) {
        self.update(plan, |w| w.jobs_deleted.push(job.to_owned()), false);
    }

    pub fn node_labelled(&self, plan: &str, node: &str, labels: &BTreeMap<String, String>) {
        self.update(
            plan,
            |w| {
                w.labels.extend(
                    labels
                        .iter()
                        .map(|(k, v)| (node.to_owned(), k.clone(), v.clone())),
                );
            },
            false,
        );
    }

    /// The Plan was deleted.
    pub fn forget(&self, plan: &str) {
        self.lock().remove(plan);
    }

    /// What of the last pass's writes the caches do not show yet, if anything (and it is less
    /// than [`EXPECT_FOR`] old).
    pub fn unseen(&self, plan: &str, shown: &Shown<'_>, now: Instant) -> Option<String> {
        let written = self.lock().get(plan).cloned()?;
        if now.saturating_duration_since(written.at) >= EXPECT_FOR {
            return None;
        }
        unseen(&written, shown)
    }

    fn update(&self, plan: &str, change: impl FnOnce(&mut Written), fresh: bool) {
        let mut by_plan = self.lock();
        let written = by_plan.entry(plan.to_owned()).or_insert_with(Written::new);
        if fresh {
            *written = Written::new();
        }
        change(written);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        crate::sync::lock(&self.by_plan)
    }
}

/// The first write `shown` does not reflect. A status write is shown once the cached Plan is no
/// longer at the version the write replaced (it is at the write's, or a later one).
fn unseen(written: &Written, shown: &Shown<'_>) -> Option<String> {
    if let Some(from) = &written.status_from
        && shown.plan_version == Some(from.as_str())
    {
        return Some(format!(
            "the Plan's status written over resourceVersion {from}"
        ));
    }
    if let Some(job) = written
        .jobs_created
        .iter()
        .find(|j| !shown.jobs.contains(j.as_str()))
    {
        return Some(format!("Job {job}"));
    }
    if let Some(job) = written
        .jobs_deleted
        .iter()
        .find(|j| shown.live_jobs.contains(j.as_str()))
    {
        return Some(format!("the deletion of Job {job}"));
    }
    written
        .labels
        .iter()
        .find(|(node, key, value)| {
            shown
                .labels
                .get(node.as_str())
                .is_some_and(|labels| labels.get(key) != Some(value))
        })
        .map(|(node, key, _)| format!("label {key} on node {node}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_pass_waits_until_the_caches_show_the_last_pass_s_writes() {
        let expect = Expectations::default();
        let now = Instant::now();
        expect.begin("ns/p");
        expect.status_written("ns/p", Some("10".into()));
        expect.job_created("ns/p", "apply-p-on-b");
        expect.node_labelled("ns/p", "a", &labels(&[("plan.upgrade.cattle.io/p", "h")]));

        let unlabelled = labels(&[]);
        let labelled = labels(&[("plan.upgrade.cattle.io/p", "h")]);
        let mut shown = Shown {
            plan_version: Some("10"),
            jobs: HashSet::new(),
            live_jobs: HashSet::new(),
            labels: HashMap::from([("a", &unlabelled)]),
        };
        assert!(
            expect
                .unseen("ns/p", &shown, now)
                .unwrap()
                .contains("resourceVersion 10")
        );
        shown.plan_version = Some("11");
        assert_eq!(
            expect.unseen("ns/p", &shown, now).unwrap(),
            "Job apply-p-on-b"
        );
        shown.jobs.insert("apply-p-on-b");
        assert!(
            expect
                .unseen("ns/p", &shown, now)
                .unwrap()
                .contains("node a")
        );
        shown.labels.insert("a", &labelled);
        assert_eq!(expect.unseen("ns/p", &shown, now), None);
        // A later version (someone else's write after ours) shows ours too.
        shown.plan_version = Some("12");
        assert_eq!(expect.unseen("ns/p", &shown, now), None);
        // A deleted Job is seen gone once the cache no longer has it, or has it being deleted.
        expect.job_deleted("ns/p", "apply-p-on-c");
        shown.live_jobs.insert("apply-p-on-c");
        assert_eq!(
            expect.unseen("ns/p", &shown, now).unwrap(),
            "the deletion of Job apply-p-on-c"
        );
        shown.live_jobs.remove("apply-p-on-c");
        assert_eq!(expect.unseen("ns/p", &shown, now), None);
    }

    #[test]
    fn expectations_lapse_and_belong_to_one_plan_and_one_pass() {
        let expect = Expectations::default();
        expect.begin("ns/p");
        expect.job_created("ns/p", "j");
        let shown = Shown {
            plan_version: None,
            jobs: HashSet::new(),
            live_jobs: HashSet::new(),
            labels: HashMap::new(),
        };
        let now = Instant::now();
        assert!(expect.unseen("ns/p", &shown, now).is_some());
        assert!(expect.unseen("ns/q", &shown, now).is_none(), "another Plan");
        assert!(
            expect.unseen("ns/p", &shown, now + EXPECT_FOR).is_none(),
            "lapsed"
        );
        // A node that is gone from the cache does not hold the Plan.
        expect.begin("ns/p");
        expect.node_labelled("ns/p", "gone", &labels(&[("k", "v")]));
        assert!(expect.unseen("ns/p", &shown, now).is_none());
        // A new pass starts afresh; a deleted Plan is forgotten.
        expect.job_created("ns/p", "k");
        assert!(expect.unseen("ns/p", &shown, Instant::now()).is_some());
        expect.begin("ns/p");
        assert!(expect.unseen("ns/p", &shown, Instant::now()).is_none());
        expect.job_created("ns/p", "k");
        expect.forget("ns/p");
        assert!(expect.unseen("ns/p", &shown, Instant::now()).is_none());
    }
}
