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
