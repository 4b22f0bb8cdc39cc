use super::*;
use serde_json::json;

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef01234567";

fn plan(spec: serde_json::Value) -> Plan {
    serde_json::from_value(json!({
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {
            "name": "p", "namespace": "system-upgrade", "uid": "plan-uid",
            "labels": {"team": "a", "x.cattle.io/y": "no"},
            "annotations": {"note": "yes", "plan.cattle.io/z": "no", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "spec": spec,
        "status": {"latestVersion": "v1.30.4-k3s1", "latestHash": HASH},
    }))
    .unwrap()
}

fn node(name: &str, labels: serde_json::Value) -> Node {
    serde_json::from_value(
        json!({"metadata": {"name": name, "uid": format!("{name}-uid"), "labels": labels}}),
    )
    .unwrap()
}

fn basic() -> serde_json::Value {
    json!({"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {}, "upgrade": {"image": "rancher/k3s-upgrade"}})
}

fn build_json(spec: serde_json::Value, node_labels: serde_json::Value) -> serde_json::Value {
    let node = node("worker-1", node_labels);
    serde_json::to_value(build(&plan(spec), &node, &JobSettings::default())).unwrap()
}

#[test]
fn names_are_shortened_like_wrangler() {
    // Expected values computed with wrangler's name.SafeConcatName.
    assert_eq!(
        safe_concat_name(&["secret", "registries"]),
        "secret-registries"
    );
    assert_eq!(
        safe_concat_name(&["secret", &"s".repeat(70)]),
        "secret-ssssssssssssssssssssssssssssssssssssssssssssssssss-7efea"
    );
    assert_eq!(
        safe_concat_name(&["apply", "a-longer-plan-name", "on", "n", "with", "aaaa"]),
        "apply-a-longer-plan-name-on-n-with-aaaa"
    );
    assert_eq!(
        job_name("k3s-server", "server-1", HASH),
        "apply-k3s-server-on-server-1-with-0123456789abcdef0123456-8464b"
    );
    assert_eq!(
        job_name(
            "p",
            "worker-1",
            "9c4b0c6cbd2e1e0f5b2c2b6a1bb5e3b5b0b6c1f7c1f4b2b5a4a4e3e2e1e0f0"
        ),
        "apply-p-on-worker-1-with-9c4b0c6cbd2e1e0f5b2c2b6a1bb5e3b5-a5d98"
    );
    // The 57th character is '-', so 56 are kept and 6 hex digits added.
    assert_eq!(
        job_name(&"p".repeat(35), "node-1", HASH),
        "apply-ppppppppppppppppppppppppppppppppppp-on-node-1-with-9a6207"
    );
    assert_eq!(
        job_name("k3s-agent", "ip-10-0-0-1", HASH),
        "apply-k3s-agent-on-ip-10-0-0-1-with-0123456789abcdef01234-b6aee"
    );
    for name in [
        job_name("p", "a.example.com", HASH),
        job_name(&"q".repeat(60), "n", HASH),
    ] {
        assert_eq!(name.len(), 63, "{name}");
    }
}

#[test]
fn nodes_sharing_a_first_dns_label_get_different_jobs() {
    let a = job_name("p", "worker-1.rack-a.example", HASH);
    let b = job_name("p", "worker-1.rack-b.example", HASH);
    assert_ne!(a, b);
    assert!(
        a.starts_with("apply-p-on-worker-1-with-") && b.starts_with("apply-p-on-worker-1-with-")
    );
    assert_eq!(
        a,
        job_name("p", "worker-1.rack-a.example", HASH),
        "deterministic"
    );
}

#[test]
fn untagged_images_get_the_version() {
    let cases = [
        ("rancher/k3s-upgrade", "rancher/k3s-upgrade:v1"),
        ("ubuntu", "ubuntu:v1"),
        ("registry:5000/a/b", "registry:5000/a/b:v1"),
        (
            "img.example.com:5000/test/image",
            "img.example.com:5000/test/image:v1",
        ),
        ("alpine:3.18", "alpine:3.18"),
        ("registry:5000/a/b:x", "registry:5000/a/b:x"),
        (
            "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("Not A Reference", "Not A Reference"),
    ];
    for (image, want) in cases {
        assert_eq!(image_with_version(image, "v1"), want, "{image}");
    }
    assert_eq!(
        image_with_version("ubuntu", "bad tag"),
        "ubuntu",
        "an unusable version leaves the image alone"
    );
}

#[test]
fn deadlines_follow_the_go_rules() {
    let settings = |default, max| JobSettings {
        active_deadline_seconds: default,
        active_deadline_seconds_max: max,
        ..JobSettings::default()
    };
    assert_eq!(active_deadline(Some(12345), &settings(600, 0)), Some(12345));
    assert_eq!(active_deadline(None, &settings(300, 0)), Some(300));
    assert_eq!(active_deadline(Some(0), &settings(600, 0)), None);
    assert_eq!(active_deadline(Some(-1), &settings(3600, 0)), Some(3600));
    assert_eq!(active_deadline(Some(600), &settings(600, 300)), Some(300));
    assert_eq!(
        active_deadline(Some(0), &settings(600, 300)),
        Some(300),
        "the max replaces no deadline"
    );
    assert_eq!(active_deadline(None, &settings(0, 0)), None);
    assert_eq!(active_deadline(None, &settings(900, 1200)), Some(900));
}

#[test]
fn ttl_covers_the_post_complete_delay() {
    let mut spec = basic();
    // Without the 10m a K3s node may take to report its version (below).
    spec["convergence"] = json!({"check": "None"});
    assert_eq!(
        ttl_seconds(&plan(spec.clone()), &JobSettings::default()),
        900
    );
    spec["postCompleteDelay"] = json!("2m");
    assert_eq!(
        ttl_seconds(&plan(spec.clone()), &JobSettings::default()),
        900,
        "max(900, 180)"
    );
    let short = JobSettings {
        ttl_seconds_after_finished: 60,
        ..JobSettings::default()
    };
    assert_eq!(ttl_seconds(&plan(spec.clone()), &short), 180);
    spec["postCompleteDelay"] = json!("1h30m");
    assert_eq!(
        ttl_seconds(&plan(spec.clone()), &JobSettings::default()),
        5460
    );
    spec.as_object_mut().unwrap().remove("convergence");
    assert_eq!(
        ttl_seconds(&plan(spec), &JobSettings::default()),
        6060,
        "1h30m, 10m to converge, 60s"
    );
}

#[test]
fn job_metadata() {
    let job = build_json(basic(), json!({"kubernetes.io/hostname": "worker-1"}));
    assert_eq!(job["metadata"]["name"], job_name("p", "worker-1", HASH));
    assert_eq!(job["metadata"]["namespace"], "system-upgrade");
    let labels = json!({
        "upgrade.cattle.io/controller": "system-upgrade-controller",
        "upgrade.cattle.io/exclusive": "false",
        "upgrade.cattle.io/node": "worker-1",
        "upgrade.cattle.io/plan": "p",
        "upgrade.cattle.io/version": "v1.30.4-k3s1",
        "plan.upgrade.cattle.io/p": HASH,
        "team": "a",
    });
    assert_eq!(job["metadata"]["labels"], labels);
    assert_eq!(job["spec"]["template"]["metadata"]["labels"], labels);
    assert_eq!(
        job["spec"]["template"]["metadata"]["annotations"],
        json!({"note": "yes"})
    );
    let annotations = &job["metadata"]["annotations"];
    assert_eq!(annotations["note"], "yes");
    assert_eq!(annotations[ANNOTATION_TTL], "900");
    assert!(annotations.get("plan.cattle.io/z").is_none());
    assert!(
        annotations
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none()
    );
    assert_eq!(
        job["metadata"]["ownerReferences"],
        json!([{"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan", "name": "p", "uid": "plan-uid", "controller": true, "blockOwnerDeletion": false}])
    );
    let spec = &job["spec"];
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["backoffLimit"], 2);
    assert_eq!(spec["activeDeadlineSeconds"], 600);
    assert_eq!(spec["ttlSecondsAfterFinished"], 900);
    assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
}

#[test]
fn pod_spec() {
    let mut spec = basic();
    spec["tolerations"] = json!([{"key": "CriticalAddonsOnly", "operator": "Exists"}]);
    spec["serviceAccountName"] = json!("system-upgrade");
    spec["priorityClassName"] = json!("system-node-critical");
    spec["imagePullSecrets"] = json!([{"name": "reg"}]);
    let job = build_json(spec, json!({"kubernetes.io/hostname": "worker-1-host"}));
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        (
            pod["hostIPC"].clone(),
            pod["hostPID"].clone(),
            pod["hostNetwork"].clone()
        ),
        (json!(true), json!(true), json!(true))
    );
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "system-upgrade");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "reg"}]));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}, {"key": "CriticalAddonsOnly", "operator": "Exists"}])
    );
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["worker-1-host"]}]}]),
        "affinity uses the hostname label"
    );
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!([{"labelSelector": {"matchExpressions": [{"key": "upgrade.cattle.io/plan", "operator": "In", "values": ["p"]}]}, "topologyKey": "kubernetes.io/hostname"}])
    );
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}})
    );
    assert_eq!(
        pod["volumes"][1],
        json!({"name": "pod-info", "downwardAPI": {"defaultMode": 420, "items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}})
    );
    assert!(pod.get("initContainers").is_none());
    let upgrade = &pod["containers"][0];
    assert_eq!(upgrade["name"], "upgrade");
    assert_eq!(upgrade["image"], "rancher/k3s-upgrade:v1.30.4-k3s1");
    assert_eq!(upgrade["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        upgrade["securityContext"],
        json!({"privileged": true, "capabilities": {"add": ["CAP_SYS_BOOT"]}})
    );
    assert_eq!(
        upgrade["volumeMounts"],
        json!([{"name": "host-root", "mountPath": "/host"}, {"name": "pod-info", "mountPath": "/run/system-upgrade/pod", "readOnly": true}])
    );
}

#[test]
fn node_name_is_the_affinity_fallback() {
    let job = build_json(basic(), json!({}));
    let terms = &job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0]["values"],
        json!(["worker-1"])
    );
}

#[test]
fn env_order_and_containers() {
    let mut spec = basic();
    spec["prepare"] = json!({"image": "rancher/k3s-upgrade", "args": ["prepare", "k3s-server"], "envs": [{"name": "P", "value": "1"}],
                             "volumes": [{"name": "data", "source": "/var/lib", "destination": "/data"}, {"name": "extra", "source": "/opt", "destination": "/opt"}]});
    spec["upgrade"] = json!({"image": "alpine:3.18", "command": ["sh"], "args": ["-c", "true"], "envs": [{"name": "SYSTEM_UPGRADE_PLAN_NAME", "value": "override"}, {"name": "U", "value": "2"}],
                             "envFrom": [{"configMapRef": {"name": "cm"}}], "volumes": [{"name": "data", "source": "/var/lib", "destination": "/var/lib"}]});
    let job = build_json(spec, json!({"kubernetes.io/hostname": "worker-1"}));
    let pod = &job["spec"]["template"]["spec"];
    let names = |c: &serde_json::Value| -> Vec<String> {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let prepare = &pod["initContainers"][0];
    assert_eq!(prepare["name"], "prepare");
    assert_eq!(prepare["image"], "rancher/k3s-upgrade:v1.30.4-k3s1");
    assert_eq!(prepare["args"], json!(["prepare", "k3s-server"]));
    assert!(prepare.get("securityContext").is_none());
    assert_eq!(
        names(prepare),
        [
            "SYSTEM_UPGRADE_NODE_NAME",
            "SYSTEM_UPGRADE_POD_NAME",
            "SYSTEM_UPGRADE_POD_UID",
            "P",
            "SYSTEM_UPGRADE_PLAN_NAME",
            "SYSTEM_UPGRADE_PLAN_LATEST_HASH",
            "SYSTEM_UPGRADE_PLAN_LATEST_VERSION"
        ]
    );
    let upgrade = &pod["containers"][0];
    assert_eq!(upgrade["image"], "alpine:3.18");
    assert_eq!(upgrade["command"], json!(["sh"]));
    assert_eq!(
        upgrade["envFrom"],
        json!([{"configMapRef": {"name": "cm"}}])
    );
    assert_eq!(
        names(upgrade),
        [
            "SYSTEM_UPGRADE_NODE_NAME",
            "SYSTEM_UPGRADE_POD_NAME",
            "SYSTEM_UPGRADE_POD_UID",
            "SYSTEM_UPGRADE_PLAN_NAME",
            "U",
            "SYSTEM_UPGRADE_PLAN_NAME",
            "SYSTEM_UPGRADE_PLAN_LATEST_HASH",
            "SYSTEM_UPGRADE_PLAN_LATEST_VERSION"
        ]
    );
    let env = upgrade["env"].as_array().unwrap();
    assert_eq!(
        env[0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env[1]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env[2]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.uid");
    assert_eq!(
        env[5]["value"], "p",
        "the plan variables come last, so they win"
    );
    assert_eq!(env[6]["value"], HASH);
    assert_eq!(env[7]["value"], "v1.30.4-k3s1");
    // Prepare volumes join the pod, once per name.
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["host-root", "pod-info", "data", "extra"]);
    assert_eq!(pod["volumes"][2]["hostPath"], json!({"path": "/var/lib"}));
    assert_eq!(
        prepare["volumeMounts"][2],
        json!({"name": "data", "mountPath": "/data"})
    );
    assert_eq!(
        prepare["volumeMounts"][3],
        json!({"name": "extra", "mountPath": "/opt"})
    );
    assert_eq!(
        upgrade["volumeMounts"][2],
        json!({"name": "data", "mountPath": "/var/lib"})
    );
}

#[test]
fn secrets_are_mounted_in_every_container() {
    let mut spec = basic();
    spec["prepare"] = json!({"image": "x"});
    spec["secrets"] = json!([{"name": "s", "path": "/host/run/x"}, {"name": "t", "path": "rel", "ignoreUpdates": true, "defaultMode": 256}, {"name": "u", "path": ""}]);
    let job = build_json(spec, json!({}));
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][2],
        json!({"name": "secret-s", "secret": {"secretName": "s", "optional": false}})
    );
    assert_eq!(
        pod["volumes"][3],
        json!({"name": "secret-t", "secret": {"secretName": "t", "optional": true, "defaultMode": 256}})
    );
    for container in [&pod["initContainers"][0], &pod["containers"][0]] {
        let mounts = &container["volumeMounts"];
        assert_eq!(
            mounts[2],
            json!({"name": "secret-s", "mountPath": "/host/run/x", "readOnly": true})
        );
        assert_eq!(
            mounts[3],
            json!({"name": "secret-t", "mountPath": "/run/system-upgrade/secrets/rel", "readOnly": true})
        );
        assert_eq!(
            mounts[4],
            json!({"name": "secret-u", "mountPath": "/run/system-upgrade/secrets/u", "readOnly": true})
        );
    }
}

#[test]
fn security_contexts() {
    let mut spec = basic();
    spec["upgrade"]["securityContext"] = json!({"runAsUser": 0});
    let job = build_json(spec.clone(), json!({}));
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["securityContext"],
        json!({"runAsUser": 0}),
        "replaces the default"
    );
    let unprivileged = JobSettings {
        privileged: false,
        ..JobSettings::default()
    };
    let job =
        serde_json::to_value(build(&plan(basic()), &node("n", json!({})), &unprivileged)).unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"],
        false
    );

    spec["prepare"] = json!({"image": "x", "securityContext": {"privileged": true}});
    let windows = build_json(spec.clone(), json!({"kubernetes.io/os": "windows"}));
    let host_process =
        json!({"windowsOptions": {"hostProcess": true, "runAsUserName": "NT AUTHORITY\\SYSTEM"}});
    assert_eq!(
        windows["spec"]["template"]["spec"]["initContainers"][0]["securityContext"], host_process,
        "prepare always runs as a host process"
    );
    assert_eq!(
        windows["spec"]["template"]["spec"]["containers"][0]["securityContext"],
        json!({"runAsUser": 0}),
        "the plan's own context wins"
    );
    spec["upgrade"]
        .as_object_mut()
        .unwrap()
        .remove("securityContext");
    let windows = build_json(spec, json!({"kubernetes.io/os": "windows"}));
    assert_eq!(
        windows["spec"]["template"]["spec"]["containers"][0]["securityContext"],
        host_process
    );
}

