//! Carrying out a decision: the changes that need no new status, the status (guarded by the
//! Plan's resourceVersion), then the changes that need it, each write proved by the Lease when
//! there is leader election; then the events.

use super::*;

/// Carries out a decision: the changes that need no new status, the status, the changes that
/// need it (starting nodes), then the events.
pub async fn act(ctx: &Context, plan: &Plan, decision: &Decision) -> Result<(), ReconcileError> {
    ctx.expect.begin(&uid(plan));
    // Proved once here, so the changes below (up to 16 at once) need no read of the Lease each.
    ctx.may_write().await?;
    apply_all(ctx, plan, &decision.before).await?;
    write_status(ctx, plan, decision).await?;
    apply_all(ctx, plan, &decision.after).await?;
    // The events go out after the pass, so a wave's many node events do not hold up the Plan's
    // next pass (and the next node's start).
    let (events, plan, notes) = (
        Arc::clone(&ctx.events),
        plan.clone(),
        decision.notes.clone(),
    );
    tokio::spawn(async move { publish(&events, &plan, notes).await });
    Ok(())
}

/// Records a pass's events: the nodes' at once (each node's in order), then the Plan's in order.
pub(super) async fn publish(events: &Arc<Events>, plan: &Plan, notes: Vec<Note>) {
    let (on_plan, on_nodes): (Vec<Note>, Vec<Note>) =
        notes.into_iter().partition(|n| n.target == Target::Plan);
    stream::iter(by_key(on_nodes, |n| match &n.target {
        Target::Node(name) => name.clone(),
        Target::Plan => String::new(),
    }))
    .for_each_concurrent(AT_ONCE, |notes| async move {
        for note in notes {
            events.publish(plan, &note).await;
        }
    })
    .await;
    for note in on_plan {
        events.publish(plan, &note).await;
    }
}

/// Requests one reconcile sends at once. The changes of one pass are about different nodes
/// (a wave of completions and starts), so one after the other they held the Plan, and the next
/// node's start, for a round trip each.
pub(super) const AT_ONCE: usize = 16;

/// Applies changes, those about different nodes (or Jobs) at once and those about one node in
/// order (adopting a Go-era cordon comes before releasing it); stops at the first error.
pub(super) async fn apply_all(
    ctx: &Context,
    plan: &Plan,
    changes: &[Change],
) -> Result<(), ReconcileError> {
    let groups = by_key(changes.iter().collect(), |change| {
        change
            .node()
            .or(change.job())
            .unwrap_or_default()
            .to_owned()
    });
    stream::iter(groups.into_iter().map(Ok))
        .try_for_each_concurrent(AT_ONCE, |group| async move {
            for change in group {
                apply(ctx, plan, change).await?;
            }
            Ok(())
        })
        .await
}

pub(super) fn uid(plan: &Plan) -> String {
    plan.metadata.uid.clone().unwrap_or_default()
}

/// Items grouped by key, each group in the items' order, groups in the order of their first item.
pub(super) fn by_key<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for item in items {
        let k = key(&item);
        match index.get(&k) {
            Some(&i) => groups[i].push(item),
            None => {
                index.insert(k, groups.len());
                groups.push(vec![item]);
            }
        }
    }
    groups
}

/// Writes the status when it changed, only if the Plan was not changed meanwhile.
pub(super) async fn write_status(
    ctx: &Context,
    plan: &Plan,
    decision: &Decision,
) -> Result<(), ReconcileError> {
    let wanted = &decision.status;
    let pruned = ctx.crd.now().iter().any(|g| g == "status.nodes");
    let Some(patch) = status::status_patch(plan, wanted, pruned) else {
        return Ok(());
    };
    let api: Api<Plan> = Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
    ctx.may_write().await?;
    let stored = match api
        .patch_status(
            &plan.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(stored) => {
            ctx.expect
                .status_written(&uid(plan), plan.metadata.resource_version.clone());
            stored
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            return Err(ReconcileError::Conflict);
        }
        Err(e) => return Err(ReconcileError::WriteStatus(e)),
    };
    // A CRD the watch could not read shows itself here: the node entries were dropped.
    if wanted.nodes.is_some()
        && !pruned
        && stored.status.as_ref().is_some_and(|s| s.nodes.is_none())
    {
        if crd::read_has_node_status(&ctx.client).await == Some(true) {
            // The CRD has them: the API server had not applied a CRD just written (seen as a
            // CRDCurrent that stayed after the CRD was fixed). The next write keeps them.
            tracing::info!("the API server dropped status.nodes while applying the Plan CRD");
            return Ok(());
        }
        let mut gaps = ctx.crd.now().to_vec();
        gaps.push("status.nodes".to_owned());
        ctx.crd_seen(gaps);
    }
    Ok(())
}

