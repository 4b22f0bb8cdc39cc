//! The drains running in the background, by the UID of the Job they are for. A reconcile reads
//! their progress, starts the ones its decision asks for and stops those whose Job no longer
//! needs one; each drain task gets a [`DrainHandle`], not the reconcile's context.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::api::Plan;
use crate::controller::decide::DrainProgress;
use crate::controller::drain::{self, DrainHandle, DrainOptions, DrainRequest};
use crate::controller::events::PlanRef;

/// A drain running (or finished) in the background.
struct DrainTask {
    plan_uid: String,
    job: String,
    pod: String,
    progress: Arc<Mutex<DrainProgress>>,
    handle: tokio::task::JoinHandle<()>,
}

impl DrainTask {
    fn progress(&self) -> DrainProgress {
        crate::sync::lock(&self.progress).clone()
    }
}

/// The registry of drain tasks.
pub struct Drains {
    handle: DrainHandle,
    tasks: Mutex<HashMap<String, DrainTask>>,
    /// The UIDs of Plans seen deleted (the latest [`DELETED_KEPT`]): a reconcile pass still
    /// under way when its Plan went starts no drain for it.
    deleted: Mutex<std::collections::VecDeque<String>>,
}

/// How many deleted Plans' UIDs are remembered (a UID is never reused).
const DELETED_KEPT: usize = 256;

impl Drains {
    pub fn new(handle: DrainHandle) -> Self {
        Drains {
            handle,
            tasks: Mutex::default(),
            deleted: Mutex::default(),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, DrainTask>> {
        crate::sync::lock(&self.tasks)
    }

    /// The drains of a Plan's Jobs, by Job UID.
    pub fn of(&self, plan_uid: &str) -> BTreeMap<String, DrainProgress> {
        self.tasks()
            .iter()
            .filter(|(_, task)| task.plan_uid == plan_uid)
            .map(|(uid, task)| (uid.clone(), task.progress()))
            .collect()
    }

    /// Starts a drain for a Job's pod unless one is running, or finished for this very pod.
    pub fn start(&self, plan: &Plan, node: &str, pod: &str, job: &str, job_uid: &str) {
        let plan_uid = plan.metadata.uid.clone().unwrap_or_default();
        if crate::sync::lock(&self.deleted).contains(&plan_uid) {
            // Found by the long soak: a pass under way when its Plan was deleted started a
            // drain after the Plan's drains were stopped, and it evicted a pod later.
            tracing::info!(%pod, "not starting a drain: its Plan was deleted");
            return;
        }
        let mut tasks = self.tasks();
        if let Some(task) = tasks.get(job_uid) {
            let done_for_pod = matches!(task.progress(), DrainProgress::Done(p) if p == pod);
            if (!task.handle.is_finished() && task.pod == pod) || done_for_pod {
                return;
            }
            task.handle.abort();
        }
        let request = DrainRequest {
            plan: PlanRef {
                name: plan.name_any(),
                namespace: plan.namespace().unwrap_or_default(),
                uid: plan_uid.clone(),
            },
            node: node.to_owned(),
            pod: pod.to_owned(),
            job: job.to_owned(),
            job_uid: job_uid.to_owned(),
            options: plan.spec.drain.as_ref().map(DrainOptions::from_spec),
        };
        tracing::info!(%pod, drain = request.options.is_some(), "starting cordon/drain");
        let progress = Arc::new(Mutex::new(DrainProgress::Running("starting".into())));
        let task = tokio::spawn(drain::run(self.handle.clone(), request, progress.clone()));
        tasks.insert(
            job_uid.to_owned(),
            DrainTask {
                plan_uid,
                job: job.to_owned(),
                pod: pod.to_owned(),
                progress,
                handle: task,
            },
        );
    }

    /// Stops and forgets a Plan's drains, except those of the Jobs in `keep`.
    pub fn forget(&self, plan_uid: &str, keep: &[String]) {
        self.tasks().retain(|uid, task| {
            let keep_it = task.plan_uid != plan_uid || keep.contains(uid);
            if !keep_it {
                task.handle.abort();
            }
            keep_it
        });
    }

    /// A Plan was deleted: its drains stop (and are waited for, so none writes after the nodes
    /// it cordoned are returned), and none starts for it again.
    pub async fn plan_deleted(&self, plan_uid: &str) {
        {
            let mut deleted = crate::sync::lock(&self.deleted);
            if deleted.len() == DELETED_KEPT {
                deleted.pop_front();
            }
            deleted.push_back(plan_uid.to_owned());
        }
        self.stop_where(|task| task.plan_uid == plan_uid).await;
    }

    /// Stops the drain of the Job named `job`, if one runs, and waits until it has: a Job about
    /// to be deleted must not have its gate opened, nor pods evicted for it, afterwards.
    pub async fn stop_job(&self, job: &str) {
        self.stop_where(|task| task.job == job).await;
    }

    /// Stops the drains `which` picks and waits until they have stopped.
    async fn stop_where(&self, which: impl Fn(&DrainTask) -> bool) {
        let stopped: Vec<DrainTask> = {
            let mut tasks = self.tasks();
            let uids: Vec<String> = tasks
                .iter()
                .filter(|(_, t)| which(t))
                .map(|(uid, _)| uid.clone())
                .collect();
            uids.iter().filter_map(|uid| tasks.remove(uid)).collect()
        };
        for task in stopped {
            task.handle.abort();
            // Cancelled (or finished); either way it writes no more.
            let _ = task.handle.await;
        }
    }

    /// Stops every drain: the controller is stopping (shutdown, or another replica now leads and
    /// resumes the drains from the Jobs' annotations).
    pub fn stop_all(&self) {
        for (_, task) in self.tasks().drain() {
            task.handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the long soak: a reconcile pass under way when its Plan was deleted started a
    /// drain after the Plan's drains had been stopped, and it evicted a pod 2 s later.
    #[tokio::test]
    async fn a_deleted_plans_drains_stop_and_none_starts_again() {
        let (handle, _api, _woken) = crate::controller::drain::tests::test_handle(false);
        let drains = Drains::new(handle);
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "system-upgrade", "uid": "plan-uid"},
            "spec": {"upgrade": {"image": "x"}},
        }))
        .unwrap();
        drains.start(&plan, "n", "pod", "job", "job-uid");
        assert_eq!(drains.of("plan-uid").len(), 1);
        drains.plan_deleted("plan-uid").await;
        assert!(drains.of("plan-uid").is_empty());
        drains.start(&plan, "n", "pod", "job", "job-uid");
        assert!(
            drains.of("plan-uid").is_empty(),
            "a drain started for a deleted Plan"
        );
        // Another Plan's drains are not affected.
        let mut other = plan.clone();
        other.metadata.uid = Some("other-uid".into());
        drains.start(&other, "n", "pod", "job", "job-uid-2");
        assert_eq!(drains.of("other-uid").len(), 1);
        drains.stop_all();
    }
}
