//! `status.latestHash`, byte for byte as the Go controller computes it, so a cluster taken over
//! from it recognises the nodes it already upgraded: SHA-224 over the resolved version, the service
//! account, the values of the fields named in the `upgrade.cattle.io/digest` annotation and the
//! kubectl-style hash of every referenced (not ignored) Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha224, Sha256};

use crate::api::{ANNOTATION_DIGEST, Plan};
use crate::syntax::duration;

/// The hash of a Plan. `plan` is the Plan as JSON with `status.latestVersion` already set to the
/// freshly resolved version; `secrets` are the Secrets of `spec.secrets` with `ignoreUpdates`
/// false, in spec order.
pub fn plan_hash(plan: &serde_json::Value, secrets: &[&Secret]) -> String {
    let mut hasher = Sha224::new();
    hasher.update(lookup_string(plan, &["status", "latestVersion"]));
    hasher.update(lookup_string(plan, &["spec", "serviceAccountName"]));
    let digest = plan.pointer(&format!(
        "/metadata/annotations/{}",
        ANNOTATION_DIGEST.replace('/', "~1")
    ));
    if let Some(paths) = digest
        .and_then(serde_json::Value::as_str)
        .filter(|p| !p.is_empty())
    {
        // No trimming: " spec.version" names a field " spec" that does not exist, as in Go.
        for entry in paths.split(',') {
            let keys: Vec<&str> = entry.split('.').collect();
            hasher.update(lookup_string(plan, &keys));
        }
    }
    for secret in secrets {
        hasher.update(secret_hash(secret));
    }
    hex(&hasher.finalize())
}

/// The Plan as the Go controller's typed structs marshal it to JSON, which is the document the
/// paths of the digest annotation are looked up in. Go leaves out the zero values of its
/// `omitempty` fields (a `false` of `cordon`, a `0` of `concurrency`, empty strings, lists and
/// maps) but keeps pointers to them (`jobActiveDeadlineSecs: 0`, `nodeSelector: {}`, `drain: {}`),
/// writes `postCompleteDelay` as Go prints durations (`5m` → `5m0s`), and has no field for what
/// it does not know (`status.nodes`, and the type meta its typed caches drop).
pub fn go_shape(plan: &Plan) -> serde_json::Value {
    let mut value = serde_json::to_value(plan).unwrap_or_default();
    let Some(root) = value.as_object_mut() else {
        return value;
    };
    root.remove("apiVersion");
    root.remove("kind");
    if let Some(metadata) = root.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        drop_empty(metadata, &["labels", "annotations"]);
    }
    if let Some(spec) = root.get_mut("spec").and_then(|s| s.as_object_mut()) {
        shape_spec(spec);
    }
    if let Some(status) = root.get_mut("status").and_then(|s| s.as_object_mut()) {
        status.remove("nodes");
        drop_empty(
            status,
            &["conditions", "latestVersion", "latestHash", "applying"],
        );
    }
    value
}

type Fields = serde_json::Map<String, serde_json::Value>;

/// The Plan spec's own fields, then the Kubernetes types embedded in it.
fn shape_spec(spec: &mut Fields) {
    drop_zero(spec, &["concurrency", "exclusive", "cordon"]);
    drop_empty(
        spec,
        &[
            "serviceAccountName",
            "channel",
            "version",
            "secrets",
            "tolerations",
            "imagePullSecrets",
            "priorityClassName",
            "postCompleteLabels",
        ],
    );
    if let Some(delay) = spec.get_mut("postCompleteDelay")
        && let Some(nanos) = delay.as_str().and_then(|d| duration::parse(d).ok())
    {
        *delay = duration::format(nanos).into();
    }
    for secret in objects(spec, "secrets") {
        drop_zero(secret, &["ignoreUpdates"]);
    }
    for toleration in objects(spec, "tolerations") {
        k8s_omitempty(toleration);
    }
    for reference in objects(spec, "imagePullSecrets") {
        k8s_omitempty(reference);
    }
    if let Some(selector) = object(spec, "nodeSelector") {
        k8s_omitempty(selector);
    }
    if let Some(window) = object(spec, "window") {
        drop_empty(window, &["days", "startTime", "endTime", "timeZone"]);
    }
    for name in ["prepare", "upgrade"] {
        if let Some(container) = object(spec, name) {
            drop_empty(
                container,
                &["command", "args", "envs", "envFrom", "volumes"],
            );
            for field in ["envs", "envFrom"] {
                for item in objects(container, field) {
                    k8s_omitempty(item);
                }
            }
            if let Some(context) = object(container, "securityContext") {
                k8s_omitempty(context);
            }
        }
    }
    if let Some(drain) = object(spec, "drain") {
        drop_zero(
            drain,
            &["force", "disableEviction", "skipWaitForDeleteTimeout"],
        );
        if let Some(selector) = object(drain, "podSelector") {
            k8s_omitempty(selector);
        }
    }
}

