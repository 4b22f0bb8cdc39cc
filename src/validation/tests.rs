use super::*;

/// A Plan file from `tests/plans/`, with the `# expect:` and `# warn:` lines at its top.
struct Case {
    name: String,
    plan: serde_json::Value,
    expect: Vec<String>,
    warn: Vec<String>,
}

fn cases(kind: &str) -> Vec<Case> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/plans")
        .join(kind);
    let mut cases: Vec<Case> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let marked = |marker: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(marker))
                    .map(str::to_owned)
                    .collect()
            };
            Case {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                plan: crate::yaml::documents(&text).unwrap().remove(0),
                expect: marked("# expect: "),
                warn: marked("# warn: "),
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(cases.len() > 5, "too few cases in {}", dir.display());
    cases
}

/// Every expected text is found in some message, and every message is expected.
fn assert_matches(case: &str, what: &str, messages: &[String], expected: &[String]) {
    for want in expected {
        assert!(
            messages.iter().any(|m| m.contains(want.as_str())),
            "{case}: no {what} contains {want:?}; got {messages:#?}"
        );
    }
    for message in messages {
        assert!(
            expected.iter().any(|want| message.contains(want.as_str())),
            "{case}: unexpected {what} {message:?}"
        );
    }
}

#[test]
fn invalid_plans_report_every_problem_with_its_field() {
    for case in cases("invalid") {
        assert!(!case.expect.is_empty(), "{}: no # expect: lines", case.name);
        let report = validate_value(&case.plan);
        let messages: Vec<String> = report.problems.iter().map(|p| p.message.clone()).collect();
        assert_matches(&case.name, "problem", &messages, &case.expect);
        for problem in &report.problems {
            // Window problems keep the Go controller's "spec.window is invalid, <detail>" form.
            let named = problem.message.starts_with(&problem.field)
                || (problem.field.starts_with("spec.window.")
                    && problem.message.starts_with("spec.window is invalid, "));
            assert!(named, "{}: {problem:?}", case.name);
        }
    }
}

#[test]
fn valid_plans_pass_with_exactly_the_expected_warnings() {
    for case in cases("valid") {
        let report = validate_value(&case.plan);
        assert!(report.is_valid(), "{}: {}", case.name, report.message());
        assert_matches(&case.name, "warning", &report.warnings, &case.warn);
    }
}

fn plan(spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": "p", "namespace": "system-upgrade"},
        "spec": spec,
    })
}

fn problems(spec: serde_json::Value) -> Vec<String> {
    validate_value(&plan(spec))
        .problems
        .into_iter()
        .map(|p| p.message)
        .collect()
}

fn minimal() -> serde_json::Value {
    serde_json::json!({"version": "v1.30.4+k3s1", "nodeSelector": {}, "upgrade": {"image": "rancher/k3s-upgrade"}})
}

fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut spec = minimal();
    spec[field] = value;
    spec
}

#[test]
fn minimal_plan_is_valid_without_warnings() {
    let report = validate_value(&plan(minimal()));
    assert_eq!(report, Report::default());
}

#[test]
fn messages_name_the_field_and_the_fix() {
    assert_eq!(
        problems(with("version", "v1.20".into())),
        [
            "spec.version: \"v1.20\" is not SemVer (unexpected end of input while parsing minor \
          version number): expected MAJOR.MINOR.PATCH without leading zeros, optionally with \
          -prerelease and +build, e.g. v1.30.4+k3s1"
        ]
    );
    assert_eq!(
        problems(with("concurrency", 0.into())),
        [
            "spec.concurrency: must be at least 1, got 0; it is the number of nodes upgraded at a time"
        ]
    );
    assert_eq!(validate_value(&plan(minimal())).message(), "");
    let report = validate_value(&plan(with("concurrency", (-1).into())));
    assert_eq!(report.problems[0].field, "spec.concurrency");
}

