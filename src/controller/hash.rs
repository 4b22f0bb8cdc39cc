//! `status.latestHash`, byte for byte as the Go controller computes it, so a cluster taken over
//! from it recognises the nodes it already upgraded: SHA-224 over the resolved version, the service
//! account, the values of the fields named in the `upgrade.cattle.io/digest` annotation and the
//! kubectl-style hash of every referenced (not ignored) Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha224, Sha256};

use crate::api::ANNOTATION_DIGEST;

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