#[test]
fn exclusive_plans_repel_each_other() {
    let mut spec = basic();
    spec["exclusive"] = json!(true);
    let job = build_json(spec, json!({}));
    assert_eq!(
        job["metadata"]["labels"]["upgrade.cattle.io/exclusive"],
        "true"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!([{"labelSelector": {"matchExpressions": [{"key": "upgrade.cattle.io/exclusive", "operator": "In", "values": ["true"]}]}, "topologyKey": "kubernetes.io/hostname"}])
    );
}

#[test]
fn template_hash_follows_the_pod_template() {
    let a = build_json(basic(), json!({}));
    let b = build_json(basic(), json!({}));
    assert_eq!(
        a["metadata"]["annotations"][ANNOTATION_TEMPLATE],
        b["metadata"]["annotations"][ANNOTATION_TEMPLATE]
    );
    let mut spec = basic();
    spec["upgrade"]["args"] = json!(["--fixed"]);
    let c = build_json(spec, json!({}));
    assert_ne!(
        a["metadata"]["annotations"][ANNOTATION_TEMPLATE],
        c["metadata"]["annotations"][ANNOTATION_TEMPLATE]
    );
    let mut spec = basic();
    spec["concurrency"] = json!(5);
    let d = build_json(spec, json!({}));
    assert_eq!(
        a["metadata"]["annotations"][ANNOTATION_TEMPLATE],
        d["metadata"]["annotations"][ANNOTATION_TEMPLATE],
        "concurrency is not in the template"
    );
}

