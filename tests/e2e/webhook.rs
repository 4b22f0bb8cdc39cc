//! The CRD, the admission webhooks, their certificates and RBAC, against the real API server.

use std::time::Duration;

use crate::support::{
    Ctx, JOB_SERVICE_ACCOUNT, NAMESPACE, SERVICE_ACCOUNT, Server, client_trusting, path,
    plan_files, repo, wait,
};

const WEBHOOK_DENIED: &str =
    "admission webhook \"mutate.plans.upgrade.cattle.io\" denied the request";

fn delete_all_plans(ctx: &Ctx) {
    ctx.kubectl(&["-n", NAMESPACE, "delete", "plans", "--all", "--wait=true"])
        .expect_ok();
}

fn plan_exists(ctx: &Ctx, name: &str) -> bool {
    let out = ctx.kubectl(&["-n", NAMESPACE, "get", "plan", name]);
    if !out.ok {
        assert!(out.stderr.contains("NotFound"), "{}", out.stderr);
    }
    out.ok
}

pub fn crd_is_accepted_explained_and_printed(ctx: &Ctx) {
    // Leave no webhook of an earlier run (on a reused cluster) in the way.
    ctx.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration,validatingwebhookconfiguration",
        "system-upgrade-controller",
        "--ignore-not-found",
    ])
    .expect_ok();
    ctx.kubectl(&[
        "apply",
        "-f",
        path(&repo("deploy/namespace.yaml")),
        "-f",
        path(&repo("deploy/crd.yaml")),
    ])
    .expect_ok();
    ctx.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/plans.upgrade.cattle.io",
        "--timeout=60s",
    ])
    .expect_ok();
    delete_all_plans(ctx);
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(ctx.client.clone());
    let crd = ctx.block_on(crds.get("plans.upgrade.cattle.io")).unwrap();
    let status = crd.status.unwrap();
    assert_eq!(status.accepted_names.unwrap().kind, "Plan");
    let conditions = status.conditions.unwrap_or_default();
    for kind in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True"),
            "{kind}: {conditions:?}"
        );
    }
    assert!(
        !conditions.iter().any(|c| c.type_ == "NonStructuralSchema"),
        "{conditions:?}"
    );

    let explained = wait(
        "kubectl explain to know Plans",
        Duration::from_secs(30),
        || {
            let out = ctx.kubectl(&["explain", "plan.spec"]);
            out.ok.then_some(out.stdout)
        },
    );
    for field in [
        "concurrency",
        "nodeSelector",
        "upgrade",
        "drain",
        "postCompleteLabels",
        "window",
    ] {
        assert!(
            explained.contains(field),
            "{field} missing from kubectl explain plan.spec:\n{explained}"
        );
    }
    let drain = ctx
        .kubectl(&["explain", "plan.spec.drain"])
        .expect_ok()
        .stdout;
    assert!(
        drain.contains("Drain the node before the upgrade container runs"),
        "{drain}"
    );
    assert!(
        drain.contains("deleteEmptydirData") && drain.contains("podSelector"),
        "{drain}"
    );

    // Printer columns, with a Plan stored directly (no webhook registered yet).
    let server_plan = repo("tests/plans/valid/k3s-server.yaml");
    ctx.kubectl(&["apply", "-f", path(&server_plan)])
        .expect_ok();
    let table = ctx
        .kubectl(&["-n", NAMESPACE, "get", "plans"])
        .expect_ok()
        .stdout;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "IMAGE", "CHANNEL", "VERSION", "LATEST", "PROGRESS", "COMPLETE", "REASON",
            "MESSAGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("server-plan") && table.contains("rancher/k3s-upgrade"),
        "{table}"
    );
    let wide = ctx
        .kubectl(&["-n", NAMESPACE, "get", "plans", "-o", "wide"])
        .expect_ok()
        .stdout;
    assert!(wide.lines().next().unwrap().ends_with("APPLYING"), "{wide}");
    delete_all_plans(ctx);
}