#[test]
fn versions() {
    for ok in [
        "v1.30.4+k3s1",
        "v1.30.4-k3s1",
        "1.2.3-rc.1",
        "v0.0.0",
        "v1.2.3-alpha.1+build.5",
        "bionic",
        "microos",
        "latest",
        "v",
        "V1.2",
        "stable_1",
    ] {
        assert_eq!(
            problems(with("version", ok.into())),
            Vec::<String>::new(),
            "{ok}"
        );
    }
    for bad in [
        "v1.20",
        "v1.2.3.4",
        "v1.02.3",
        "v1",
        "v1.2.3-01",
        "v1.2.3+",
        "1.2.3-",
        ".v1",
        "-v1",
        "v1 2",
        "ü",
    ] {
        assert_eq!(problems(with("version", bad.into())).len(), 1, "{bad}");
    }
}

#[test]
fn plain_numbers_are_semver_only_for_kubernetes_upgrade_images() {
    let plan_of = |image: &str, version: &str| {
        let mut spec = minimal();
        spec["upgrade"]["image"] = image.into();
        spec["version"] = version.into();
        spec
    };
    for (image, version) in [
        ("ubuntu", "22.04"),
        ("debian", "12.8"),
        ("registry.example.com:5000/os/updater", "2024.11"),
        ("alpine", "3"),
    ] {
        assert_eq!(
            problems(plan_of(image, version)),
            Vec::<String>::new(),
            "{image}:{version}"
        );
    }
    for (image, version) in [
        ("rancher/k3s-upgrade", "1.30"),
        ("docker.io/rancher/rke2-upgrade", "1.30.4.1"),
        ("registry.local/mirror/k3s-upgrade:ignored", "1"),
        ("ubuntu", "v22.04"),
    ] {
        let found = problems(plan_of(image, version));
        assert!(
            found.len() == 1 && found[0].contains("is not SemVer"),
            "{image} {version}: {found:?}"
        );
    }
}

#[test]
fn channels() {
    let mut spec = minimal();
    spec.as_object_mut().unwrap().remove("version");
    for ok in [
        "https://update.k3s.io/v1-release/channels/stable",
        "http://10.0.0.1:8080/c",
        "http://localhost/x",
    ] {
        spec["channel"] = ok.into();
        assert_eq!(problems(spec.clone()), Vec::<String>::new(), "{ok}");
    }
    for bad in [
        "update.k3s.io/x",
        "ftp://h/x",
        "https://",
        "/relative",
        "mailto:x@y",
        "file:///etc/passwd",
    ] {
        spec["channel"] = bad.into();
        assert_eq!(problems(spec.clone()).len(), 1, "{bad}");
    }
}

#[test]
fn empty_version_counts_as_unset() {
    let spec = with("version", "".into());
    assert_eq!(problems(spec).len(), 1);
}

#[test]
fn plan_names() {
    let mut value = plan(minimal());
    value["metadata"]["name"] = "a".repeat(63).into();
    assert!(validate_value(&value).is_valid());
    value["metadata"]["name"] = "k3s.server".into();
    assert!(
        validate_value(&value).is_valid(),
        "dots are allowed in label names"
    );
    value["metadata"]["name"] = "a".repeat(64).into();
    let report = validate_value(&value);
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0]
            .message
            .contains("at most 63 characters are allowed, this has 64")
    );
    value["metadata"]["name"] = serde_json::Value::Null;
    value["metadata"]["generateName"] = "a".repeat(58).into();
    assert!(validate_value(&value).is_valid());
    value["metadata"]["generateName"] = "a".repeat(59).into();
    assert_eq!(
        validate_value(&value).problems[0].field,
        "metadata.generateName"
    );
}

#[test]
fn shape_errors_name_the_path() {
    assert_eq!(
        problems(with("concurrency", true.into())),
        [
            "spec.concurrency: invalid type: boolean `true`, expected a number of nodes or a \
             percentage such as \"25%\""
        ]
    );
    assert_eq!(
        problems(with("drain", serde_json::json!({"timeout": 1.5}))),
        [
            "spec.drain.timeout: invalid type: floating point `1.5`, expected an integer number of \
          nanoseconds or a duration string such as 5m"
        ]
    );
    let report = validate_value(&serde_json::json!("not an object"));
    assert_eq!(report.problems[0].field, "object");
}