/// Whether a Job's upgrade may have begun by its pods as the API server has them now, not as
/// the caches had them when the decision was made (a drain may have opened the gate since).
pub(super) async fn began_meanwhile(
    ctx: &Context,
    jobs: &Api<Job>,
    namespace: &str,
    name: &str,
) -> Result<bool, ReconcileError> {
    let Some(job) = jobs
        .get_opt(name)
        .await
        .map_err(|e| ReconcileError::job("reading", name, e))?
    else {
        return Ok(false);
    };
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("batch.kubernetes.io/controller-uid={uid}");
    let listed = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(|e| ReconcileError::job("reading the pods of", name, e))?;
    let pods: Vec<&Pod> = listed.items.iter().collect();
    Ok(decide::upgrade_may_have_started(&job, &pods))
}

#[tracing::instrument(skip_all, fields(job = change.job(), node = change.node()))]
pub(super) async fn apply(
    ctx: &Context,
    plan: &Plan,
    change: &Change,
) -> Result<(), ReconcileError> {
    ctx.may_write().await?;
    let namespace = plan.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    match change {
        Change::DeleteJob {
            name,
            why,
            unless_begun,
        } => {
            // Its drain stops first: no gate opened, no pod evicted, for a Job being deleted.
            ctx.drains.stop_job(name).await;
            if *unless_begun && began_meanwhile(ctx, &jobs, &namespace, name).await? {
                tracing::info!(%why, "keeping the Job: its upgrade began since the decision");
                return Ok(());
            }
            tracing::info!(%why, "deleting Job");
            match jobs.delete(name, &DeleteParams::background()).await {
                Ok(_) => {
                    ctx.expect.job_deleted(&uid(plan), name);
                    ctx.metrics.job_changed("deleted");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(ReconcileError::job("deleting", name, e)),
            }
        }
        Change::DeletePod { name, why } => {
            tracing::info!(pod = %name, %why, "deleting a pod of a Job that is gone");
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            match pods.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(ReconcileError::job("deleting the pod", name, e)),
            }
        }
        Change::ReleasePod { name, index, why } => {
            tracing::info!(pod = %name, %why, "removing the Job controller's finalizer");
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            // Only if the finalizer is still where the caches had it; else the next pass looks.
            let path = format!("/metadata/finalizers/{index}");
            let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
                {"op": "test", "path": path, "value": decide::pods::JOB_TRACKING_FINALIZER},
                {"op": "remove", "path": path},
            ]))
            .map_err(|e| {
                ReconcileError::job("releasing the pod", name, kube::Error::SerdeError(e))
            })?;
            match pods
                .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => {}
                Err(e) => return Err(ReconcileError::job("releasing the pod", name, e)),
            }
        }
        Change::CreateJob(job) => {
            let name = job.name_any();
            match jobs.create(&PostParams::default(), job).await {
                Ok(_) => {
                    ctx.expect.job_created(&uid(plan), &name);
                    ctx.refusals.clear(&uid(plan), &name);
                    tracing::info!("created Job");
                    ctx.metrics.job_changed("created");
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return foreign_job(ctx, plan, &jobs, &name).await;
                }
                // The API server's answer (invalid, forbidden, a quota, a webhook): shown in the
                // node's entry and the Plan's conditions by the next pass, and tried again later.
                Err(kube::Error::Api(s)) if s.code != 429 => {
                    tracing::warn!(code = s.code, message = %s.message, "the API server refused the Job");
                    let template = job
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_TEMPLATE))
                        .cloned()
                        .unwrap_or_default();
                    let now = jiff::Timestamp::now();
                    (ctx.refusals).job_refused(&uid(plan), &name, &template, &s.message, now);
                    ctx.wake
                        .plan(&plan.namespace().unwrap_or_default(), &plan.name_any());
                }
                Err(e) => return Err(ReconcileError::job("creating", &name, e)),
            }
        }
        Change::AnnotateJob { name, annotations } => {
            tracing::info!(?annotations, "annotating Job");
            let patch = serde_json::json!({"metadata": {"annotations": annotations}});
            patch_job(&jobs, name, &patch).await?;
        }
        Change::UpdateJob { name, fields } => {
            tracing::info!(?fields, "updating the Job's settings");
            patch_job(&jobs, name, &job_fields_patch(fields)).await?;
        }
        Change::AdoptCordon { node } => {
            let who = ctx.settings.claimant();
            cordon::adopt(&ctx.client, &who, &plan.name_any(), node).await?
        }
        Change::LabelNode {
            node,
            labels,
            annotations,
        } => label_node(ctx, plan, node, labels, annotations).await?,
        Change::Drain {
            node,
            pod,
            job,
            job_uid,
        } => ctx.drains.start(plan, node, pod, job, job_uid),
        Change::FailDrain { job, message } => {
            // Suspending stops the pod (waiting in its gate), so the upgrade never starts.
            let patch = serde_json::json!({
                "metadata": {"annotations": {ANNOTATION_DRAIN_FAILED: message}},
                "spec": {"suspend": true},
            });
            patch_job(&jobs, job, &patch).await?;
        }
        Change::Release { node } => release(ctx, &plan.name_any(), node).await?,
        Change::Taint { node, on } => {
            let may_write = || ctx.proved();
            cordon::taint(&ctx.client, &plan.name_any(), node, *on, &may_write).await?;
        }
        Change::ClearAnnotation { key, value } => clear_annotation(ctx, plan, key, value).await?,
        Change::Finalizer { on } => finalizer(ctx, plan, *on).await?,
    }
    Ok(())
}

