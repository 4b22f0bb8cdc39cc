//! Object health gates (`healthGates.objects`): each gate's objects read through the API (the
//! kind found by discovery), its CEL expression evaluated over them (`syntax::expression`), and
//! the gates that are closed, with why, cached briefly per Plan like the Prometheus gate's
//! answer. The objects are the user's: the controller reads them with the rights the user gave
//! it, and a refusal is said in the Plan's status, never taken as healthy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use kube::{Api, Client};

use crate::api::{ObjectGate, Plan};
use crate::controller::query::FRESH_FOR;
use crate::syntax::expression::{self, Variable};

/// Most objects a selecting gate reads; more is a closed gate asking for a narrower selector.
const MAX_OBJECTS: u32 = 500;
/// How long a kind's discovery is reused (a CRD installed later is found after this).
const DISCOVERY_FOR: Duration = Duration::from_secs(300);

/// A kind as discovery found it (and whether it is namespaced), or why it was not.
type Kind = Result<(ApiResource, bool), String>;

/// A Plan's last answer: when, for which gates (as JSON), and the closed gates' messages.
type Answer = (Instant, String, Vec<String>);

/// The client, the kinds found, and each Plan's last answer.
pub struct ObjectGates {
    client: Client,
    /// By `apiVersion/kind`: when discovery answered, and what.
    kinds: Mutex<HashMap<String, (Instant, Kind)>>,
    /// By Plan UID.
    answers: Mutex<HashMap<String, Answer>>,
}

impl ObjectGates {
    pub fn new(client: Client) -> Self {
        ObjectGates {
            client,
            kinds: Mutex::default(),
            answers: Mutex::default(),
        }
    }

    /// Why the Plan's object gates are closed (empty when all are open, or it has none), at most
    /// [`FRESH_FOR`] old.
    pub async fn check(&self, plan: &Plan) -> Vec<String> {
        let Some(gates) = plan
            .spec
            .health_gates
            .as_ref()
            .and_then(|g| g.objects.as_ref())
            .filter(|g| !g.is_empty())
        else {
            return Vec::new();
        };
        let uid = plan.metadata.uid.clone().unwrap_or_default();
        let key = serde_json::to_string(gates).unwrap_or_default();
        if let Some((at, asked, answer)) = crate::sync::lock(&self.answers).get(&uid)
            && *asked == key
            && at.elapsed() < FRESH_FOR
        {
            return answer.clone();
        }
        let mut closed = Vec::new();
        for (i, gate) in gates.iter().enumerate() {
            if let Err(why) = self.open(gate).await {
                closed.push(format!("{why} (healthGates.objects[{i}])"));
            }
        }
        crate::sync::lock(&self.answers).insert(uid, (Instant::now(), key, closed.clone()));
        closed
    }

    /// Drops a deleted Plan's answer.
    pub fn forget(&self, uid: &str) {
        crate::sync::lock(&self.answers).remove(uid);
    }

    /// Whether one gate is open now; why not (the webhook's look at a Plan it admits).
    pub async fn probe(&self, gate: &ObjectGate) -> Result<(), String> {
        self.open(gate).await
    }

