//! The Plan CRD the cluster serves, compared with this controller's. A field the served schema
//! lacks is dropped by the API server on every write (and read), which is what happens when the
//! Go controller, or Rancher's copy of it, rewrites the CRD as it starts. The controller watches
//! the CRD and shows such gaps on every Plan and in `/readyz`.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::api::PLAN_CRD;

/// The schema of a CRD's storage version (or its first).
fn schema(crd: &Value) -> Option<&Value> {
    let versions = crd.pointer("/spec/versions")?.as_array()?;
    let stored = versions
        .iter()
        .find(|v| v.get("storage") == Some(&Value::Bool(true)))
        .or(versions.first())?;
    stored.pointer("/schema/openAPIV3Schema")
}

/// The fields of `ours` (a CRD) that `served` lacks, as dotted paths (`spec.paused`,
/// `status.conditions[].observedGeneration`), outermost first; `None` when `served` has no
/// schema to compare.
pub fn missing_fields(served: &Value, ours: &Value) -> Option<Vec<String>> {
    let (served, ours) = (schema(served)?, schema(ours)?);
    let mut missing = Vec::new();
    compare(served, ours, "", &mut missing);
    Some(missing)
}

fn compare(served: &Value, ours: &Value, path: &str, missing: &mut Vec<String>) {
    if let Some(properties) = ours.get("properties").and_then(Value::as_object) {
        for (name, ours) in properties {
            let here = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match served.pointer(&format!(
                "/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            )) {
                Some(served) => compare(served, ours, &here, missing),
                None => missing.push(here),
            }
        }
    }
    if let (Some(served), Some(ours)) = (served.get("items"), ours.get("items")) {
        compare(served, ours, &format!("{path}[]"), missing);
    }
}

/// Whether the Plan CRD in the cluster has `status.nodes`, which the Go controller's CRD lacks.
/// `None`: it has no schema to tell.
pub fn has_node_status(crd: &Value) -> Option<bool> {
    let schema = schema(crd)?;
    Some(
        schema
            .pointer("/properties/status/properties/nodes")
            .is_some(),
    )
}

/// Whether the Plan CRD, read now, has `status.nodes`; `None` when it cannot be read.
pub async fn read_has_node_status(client: &Client) -> Option<bool> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = api.get_opt(PLAN_CRD).await.ok()??;
    has_node_status(&serde_json::to_value(crd).ok()?)
}

/// Watches the Plan CRD until `stop`, calling `seen` with the fields it lacks whenever it is
/// (re)written. A CRD that cannot be watched (RBAC of an older install) is checked once with a
/// read; one that cannot be read either is taken as this controller's.
pub async fn watch(
    client: Client,
    seen: impl Fn(Vec<String>) + Send + 'static,
    stop: CancellationToken,
) {
    let ours = serde_json::to_value(crate::api::crd()).unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={PLAN_CRD}"));
    let mut stream = watcher::watcher(api.clone(), config).boxed();
    let mut warned = false;
    let judge = |crd: &CustomResourceDefinition| {
        let served = serde_json::to_value(crd).unwrap_or_default();
        missing_fields(&served, &ours).unwrap_or_default()
    };
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = stream.next() => event,
        };
        match event {
            Some(Ok(Event::Apply(crd) | Event::InitApply(crd))) => seen(judge(&crd)),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, "cannot watch the Plan CRD; reading it instead");
                    match api.get(PLAN_CRD).await {
                        Ok(crd) => seen(judge(&crd)),
                        Err(e) => tracing::warn!(error = %e, "cannot read the Plan CRD"),
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                }
            }
            None => return,
        }
    }
}

/// What the controller shares about the CRD: the fields it lacks now.
#[derive(Default)]
pub struct Gaps(std::sync::Mutex<Arc<[String]>>);

impl Gaps {
    pub fn now(&self) -> Arc<[String]> {
        crate::sync::lock(&self.0).clone()
    }

    /// Records what the CRD lacks; returns whether that changed.
    pub fn set(&self, gaps: Vec<String>) -> bool {
        let mut current = crate::sync::lock(&self.0);
        if *current.as_ref() == *gaps.as_slice() {
            return false;
        }
        *current = gaps.into();
        true
    }
}

/// What `/readyz` and the log say about gaps.
pub fn describe(gaps: &[String]) -> Option<String> {
    (!gaps.is_empty()).then(|| {
        format!(
            "the Plan CRD in the cluster lacks {} (the Go controller, or Rancher's, rewrites it when \
             it starts): the API server drops those fields; apply this controller's CRD (kubectl \
             apply -f deploy/crd.yaml, or helm upgrade) and keep the other controller away from it",
            gaps.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        serde_json::to_value(crate::api::crd()).unwrap()
    }

    /// This controller's CRD without the fields at these JSON pointers into the schema.
    fn without(paths: &[&str]) -> Value {
        let mut crd = ours();
        for version in crd["spec"]["versions"].as_array_mut().unwrap() {
            for path in paths {
                let (parent, name) = path.rsplit_once('/').unwrap();
                version["schema"]["openAPIV3Schema"]
                    .pointer_mut(parent)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(name);
            }
        }
        crd
    }

    #[test]
    fn our_own_crd_lacks_nothing() {
        assert_eq!(missing_fields(&ours(), &ours()), Some(vec![]));
        assert_eq!(has_node_status(&ours()), Some(true));
    }

    #[test]
    fn a_go_controllers_crd_lacks_our_fields_outermost_first() {
        let go = without(&[
            "/properties/status/properties/nodes",
            "/properties/spec/properties/paused",
            "/properties/spec/properties/drain/properties/onTimeout",
            "/properties/status/properties/conditions/items/properties/observedGeneration",
        ]);
        let missing = missing_fields(&go, &ours()).unwrap();
        for field in [
            "status.nodes",
            "spec.paused",
            "spec.drain.onTimeout",
            "status.conditions[].observedGeneration",
        ] {
            assert!(missing.contains(&field.to_owned()), "{field}: {missing:?}");
        }
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert_eq!(has_node_status(&go), Some(false));
        assert_eq!(missing_fields(&serde_json::json!({}), &ours()), None);
        assert!(describe(&missing).unwrap().contains("status.nodes"));
        assert_eq!(describe(&[]), None);
    }

    #[test]
    fn gaps_tell_when_they_change() {
        let gaps = Gaps::default();
        assert!(!gaps.set(vec![]));
        assert!(gaps.set(vec!["spec.paused".into()]));
        assert!(!gaps.set(vec!["spec.paused".into()]));
        assert_eq!(gaps.now().as_ref(), ["spec.paused".to_owned()]);
    }
}