/// The whole of `deploy/` (Deployment, Service, RBAC, webhooks...) passes the API server's own
/// validation, as `kubectl apply -k deploy/` would send it.
pub fn deploy_manifests_are_accepted_by_the_api_server(ctx: &Ctx) {
    ctx.ensure_server();
    let out = ctx
        .kubectl(&["apply", "-k", path(&repo("deploy")), "--dry-run=server"])
        .expect_ok();
    for kind in [
        "deployment.apps/system-upgrade-controller",
        "role.rbac.authorization.k8s.io/system-upgrade-controller",
        "service/system-upgrade-controller",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/system-upgrade-controller",
    ] {
        assert!(out.stdout.contains(kind), "{kind} missing:\n{}", out.stdout);
    }
    // The overlay recipe for users who keep their own settings: the release's manifests with
    // only the settings it changes merged in, and a notifications ConfigMap beside them.
    let overlay = ctx
        .kubectl(&["kustomize", path(&repo("examples/kustomize"))])
        .expect_ok()
        .stdout;
    let env = system_upgrade_controller::yaml::documents(&overlay)
        .unwrap()
        .into_iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "default-controller-env")
        .unwrap();
    assert_eq!(
        env["data"]["SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT"], "3",
        "{env}"
    );
    assert_eq!(
        env["data"]["SYSTEM_UPGRADE_JOB_TTL_SECONDS_AFTER_FINISH"], "900",
        "{env}"
    );
    let out = ctx
        .kubectl(&[
            "apply",
            "-k",
            path(&repo("examples/kustomize")),
            "--dry-run=server",
        ])
        .expect_ok();
    assert!(
        out.stdout
            .contains("configmap/system-upgrade-controller-notifications"),
        "{}",
        out.stdout
    );
}