#[test]
fn cordon_and_drain_add_a_gate_after_prepare() {
    let names = |job: &serde_json::Value| -> Vec<String> {
        job["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| c["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut spec = basic();
    spec["prepare"] = json!({"image": "rancher/k3s-upgrade", "args": ["prepare", "server-plan"]});
    assert_eq!(names(&build_json(spec.clone(), json!({}))), ["prepare"]);
    spec["cordon"] = json!(true);
    assert_eq!(
        names(&build_json(spec.clone(), json!({}))),
        ["prepare", "cordon"]
    );
    spec["drain"] = json!({"force": true});
    let job = build_json(spec.clone(), json!({}));
    assert_eq!(names(&job), ["prepare", "drain"]);
    let gate = &job["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(
        gate["image"], "rancher/k3s-upgrade:v1.30.4-k3s1",
        "the upgrade image by default"
    );
    assert_eq!(gate["command"][0], "sh");
    assert!(
        gate["command"][2]
            .as_str()
            .unwrap()
            .contains(r"upgrade\.cattle\.io/drained=")
    );
    assert_eq!(
        gate["volumeMounts"],
        json!([{"name": "pod-info", "mountPath": "/run/system-upgrade/pod", "readOnly": true}])
    );
    assert!(
        gate.get("securityContext").is_none(),
        "the gate is not privileged"
    );
    let settings = JobSettings {
        gate_image: Some("busybox:1.37".into()),
        ..JobSettings::default()
    };
    let job = serde_json::to_value(build(&plan(spec), &node("n", json!({})), &settings)).unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["initContainers"][1]["image"],
        "busybox:1.37"
    );
}

/// Runs the gate's own script with `sh` against an annotations file holding `lines` (the
/// downward API's `key="value"` format) and says whether it let the upgrade start within 1.5 s (its first check is at once).
fn gate_opens_with(lines: &str) -> bool {
    let dir = std::env::temp_dir().join(format!(
        "suc-gate-{}-{}",
        std::process::id(),
        hex(lines.as_bytes())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("annotations");
    std::fs::write(&file, lines).unwrap();
    let script = GATE_SCRIPT.replace(
        "/run/system-upgrade/pod/annotations",
        file.to_str().unwrap(),
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("SYSTEM_UPGRADE_NODE_NAME", "n")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let opened = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::fs::remove_dir_all(&dir).unwrap();
    opened
}

#[test]
fn the_gate_opens_on_the_exact_annotation_only() {
    // The drained annotation opens it; look-alikes a Plan's annotations could carry onto the
    // pod keep it closed. (Each case waits in a thread of its own.)
    let cases: [(&'static str, bool); 6] = [
        (
            "note=\"yes\"\nupgrade.cattle.io/drained=\"2026-11-28T00:00:00Z\"\n",
            true,
        ),
        ("upgrade-cattle-io/drained=\"x\"\n", false),
        ("upgradeXcattleXio/drained=\"x\"\n", false),
        ("upgrade.cattle.io/drained-at=\"x\"\n", false),
        ("x.upgrade.cattle.io/drained=\"x\"\n", false),
        ("", false),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(lines, opens)| {
            (
                lines,
                opens,
                std::thread::spawn(move || gate_opens_with(lines)),
            )
        })
        .collect();
    // Every run ends (and kills its shell) before anything is asserted.
    let results: Vec<_> = runs
        .into_iter()
        .map(|(lines, opens, run)| (lines, opens, run.join().unwrap()))
        .collect();
    for (lines, opens, opened) in results {
        assert_eq!(opened, opens, "annotations {lines:?}");
    }
}

/// Plans covering every part of a rendered pod: Secrets, volumes, prepare, the gate, Windows,
/// an exclusive Plan, tolerations and security contexts.
fn rendering_cases() -> Vec<(&'static str, serde_json::Value, serde_json::Value)> {
    let rich = json!({
        "concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {},
        "serviceAccountName": "upgrader", "priorityClassName": "high", "exclusive": true,
        "imagePullSecrets": [{"name": "pull"}],
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "secrets": [{"name": "registries", "path": "/etc/rancher"}, {"name": "proxy", "path": "proxy", "ignoreUpdates": true}],
        "prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "k3s-server"],
                    "volumes": [{"name": "logs", "source": "/var/log", "destination": "/logs"}]},
        "upgrade": {"image": "rancher/k3s-upgrade", "command": ["upgrade"], "envs": [{"name": "A", "value": "b"}],
                    "envFrom": [{"configMapRef": {"name": "env"}}],
                    "volumes": [{"name": "data", "source": "/data", "destination": "/data"}],
                    "securityContext": {"privileged": false}},
        "drain": {"force": true, "timeout": "5m"},
    });
    let mut cordon = basic();
    cordon["cordon"] = json!(true);
    vec![
        ("basic", basic(), json!({})),
        (
            "rich",
            rich.clone(),
            json!({"kubernetes.io/hostname": "w1"}),
        ),
        (
            "cordon on windows",
            cordon,
            json!({"kubernetes.io/os": "windows"}),
        ),
        (
            "rich on windows",
            rich,
            json!({"kubernetes.io/os": "windows"}),
        ),
    ]
}

/// A Job records the digest of its pod template, and a Job whose digest differs from the one the
/// Plan renders now is replaced when its upgrade has not begun. A controller that rendered the
/// same Plan differently after an upgrade would thus restart pending upgrades: these digests
/// change only on purpose, with a note in the README's compatibility section.
#[test]
fn template_digests_of_a_plan_stay_the_same_across_releases() {
    let pinned = [
        ("basic", "b5b009e128597574"),
        ("rich", "f079dcb6a25f4665"),
        ("cordon on windows", "b24090d38c03a7d4"),
        ("rich on windows", "856f80ebabc03c02"),
    ];
    let rendered: Vec<(&str, serde_json::Value)> = rendering_cases()
        .into_iter()
        .map(|(name, spec, labels)| {
            let job = build_json(spec, labels);
            (
                name,
                job["metadata"]["annotations"][ANNOTATION_TEMPLATE].clone(),
            )
        })
        .collect();
    assert_eq!(
        rendered,
        pinned
            .iter()
            .map(|(name, digest)| (*name, json!(digest)))
            .collect::<Vec<_>>()
    );
}
