//! After a drain, before the upgrade runs: the node's volumes detaching (`drain.volumeDetach`).
//! A volume still attached through a reboot can lose data; the attach/detach controller deletes
//! a node's `VolumeAttachment` once the volume is detached, so the drain waits for those of the
//! volumes no pod left on the node still uses.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::api::VolumeDetach;
use crate::syntax::duration;

/// How a drain waits for volumes, from a Plan's `drain.volumeDetach` (`None`: it does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeWait {
    pub timeout: Duration,
    pub on_timeout: DetachTimeout,
}

/// What happens when volumes are still attached at the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachTimeout {
    /// The drain fails: the node keeps its slot, retries apply.
    Fail,
    /// The upgrade runs anyway, told in a warning event.
    Proceed,
    /// The node is given up, as with `drain.onTimeout: Skip`.
    Skip,
}

/// The wait when `drain.volumeDetach` says nothing: five minutes, then the drain fails.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl VolumeWait {
    /// The wait of a (valid) Plan's `drain.volumeDetach`; on unless `wait: false`.
    pub fn from_spec(spec: Option<&VolumeDetach>) -> Option<Self> {
        let spec = spec.cloned().unwrap_or_default();
        if spec.wait == Some(false) {
            return None;
        }
        let timeout = spec
            .timeout
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
            .and_then(|n| u64::try_from(n).ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_nanos);
        let on_timeout = match spec.on_timeout.as_deref() {
            Some("Proceed") => DetachTimeout::Proceed,
            Some("Skip") => DetachTimeout::Skip,
            _ => DetachTimeout::Fail,
        };
        Some(VolumeWait {
            timeout,
            on_timeout,
        })
    }
}

/// The attachments to `node` the drain waits for (a description of each: the volume and its
/// attacher): all but those of the persistent volumes in `kept`, which pods left on the node
/// use. An attachment whose source is an inline volume spec (an in-tree volume migrated to
/// CSI) cannot be told apart from a kept pod's and is waited for too.
pub fn waiting_for(
    attachments: &[VolumeAttachment],
    node: &str,
    kept: &BTreeSet<String>,
) -> Vec<String> {
    attachments
        .iter()
        .filter(|a| a.spec.node_name == node)
        .filter(|a| {
            a.spec
                .source
                .persistent_volume_name
                .as_ref()
                .is_none_or(|pv| !kept.contains(pv))
        })
        .map(|a| {
            let volume = a
                .spec
                .source
                .persistent_volume_name
                .clone()
                .or_else(|| a.metadata.name.clone())
                .unwrap_or_default();
            format!("{volume} ({})", a.spec.attacher)
        })
        .collect()
}

/// What the node entry says while the drain waits for `volumes` (at most three named).
pub fn waiting_message(node: &str, volumes: &[String]) -> String {
    let named = volumes
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = match volumes.len() {
        0..=3 => String::new(),
        n => format!(" and {} more", n - 3),
    };
    let noun = if volumes.len() == 1 {
        "volume"
    } else {
        "volumes"
    };
    format!("waiting for {noun} {named}{more} to detach from node {node}")
}

/// The persistent volumes that pods still on `node` (not finished) use: their claims read
/// through the API. A claim that is missing or not bound holds no volume.
pub async fn kept_volumes(client: &Client, node: &str) -> Result<BTreeSet<String>, String> {
    let pods: Api<Pod> = Api::all(client.clone());
    let listing = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let pods = pods
        .list(&listing)
        .await
        .map_err(|e| format!("listing the pods of node {node}: {e}"))?;
    let mut kept = BTreeSet::new();
    for pod in &pods.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        for claim in claim_names(pod) {
            let found = claims
                .get_opt(&claim)
                .await
                .map_err(|e| format!("reading PersistentVolumeClaim {namespace}/{claim}: {e}"))?;
            if let Some(volume) = found.and_then(|c| c.spec).and_then(|s| s.volume_name) {
                kept.insert(volume);
            }
        }
    }
    Ok(kept)
}

/// The claims a pod's volumes name: `persistentVolumeClaim` ones, and generic ephemeral ones
/// (whose claim is named after the pod and the volume).
fn claim_names(pod: &Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                Some(claim.claim_name.clone())
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| format!("{pod_name}-{}", v.name))
            }
        })
        .collect()
}

/// Every VolumeAttachment of the cluster (they have no field selector for the node).
pub async fn attachments(client: &Client) -> Result<Vec<VolumeAttachment>, String> {
    let api: Api<VolumeAttachment> = Api::all(client.clone());
    api.list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 => format!(
                "the controller may not list VolumeAttachments ({}); grant it list on \
                 volumeattachments.storage.k8s.io, or set drain.volumeDetach.wait: false",
                s.message
            ),
            e => format!("listing VolumeAttachments: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attachment(name: &str, node: &str, pv: Option<&str>) -> VolumeAttachment {
        let source = match pv {
            Some(pv) => json!({"persistentVolumeName": pv}),
            None => json!({"inlineVolumeSpec": {"csi": {"driver": "d", "volumeHandle": "h"}}}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"attacher": "driver.longhorn.io", "nodeName": node, "source": source},
        }))
        .unwrap()
    }

    #[test]
    fn a_drain_waits_for_the_volumes_of_its_node_that_no_pod_left_there_uses() {
        let all = [
            attachment("csi-1", "a", Some("pv-web")),
            attachment("csi-2", "a", Some("pv-daemon")),
            attachment("csi-3", "b", Some("pv-other")),
            attachment("csi-4", "a", None),
        ];
        let kept = BTreeSet::from(["pv-daemon".to_owned()]);
        assert_eq!(
            waiting_for(&all, "a", &kept),
            ["pv-web (driver.longhorn.io)", "csi-4 (driver.longhorn.io)"]
        );
        assert!(waiting_for(&all, "c", &kept).is_empty());
    }

    #[test]
    fn the_wait_is_on_by_default_and_can_be_turned_off() {
        let default = VolumeWait::from_spec(None).unwrap();
        assert_eq!(default.timeout, Duration::from_secs(300));
        assert_eq!(default.on_timeout, DetachTimeout::Fail);
        let spec = VolumeDetach {
            wait: None,
            timeout: Some("90s".into()),
            on_timeout: Some("Proceed".into()),
        };
        let set = VolumeWait::from_spec(Some(&spec)).unwrap();
        assert_eq!(set.timeout, Duration::from_secs(90));
        assert_eq!(set.on_timeout, DetachTimeout::Proceed);
        let off = VolumeDetach {
            wait: Some(false),
            ..spec
        };
        assert_eq!(VolumeWait::from_spec(Some(&off)), None);
    }

    #[test]
    fn the_message_names_at_most_three_volumes() {
        let five: Vec<String> = (1..=5).map(|i| format!("pv-{i} (d)")).collect();
        assert_eq!(
            waiting_message("a", &five),
            "waiting for volumes pv-1 (d), pv-2 (d), pv-3 (d) and 2 more to detach from node a"
        );
        assert_eq!(
            waiting_message("a", &five[..1]),
            "waiting for volume pv-1 (d) to detach from node a"
        );
    }

    #[test]
    fn claims_come_from_claim_and_ephemeral_volumes() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "data"},
            "spec": {"containers": [], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "tmp", "emptyDir": {}},
            ]},
        }))
        .unwrap();
        assert_eq!(claim_names(&pod), ["data-db-0", "db-0-scratch"]);
    }
}