fn object<'a>(fields: &'a mut Fields, key: &str) -> Option<&'a mut Fields> {
    fields.get_mut(key).and_then(|v| v.as_object_mut())
}

fn objects<'a>(fields: &'a mut Fields, key: &str) -> impl Iterator<Item = &'a mut Fields> {
    fields
        .get_mut(key)
        .and_then(|v| v.as_array_mut())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_object_mut())
}

/// Removes the named fields when they hold `false` or `0` (Go `bool`/`int` with `omitempty`).
fn drop_zero(fields: &mut Fields, keys: &[&str]) {
    for key in keys {
        let zero = match fields.get(*key) {
            Some(serde_json::Value::Bool(b)) => !b,
            Some(serde_json::Value::Number(n)) => n.as_f64() == Some(0.0),
            _ => false,
        };
        if zero {
            fields.remove(*key);
        }
    }
}

/// Removes the named fields when they hold an empty string, list or map (Go `omitempty`).
fn drop_empty(fields: &mut Fields, keys: &[&str]) {
    for key in keys {
        if fields.get(*key).is_some_and(is_empty) {
            fields.remove(*key);
        }
    }
}

fn is_empty(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        serde_json::Value::Null => true,
        _ => false,
    }
}

/// Kubernetes API types: their strings, lists and maps are `omitempty`, their structs are
/// pointers (an empty one stays). Applied through nested objects and lists.
fn k8s_omitempty(fields: &mut Fields) {
    fields.retain(|_, v| {
        !matches!(v, serde_json::Value::Null)
            && !matches!(v, serde_json::Value::String(s) if s.is_empty())
            && !matches!(v, serde_json::Value::Array(a) if a.is_empty())
    });
    if fields.get("matchLabels").is_some_and(is_empty) {
        fields.remove("matchLabels");
    }
    for value in fields.values_mut() {
        match value {
            serde_json::Value::Object(inner) => k8s_omitempty(inner),
            serde_json::Value::Array(items) => {
                for item in items.iter_mut().filter_map(|i| i.as_object_mut()) {
                    k8s_omitempty(item);
                }
            }
            _ => {}
        }
    }
}

/// kubectl's Secret hash (`k8s.io/kubectl/pkg/util/hash.SecretHash`): the first 10 hex digits of
/// SHA-256 over `{"data":…,"immutable":…,"kind":"Secret","name":…,"type":…}`, with `0 1 3 a e`
/// replaced by `g h k m t` so the result never looks like a number.
pub fn secret_hash(secret: &Secret) -> String {
    let mut fields: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    let data: Option<BTreeMap<&String, String>> = secret.data.as_ref().map(|data| {
        use base64::Engine as _;
        data.iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(&v.0)))
            .collect()
    });
    fields.insert("data", serde_json::to_value(data).unwrap_or_default());
    if let Some(immutable) = secret.immutable {
        fields.insert("immutable", immutable.into());
    }
    fields.insert("kind", "Secret".into());
    fields.insert(
        "name",
        secret.metadata.name.clone().unwrap_or_default().into(),
    );
    fields.insert("type", secret.type_.clone().unwrap_or_default().into());
    let encoded = go_json(&serde_json::to_string(&fields).unwrap_or_default());
    let digest = hex(&Sha256::digest(encoded.as_bytes()));
    digest[..10]
        .chars()
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            other => other,
        })
        .collect()
}