#[test]
fn drain_timeouts() {
    for ok in [
        serde_json::json!(300_000_000_000i64),
        "5m".into(),
        "1h30m".into(),
        0.into(),
        "0".into(),
    ] {
        assert_eq!(
            problems(with("drain", serde_json::json!({"timeout": ok}))),
            Vec::<String>::new(),
            "{ok}"
        );
    }
    for bad in [
        serde_json::json!(-1),
        "-5m".into(),
        "5".into(),
        "five minutes".into(),
    ] {
        assert_eq!(
            problems(with("drain", serde_json::json!({"timeout": bad}))).len(),
            1,
            "{bad}"
        );
    }
}

#[test]
fn drain_delete_flags_conflict_whatever_their_values() {
    for (a, b) in [(true, true), (false, false), (true, false)] {
        let drain = serde_json::json!({"deleteLocalData": a, "deleteEmptydirData": b});
        assert_eq!(problems(with("drain", drain)).len(), 1);
    }
    assert!(problems(with("drain", serde_json::json!({"deleteLocalData": false}))).is_empty());
}

#[test]
fn selectors() {
    let expressions = |e: serde_json::Value| serde_json::json!({"matchExpressions": [e]});
    for ok in [
        serde_json::json!({"key": "a", "operator": "In", "values": ["x", ""]}),
        serde_json::json!({"key": "example.com/a", "operator": "NotIn", "values": ["x"]}),
        serde_json::json!({"key": "a", "operator": "Exists"}),
        serde_json::json!({"key": "a", "operator": "DoesNotExist", "values": []}),
    ] {
        assert!(
            problems(with("nodeSelector", expressions(ok.clone()))).is_empty(),
            "{ok}"
        );
    }
    for bad in [
        serde_json::json!({"key": "a", "operator": "in", "values": ["x"]}),
        serde_json::json!({"key": "a", "operator": "Gt", "values": ["1"]}),
        serde_json::json!({"key": "a", "operator": "NotIn"}),
        serde_json::json!({"key": "a", "operator": "DoesNotExist", "values": ["x"]}),
        serde_json::json!({"key": "a", "operator": "In", "values": ["-x"]}),
        serde_json::json!({"key": "-a", "operator": "Exists"}),
    ] {
        assert_eq!(
            problems(with("nodeSelector", expressions(bad.clone()))).len(),
            1,
            "{bad}"
        );
    }
    let labels = serde_json::json!({"matchLabels": {"bad key": "x", "ok": "not ok"}});
    assert_eq!(problems(with("nodeSelector", labels)).len(), 2);
}