/// Removes an annotation the pass acted on (retry, cancel, resume), unless it was changed
/// meanwhile (then the next pass acts on the new request).
pub(super) async fn clear_annotation(
    ctx: &Context,
    plan: &Plan,
    key: &str,
    value: &str,
) -> Result<(), ReconcileError> {
    let path = format!("/metadata/annotations/{}", key.replace('/', "~1"));
    let ops = serde_json::json!([
        {"op": "test", "path": path, "value": value},
        {"op": "remove", "path": path},
    ]);
    if patch_plan(ctx, plan, ops)
        .await
        .map_err(ReconcileError::ClearAnnotation)?
    {
        tracing::info!(annotation = key, request = value, "acted on the annotation");
    }
    Ok(())
}

/// Puts the after hook's finalizer on the Plan or takes it off, by a JSON patch that tests the
/// list as this pass saw it.
pub(super) async fn finalizer(ctx: &Context, plan: &Plan, on: bool) -> Result<(), ReconcileError> {
    let Some(ops) = finalizer_patch(plan.metadata.finalizers.as_deref(), on) else {
        return Ok(());
    };
    if patch_plan(ctx, plan, ops)
        .await
        .map_err(ReconcileError::Finalizer)?
    {
        tracing::info!(on, "the after hook's finalizer");
    }
    Ok(())
}

/// Applies a JSON patch (testing first what the pass saw, where it can) to the Plan; whether it
/// applied. A Plan gone, or changed meanwhile (the test failed: 422), is left to the next pass.
async fn patch_plan(
    ctx: &Context,
    plan: &Plan,
    ops: serde_json::Value,
) -> Result<bool, kube::Error> {
    let api: Api<Plan> = Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    match api
        .patch(
            &plan.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The JSON patch that adds (`on`) or removes the after hook's finalizer from `finalizers` as
/// they are, testing them first; `None` when there is nothing to do.
pub fn finalizer_patch(finalizers: Option<&[String]>, on: bool) -> Option<serde_json::Value> {
    let list = finalizers.unwrap_or_default();
    let at = list.iter().position(|f| f == FINALIZER_AFTER_HOOK);
    match (on, at, finalizers) {
        (true, None, None) => Some(serde_json::json!([
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER_AFTER_HOOK]},
        ])),
        (true, None, Some(list)) => Some(serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER_AFTER_HOOK},
        ])),
        (false, Some(i), _) => Some(serde_json::json!([
            {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER_AFTER_HOOK},
            {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
        ])),
        _ => None,
    }
}

