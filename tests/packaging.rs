//! The committed files that are generated or copied stay in step with their sources.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn committed_crd_matches_the_types() {
    let generated = system_upgrade_controller::api::crd_yaml().unwrap();
    assert!(
        read("deploy/crd.yaml") == generated,
        "deploy/crd.yaml is out of date; regenerate it with: cargo run -- crd > deploy/crd.yaml"
    );
}

#[test]
fn deploy_has_the_webhook_configuration() {
    assert!(
        read("deploy/webhook-config.yaml") == read("webhook-config.yaml"),
        "deploy/webhook-config.yaml differs from webhook-config.yaml; copy it: cp webhook-config.yaml deploy/"
    );
}

#[test]
fn chart_and_kustomization_ship_this_version_and_crd() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = read("charts/system-upgrade-controller/Chart.yaml");
    let chart = &system_upgrade_controller::yaml::documents(&chart).unwrap()[0];
    assert_eq!(chart["appVersion"], version, "Chart.yaml appVersion");
    assert_eq!(chart["version"], version, "Chart.yaml version");
    let kustomization = read("deploy/kustomization.yaml");
    let kustomization = &system_upgrade_controller::yaml::documents(&kustomization).unwrap()[0];
    assert_eq!(
        kustomization["images"][0]["newTag"], version,
        "deploy/kustomization.yaml"
    );
    assert!(
        read("charts/system-upgrade-controller/files/crd.yaml") == read("deploy/crd.yaml"),
        "the chart's CRD differs from deploy/crd.yaml; copy it: cp deploy/crd.yaml charts/system-upgrade-controller/files/"
    );
}

#[test]
fn chart_ships_deploys_alerts_and_dashboard() {
    for file in ["prometheusrule.yaml", "grafana-dashboard.json"] {
        assert!(
            read(&format!("charts/system-upgrade-controller/files/{file}"))
                == read(&format!("deploy/monitoring/{file}")),
            "the chart's {file} differs from deploy/monitoring/'s; copy it: cp deploy/monitoring/{file} charts/system-upgrade-controller/files/"
        );
    }
}

#[test]
fn crd_is_structural_with_the_go_controllers_shape() {
    let crd = system_upgrade_controller::api::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("plans.upgrade.cattle.io")
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<(String, String, i32)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone(), c.priority.unwrap_or(0)))
        .collect();
    assert_eq!(
        columns,
        [
            ("Image".into(), ".spec.upgrade.image".into(), 0),
            ("Channel".into(), ".spec.channel".into(), 0),
            ("Version".into(), ".spec.version".into(), 0),
            ("Latest".into(), ".status.latestVersion".into(), 0),
            ("Progress".into(), ".status.progress".into(), 0),
            (
                "Complete".into(),
                ".status.conditions[?(@.type=='Complete')].status".into(),
                0
            ),
            (
                "Reason".into(),
                ".status.conditions[?(@.type=='Complete')].reason".into(),
                0
            ),
            (
                "Message".into(),
                ".status.conditions[?(@.message!='')].message".into(),
                0
            ),
            ("Applying".into(), ".status.applying".into(), 10),
        ]
    );
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["upgrade"]));
    assert_eq!(
        spec["properties"]["upgrade"]["required"],
        serde_json::json!(["image"])
    );
    assert_eq!(
        spec["properties"]["drain"]["properties"]["timeout"]["x-kubernetes-int-or-string"],
        true
    );
    assert_eq!(
        spec["properties"]["concurrency"]["x-kubernetes-int-or-string"],
        true
    );
    assert_eq!(
        spec["properties"]["window"]["properties"]["days"]["minItems"],
        1
    );
    assert_eq!(
        spec["properties"]["window"]["properties"]["days"]["items"]["enum"]
            .as_array()
            .unwrap()
            .len(),
        28
    );
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    for field in [
        "envs",
        "envFrom",
        "volumes",
        "securityContext",
        "command",
        "args",
    ] {
        assert!(
            spec["properties"]["upgrade"]["properties"]
                .get(field)
                .is_some(),
            "{field}"
        );
    }
    for field in [
        "concurrency",
        "jobActiveDeadlineSecs",
        "nodeSelector",
        "serviceAccountName",
        "channel",
        "version",
        "secrets",
        "tolerations",
        "exclusive",
        "window",
        "prepare",
        "upgrade",
        "cordon",
        "drain",
        "imagePullSecrets",
        "postCompleteDelay",
        "priorityClassName",
        "postCompleteLabels",
    ] {
        assert!(spec["properties"].get(field).is_some(), "spec.{field}");
    }
    // Structural: every node has a type (or is an int-or-string / preserve-unknown node).
    fn check(path: &str, node: &serde_json::Value) {
        let Some(object) = node.as_object() else {
            return;
        };
        let typed = object.contains_key("type")
            || object.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true))
            || object.get("x-kubernetes-preserve-unknown-fields")
                == Some(&serde_json::Value::Bool(true));
        assert!(typed, "untyped schema node at {path}");
        assert!(!object.contains_key("nullable"), "nullable at {path}");
        for (name, child) in object
            .get("properties")
            .and_then(|p| p.as_object())
            .into_iter()
            .flatten()
        {
            check(&format!("{path}.{name}"), child);
        }
        if let Some(items) = object.get("items") {
            check(&format!("{path}[]"), items);
        }
        if let Some(values) = object.get("additionalProperties").filter(|v| v.is_object()) {
            check(&format!("{path}{{}}"), values);
        }
    }
    check("", &schema);
}

