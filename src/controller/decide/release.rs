//! Phase: what the Plan no longer needs. Running Jobs of nodes that no longer apply the Plan
//! stop (as with the Go controller), their claims go back, and pods stranded by a Job that is
//! gone are deleted.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;

use super::decision::Change;
use super::facts::finished_at;
use super::jobs::Jobs;
use super::pass::Pass;
use super::pods;
use super::retries;

/// How long a pod whose Job is gone is seen before it is deleted (its Job may only be late in
/// the cache).
const STRANDED_AFTER_SECS: i64 = 120;

/// Running Jobs of nodes that are not `selected` stop, and this Plan's claims on such nodes go.
/// When the rollout is `ending` (cancelled, or its window closed with Stop; the words say
/// which) they are Jobs whose upgrade has not begun, as the shell checks again on the pods
/// before it deletes one.
pub(super) fn leftovers(
    pass: &mut Pass<'_, '_>,
    jobs: &Jobs<'_>,
    selected: &[&Node],
    ending: Option<&str>,
) {
    let selected: BTreeSet<&str> = selected
        .iter()
        .map(|n| n.metadata.name.as_deref().unwrap_or_default())
        .collect();
    let stopping: Vec<(String, String)> = jobs
        .current
        .iter()
        .chain(jobs.finishing.iter())
        .filter(|(node, job)| {
            !selected.contains(node.as_str())
                && !pass.ledger.skipped.contains(node.as_str())
                && finished_at(job).is_none()
        })
        .map(|(node, job)| (node.clone(), job.metadata.name.clone().unwrap_or_default()))
        .collect();
    for (node, name) in stopping {
        let why = match ending {
            Some(what) => format!("{what} before node {node}'s upgrade began"),
            None => format!("node {node} no longer needs the Plan"),
        };
        pass.out.before.push(Change::DeleteJob {
            name,
            why,
            unless_begun: ending.is_some(),
        });
    }
    let releases: Vec<String> = pass
        .cx
        .nodes
        .iter()
        .filter(|(name, node)| {
            // A failed node the rollout went on without stays as the budget says.
            let kept =
                pass.ledger.given_up.contains(*name) && retries::keeps_failed_cordoned(pass.cx);
            pass.claims(name, node)
                && !selected.contains(name.as_str())
                && !pass.ledger.released.contains(*name)
                && !kept
        })
        .map(|(name, _)| name.clone())
        .collect();
    for node in releases {
        pass.release(&node);
    }
}

/// Pods whose Job is gone and which still wait in `prepare` or their gate go: the garbage
/// collector can take minutes after an API server outage, and meanwhile they keep the node's
/// next upgrade pod off the node (found by the soak). Seen for two minutes first. Such a pod
/// being deleted for two minutes that only the Job controller's finalizer keeps is released
/// from it.
pub(super) fn stranded_pods(pass: &mut Pass<'_, '_>) {
    let obs = pass.cx.obs;
    let before = obs
        .now
        .checked_sub(jiff::SignedDuration::from_secs(STRANDED_AFTER_SECS))
        .unwrap_or(obs.now);
    for pod in pods::stranded(obs.pods, obs.jobs, before) {
        pass.out.before.push(Change::DeletePod {
            name: pod.metadata.name.clone().unwrap_or_default(),
            why: "its Job is gone and its upgrade never began".into(),
        });
    }
    for (pod, index) in pods::held_by_finalizer(obs.pods, obs.jobs, before) {
        pass.out.before.push(Change::ReleasePod {
            name: pod.metadata.name.clone().unwrap_or_default(),
            index,
            why: format!(
                "it is being deleted, its Job is gone, and only the Job controller's {} \
                 finalizer keeps it",
                pods::JOB_TRACKING_FINALIZER
            ),
        });
    }
}