/// Go's encoding/json escapes these characters where serde_json writes them as they are.
fn go_json(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// The value at a path of map keys, as wrangler's `data.Object.String` renders it: missing means
/// empty, a list means its first element, everything else as Go's `fmt.Sprint` prints it, trimmed.
fn lookup_string(root: &serde_json::Value, keys: &[&str]) -> String {
    let mut value = root;
    for key in keys {
        match value.as_object().and_then(|map| map.get(*key)) {
            Some(next) => value = next,
            None => return String::new(),
        }
    }
    let single = match value {
        serde_json::Value::Array(items) => match items.first() {
            Some(first) => first,
            None => return String::new(),
        },
        serde_json::Value::Null => return String::new(),
        other => other,
    };
    go_sprint(single).trim().to_owned()
}

/// `fmt.Sprint` of a value decoded from JSON with numbers kept as written.
fn go_sprint(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "<nil>".to_owned(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(go_sprint).collect::<Vec<_>>().join(" ")
            )
        }
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_sprint(v)))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Plan;
    use k8s_openapi::ByteString;
    use serde_json::json;

    // Every expected value below was computed with the Go libraries the Go controller uses
    // (wrangler v3.7.0 `data.Convert`/`Object.String`, `k8s.io/kubectl@v0.36.3/pkg/util/hash`,
    // `crypto/sha256.New224`), not with this code.

    fn secret(
        name: &str,
        type_: &str,
        data: Option<&[(&str, &[u8])]>,
        immutable: Option<bool>,
    ) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: data.map(|d| {
                d.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect()
            }),
            immutable,
            ..Default::default()
        }
    }

    #[test]
    fn version_only() {
        let plan = json!({"metadata": {"name": "p"}, "spec": {}, "status": {"latestVersion": "v1.30.4-k3s1"}});
        assert_eq!(
            plan_hash(&plan, &[]),
            "e0db1470b98f282a3cc19d6029771ac62dc0dd695d8ad86b7e1b480a"
        );
    }

    #[test]
    fn service_account_is_part_of_the_hash() {
        let plan = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "system-upgrade"}, "status": {"latestVersion": "v1.30.4-k3s1"}});
        assert_eq!(
            plan_hash(&plan, &[]),
            "84a12cdc2b2c48b349933f88b746fa9293e33c69422dc153ba58d6ad"
        );
    }

    #[test]
    fn digest_annotation_values_render_like_go() {
        let plan = json!({
            "metadata": {"name": "p", "labels": {"team": "a", "env": "prod"}, "annotations": {
                "upgrade.cattle.io/digest": "spec.upgrade.envs,spec.concurrency,metadata.labels,spec.missing, spec.version,spec.drain.force,spec.upgrade.args,spec.nodeSelector,spec.tolerations"
            }},
            "spec": {
                "concurrency": 2, "version": "v1.2.3+k3s1", "serviceAccountName": "sa",
                "upgrade": {"image": "x", "args": [], "envs": [{"name": "FOO", "value": "bar"}, {"name": "BAZ", "value": "q"}]},
                "drain": {"force": true},
                "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "In", "values": ["a", "b"]}], "matchLabels": {"z": "1", "a": "2"}},
                "tolerations": [{"key": "t", "operator": "Exists", "tolerationSeconds": 300, "value": null}]
            },
            "status": {"latestVersion": "v1.2.3-k3s1"}
        });
        assert_eq!(
            plan_hash(&plan, &[]),
            "6212b32969e471b6b3de1852d5d7b6a441ff96e166e2a5ea495a98f7"
        );
        assert_eq!(
            lookup_string(&plan, &["spec", "upgrade", "envs"]),
            "map[name:FOO value:bar]"
        );
        assert_eq!(
            lookup_string(&plan, &["metadata", "labels"]),
            "map[env:prod team:a]"
        );
        assert_eq!(
            lookup_string(&plan, &["spec", "nodeSelector"]),
            "map[matchExpressions:[map[key:k operator:In values:[a b]]] matchLabels:map[a:2 z:1]]"
        );
        assert_eq!(
            lookup_string(&plan, &["spec", "tolerations"]),
            "map[key:t operator:Exists tolerationSeconds:300 value:<nil>]"
        );
        assert_eq!(lookup_string(&plan, &[" spec", "version"]), "");
        assert_eq!(lookup_string(&plan, &["spec", "upgrade", "args"]), "");
        assert_eq!(
            lookup_string(&plan, &["spec", "upgrade", "envs", "0"]),
            "",
            "lists cannot be indexed"
        );
    }

    #[test]
    fn secrets_hash_like_kubectl() {
        let bionic = secret(
            "bionic",
            "Opaque",
            Some(&[("upgrade.sh", b"#!/bin/sh\necho hi\n"), ("b", b"x")]),
            None,
        );
        let tls = secret(
            "tls-secret",
            "kubernetes.io/tls",
            Some(&[("tls.crt", b"cert"), ("tls.key", b"key")]),
            Some(true),
        );
        let empty = secret("empty", "Opaque", None, None);
        assert_eq!(secret_hash(&bionic), "2bhth87f9d");
        assert_eq!(secret_hash(&tls), "mmkm2mfb95");
        assert_eq!(secret_hash(&empty), "d4htm5cbfk");
        let plan =
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"latestVersion": "v1"}});
        assert_eq!(
            plan_hash(&plan, &[&bionic, &tls, &empty]),
            "dce322898cb6fe1f887550145438c5c3ad9249636c41ee6bac66411b"
        );
    }

    #[test]
    fn digest_can_name_the_status_and_secrets_follow() {
        let s = secret("s", "Opaque", Some(&[("k", b"v")]), Some(false));
        assert_eq!(secret_hash(&s), "g8ff4942g2");
        let plan = json!({
            "metadata": {"name": "p", "annotations": {"upgrade.cattle.io/digest": "status.latestVersion,spec.version"}},
            "spec": {"version": "v9"},
            "status": {"latestVersion": "v9"}
        });
        assert_eq!(
            plan_hash(&plan, &[&s]),
            "3fc774bf59ddbde5e221329a8586debabde8098b9dd7ed343225b540"
        );
    }

    /// Plans as the API server stores them, hashed by a Go program with the Go controller's
    /// types and libraries (tests/testbin/hashvectors): the digest annotation's paths are looked
    /// up in the shape Go's typed structs give the Plan.
    #[test]
    fn hashes_agree_with_the_go_controller_on_stored_plans() {
        #[derive(serde::Deserialize)]
        struct Vector {
            name: String,
            plan: serde_json::Value,
            #[serde(default)]
            secrets: Vec<Secret>,
            version: String,
            hash: String,
        }
        let vectors: Vec<Vector> =
            serde_json::from_str(include_str!("../../tests/vectors/plan-hash.json")).unwrap();
        assert!(vectors.len() >= 9);
        for vector in vectors {
            let mut plan: Plan = serde_json::from_value(vector.plan).unwrap();
            plan.status.get_or_insert_default().latest_version = Some(vector.version);
            let secrets: Vec<&Secret> = plan
                .spec
                .secrets
                .iter()
                .flatten()
                .filter(|s| !s.ignore_updates.unwrap_or(false))
                .filter_map(|s| {
                    vector
                        .secrets
                        .iter()
                        .find(|v| v.metadata.name.as_deref() == Some(s.name.as_str()))
                })
                .collect();
            let shaped = go_shape(&plan);
            assert_eq!(
                plan_hash(&shaped, &secrets),
                vector.hash,
                "{}: {}",
                vector.name,
                serde_json::to_string_pretty(&shaped).unwrap()
            );
        }
    }

    #[test]
    fn the_go_shape_drops_what_go_leaves_out() {
        let plan: Plan = serde_json::from_value(json!({
            "apiVersion": "upgrade.cattle.io/v1", "kind": "Plan", "metadata": {"name": "p"},
            "spec": {"concurrency": 0, "cordon": false, "jobActiveDeadlineSecs": 0, "nodeSelector": {},
                "postCompleteDelay": "5m", "drain": {"force": false, "deleteLocalData": false},
                "upgrade": {"image": "x"}},
            "status": {"nodes": [{"name": "a", "phase": "Upgrading"}]}
        }))
        .unwrap();
        let shaped = go_shape(&plan);
        assert_eq!(shaped.get("kind"), None);
        assert_eq!(shaped["spec"].get("concurrency"), None);
        assert_eq!(shaped["spec"].get("cordon"), None);
        assert_eq!(shaped["spec"]["jobActiveDeadlineSecs"], 0);
        assert_eq!(shaped["spec"]["nodeSelector"], json!({}));
        assert_eq!(shaped["spec"]["postCompleteDelay"], "5m0s");
        assert_eq!(shaped["spec"]["drain"], json!({"deleteLocalData": false}));
        assert_eq!(shaped["status"].get("nodes"), None);
    }

    #[test]
    fn hash_is_56_lowercase_hex() {
        let plan = json!({"status": {"latestVersion": "x"}});
        let hash = plan_hash(&plan, &[]);
        assert_eq!(hash.len(), 56);
        assert!(
            hash.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }
}
