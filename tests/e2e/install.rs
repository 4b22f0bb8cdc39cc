//! What a user installs: the Helm chart against `deploy/`, and the example Plans, all read by the
//! real API server (server-side dry run, so nothing is changed).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::support::{Ctx, NAMESPACE, path, repo, script};

/// helm, built from the Go module proxy the first time.
fn helm() -> String {
    script("tests/testbin/build-tool.sh", &["helm"])
        .trim()
        .to_owned()
}

/// The objects `kubectl apply -k deploy/` applies.
fn deploy_objects() -> BTreeMap<String, Value> {
    // kustomize builds offline: no cluster needed.
    let kustomized = Command::new("kubectl")
        .args(["kustomize", path(&repo("deploy"))])
        .output()
        .unwrap();
    assert!(
        kustomized.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&kustomized.stderr)
    );
    objects(&String::from_utf8(kustomized.stdout).unwrap())
}

/// `helm template` of the chart with extra arguments: (succeeded, stdout, stderr).
fn render(extra: &[&str]) -> (bool, String, String) {
    let chart = repo("charts/system-upgrade-controller");
    let out = Command::new(helm())
        .args(["template", "system-upgrade-controller", path(&chart)])
        .args(["--namespace", NAMESPACE])
        // Offline, helm takes the cluster for Kubernetes 1.20, older than the chart's kubeVersion.
        .args(["--kube-version", "1.36.0"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Objects by "Kind namespace/name".
fn objects(yaml: &str) -> BTreeMap<String, Value> {
    system_upgrade_controller::yaml::documents(yaml)
        .unwrap()
        .into_iter()
        .filter(|o| !o.is_null())
        .map(|o| {
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap()
            );
            (key, o)
        })
        .collect()
}

fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn chart_renders_the_same_objects_as_deploy() {
    let lint = Command::new(helm())
        .args([
            "lint",
            "--strict",
            path(&repo("charts/system-upgrade-controller")),
        ])
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint --strict: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let (ok, chart, stderr) = render(&[]);
    assert!(ok, "helm template failed: {stderr}");
    let mut chart = objects(&chart);
    let mut deploy = deploy_objects();

    // The two deliberate differences: Helm creates the namespace (--create-namespace), and the
    // chart keeps the CRD, with every Plan, when its release is uninstalled.
    let namespace = deploy.remove(&format!("Namespace /{NAMESPACE}"));
    assert!(namespace.is_some(), "deploy/ has no Namespace");
    let crd = chart
        .get_mut("CustomResourceDefinition /plans.upgrade.cattle.io")
        .expect("the chart renders the CRD");
    let annotations = crd["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_eq!(
        annotations,
        Some(serde_json::json!({"helm.sh/resource-policy": "keep"}))
    );

    // Helm's labels on every object, and the pods restarted when the settings change.
    for (key, object) in chart.iter_mut() {
        strip_helm_labels(key, object);
    }
    let pod = &mut chart
        .get_mut("Deployment system-upgrade/system-upgrade-controller")
        .unwrap()["spec"]["template"]["metadata"];
    let annotations = pod.as_object_mut().unwrap().remove("annotations").unwrap();
    assert!(
        annotations["checksum/config"]
            .as_str()
            .is_some_and(|sum| sum.len() == 64),
        "{annotations}"
    );

    let chart_keys: Vec<&String> = chart.keys().collect();
    let deploy_keys: Vec<&String> = deploy.keys().collect();
    assert_eq!(
        chart_keys, deploy_keys,
        "the chart and deploy/ hold different objects"
    );
    for (key, object) in &deploy {
        assert!(
            &chart[key] == object,
            "{key} differs:\nchart:   {}\ndeploy/: {}",
            serde_json::to_string(&chart[key]).unwrap(),
            serde_json::to_string(object).unwrap()
        );
    }
    // Both install the image of this version.
    let image = &deploy["Deployment system-upgrade/system-upgrade-controller"]["spec"]["template"]
        ["spec"]["containers"][0]["image"];
    assert_eq!(
        image,
        &Value::String(format!("system-upgrade-controller:{}", cargo_version()))
    );
}

/// Checks that a chart object carries the labels Helm's conventions ask for, then removes those
/// deploy/ does not have (it has `app.kubernetes.io/name` too).
fn strip_helm_labels(key: &str, object: &mut Value) {
    let labels = object["metadata"]["labels"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("{key} has no labels"));
    assert_eq!(
        labels["app.kubernetes.io/name"], "system-upgrade-controller",
        "{key}"
    );
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{key}");
    assert_eq!(
        labels["app.kubernetes.io/instance"], "system-upgrade-controller",
        "{key}"
    );
    assert_eq!(
        labels["app.kubernetes.io/version"],
        cargo_version(),
        "{key}"
    );
    assert_eq!(
        labels["helm.sh/chart"],
        format!("system-upgrade-controller-{}", cargo_version()),
        "{key}"
    );
    for helm_only in [
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "helm.sh/chart",
    ] {
        labels.remove(helm_only);
    }
}

/// The API server's server-side dry run of these objects, with strict field validation.
fn dry_run<'a>(ctx: &Ctx, objects: impl IntoIterator<Item = &'a Value>) {
    let items: Vec<&Value> = objects.into_iter().collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    ctx.kubectl_with_input(
        &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
        Some(&list),
    )
    .expect_ok();
}

/// The container's value of an environment variable set in the Deployment itself.
fn container_env<'a>(objects: &'a BTreeMap<String, Value>, name: &str) -> Option<&'a Value> {
    objects[&format!("Deployment {NAMESPACE}/system-upgrade-controller")]["spec"]["template"]
        ["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| &e["value"])
}

