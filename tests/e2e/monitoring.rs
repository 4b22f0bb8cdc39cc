//! `deploy/monitoring/`: every expression of the Grafana dashboard and the PrometheusRule parses
//! as PromQL (Prometheus' own parser, in the test probe), and every metric they select is one
//! the controller exports, with the suffix its type gives it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use system_upgrade_controller::metrics::Metrics;

use std::time::Duration;

use crate::support::{free_port, repo, script, wait};

/// The dashboard's queries, with Grafana's variables replaced by what PromQL accepts.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    // Variables: label_values(SELECTOR, label) queries name a selector too.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"].as_str()
            && let Some(inner) = query.strip_prefix("label_values(")
        {
            queries.push(inner.rsplit_once(',').unwrap().0.to_owned());
        }
    }
    assert!(queries.len() > 10, "{queries:?}");
    queries
        .into_iter()
        .map(|q| {
            q.replace("$__rate_interval", "5m")
                .replace("$namespace", ".*")
                .replace("$plan", ".*")
                .replace("$job", ".*")
        })
        .collect()
}

fn rule_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/monitoring/prometheusrule.yaml")).unwrap();
    let rule = &system_upgrade_controller::yaml::documents(&text).unwrap()[0];
    let queries: Vec<String> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| r["expr"].as_str().unwrap().to_owned())
        .collect();
    let alerts: BTreeSet<String> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    for wanted in [
        "SystemUpgradeRolloutStuck",
        "SystemUpgradeNodeLeftCordoned",
        "SystemUpgradePlanFailed",
        "SystemUpgradeNoLeader",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing from {alerts:?}");
    }
    queries
}

/// The metric families the controller exports, with their types.
fn families() -> BTreeMap<String, String> {
    let metrics = Metrics::new();
    // The per-Plan gauge has series once a Plan is reconciled.
    metrics.plan_nodes("system-upgrade", "p", [0; 12]);
    metrics
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// Whether a selected metric name is a series of an exported family, as its type names them.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.iter().any(|(family, kind)| match kind.as_str() {
        "counter" => name == format!("{family}_total"),
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name == format!("{family}{suffix}")),
        _ => name == family,
    })
}

pub fn dashboards_and_alerts_query_metrics_that_exist() {
    let probe = script("tests/testbin/build-probe.sh", &[])
        .trim()
        .to_owned();
    let families = families();
    let queries: Vec<String> = dashboard_queries()
        .into_iter()
        .chain(rule_queries())
        .collect();
    let mut child = Command::new(&probe)
        .arg("-promql")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(queries.join("\0").as_bytes())
        .unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let answers: Vec<&str> = out.lines().collect();
    assert_eq!(answers.len(), queries.len(), "{out}");
    let mut selected = BTreeSet::new();
    for (query, answer) in queries.iter().zip(answers) {
        let (verdict, rest) = answer.split_once('\t').unwrap();
        assert_eq!(verdict, "ok", "{query}: {rest}");
        assert!(!rest.is_empty(), "{query} selects no metric");
        selected.extend(rest.split(' ').map(str::to_owned));
    }
    for name in &selected {
        assert!(
            exported(name, &families),
            "{name} is queried but not exported; the controller exports {families:?}"
        );
    }
    // The per-Plan gauge's states the queries use are the ones it has.
    for state in ["done", "selected", "applying", "failed", "cordoned"] {
        assert!(
            system_upgrade_controller::metrics::PLAN_NODE_STATES.contains(&state),
            "{state}"
        );
    }
    assert!(selected.contains("suc_plan_nodes") && selected.contains("process_cpu_seconds_total"));
}

/// `--metrics-listen`: `/metrics` (and `/healthz`) over plain HTTP, nothing else.
pub fn metrics_are_served_over_plain_http_when_asked() {
    let (https, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_system-upgrade-controller"))
        .args([
            "run",
            "--webhook-only",
            "--listen",
            &format!("127.0.0.1:{https}"),
            "--metrics-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| {
        Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{http}{path}"))
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let metrics = wait("the plain-HTTP listener", Duration::from_secs(20), || {
        get("/metrics").filter(|m| m.ends_with("200"))
    });
    assert!(metrics.contains("\nsuc_leader 0\n"), "{metrics}");
    assert!(
        metrics.contains("\nprocess_resident_memory_bytes "),
        "{metrics}"
    );
    assert!(get("/healthz").unwrap().ends_with("200"));
    assert!(
        get("/validate").unwrap().ends_with("404"),
        "the webhook is not on this port"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every alert fires where it should and stays quiet where it should not, on recorded series:
/// promtool (Prometheus' own rule engine) checks the PrometheusRule's rules and runs
/// tests/monitoring/alerts-test.yaml on them. Each alert is tested both ways, and links through
/// its `runbook_url` to its section of docs/alerts.md.
pub fn alerts_fire_where_they_should_and_stay_quiet_where_they_should_not() {
    let promtool = script("tests/testbin/build-tool.sh", &["promtool"])
        .trim()
        .to_owned();
    let text = std::fs::read_to_string(repo("deploy/monitoring/prometheusrule.yaml")).unwrap();
    let rule = system_upgrade_controller::yaml::documents(&text)
        .unwrap()
        .remove(0);
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: the rule file is the PrometheusRule's spec, as Prometheus loads it.
    std::fs::write(dir.path().join("rules.yaml"), rule["spec"].to_string()).unwrap();
    let tests_file = repo("tests/monitoring/alerts-test.yaml");
    std::fs::copy(&tests_file, dir.path().join("alerts-test.yaml")).unwrap();
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "alerts-test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let tests =
        system_upgrade_controller::yaml::documents(&std::fs::read_to_string(&tests_file).unwrap())
            .unwrap()
            .remove(0);
    let cases: Vec<(String, bool)> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let fires = c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            (c["alertname"].as_str().unwrap().to_owned(), fires)
        })
        .collect();
    let runbooks = std::fs::read_to_string(repo("docs/alerts.md")).unwrap();
    let alerts: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r.get("alert").is_some())
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        for fires in [true, false] {
            assert!(
                cases.contains(&(name.to_owned(), fires)),
                "{name} has no test where it {}",
                if fires { "fires" } else { "stays quiet" }
            );
        }
        let url = alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        assert!(
            url.ends_with(&format!("/docs/alerts.md#{}", name.to_lowercase())),
            "{name}: runbook_url {url:?}"
        );
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "docs/alerts.md has no section {name}"
        );
    }
}