pub fn rbac_allows_what_the_server_needs_and_no_more(ctx: &Ctx) {
    ctx.ensure_server(); // the namespace, so the test can also run alone
    ctx.kubectl(&["apply", "-f", path(&repo("deploy/rbac.yaml"))])
        .expect_ok();
    let can_as = |account: &str, args: &[&str]| -> bool {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        full.push("--as");
        full.push(account);
        let out = ctx.kubectl(&full);
        assert!(
            out.stdout.trim() == "yes" || out.stdout.trim() == "no",
            "{}{}",
            out.stdout,
            out.stderr
        );
        out.stdout.trim() == "yes"
    };
    let can = |args: &[&str]| can_as(SERVICE_ACCOUNT, args);
    // What the server and the controller do (each is exercised by the suite, running as the
    // ServiceAccount), and then what they must not be able to do.
    let needed: &[&[&str]] = &[
        &["create", "secrets", "-n", NAMESPACE],
        &["get", "secrets", "-n", NAMESPACE],
        &["list", "secrets", "-n", NAMESPACE],
        &["watch", "secrets", "-n", NAMESPACE],
        &[
            "update",
            "secrets/system-upgrade-controller-webhook-ca",
            "-n",
            NAMESPACE,
        ],
        &[
            "get",
            "mutatingwebhookconfigurations/system-upgrade-controller",
        ],
        &[
            "patch",
            "mutatingwebhookconfigurations/system-upgrade-controller",
        ],
        &[
            "get",
            "validatingwebhookconfigurations/system-upgrade-controller",
        ],
        &[
            "patch",
            "validatingwebhookconfigurations/system-upgrade-controller",
        ],
        &["get", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &["list", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &["watch", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        // To remove the retry annotation once acted on.
        &["patch", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &[
            "patch",
            "plans.upgrade.cattle.io",
            "--subresource=status",
            "-n",
            NAMESPACE,
        ],
        &["create", "jobs.batch", "-n", NAMESPACE],
        &["delete", "jobs.batch", "-n", NAMESPACE],
        &["patch", "jobs.batch", "-n", NAMESPACE],
        &["watch", "jobs.batch", "-n", NAMESPACE],
        &["list", "nodes"],
        &["watch", "nodes"],
        &["patch", "nodes"],
        &["get", "namespaces/kube-system"],
        &["list", "pods", "--all-namespaces"],
        &["create", "pods", "--subresource=eviction", "-n", "default"],
        &["delete", "pods", "-n", "default"],
        &["watch", "pods", "-n", NAMESPACE],
        &["patch", "pods", "-n", NAMESPACE],
        &["list", "events", "-n", NAMESPACE],
        &["create", "events.events.k8s.io", "-n", NAMESPACE],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["create", "leases.coordination.k8s.io", "-n", NAMESPACE],
        &[
            "get",
            "leases.coordination.k8s.io/system-upgrade-controller",
            "-n",
            NAMESPACE,
        ],
        &[
            "patch",
            "leases.coordination.k8s.io/system-upgrade-controller",
            "-n",
            NAMESPACE,
        ],
        &[
            "get",
            "customresourcedefinitions.apiextensions.k8s.io/plans.upgrade.cattle.io",
        ],
        &[
            "watch",
            "customresourcedefinitions.apiextensions.k8s.io/plans.upgrade.cattle.io",
        ],
        &[
            "watch",
            "configmaps/system-upgrade-controller-notifications",
            "-n",
            NAMESPACE,
        ],
    ];
    for args in needed {
        assert!(can(args), "the ServiceAccount must be allowed: {args:?}");
    }
    let refused: &[&[&str]] = &[
        &["*", "*"],
        &["*", "*", "-n", NAMESPACE],
        &["list", "secrets", "-n", "kube-system"],
        &["update", "secrets/other", "-n", NAMESPACE],
        &[
            "delete",
            "secrets/system-upgrade-controller-webhook-ca",
            "-n",
            NAMESPACE,
        ],
        &["update", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &["delete", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &["create", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &["list", "plans.upgrade.cattle.io", "-n", "default"],
        &["create", "jobs.batch", "-n", "default"],
        &["patch", "mutatingwebhookconfigurations/someone-elses"],
        &["create", "mutatingwebhookconfigurations"],
        &[
            "delete",
            "validatingwebhookconfigurations/system-upgrade-controller",
        ],
        &["create", "clusterrolebindings"],
        &["update", "customresourcedefinitions"],
        &["watch", "customresourcedefinitions"],
        &["update", "nodes"],
        &["delete", "nodes"],
        &["get", "namespaces/default"],
        &["list", "namespaces"],
        &["patch", "events.events.k8s.io", "-n", "default"],
        &["list", "events", "-n", "default"],
        &["create", "pods", "-n", "kube-system"],
        &["patch", "pods", "-n", "default"],
        &["create", "pods/exec", "-n", "default"],
        &["update", "pods", "-n", NAMESPACE],
        &["impersonate", "users"],
        &[
            "patch",
            "leases.coordination.k8s.io/kube-controller-manager",
            "-n",
            "kube-system",
        ],
        &["delete", "leases.coordination.k8s.io", "-n", NAMESPACE],
        &["escalate", "clusterroles"],
        &["list", "configmaps", "-n", NAMESPACE],
        &["get", "configmaps/other", "-n", NAMESPACE],
        &[
            "update",
            "configmaps/system-upgrade-controller-notifications",
            "-n",
            NAMESPACE,
        ],
    ];
    for args in refused {
        assert!(
            !can(args),
            "the ServiceAccount must not be allowed: {args:?}"
        );
    }

    // The upgrade Jobs' account reads what upgrade images read (the K3s agent Plan's prepare
    // step waits for the server Plan) and can change nothing: no token in an upgrade pod can
    // create Jobs, cordon or evict, read Secrets or touch the webhooks.
    for args in [
        &["get", "plans.upgrade.cattle.io", "-n", NAMESPACE][..],
        &["list", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &["watch", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &["get", "nodes"],
        &["list", "nodes"],
        &["watch", "nodes"],
    ] {
        assert!(
            can_as(JOB_SERVICE_ACCOUNT, args),
            "the Jobs' ServiceAccount must be allowed: {args:?}"
        );
    }
    for args in [
        &["create", "jobs.batch", "-n", NAMESPACE][..],
        &["patch", "nodes"],
        &["update", "nodes"],
        &["create", "pods", "--subresource=eviction", "-n", "default"],
        &["delete", "pods", "-n", "default"],
        &["list", "pods", "--all-namespaces"],
        &["get", "secrets", "-n", NAMESPACE],
        &["create", "secrets", "-n", NAMESPACE],
        &["patch", "plans.upgrade.cattle.io", "-n", NAMESPACE],
        &[
            "patch",
            "plans.upgrade.cattle.io",
            "--subresource=status",
            "-n",
            NAMESPACE,
        ],
        &["list", "plans.upgrade.cattle.io", "-n", "default"],
        &[
            "patch",
            "mutatingwebhookconfigurations/system-upgrade-controller",
        ],
        &[
            "patch",
            "leases.coordination.k8s.io/system-upgrade-controller",
            "-n",
            NAMESPACE,
        ],
        &["create", "events.events.k8s.io", "-n", NAMESPACE],
        &["*", "*"],
    ] {
        assert!(
            !can_as(JOB_SERVICE_ACCOUNT, args),
            "the Jobs' ServiceAccount must not be allowed: {args:?}"
        );
    }
}

pub fn webhooks_are_registered_with_the_servers_ca(ctx: &Ctx) {
    ctx.stop_server();
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "secret",
        "system-upgrade-controller-webhook-ca",
        "--ignore-not-found",
    ])
    .expect_ok();
    // The server runs as our ServiceAccount: its RBAC is enough to bootstrap its certificates.
    let server = ctx.ensure_server();
    let ca = ctx.wait_for_ca_bundles();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let url = ctx.kubectl(&[
            "get",
            kind,
            "system-upgrade-controller",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.url}",
        ]);
        assert!(
            url.expect_ok()
                .stdout
                .starts_with(&format!("https://127.0.0.1:{}/", server.port))
        );
    }
    // The certificate the server presents chains to that CA.
    let response = client_trusting(&ca)
        .get(format!("https://127.0.0.1:{}/readyz", server.port))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("created the webhook CA"),
        "{}",
        server.log_tail()
    );
    assert!(
        log.contains("injected the CA into caBundle"),
        "{}",
        server.log_tail()
    );
}

pub fn invalid_plans_are_refused_with_our_messages(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.wait_for_ca_bundles();
    let files = plan_files("invalid");
    assert!(files.len() >= 30);
    for file in &files {
        let out = ctx.kubectl(&["apply", "-f", path(&file.path)]);
        assert!(!out.ok, "{} was accepted", file.path.display());
        assert!(
            out.stderr.contains(WEBHOOK_DENIED),
            "{}: {}",
            file.path.display(),
            out.stderr
        );
        for expected in &file.expect {
            assert!(
                out.stderr.contains(expected.as_str()),
                "{}: kubectl did not print {expected:?}:\n{}",
                file.path.display(),
                out.stderr
            );
        }
        assert!(!plan_exists(ctx, &file.name), "{} was stored", file.name);
    }
}

pub fn valid_plans_are_stored_with_defaults_and_warnings(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.wait_for_ca_bundles();
    for file in plan_files("valid") {
        let out = ctx.kubectl(&["apply", "-f", path(&file.path)]);
        assert!(out.ok, "{}: {}", file.path.display(), out.stderr);
        let warnings: Vec<&str> = out
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix("Warning: "))
            .collect();
        assert_eq!(
            warnings.len(),
            file.warn.len(),
            "{}: {}",
            file.path.display(),
            out.stderr
        );
        for expected in &file.warn {
            assert!(
                warnings.iter().any(|w| w.contains(expected.as_str())),
                "{}: no warning {expected:?}",
                file.path.display()
            );
        }
        let written: serde_json::Value = system_upgrade_controller::yaml::documents(&file.text)
            .unwrap()
            .remove(0);
        let stored = ctx
            .kubectl(&["-n", NAMESPACE, "get", "plan", &file.name, "-o", "json"])
            .expect_ok()
            .stdout;
        let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
        let concurrency = written["spec"]
            .get("concurrency")
            .cloned()
            .unwrap_or(serde_json::json!(1));
        assert_eq!(stored["spec"]["concurrency"], concurrency, "{}", file.name);
        // Everything else is stored as written.
        let mut expected_spec = written["spec"].clone();
        expected_spec["concurrency"] = concurrency;
        assert_eq!(stored["spec"], expected_spec, "{}", file.name);
    }
    delete_all_plans(ctx);
}

pub fn server_dry_run_reaches_the_webhook_and_stores_nothing(ctx: &Ctx) {
    let server = ctx.ensure_server();
    ctx.wait_for_ca_bundles();
    let patched =
        "suc_admission_requests_total{webhook=\"mutate\",operation=\"CREATE\",result=\"patched\"}";
    let before = server.sample(patched);
    let file = repo("tests/plans/valid/without-concurrency.yaml");
    let out = ctx
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            path(&file),
            "-o",
            "jsonpath={.spec.concurrency}",
        ])
        .expect_ok();
    assert_eq!(out.stdout, "1", "the default is applied in a dry run");
    assert_eq!(
        server.sample(patched),
        before + 1.0,
        "the dry run reached the webhook"
    );
    assert!(!plan_exists(ctx, "without-concurrency"));

    let invalid = repo("tests/plans/invalid/concurrency-zero.yaml");
    let out = ctx.kubectl(&["apply", "--dry-run=server", "-f", path(&invalid)]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("spec.concurrency: must be at least 1, got 0"),
        "{}",
        out.stderr
    );

    let risky = repo("tests/plans/valid/risky-but-legal.yaml");
    let out = ctx
        .kubectl(&["apply", "--dry-run=server", "-f", path(&risky)])
        .expect_ok();
    assert!(
        out.stderr.contains("Warning: spec.drain.force:"),
        "{}",
        out.stderr
    );
    assert!(!plan_exists(ctx, "risky-but-legal"));
}

pub fn updates_are_validated(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.wait_for_ca_bundles();
    ctx.kubectl(&[
        "apply",
        "-f",
        path(&repo("tests/plans/valid/k3s-agent.yaml")),
    ])
    .expect_ok();
    let out = ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "plan",
        "agent-plan",
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":0,"version":"v1.2"}}"#,
    ]);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("spec.concurrency: must be at least 1, got 0"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("spec.version: \"v1.2\" is not SemVer"),
        "{}",
        out.stderr
    );
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "plan",
        "agent-plan",
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":2}}"#,
    ])
    .expect_ok();
    ctx.kubectl(&["-n", NAMESPACE, "label", "plan", "agent-plan", "team=a"])
        .expect_ok();
    let concurrency = ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "plan",
        "agent-plan",
        "-o",
        "jsonpath={.spec.concurrency}",
    ]);
    assert_eq!(concurrency.expect_ok().stdout, "2");
    delete_all_plans(ctx);
}