/// The merge patch bringing a Job's changeable settings in line (the TTL also in its annotation).
pub fn job_fields_patch(fields: &JobFields) -> serde_json::Value {
    let mut patch = serde_json::json!({"spec": {}});
    if let Some(deadline) = fields.active_deadline_seconds {
        patch["spec"]["activeDeadlineSeconds"] = serde_json::json!(deadline);
    }
    if let Some(limit) = fields.backoff_limit {
        patch["spec"]["backoffLimit"] = serde_json::json!(limit);
    }
    if let Some(ttl) = fields.ttl_seconds_after_finished {
        patch["spec"]["ttlSecondsAfterFinished"] = serde_json::json!(ttl);
        patch["metadata"] = serde_json::json!({"annotations": {ANNOTATION_TTL: ttl.to_string()}});
    }
    patch
}

/// Labels a node done (and with the Plan's postCompleteLabels) and records the upgrade in its
/// annotations, in one write; a node gone needs none.
pub(super) async fn label_node(
    ctx: &Context,
    plan: &Plan,
    node: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<(), ReconcileError> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"metadata": {"labels": labels, "annotations": annotations}});
    match nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) if labels.is_empty() => {
            tracing::debug!("recorded a failed upgrade in the node's history");
            Ok(())
        }
        Ok(_) => {
            ctx.expect.node_labelled(&uid(plan), node, labels);
            tracing::info!("labelled node done");
            ctx.metrics.node_upgraded();
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(error) => Err(ReconcileError::LabelNode {
            node: node.to_owned(),
            error,
        }),
    }
}

/// Drops a Plan's cordon claim on a node (uncordoning it when no claim is left) and tells so
/// on the node.
pub async fn release(ctx: &Context, plan: &str, node: &str) -> Result<(), CordonError> {
    let who = ctx.settings.claimant();
    if let Some((current, outcome)) =
        cordon::cordon(&ctx.client, &who, plan, node, false, &|| ctx.proved()).await?
    {
        let note = Note::new(
            Target::Node(node.to_owned()),
            false,
            outcome.reason,
            outcome.message,
        );
        ctx.events.on_node(&current, &note).await;
    }
    Ok(())
}

/// A merge patch of a Job; a Job already gone needs none.
pub(super) async fn patch_job(
    jobs: &Api<Job>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), ReconcileError> {
    match jobs
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ReconcileError::job("patching", name, e)),
    }
}

/// A Job of the wanted name already exists. Ours (a replaced one still going away, or one the
/// cache has not shown yet) is waited for; one of another controller blocks the node, which is
/// said in an event and the reconcile fails until it is gone.
pub(super) async fn foreign_job(
    ctx: &Context,
    plan: &Plan,
    jobs: &Api<Job>,
    name: &str,
) -> Result<(), ReconcileError> {
    let existing = jobs
        .get_opt(name)
        .await
        .map_err(|e| ReconcileError::job("reading", name, e))?;
    let owner = existing
        .as_ref()
        .and_then(|j| j.metadata.labels.as_ref())
        .and_then(|l| l.get(LABEL_CONTROLLER))
        .cloned();
    if existing.is_none() || owner.as_deref() == Some(ctx.settings.job.controller_name.as_str()) {
        return Ok(());
    }
    let message = format!(
        "Job {}/{name} already exists and belongs to {}; delete it or give it another name so \
         this Plan can run its node",
        plan.namespace().unwrap_or_default(),
        match &owner {
            Some(owner) => format!("controller {owner:?}"),
            None => "no upgrade controller".to_owned(),
        }
    );
    let note = Note::new(Target::Plan, true, Reason::JobConflict, message.clone())
        .once(format!("JobConflict/{name}"));
    ctx.events.publish(plan, &note).await;
    Err(ReconcileError::Blocked(message))
}