/// What GitHub alone runs is checked here as far as it can be: each workflow parses, every
/// action is pinned by a commit (with its version in a comment), permissions start read-only,
/// the release runs the tests first (the same `.ci/run` as pull requests), and every script a
/// step runs exists.
#[test]
fn workflows_pin_their_actions_and_release_after_the_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["release.yml", "test.yml"]);
    let mut workflows = std::collections::BTreeMap::new();
    for name in &names {
        let text = read(&format!(".github/workflows/{name}"));
        let workflow = system_upgrade_controller::yaml::documents(&text).unwrap()[0].clone();
        assert_eq!(
            workflow["permissions"],
            serde_json::json!({"contents": "read"}),
            "{name}: permissions start read-only; jobs ask for more"
        );
        for line in text.lines() {
            let Some(action) = line.trim().trim_start_matches("- ").strip_prefix("uses: ") else {
                continue;
            };
            if action.starts_with("./") {
                continue;
            }
            let (reference, comment) = action.split_once(" # ").unwrap_or((action, ""));
            let (_, commit) = reference.split_once('@').unwrap();
            assert!(
                commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
                "{name}: {action} is not pinned by a commit"
            );
            assert!(
                comment.starts_with('v'),
                "{name}: {action} names no version"
            );
        }
        for line in text.lines() {
            for word in line.split_whitespace() {
                let script = word.trim_matches('"');
                if (script.ends_with(".sh") || script.ends_with(".py")) && script.contains('/') {
                    assert!(
                        Path::new(env!("CARGO_MANIFEST_DIR")).join(script).exists(),
                        "{name} runs {script}, which does not exist"
                    );
                }
            }
        }
        workflows.insert(name.clone(), (text, workflow));
    }
    let (test_text, test) = &workflows["test.yml"];
    assert!(
        test["on"].get("pull_request").is_some(),
        "pull requests are tested"
    );
    assert!(test["on"].get("workflow_call").is_some());
    assert!(test_text.contains("bash .ci/run"));
    let (_, release) = &workflows["release.yml"];
    assert_eq!(
        release["jobs"]["test"]["uses"],
        "./.github/workflows/test.yml"
    );
    let needs = release["jobs"]["release"]["needs"].as_array().unwrap();
    assert!(
        needs.iter().any(|n| n == "test"),
        "the release waits for the tests"
    );
    assert_eq!(
        release["jobs"]["release"]["permissions"]["id-token"],
        "write"
    );
}