pub fn plans_stored_while_the_webhook_was_down_stay_editable(ctx: &Ctx) {
    let server = ctx.ensure_server();
    ctx.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration,validatingwebhookconfiguration",
        "system-upgrade-controller",
    ])
    .expect_ok();
    // Without the webhook, the schema alone lets an invalid Plan in.
    ctx.kubectl(&[
        "apply",
        "-f",
        path(&repo("tests/plans/invalid/concurrency-zero.yaml")),
    ])
    .expect_ok();
    ctx.register_webhooks(&format!("https://127.0.0.1:{}", server.port));
    ctx.wait_for_ca_bundles();
    let plan = ["-n", NAMESPACE];
    let labelled = ctx.kubectl(&[
        plan[0],
        plan[1],
        "label",
        "plan",
        "concurrency-zero",
        "note=stored-while-down",
    ]);
    assert!(
        labelled.ok,
        "metadata-only updates must pass: {}",
        labelled.stderr
    );
    let out = ctx.kubectl(&[
        plan[0],
        plan[1],
        "patch",
        "plan",
        "concurrency-zero",
        "--type=merge",
        "-p",
        r#"{"spec":{"version":"v1.30.5+k3s1"}}"#,
    ]);
    assert!(!out.ok, "a spec change is validated as a whole");
    assert!(
        out.stderr
            .contains("spec.concurrency: must be at least 1, got 0"),
        "{}",
        out.stderr
    );
    ctx.kubectl(&[
        plan[0],
        plan[1],
        "patch",
        "plan",
        "concurrency-zero",
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":1}}"#,
    ])
    .expect_ok();
    ctx.kubectl(&[plan[0], plan[1], "delete", "plan", "concurrency-zero"])
        .expect_ok();
}