#[test]
fn tolerations() {
    let check = |t: serde_json::Value| problems(with("tolerations", serde_json::json!([t])));
    assert!(
        check(serde_json::json!({"operator": "Exists"})).is_empty(),
        "tolerate everything"
    );
    assert!(
        check(serde_json::json!({"key": "k", "value": "v", "effect": "NoSchedule"})).is_empty()
    );
    assert!(check(serde_json::json!({"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5})).is_empty());
    assert_eq!(
        check(serde_json::json!({"value": "v"})).len(),
        1,
        "empty key needs Exists"
    );
    assert_eq!(
        check(serde_json::json!({"key": "k", "operator": "Exists", "value": "v"})).len(),
        1
    );
    assert_eq!(
        check(serde_json::json!({"key": "k", "value": "a b"})).len(),
        1
    );
}

#[test]
fn secrets() {
    let check = |s: serde_json::Value| problems(with("secrets", s));
    assert!(check(serde_json::json!([{"name": "a", "path": "rel"}, {"name": "b.c", "path": "/abs", "defaultMode": 511}])).is_empty());
    assert_eq!(
        check(serde_json::json!([{"name": "a", "path": "/x", "defaultMode": 512}])).len(),
        1
    );
    assert_eq!(
        check(serde_json::json!([{"name": "a", "path": "/x:y"}])).len(),
        1
    );
    assert_eq!(
        check(serde_json::json!([{"name": "a"}])),
        ["spec.secrets[0].path: is required"]
    );
}

#[test]
fn volumes() {
    let upgrade = |volumes: serde_json::Value| {
        with(
            "upgrade",
            serde_json::json!({"image": "x", "volumes": volumes}),
        )
    };
    assert!(
        problems(upgrade(
            serde_json::json!([{"name": "a", "source": "/a", "destination": "/b"}])
        ))
        .is_empty()
    );
    for bad in [
        serde_json::json!([{"name": "A", "source": "/a", "destination": "/b"}]),
        serde_json::json!([{"name": "host-root", "source": "/a", "destination": "/b"}]),
        serde_json::json!([{"name": "secret-x", "source": "/a", "destination": "/b"}]),
        serde_json::json!([{"name": "a", "source": "rel", "destination": "/b"}]),
        serde_json::json!([{"name": "a", "source": "/a", "destination": ""}]),
        serde_json::json!([{"name": "a", "source": "/a", "destination": "/b"}, {"name": "a", "source": "/a", "destination": "/c"}]),
    ] {
        assert_eq!(problems(upgrade(bad.clone())).len(), 1, "{bad}");
    }
    let mut spec = upgrade(serde_json::json!([{"name": "a", "source": "/a", "destination": "/b"}]));
    spec["prepare"] = serde_json::json!({"image": "x", "volumes": [{"name": "a", "source": "/a", "destination": "/p"}]});
    assert!(
        problems(spec.clone()).is_empty(),
        "same name and source is shared"
    );
    spec["prepare"]["volumes"][0]["source"] = "/other".into();
    assert_eq!(problems(spec).len(), 1);
}

#[test]
fn env_vars() {
    let upgrade =
        |envs: serde_json::Value| with("upgrade", serde_json::json!({"image": "x", "envs": envs}));
    assert!(problems(upgrade(serde_json::json!([{"name": "A", "value": "1"}]))).is_empty());
    let report = validate_value(&plan(upgrade(
        serde_json::json!([{"name": "1A", "value": "1"}]),
    )));
    assert!(report.is_valid());
    assert_eq!(report.warnings.len(), 1);
    assert!(
        report.warnings[0]
            .starts_with("spec.upgrade.envs[0].name: \"1A\" is accepted only by Kubernetes 1.32")
    );
    let both = serde_json::json!([{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]);
    assert_eq!(
        problems(upgrade(both)),
        ["spec.upgrade.envs[0]: sets both value and valueFrom; keep one"]
    );
}

#[test]
fn post_complete_labels_use_the_plans_version() {
    let mut spec = with(
        "postCompleteLabels",
        serde_json::json!({"example.com/v": "k3s-$(LATEST_VERSION)"}),
    );
    assert!(problems(spec.clone()).is_empty());
    spec["version"] = format!("v1.30.4+{}", "k".repeat(60)).into();
    assert_eq!(problems(spec).len(), 1, "expanded value longer than 63");
}

#[test]
fn other_names() {
    assert_eq!(
        problems(with("serviceAccountName", "System Upgrade".into())).len(),
        1
    );
    assert_eq!(problems(with("priorityClassName", "High".into())).len(), 1);
    assert_eq!(
        problems(with(
            "imagePullSecrets",
            serde_json::json!([{"name": "Reg"}])
        ))
        .len(),
        1
    );
    assert!(problems(with("serviceAccountName", "".into())).is_empty());
}

#[test]
fn windows() {
    let window = |w: serde_json::Value| problems(with("window", w));
    assert!(
        window(serde_json::json!({"days": ["mo"], "startTime": "3pm", "endTime": "03:04pm"}))
            .is_empty()
    );
    assert_eq!(
        window(serde_json::json!({"days": ["MO"], "startTime": "3pm", "endTime": "03:04pm"})),
        ["spec.window is invalid, days[0]: \"MO\" must be written in lowercase (\"mo\")"]
    );
    let all = window(
        serde_json::json!({"startTime": "x", "endTime": "24:00", "timeZone": "Nowhere/City"}),
    );
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(
        all.iter()
            .all(|p| p.starts_with("spec.window is invalid, "))
    );
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "x".repeat(5000);
    let message = bounded(&format!("spec.version: {long:?} is not SemVer; use v1.2.3"));
    assert_eq!(
        message,
        format!(
            "spec.version: \"{}…\" (5000 characters) is not SemVer; use v1.2.3",
            "x".repeat(ECHO_LIMIT)
        )
    );
    // Escapes stay whole, serde's backquotes are cut too, short values are untouched.
    let escaped = bounded(&format!(
        "{:?} and `{}` and \"short\"",
        "\"".repeat(300),
        "y".repeat(300)
    ));
    assert!(
        escaped.starts_with(&format!(
            "\"{}…\" (300 characters)",
            "\\\"".repeat(ECHO_LIMIT)
        )),
        "{escaped}"
    );
    assert!(
        escaped.contains(&format!("`{}…` (300 characters)", "y".repeat(ECHO_LIMIT))),
        "{escaped}"
    );
    assert!(escaped.ends_with(" and \"short\""), "{escaped}");
    // An unclosed quote and a message of many values are bounded as well.
    assert!(bounded(&format!("a \"{long}")).chars().count() < 150);
    let many = bounded(&format!("{:?}", vec!["z".repeat(90); 100]));
    assert!(many.chars().count() <= MESSAGE_LIMIT + 20, "{}", many.len());
    assert!(many.ends_with("… (message cut)"));
    let unquoted = "u".repeat(3000);
    assert_eq!(
        bounded(&unquoted).chars().count(),
        MESSAGE_LIMIT + "… (message cut)".chars().count()
    );
}

#[test]
fn a_flood_of_problems_is_counted_after_fifty() {
    let mut plan = plan(minimal());
    plan["spec"]["secrets"] = serde_json::Value::Array(
        (0..300)
            .map(|i| serde_json::json!({"name": format!("BAD_{i}"), "path": "/x"}))
            .collect(),
    );
    let report = validate_value(&plan);
    assert!(report.problems.len() >= 300, "{}", report.problems.len());
    let message = report.message();
    assert_eq!(
        message.matches("spec.secrets[").count(),
        LISTED_PROBLEMS,
        "{message}"
    );
    assert!(message.ends_with(&format!(
        "; and {} more",
        report.problems.len() - LISTED_PROBLEMS
    )));
}

#[test]
fn resolved_versions_follow_the_version_rules() {
    let spec = |image: &str| -> PlanSpec {
        serde_json::from_value(serde_json::json!({"upgrade": {"image": image}})).unwrap()
    };
    let k3s = spec("rancher/k3s-upgrade");
    assert_eq!(resolved_version_problem(&k3s, "v1.30.4+k3s1"), None);
    let newline = resolved_version_problem(&k3s, "v1.2.3\n").unwrap();
    assert!(
        newline.starts_with("\"v1.2.3\\n\" cannot be used as an image tag"),
        "{newline}"
    );
    let not_semver = resolved_version_problem(&k3s, "1.30").unwrap();
    assert!(not_semver.contains("is not SemVer"), "{not_semver}");
    // Other images' tags need not be SemVer, as for spec.version.
    assert_eq!(resolved_version_problem(&spec("ubuntu"), "22.04"), None);
}

#[test]
fn mount_paths_the_api_server_would_refuse() {
    let upgrade = |volumes: serde_json::Value| {
        with(
            "upgrade",
            serde_json::json!({"image": "x", "volumes": volumes}),
        )
    };
    for (bad, field) in [
        (
            serde_json::json!([{"name": "a", "source": "/a", "destination": "/host"}]),
            "spec.upgrade.volumes[0].destination",
        ),
        (
            serde_json::json!([{"name": "a", "source": "/a", "destination": "/run/system-upgrade/pod/"}]),
            "spec.upgrade.volumes[0].destination",
        ),
        (
            serde_json::json!([{"name": "a", "source": "/a", "destination": "/x"}, {"name": "b", "source": "/b", "destination": "/x"}]),
            "spec.upgrade.volumes[1].destination",
        ),
    ] {
        let report = validate_value(&plan(upgrade(bad.clone())));
        assert_eq!(report.problems.len(), 1, "{bad}: {:?}", report.problems);
        assert_eq!(report.problems[0].field, field, "{bad}");
    }
    // Secrets are mounted in every container: not on the controller's paths, nor on each other,
    // nor under a volume's destination path.
    let mut spec = minimal();
    spec["secrets"] = serde_json::json!([{"name": "a", "path": "/host"}, {"name": "b", "path": "x"},
        {"name": "c", "path": "/run/system-upgrade/secrets/x"}]);
    let report = validate_value(&plan(spec.clone()));
    let fields: Vec<&str> = report.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["spec.secrets[0].path", "spec.secrets[2].path"]);
    spec["secrets"] = serde_json::json!([{"name": "a", "path": "/etc/a"}]);
    spec["prepare"] = serde_json::json!({"image": "x", "volumes": [{"name": "v", "source": "/v", "destination": "/etc/a"}]});
    let report = validate_value(&plan(spec));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].message.contains("Secret \"a\""),
        "{}",
        report.problems[0].message
    );
    // Nested paths are fine.
    assert!(
        problems(upgrade(
            serde_json::json!([{"name": "a", "source": "/a", "destination": "/host/var/lib/x"}])
        ))
        .is_empty()
    );
}

#[test]
fn security_contexts_the_api_server_would_refuse() {
    let upgrade = |context: serde_json::Value| {
        with(
            "upgrade",
            serde_json::json!({"image": "x", "securityContext": context}),
        )
    };
    assert!(
        problems(upgrade(
            serde_json::json!({"privileged": true, "runAsUser": 0})
        ))
        .is_empty()
    );
    assert!(problems(upgrade(serde_json::json!({"allowPrivilegeEscalation": false, "capabilities": {"add": ["NET_ADMIN"]}}))).is_empty());
    assert!(problems(upgrade(serde_json::json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}))).is_empty());
    for (bad, field) in [
        (
            serde_json::json!({"privileged": true, "allowPrivilegeEscalation": false}),
            "spec.upgrade.securityContext.allowPrivilegeEscalation",
        ),
        (
            serde_json::json!({"allowPrivilegeEscalation": false, "capabilities": {"add": ["CAP_SYS_ADMIN"]}}),
            "spec.upgrade.securityContext.allowPrivilegeEscalation",
        ),
        (
            serde_json::json!({"runAsUser": -1}),
            "spec.upgrade.securityContext.runAsUser",
        ),
        (
            serde_json::json!({"runAsGroup": 4_294_967_296i64}),
            "spec.upgrade.securityContext.runAsGroup",
        ),
        (
            serde_json::json!({"seccompProfile": {"type": "Localhost"}}),
            "spec.upgrade.securityContext.seccompProfile.localhostProfile",
        ),
        (
            serde_json::json!({"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "p"}}),
            "spec.upgrade.securityContext.seccompProfile.localhostProfile",
        ),
        (
            serde_json::json!({"appArmorProfile": {"type": "Strict"}}),
            "spec.upgrade.securityContext.appArmorProfile.type",
        ),
    ] {
        let report = validate_value(&plan(upgrade(bad.clone())));
        assert_eq!(report.problems.len(), 1, "{bad}: {:?}", report.problems);
        assert_eq!(report.problems[0].field, field, "{bad}");
    }
    let prepare = with(
        "prepare",
        serde_json::json!({"image": "x", "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}}),
    );
    assert_eq!(problems(prepare).len(), 1);
    let env_from = with(
        "upgrade",
        serde_json::json!({"image": "x", "envFrom": [{"configMapRef": {"name": "Bad_Name"}}]}),
    );
    assert_eq!(problems(env_from).len(), 1);
}

#[test]
fn prometheus_queries_are_parsed() {
    let gate = |query: &str| {
        problems(with(
            "healthGates",
            serde_json::json!({"prometheus": {"url": "http://prometheus:9090", "query": query}}),
        ))
    };
    for ok in [
        "up == 0",
        "ALERTS{alertstate=\"firing\",severity=\"critical\"}",
        "sum by (job) (rate(errors_total[5m])) > 1",
        "kube_node_status_condition{condition=\"Ready\",status=\"true\"} == 0",
    ] {
        assert_eq!(gate(ok), Vec::<String>::new(), "{ok}");
    }
    let cases = [
        (
            "ALERTS{alertstate=\"firing\"",
            "unexpected end of input inside braces at column 7",
        ),
        ("up or $", "unexpected character: '$' at column 7"),
        ("rate(x)", "expected type matrix in call to function 'rate'"),
        ("up ==", "is not PromQL: invalid promql query;"),
        ("1", "returns a scalar, which always holds a value"),
        ("\"down\"", "returns a string"),
    ];
    for (query, expected) in cases {
        let found = gate(query);
        assert_eq!(found.len(), 1, "{query}: {found:?}");
        assert!(found[0].contains(expected), "{query}: {}", found[0]);
        assert!(
            found[0].starts_with("spec.healthGates.prometheus.query: "),
            "{}",
            found[0]
        );
    }
    let long = format!("up{{job=\"{}\"}} == 0", "a".repeat(5000));
    assert!(
        gate(&long)[0].contains("more than 4096"),
        "{:?}",
        gate(&long)
    );
}

#[test]
fn object_gates_compile_their_expressions() {
    let gate = |object: serde_json::Value| {
        problems(with(
            "healthGates",
            serde_json::json!({"objects": [object]}),
        ))
    };
    let ceph = serde_json::json!({"apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
        "namespace": "rook-ceph", "name": "rook-ceph",
        "expression": "object.status.ceph.health == \"HEALTH_OK\""});
    assert_eq!(gate(ceph.clone()), Vec::<String>::new());
    let longhorn = serde_json::json!({"apiVersion": "longhorn.io/v1beta2", "kind": "Volume",
        "namespace": "longhorn-system",
        "expression": "objects.all(v, v.status.robustness == \"healthy\")"});
    assert_eq!(gate(longhorn), Vec::<String>::new());
    let deployment = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "namespace": "shop", "selector": {"matchLabels": {"tier": "web"}},
        "expression": "objects.all(d, d.status.readyReplicas == d.spec.replicas)"});
    assert_eq!(gate(deployment), Vec::<String>::new());

    let mut broken = ceph.clone();
    broken["expression"] = "object.status.".into();
    assert_eq!(
        gate(broken),
        [
            "spec.healthGates.objects[0].expression: \"object.status.\" is not CEL: 1:15: no viable alternative at input '.'"
        ]
    );
    let mut wrong_variable = ceph.clone();
    wrong_variable["expression"] = "objects.all(o, o.ok)".into();
    assert!(gate(wrong_variable)[0].contains("reads `objects`; the gate names one object"));
    let mut both = ceph.clone();
    both["selector"] = serde_json::json!({});
    let found = gate(both);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("spec.healthGates.objects[0].selector: is set with name")),
        "{found:?}"
    );
    let mut bad_kind = ceph.clone();
    bad_kind["kind"] = "cephcluster".into();
    bad_kind["apiVersion"] = "ceph.rook.io/v1/x".into();
    let found = gate(bad_kind);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("spec.healthGates.objects[0].apiVersion:"));
    assert!(found[1].starts_with("spec.healthGates.objects[0].kind:"));
}