pub fn chart_values_are_applied_and_checked(ctx: &Ctx) {
    ctx.ensure_server(); // the namespace, the CRD and the webhooks exist
    let (ok, defaults, stderr) = render(&[]);
    assert!(ok, "{stderr}");
    let out = ctx
        .kubectl_with_input(&["apply", "--dry-run=server", "-f", "-"], Some(&defaults))
        .expect_ok();
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/plans.upgrade.cattle.io",
        "deployment.apps/system-upgrade-controller",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/system-upgrade-controller",
        "clusterrolebinding.rbac.authorization.k8s.io/system-upgrade",
    ] {
        assert!(
            out.stdout.contains(object),
            "{object} missing:\n{}",
            out.stdout
        );
    }

    // Values a single-server homelab sets: one replica without leader election, its own
    // registry, node placement, settings and a ServiceMonitor.
    let (ok, custom, stderr) = render(&[
        "--set",
        "replicas=1,leaderElection=false,image.repository=registry.local/suc,image.tag=v9",
        "--set",
        "nodeSelector.kubernetes\\.io/arch=arm64,env.SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT=3",
        "--set",
        "monitoring.serviceMonitor.enabled=true,webhook.timeoutSeconds=10,crds.keep=false",
    ]);
    assert!(ok, "{stderr}");
    let objects = objects(&custom);
    let deployment = &objects["Deployment system-upgrade/system-upgrade-controller"]["spec"];
    assert_eq!(deployment["replicas"], 1);
    let pod = &deployment["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "registry.local/suc:v9");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "arm64");
    assert_eq!(
        container_env(&objects, "SYSTEM_UPGRADE_CONTROLLER_LEADER_ELECT"),
        Some(&Value::from("false"))
    );
    assert_eq!(
        objects["ConfigMap system-upgrade/default-controller-env"]["data"]["SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT"],
        "3"
    );
    assert_eq!(
        objects["ValidatingWebhookConfiguration /system-upgrade-controller"]["webhooks"][0]["timeoutSeconds"],
        10
    );
    assert!(
        objects["CustomResourceDefinition /plans.upgrade.cattle.io"]["metadata"]
            .get("annotations")
            .is_none()
    );
    // One replica gets no PodDisruptionBudget: minAvailable 1 would block every drain of its node.
    assert!(
        !objects.contains_key("PodDisruptionBudget system-upgrade/system-upgrade-controller"),
        "a single replica got a PodDisruptionBudget"
    );
    let monitor = &objects["ServiceMonitor system-upgrade/system-upgrade-controller"];
    assert_eq!(
        monitor["spec"]["endpoints"][0]["tlsConfig"]["serverName"],
        "system-upgrade-controller.system-upgrade.svc"
    );
    // The API server takes all of it but the ServiceMonitor, whose CRD this cluster lacks.
    dry_run(
        ctx,
        objects
            .iter()
            .filter(|(key, _)| !key.starts_with("ServiceMonitor "))
            .map(|(_, o)| o),
    );

    // values.schema.json refuses wrong values, naming where.
    for (bad, said) in [
        ("replicas=two", "at '/replicas': got string, want integer"),
        (
            "webhook.failurePolicy=Sometimes",
            "at '/webhook/failurePolicy'",
        ),
        ("imagee.tag=x", "additional properties 'imagee' not allowed"),
        (
            "networkPolicy.apiServerCIDRs={10.0.0.1}",
            "at '/networkPolicy/apiServerCIDRs/0'",
        ),
    ] {
        let (ok, _, stderr) = render(&["--set", bad]);
        assert!(!ok && stderr.contains(said), "{bad}: {stderr}");
    }
    // cert-manager's certificate through extraEnv, extraVolumes and extraVolumeMounts, a
    // ServiceAccount of the user's, and the pods' securityContext as given.
    let (ok, extra, stderr) = render(&[
        "--set",
        "extraEnv[0].name=SYSTEM_UPGRADE_CERT_DIR,extraEnv[0].value=/certs",
        "--set",
        "extraVolumes[0].name=certs,extraVolumes[0].secret.secretName=suc-tls",
        "--set",
        "extraVolumeMounts[0].name=certs,extraVolumeMounts[0].mountPath=/certs",
        "--set",
        "serviceAccount.create=false,serviceAccount.name=mine,podSecurityContext.runAsUser=1000",
    ]);
    assert!(ok, "{stderr}");
    let extra = self::objects(&extra);
    assert_eq!(
        container_env(&extra, "SYSTEM_UPGRADE_CERT_DIR"),
        Some(&Value::from("/certs"))
    );
    let pod =
        &extra["Deployment system-upgrade/system-upgrade-controller"]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "mine");
    assert_eq!(pod["securityContext"]["runAsUser"], 1000);
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "suc-tls")
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/certs")
    );
    assert!(!extra.contains_key("ServiceAccount system-upgrade/system-upgrade-controller"));
    assert_eq!(
        extra["RoleBinding system-upgrade/system-upgrade-controller"]["subjects"][0]["name"],
        "mine"
    );

    // Notifications: none by default; set, the ConfigMap the controller reads, which `check`
    // accepts and the API server takes.
    assert!(
        !self::objects(&defaults)
            .contains_key("ConfigMap system-upgrade/system-upgrade-controller-notifications")
    );
    let (ok, notifying, stderr) = render(&[
        "--set",
        "notifications.cluster=home,notifications.receivers[0].name=chat,notifications.receivers[0].type=discord",
        "--set",
        "notifications.receivers[0].urlFrom.secret=upgrade-chat,notifications.receivers[0].urlFrom.key=url",
    ]);
    assert!(ok, "{stderr}");
    let map = self::objects(&notifying)
        ["ConfigMap system-upgrade/system-upgrade-controller-notifications"]
        .clone();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_string(&map).unwrap()).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_system-upgrade-controller"))
        .args(["check", "-f", path(file.path())])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && report.contains(": valid (1 receiver(s))"),
        "{report}"
    );
    dry_run(ctx, [&map]);

    // The NetworkPolicy: refused without the API server's addresses, else only those and the
    // monitoring namespace reach port 8443, and the API server accepts it; deploy/'s example too.
    let (ok, _, stderr) = render(&["--set", "networkPolicy.enabled=true"]);
    assert!(!ok);
    assert!(
        stderr.contains("networkPolicy.apiServerCIDRs is empty"),
        "{stderr}"
    );
    let (ok, fenced, stderr) = render(&[
        "--set",
        "networkPolicy.enabled=true,networkPolicy.apiServerCIDRs={10.0.0.1/32,10.42.0.0/32}",
    ]);
    assert!(ok, "{stderr}");
    let policy =
        self::objects(&fenced)["NetworkPolicy system-upgrade/system-upgrade-controller"].clone();
    assert_eq!(
        policy["spec"]["ingress"],
        serde_json::json!([{
            "ports": [{"port": 8443, "protocol": "TCP"}],
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                {"ipBlock": {"cidr": "10.0.0.1/32"}},
                {"ipBlock": {"cidr": "10.42.0.0/32"}},
            ],
        }])
    );
    ctx.kubectl_with_input(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&serde_json::to_string(&policy).unwrap()),
    )
    .expect_ok();
    ctx.kubectl(&[
        "apply",
        "--dry-run=server",
        "-n",
        NAMESPACE,
        "-f",
        path(&repo("deploy/networkpolicy.yaml")),
    ])
    .expect_ok();

    // Two replicas that would each run a controller are refused, with the fix.
    let (ok, _, stderr) = render(&["--set", "leaderElection=false"]);
    assert!(!ok);
    assert!(
        stderr.contains("set replicas: 1 or leaderElection: true"),
        "{stderr}"
    );
}