pub fn metrics_count_the_reviews_the_api_server_sent(ctx: &Ctx) {
    let server = ctx.ensure_server();
    ctx.wait_for_ca_bundles();
    let series = |webhook: &str, result: &str| {
        format!(
            "suc_admission_requests_total{{webhook=\"{webhook}\",operation=\"CREATE\",result=\"{result}\"}}"
        )
    };
    let keys = [
        series("mutate", "denied"),
        series("mutate", "patched"),
        series("mutate", "allowed"),
        series("validate", "allowed"),
        series("validate", "denied"),
    ];
    let before: Vec<f64> = keys.iter().map(|k| server.sample(k)).collect();
    for invalid in ["version-two-parts", "concurrency-zero", "window-bad-zone"] {
        assert!(
            !ctx.kubectl(&[
                "apply",
                "-f",
                path(&repo(&format!("tests/plans/invalid/{invalid}.yaml")))
            ])
            .ok
        );
    }
    for valid in ["without-concurrency", "k3s-agent"] {
        ctx.kubectl(&[
            "apply",
            "-f",
            path(&repo(&format!("tests/plans/valid/{valid}.yaml"))),
        ])
        .expect_ok();
    }
    let after: Vec<f64> = keys.iter().map(|k| server.sample(k)).collect();
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // Denied by the mutating webhook, the invalid Plans never reach the validating one.
    assert_eq!(delta, [3.0, 1.0, 1.0, 2.0, 0.0], "{keys:?}");
    let metrics = server.metrics();
    assert!(
        metrics.contains("suc_admission_duration_seconds_count{webhook=\"validate\"}"),
        "{metrics}"
    );
    delete_all_plans(ctx);
}