#[test]
fn hooks_are_containers_without_host_paths_and_a_paused_wait_needs_an_after_hook() {
    let hook = serde_json::json!({"image": "alpine:3.20", "command": ["true"]});
    assert!(
        problems(with(
            "hooks",
            serde_json::json!({"before": hook, "after": hook, "afterWhenPausedFor": "0s"})
        ))
        .is_empty()
    );
    let lonely = problems(with(
        "hooks",
        serde_json::json!({"before": hook, "afterWhenPausedFor": "1h"}),
    ));
    assert_eq!(lonely.len(), 1, "{lonely:?}");
    assert!(lonely[0].contains("there is no after hook"), "{lonely:?}");
    let negative = problems(with(
        "hooks",
        serde_json::json!({"after": hook, "afterWhenPausedFor": "-1m"}),
    ));
    assert!(negative[0].contains("is negative"), "{negative:?}");
    let env = problems(with(
        "hooks",
        serde_json::json!({"after": {"image": "alpine", "envs": [{"name": "A=B", "value": "y"}]}}),
    ));
    assert!(env[0].starts_with("spec.hooks.after.envs[0]"), "{env:?}");
    let empty = validate_value(&plan(with("hooks", serde_json::json!({}))));
    assert!(empty.problems.is_empty());
    assert!(
        empty.warnings[0].contains("neither before nor after"),
        "{:?}",
        empty.warnings
    );
}
