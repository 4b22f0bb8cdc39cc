//! The simulated nodes' kubelets, as far as versions go: when a K3s or RKE2 upgrade pod (an
//! `upgrade` container of a `k3s-upgrade` or `rke2-upgrade` image) succeeds on a kwok node, the
//! node reports the image's tag as its `status.nodeInfo.kubeletVersion`, as a real node does once
//! K3s restarts on the new version. A pod labelled `suc-test/no-converge=true` (a Plan's labels
//! are copied to its pods) leaves the version as it was: an upgrade that "succeeds" without
//! changing anything. Runs in the background for the whole suite.

use std::collections::HashSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::support::NAMESPACE;

/// The label that keeps a node's version as it was after its upgrade pod succeeds.
pub const NO_CONVERGE: &str = "suc-test/no-converge";

/// The version a succeeded upgrade pod brings its node to, if it is a K3s or RKE2 upgrade:
/// `rancher/k3s-upgrade:v1.30.5-k3s1` gives `v1.30.5+k3s1`.
fn brings(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let image = &spec
        .containers
        .iter()
        .find(|c| c.name == "upgrade")?
        .image
        .clone()?;
    let (repository, tag) = image.rsplit_once(':')?;
    let name = repository.rsplit('/').next()?;
    if !matches!(name, "k3s-upgrade" | "rke2-upgrade") {
        return None;
    }
    // The munged tag: the distribution's suffix after the last '-' goes back after a '+'.
    let (version, distro) = tag.rsplit_once('-')?;
    (distro.starts_with("k3s") || distro.starts_with("rke2")).then(|| format!("{version}+{distro}"))
}

/// Watches the upgrade pods until the suite ends, bringing simulated nodes to their version.
pub async fn simulate(client: kube::Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let config = watcher::Config::default().labels("upgrade.cattle.io/plan");
    let mut done: HashSet<String> = HashSet::new();
    let mut events = watcher::watcher(pods, config).boxed();
    while let Some(event) = events.next().await {
        let pods = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => vec![pod],
            _ => continue,
        };
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let succeeded =
                pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
            let held = pod
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get(NO_CONVERGE).is_some_and(|v| v == "true"));
            if !succeeded || held || done.contains(&uid) {
                continue;
            }
            let (Some(version), Some(node)) = (
                brings(&pod),
                pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            let Ok(current) = nodes.get(&node).await else {
                continue;
            };
            let simulated = current
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("kwok.x-k8s.io/node"));
            if !simulated {
                done.insert(uid);
                continue;
            }
            let patch = json!({"status": {"nodeInfo": {"kubeletVersion": version}}});
            if nodes
                .patch_status(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                done.insert(uid);
            }
        }
    }
}