pub fn ca_bundle_is_reasserted(ctx: &Ctx) {
    ctx.ensure_server();
    let ca = ctx.wait_for_ca_bundles();
    // The patch's own response shows the removal: a later read races the server's watch,
    // which may already have put the bundle back.
    let patched = ctx
        .kubectl(&[
            "patch",
            "mutatingwebhookconfiguration",
            "system-upgrade-controller",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/webhooks/0/clientConfig/caBundle"}]"#,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
        .expect_ok();
    assert_eq!(patched.stdout.trim(), "", "the caBundle was not removed");
    wait(
        "the caBundle to be restored",
        Duration::from_secs(20),
        || (ctx.ca_bundles()[0].as_deref() == Some(ca.as_str())).then_some(()),
    );
}

pub fn replicas_share_one_ca_that_survives_restarts(ctx: &Ctx) {
    ctx.stop_server();
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "secret",
        "system-upgrade-controller-webhook-ca",
        "--ignore-not-found",
    ])
    .expect_ok();
    // Three replicas start at once and race to create the CA.
    let replicas: Vec<Server> = (0..3)
        .map(|i| Server::spawn(ctx, &format!("replica{i}"), &[]))
        .collect();
    for replica in &replicas {
        replica.wait_ready();
    }
    let ca = ctx.webhook_ca().expect("the CA Secret exists");
    for replica in &replicas {
        let url = format!("https://127.0.0.1:{}/healthz", replica.port);
        let response = client_trusting(&ca).get(url).send();
        assert!(
            response.is_ok(),
            "replica on port {} does not serve from the shared CA",
            replica.port
        );
    }
    let created = replicas
        .iter()
        .filter(|r| {
            std::fs::read_to_string(&r.log)
                .unwrap()
                .contains("created the webhook CA")
        })
        .count();
    assert_eq!(created, 1, "exactly one replica creates the CA");
    drop(replicas);

    // A restart keeps the CA and the caBundle.
    let restarted = Server::start(ctx, "restarted", &[]);
    restarted.wait_ready();
    assert_eq!(ctx.wait_for_ca_bundles(), ca);
    assert_eq!(ctx.webhook_ca().as_deref(), Some(ca.as_str()));
    assert!(
        !std::fs::read_to_string(&restarted.log)
            .unwrap()
            .contains("created the webhook CA")
    );
    ctx.set_server(restarted);
    // And the webhook still works through it.
    let out = ctx.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        path(&repo("tests/plans/invalid/version-two-parts.yaml")),
    ]);
    assert!(
        !out.ok && out.stderr.contains("spec.version: \"v1.20\" is not SemVer"),
        "{}",
        out.stderr
    );
}