pub fn monitoring_objects_fit_prometheus_operators_schemas(ctx: &Ctx) {
    ctx.ensure_server(); // the namespace exists
    // prometheus-operator's own CRDs, so the API server checks ServiceMonitors and PrometheusRules
    // against their schemas (strict field validation: a misspelt field is refused).
    let crds = script("tests/testbin/monitoring-crds.sh", &[])
        .trim()
        .to_owned();
    for kind in ["servicemonitors", "prometheusrules"] {
        let file = format!("{crds}/monitoring.coreos.com_{kind}.yaml");
        ctx.kubectl(&["apply", "--server-side", "-f", &file])
            .expect_ok();
        let crd = format!("crd/{kind}.monitoring.coreos.com");
        ctx.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", &crd])
            .expect_ok();
    }

    // deploy/monitoring/ as docs/metrics.md applies it.
    for file in ["servicemonitor.yaml", "prometheusrule.yaml"] {
        let file = repo(&format!("deploy/monitoring/{file}"));
        ctx.kubectl(&[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            path(&file),
        ])
        .expect_ok();
    }
    let deploy_rule = &system_upgrade_controller::yaml::documents(
        &std::fs::read_to_string(repo("deploy/monitoring/prometheusrule.yaml")).unwrap(),
    )
    .unwrap()[0];
    let deploy_dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();

    // The chart with every monitoring object, scraped over HTTPS with the controller's CA.
    let (ok, https, stderr) = render(&[
        "--set",
        "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
    ]);
    assert!(ok, "{stderr}");
    let https = objects(&https);
    let endpoint = &https[&format!("ServiceMonitor {NAMESPACE}/system-upgrade-controller")]["spec"]
        ["endpoints"][0];
    assert_eq!(endpoint["port"], "https");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(
        endpoint["tlsConfig"]["ca"]["secret"]["name"],
        "system-upgrade-controller-webhook-ca"
    );
    assert_eq!(container_env(&https, "SYSTEM_UPGRADE_METRICS_LISTEN"), None);
    let rule = &https[&format!("PrometheusRule {NAMESPACE}/system-upgrade-controller")];
    assert_eq!(
        rule["spec"], deploy_rule["spec"],
        "the chart's alerts differ from deploy/'s"
    );
    // The labels the common Prometheus installs select on, set the same way as in deploy/.
    let deploy_monitor = &system_upgrade_controller::yaml::documents(
        &std::fs::read_to_string(repo("deploy/monitoring/servicemonitor.yaml")).unwrap(),
    )
    .unwrap()[0];
    let monitor = &https[&format!("ServiceMonitor {NAMESPACE}/system-upgrade-controller")];
    for (chart, deploy) in [(rule, deploy_rule), (monitor, deploy_monitor)] {
        assert_eq!(
            chart["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        let mut chart = chart.clone();
        strip_helm_labels("a monitoring object", &mut chart);
        assert_eq!(
            chart["metadata"]["labels"], deploy["metadata"]["labels"],
            "the chart's labels differ from deploy/'s"
        );
    }
    let dashboard = &https[&format!("ConfigMap {NAMESPACE}/system-upgrade-controller-dashboard")];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        dashboard["data"]["system-upgrade-controller.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        shipped, deploy_dashboard,
        "the chart's dashboard differs from deploy/'s"
    );
    dry_run(ctx, https.values());

    // With a plain-HTTP metrics port: the controller is told to listen there, the pod and the
    // Service name the port, the ServiceMonitor scrapes it without TLS, and the NetworkPolicy lets
    // only the monitoring namespace reach it.
    let (ok, plain, stderr) = render(&[
        "--set",
        "monitoring.metricsPort=8080,monitoring.serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true,networkPolicy.apiServerCIDRs={10.0.0.1/32}",
    ]);
    assert!(ok, "{stderr}");
    let plain = objects(&plain);
    assert_eq!(
        container_env(&plain, "SYSTEM_UPGRADE_METRICS_LISTEN"),
        Some(&Value::from("0.0.0.0:8080"))
    );
    let ports = &plain[&format!("Deployment {NAMESPACE}/system-upgrade-controller")]["spec"]["template"]
        ["spec"]["containers"][0]["ports"];
    assert!(
        ports.as_array().unwrap().contains(
            &serde_json::json!({"name": "metrics", "containerPort": 8080, "protocol": "TCP"})
        ),
        "{ports}"
    );
    let service =
        &plain[&format!("Service {NAMESPACE}/system-upgrade-controller")]["spec"]["ports"];
    assert!(
        service.as_array().unwrap().contains(
            &serde_json::json!({"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"})
        ),
        "{service}"
    );
    let endpoint = &plain[&format!("ServiceMonitor {NAMESPACE}/system-upgrade-controller")]["spec"]
        ["endpoints"];
    assert_eq!(
        endpoint,
        &serde_json::json!([{"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "30s"}])
    );
    let ingress =
        &plain[&format!("NetworkPolicy {NAMESPACE}/system-upgrade-controller")]["spec"]["ingress"];
    assert_eq!(
        ingress[1],
        serde_json::json!({
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        })
    );
    dry_run(ctx, plain.values());
}

pub fn examples_are_checked_and_accepted_by_the_api_server(ctx: &Ctx) {
    ctx.ensure_server(); // the webhooks answer the dry runs
    let mut files: Vec<_> = std::fs::read_dir(repo("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut plans = 0;
    for file in &files {
        let check = Command::new(env!("CARGO_BIN_EXE_system-upgrade-controller"))
            .args(["check", "-f", path(file)])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "{}: {report}", file.display());
        plans += report.matches("\": valid\n").count();
        let out = ctx.kubectl(&["apply", "--dry-run=server", "-f", path(file)]);
        if !out.ok {
            // The test bed's nodes run v1.30.4+k3s1: a pinned version two minors up is refused
            // by the version rules, naming the chain to follow, and nothing else is.
            assert!(
                out.stderr.contains("runs v1.30.4+k3s1, and ")
                    && out
                        .stderr
                        .contains("skips minor versions: upgrade through v1.31, then"),
                "{}: {}",
                file.display(),
                out.stderr
            );
            continue;
        }
        assert!(
            out.stdout.contains("plan.upgrade.cattle.io/")
                || out
                    .stdout
                    .contains("configmap/system-upgrade-controller-notifications"),
            "{}: {}",
            file.display(),
            out.stdout
        );
        // Our webhook saw them: it warns about force-deleting unmanaged pods in a drain.
        if std::fs::read_to_string(file)
            .unwrap()
            .contains("force: true")
        {
            assert!(
                out.stderr.contains("spec.drain.force"),
                "{}: no warning from the webhook: {}",
                file.display(),
                out.stderr
            );
        }
    }
    assert!(plans >= 7, "only {plans} Plans in examples/");
    let stored = ctx
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "plan",
            "apt-upgrade",
            "--ignore-not-found",
            "-o",
            "name",
        ])
        .expect_ok();
    assert_eq!(stored.stdout.trim(), "", "a dry run stored a Plan");
}

pub fn release_manifests_install_the_tagged_image(ctx: &Ctx) {
    ctx.ensure_server();
    let out_dir = tempfile::tempdir().unwrap();
    script(
        "image/manifests.sh",
        &["registry.example/suc", "9.8.7", path(out_dir.path())],
    );
    let manifest = out_dir.path().join("system-upgrade-controller.yaml");
    let objects = objects(&std::fs::read_to_string(&manifest).unwrap());
    let deployment = &objects["Deployment system-upgrade/system-upgrade-controller"];
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/suc:9.8.7"
    );
    // Everything deploy/ holds, no more.
    let deploy = deploy_objects();
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        deploy.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read(out_dir.path().join("crd.yaml")).unwrap(),
        std::fs::read(repo("deploy/crd.yaml")).unwrap()
    );
    ctx.kubectl(&["apply", "--dry-run=server", "-f", path(&manifest)])
        .expect_ok();

    // The release's chart (image/chart.sh): the published image and the repository's runbook
    // links set, checked by rendering the package.
    let helm = helm();
    let package = script(
        "image/chart.sh",
        &[
            &helm,
            "registry.example/suc",
            "9.8.7",
            "example/system-upgrade-controller",
            path(out_dir.path()),
        ],
    );
    let (ok, rendered, stderr) = {
        let out = Command::new(&helm)
            .args(["template", "system-upgrade-controller", package.trim()])
            .args(["--namespace", NAMESPACE, "--kube-version", "1.36.0"])
            .args(["--set", "monitoring.prometheusRule.enabled=true"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    assert!(ok, "{stderr}");
    let chart = self::objects(&rendered);
    assert_eq!(
        chart["Deployment system-upgrade/system-upgrade-controller"]["spec"]["template"]["spec"]["containers"]
            [0]["image"],
        "registry.example/suc:9.8.7"
    );
    assert!(
        rendered.contains("github.com/example/system-upgrade-controller/blob/main/docs/alerts.md#")
            && !rendered.contains("OWNER"),
        "runbook links"
    );
}