    /// Whether one gate is open; why not.
    async fn open(&self, gate: &ObjectGate) -> Result<(), String> {
        let variable = if gate.name.is_some() {
            Variable::Object
        } else {
            Variable::Objects
        };
        // Compiled again here: the webhook refuses an expression that does not compile, but a
        // Plan stored without it is judged the same way.
        let compiled = expression::compile(&gate.expression, variable)
            .map_err(|e| format!("the expression {e}"))?;
        let (resource, namespaced) = self.kind(gate).await?;
        let what = describe(gate);
        let api: Api<DynamicObject> = match (&gate.namespace, namespaced) {
            (Some(namespace), true) => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            _ => Api::all_with(self.client.clone(), &resource),
        };
        let read = |e: kube::Error| match e {
            kube::Error::Api(s) if s.code == 403 => format!(
                "the controller may not read {what} ({}); grant its service account get and \
                 list on {} with a Role or ClusterRole",
                s.message,
                plural(&resource)
            ),
            e => format!("reading {what}: {e}"),
        };
        let value = match &gate.name {
            Some(name) => {
                let Some(object) = api.get_opt(name).await.map_err(read)? else {
                    return Err(format!("{what} does not exist"));
                };
                serde_json::to_value(object).map_err(|e| e.to_string())?
            }
            None => {
                let mut params = ListParams::default().limit(MAX_OBJECTS);
                if let Some(selector) = &gate.selector {
                    let selector = kube::core::Selector::try_from(selector.clone())
                        .map_err(|e| format!("the selector: {e}"))?;
                    params = params.labels_from(&selector);
                }
                let list = api.list(&params).await.map_err(read)?;
                if list
                    .metadata
                    .continue_
                    .as_deref()
                    .is_some_and(|c| !c.is_empty())
                {
                    return Err(format!(
                        "{what} are more than {MAX_OBJECTS}; narrow the selector"
                    ));
                }
                serde_json::to_value(list.items).map_err(|e| e.to_string())?
            }
        };
        match expression::evaluate(&compiled, variable, &value) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{} is false for {what}", gate.expression)),
            Err(why) => Err(format!("{what}: {why}")),
        }
    }

    /// The gate's kind as the API server serves it, and whether it is namespaced.
    async fn kind(&self, gate: &ObjectGate) -> Kind {
        let (group, version) = match gate.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", gate.api_version.as_str()),
        };
        let key = format!("{}/{}", gate.api_version, gate.kind);
        if let Some((at, found)) = crate::sync::lock(&self.kinds).get(&key)
            && at.elapsed() < DISCOVERY_FOR
            && found.is_ok()
        {
            return found.clone();
        }
        let gvk = GroupVersionKind::gvk(group, version, &gate.kind);
        let found = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, capabilities)) => Ok((resource, capabilities.scope == Scope::Namespaced)),
            Err(e) => Err(format!(
                "the API server serves no kind {} in {} ({e}); check apiVersion and kind, or \
                 install the CRD",
                gate.kind, gate.api_version
            )),
        };
        crate::sync::lock(&self.kinds).insert(key, (Instant::now(), found.clone()));
        found
    }
}

/// The objects a gate reads, for messages: `CephCluster rook-ceph/rook-ceph`, `Volumes in
/// longhorn-system`, `Deployments in shop matching tier=web`.
fn describe(gate: &ObjectGate) -> String {
    match (&gate.name, &gate.namespace) {
        (Some(name), Some(namespace)) => format!("{} {namespace}/{name}", gate.kind),
        (Some(name), None) => format!("{} {name}", gate.kind),
        (None, namespace) => {
            let place = namespace
                .as_ref()
                .map_or(" in every namespace".to_owned(), |n| format!(" in {n}"));
            let matching = gate
                .selector
                .clone()
                .and_then(|s| kube::core::Selector::try_from(s).ok())
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty())
                .map(|s| format!(" matching {s}"))
                .unwrap_or_default();
            format!("{}s{place}{matching}", gate.kind)
        }
    }
}

/// `resource.group` as RBAC names it (`cephclusters.ceph.rook.io`, `deployments.apps`, `pods`).
fn plural(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(value: serde_json::Value) -> ObjectGate {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn gates_are_described_by_what_they_read() {
        let one = gate(
            serde_json::json!({"apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
            "namespace": "rook-ceph", "name": "rook-ceph", "expression": "true"}),
        );
        assert_eq!(describe(&one), "CephCluster rook-ceph/rook-ceph");
        let some = gate(
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "namespace": "shop", "selector": {"matchLabels": {"tier": "web"}}, "expression": "true"}),
        );
        assert_eq!(describe(&some), "Deployments in shop matching tier=web");
        let all = gate(
            serde_json::json!({"apiVersion": "longhorn.io/v1beta2", "kind": "Volume",
            "expression": "true"}),
        );
        assert_eq!(describe(&all), "Volumes in every namespace");
        let resource = ApiResource {
            group: "ceph.rook.io".into(),
            version: "v1".into(),
            api_version: "ceph.rook.io/v1".into(),
            kind: "CephCluster".into(),
            plural: "cephclusters".into(),
        };
        assert_eq!(plural(&resource), "cephclusters.ceph.rook.io");
    }
}