/// The Job-shape rules match the API server: for each, the Job this controller would build from
/// a Plan that breaks it (stored without the webhook) is refused by a server-side dry run, and
/// the same Plan put right gives a Job the API server takes.
pub fn job_shapes_the_webhook_refuses_are_those_the_api_server_refuses(ctx: &Ctx) {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Node;
    use system_upgrade_controller::api::Plan;
    use system_upgrade_controller::controller::job::{self, JobSettings};
    ctx.ensure_server();
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "agent-1", "labels": {"kubernetes.io/hostname": "agent-1"}}}))
    .unwrap();
    let jobs: kube::Api<Job> = kube::Api::namespaced(ctx.client.clone(), NAMESPACE);
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let build = |upgrade: serde_json::Value, secrets: serde_json::Value| -> Job {
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shape", "namespace": NAMESPACE, "uid": "00000000-0000-0000-0000-000000000001"},
            "spec": {"concurrency": 1, "version": "v1.30.4", "nodeSelector": {}, "upgrade": upgrade,
                "prepare": {"image": "busybox"}, "secrets": secrets},
            "status": {"latestVersion": "v1.30.4", "latestHash": "0123456789abcdef0123456789abcdef0123456789abcdef01234567"},
        }))
        .unwrap();
        let report = system_upgrade_controller::validation::validate(&plan);
        let mut job = job::build(&plan, &node, &JobSettings::default());
        job.metadata.owner_references = None;
        job.metadata.annotations = Some(
            [(
                "suc-test/problems".to_owned(),
                report.problems.len().to_string(),
            )]
            .into(),
        );
        job
    };
    let cases = [
        (
            serde_json::json!({"image": "busybox", "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}}),
            serde_json::json!([]),
            serde_json::json!({"image": "busybox", "securityContext": {"privileged": true}}),
        ),
        (
            serde_json::json!({"image": "busybox", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"add": ["CAP_SYS_ADMIN"]}}}),
            serde_json::json!([]),
            serde_json::json!({"image": "busybox", "securityContext": {"capabilities": {"add": ["CAP_SYS_ADMIN"]}}}),
        ),
        (
            serde_json::json!({"image": "busybox", "securityContext": {"runAsUser": -1}}),
            serde_json::json!([]),
            serde_json::json!({"image": "busybox", "securityContext": {"runAsUser": 0}}),
        ),
        (
            serde_json::json!({"image": "busybox", "securityContext": {"seccompProfile": {"type": "Localhost"}}}),
            serde_json::json!([]),
            serde_json::json!({"image": "busybox", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}}),
        ),
        (
            serde_json::json!({"image": "busybox", "volumes": [{"name": "a", "source": "/a", "destination": "/host"}]}),
            serde_json::json!([]),
            serde_json::json!({"image": "busybox", "volumes": [{"name": "a", "source": "/a", "destination": "/host/a"}]}),
        ),
        (
            serde_json::json!({"image": "busybox", "volumes": [{"name": "a", "source": "/a", "destination": "/x"}, {"name": "b", "source": "/b", "destination": "/x"}]}),
            serde_json::json!([]),
            serde_json::json!({"image": "busybox", "volumes": [{"name": "a", "source": "/a", "destination": "/x"}, {"name": "b", "source": "/b", "destination": "/y"}]}),
        ),
        (
            serde_json::json!({"image": "busybox"}),
            serde_json::json!([{"name": "s", "path": "/run/system-upgrade/pod"}]),
            serde_json::json!({"image": "busybox"}),
        ),
    ];
    for (bad, secrets, good) in cases {
        let refused = build(bad.clone(), secrets.clone());
        assert_ne!(
            refused.metadata.annotations.as_ref().unwrap()["suc-test/problems"],
            "0",
            "the webhook's rules let {bad} {secrets} through"
        );
        let answer = ctx.block_on(jobs.create(&dry_run, &refused));
        assert!(
            matches!(&answer, Err(kube::Error::Api(s)) if s.code == 422),
            "the API server took the Job of {bad} {secrets}: {answer:?}"
        );
        let right = build(good.clone(), serde_json::json!([]));
        assert_eq!(
            right.metadata.annotations.as_ref().unwrap()["suc-test/problems"],
            "0",
            "{good}"
        );
        ctx.block_on(jobs.create(&dry_run, &right))
            .unwrap_or_else(|e| panic!("the API server refused the Job of {good}: {e}"));
    }
}
