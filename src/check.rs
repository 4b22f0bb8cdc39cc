//! `system-upgrade-controller check -f FILE...`: the webhook's rules, offline, for GitOps
//! pipelines. Documents that are not Plans are skipped (but for the notifications' ConfigMap,
//! checked as the controller reads it); every problem of every Plan is printed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::api::GROUP;
use crate::validation;

/// The result of checking files: the text to print and whether everything was valid.
pub struct Outcome {
    pub output: String,
    pub valid: bool,
}

/// Checks every Plan in the given files (`-` is standard input), for a controller serving the
/// Plans of namespace `served`.
pub fn run(files: &[impl AsRef<Path>], served: &str) -> Outcome {
    let mut output = String::new();
    let mut valid = true;
    let mut plans = 0;
    // Each Plan's dependsOn, by namespace, for cycles that span files.
    let mut order: BTreeMap<String, BTreeMap<String, (String, Vec<String>)>> = BTreeMap::new();
    for file in files {
        let file = file.as_ref();
        let name = file.display().to_string();
        let text = read(file);
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                output.push_str(&format!("{name}: cannot read: {e}\n"));
                valid = false;
                continue;
            }
        };
        let (report, count) = check_text(&name, &text, served);
        output.push_str(&report.0);
        valid &= report.1;
        plans += count;
        for (namespace, plan, depends_on) in depends_on(&text, served) {
            let graph = order.entry(namespace).or_default();
            graph.insert(plan, (name.clone(), depends_on));
        }
    }
    for graph in order.values() {
        let edges: BTreeMap<String, Vec<String>> = graph
            .iter()
            .map(|(plan, (_, deps))| (plan.clone(), deps.clone()))
            .collect();
        for (plan, (file, _)) in graph {
            if let Some(cycle) = validation::order::cycle(plan, &edges) {
                let message = validation::order::cycle_message(&cycle);
                output.push_str(&format!("{file}: Plan {plan:?}: error: {message}\n"));
                valid = false;
            }
        }
    }
    let verdict = if valid {
        "all valid"
    } else {
        "invalid Plans found"
    };
    output.push_str(&format!("{plans} Plan(s) checked: {verdict}\n"));
    Outcome { output, valid }
}

/// The Plans of a file's text that name `spec.dependsOn`: namespace (`served` when none),
/// name and the Plans it waits for.
fn depends_on(text: &str, served: &str) -> Vec<(String, String, Vec<String>)> {
    let documents = crate::yaml::documents(text).unwrap_or_default();
    documents
        .iter()
        .filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some("Plan"))
        .filter_map(|d| {
            let names = d.pointer("/spec/dependsOn")?.as_array()?;
            let text = |pointer: &str| {
                d.pointer(pointer)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            Some((
                text("/metadata/namespace").unwrap_or_else(|| served.to_owned()),
                text("/metadata/name")?,
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
            ))
        })
        .collect()
}

/// A file's text (`-` is standard input), up to [`MAX_FILE`] bytes.
pub fn read(file: &Path) -> std::io::Result<String> {
    if file.as_os_str() == "-" {
        read_bounded(std::io::stdin())
    } else {
        std::fs::File::open(file).and_then(read_bounded)
    }
}

/// Largest file read: a Plan is at most 1.5 MiB once stored, and reading YAML takes several
/// times its size in memory.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Reads a whole file of at most [`MAX_FILE`] bytes, without reading more of a larger one.
fn read_bounded(input: impl Read) -> std::io::Result<String> {
    let mut text = String::new();
    input.take(MAX_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "it is larger than {} MiB; split it into smaller files",
            MAX_FILE / 1024 / 1024
        )));
    }
    Ok(text)
}

/// Checks one file's text: (printed lines, valid) and the number of Plans in it.
pub fn check_text(name: &str, text: &str, served: &str) -> ((String, bool), usize) {
    let documents = match crate::yaml::documents(text) {
        Ok(documents) => documents,
        Err(e) => return ((format!("{name}: {e}\n"), false), 0),
    };
    let mut output = String::new();
    let mut valid = true;
    let mut plans = 0;
    for (index, document) in documents.iter().enumerate() {
        let api_version = document
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = document
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if kind == "ConfigMap" && api_version == "v1" {
            let ok = check_notifications(
                &mut output,
                &format!("{name}: document {}", index + 1),
                document,
            );
            valid &= ok;
            continue;
        }
        if kind != "Plan" || api_version.split('/').next() != Some(GROUP) {
            continue;
        }
        plans += 1;
        let plan_name = document
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("(unnamed)");
        let place = format!("{name}: document {}: Plan {plan_name:?}", index + 1);
        if api_version != format!("{GROUP}/v1") {
            output.push_str(&format!(
                "{place}: apiVersion: {api_version:?} is not served; use {GROUP}/v1\n"
            ));
            valid = false;
            continue;
        }
        let mut report = validation::validate_value(document);
        let namespace = document
            .pointer("/metadata/namespace")
            .and_then(|v| v.as_str());
        report
            .warnings
            .extend(validation::foreign_namespace(namespace, served));
        for problem in &report.problems {
            output.push_str(&format!("{place}: error: {problem}\n"));
        }
        for warning in &report.warnings {
            output.push_str(&format!("{place}: warning: {warning}\n"));
        }
        if report.is_valid() {
            output.push_str(&format!("{place}: valid\n"));
        } else {
            valid = false;
        }
    }
    ((output, valid), plans)
}

/// Checks the notifications' ConfigMap (other ConfigMaps are skipped) as the controller reads
/// it; whether it is valid.
fn check_notifications(output: &mut String, place: &str, document: &serde_json::Value) -> bool {
    use crate::notify::config;
    if document.pointer("/metadata/name").and_then(|n| n.as_str()) != Some(config::CONFIGMAP) {
        return true;
    }
    let place = format!("{place}: ConfigMap {:?}", config::CONFIGMAP);
    let Some(text) = document
        .pointer("/data")
        .and_then(|d| d.get(config::CONFIG_KEY))
        .and_then(|t| t.as_str())
    else {
        output.push_str(&format!(
            "{place}: error: data.{}: missing; put the receivers there\n",
            config::CONFIG_KEY
        ));
        return false;
    };
    match config::parse(text) {
        Ok(parsed) => {
            output.push_str(&format!(
                "{place}: valid ({} receiver(s))\n",
                parsed.receivers.len()
            ));
            true
        }
        Err(problems) => {
            for problem in problems {
                output.push_str(&format!("{place}: error: {problem}\n"));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_plan_of_a_multi_document_file() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: system-upgrade}
---
apiVersion: upgrade.cattle.io/v1
kind: Plan
metadata: {name: good}
spec: {version: v1.30.4+k3s1, concurrency: 1, nodeSelector: {}, upgrade: {image: rancher/k3s-upgrade}}
---
apiVersion: upgrade.cattle.io/v1
kind: Plan
metadata: {name: bad}
spec: {version: v1.20, concurrency: 0, nodeSelector: {}, upgrade: {image: rancher/k3s-upgrade}}
";
        let ((output, valid), plans) = check_text("plans.yaml", text, "system-upgrade");
        assert!(!valid);
        assert_eq!(plans, 2);
        assert!(
            output.contains("plans.yaml: document 2: Plan \"good\": valid\n"),
            "{output}"
        );
        assert!(
            output.contains(
                "plans.yaml: document 3: Plan \"bad\": error: spec.version: \"v1.20\" is not SemVer"
            ),
            "{output}"
        );
        assert!(output.contains("plans.yaml: document 3: Plan \"bad\": error: spec.concurrency: must be at least 1, got 0"), "{output}");
    }

    #[test]
    fn yaml_errors_and_wrong_versions_are_invalid() {
        let ((output, valid), _) = check_text("x.yaml", "a: [1\n", "system-upgrade");
        assert!(!valid);
        assert!(output.starts_with("x.yaml: YAML: "), "{output}");
        let ((output, valid), plans) = check_text(
            "y.yaml",
            "apiVersion: upgrade.cattle.io/v2\nkind: Plan\nmetadata: {name: p}\n",
            "system-upgrade",
        );
        assert!(!valid);
        assert_eq!(plans, 1);
        assert!(
            output.contains("apiVersion: \"upgrade.cattle.io/v2\" is not served"),
            "{output}"
        );
    }

    #[test]
    fn warnings_do_not_fail() {
        let text = "apiVersion: upgrade.cattle.io/v1\nkind: Plan\nmetadata: {name: p}\nspec: {version: v1.2.3, upgrade: {image: x}}\n";
        let ((output, valid), _) = check_text("w.yaml", text, "system-upgrade");
        assert!(valid, "{output}");
        assert!(
            output.contains("warning: spec.nodeSelector is not set"),
            "{output}"
        );
    }

    #[test]
    fn plans_that_wait_for_each_other_across_files_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let plan = |name: &str, depends_on: &str| {
            format!(
                "apiVersion: upgrade.cattle.io/v1\nkind: Plan\nmetadata: {{name: {name}, namespace: system-upgrade}}\n\
                 spec: {{concurrency: 1, version: v1.30.4, nodeSelector: {{}}, dependsOn: [{depends_on}], upgrade: {{image: alpine}}}}\n"
            )
        };
        let os = dir.path().join("os.yaml");
        let k3s = dir.path().join("k3s.yaml");
        std::fs::write(&os, plan("os", "k3s")).unwrap();
        std::fs::write(&k3s, plan("k3s", "os")).unwrap();
        let outcome = run(&[&os], "system-upgrade");
        assert!(outcome.valid, "alone, os only waits: {}", outcome.output);
        let outcome = run(&[&os, &k3s], "system-upgrade");
        assert!(!outcome.valid);
        assert!(
            outcome.output.contains(&format!(
                "{}: Plan \"os\": error: spec.dependsOn: Plans os → k3s → os wait for each other",
                os.display()
            )),
            "{}",
            outcome.output
        );
    }

    #[test]
    fn the_notifications_configmap_is_checked_as_the_controller_reads_it() {
        let good = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: system-upgrade-controller-notifications}\n\
                    data:\n  notifications.yaml: |\n    receivers:\n    - {name: chat, type: discord, url: 'https://discord.example/api/webhooks/1/x'}\n\
                    ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {a: b}\n";
        let ((output, valid), plans) = check_text("n.yaml", good, "system-upgrade");
        assert!(valid, "{output}");
        assert_eq!(plans, 0);
        assert_eq!(
            output,
            "n.yaml: document 1: ConfigMap \"system-upgrade-controller-notifications\": valid (1 receiver(s))\n"
        );
        let bad = good.replace("https://discord.example", "discord.example");
        let ((output, valid), _) = check_text("n.yaml", &bad, "system-upgrade");
        assert!(!valid);
        assert!(
            output.contains("error: receivers[0].url: not a URL"),
            "{output}"
        );
    }

    #[test]
    fn a_plan_of_another_namespace_is_warned_about() {
        let text = "apiVersion: upgrade.cattle.io/v1\nkind: Plan\nmetadata: {name: p, namespace: cattle-system}\nspec: {version: v1.2.3, concurrency: 1, nodeSelector: {}, upgrade: {image: x}}\n";
        let ((output, valid), _) = check_text("r.yaml", text, "system-upgrade");
        assert!(valid, "{output}");
        assert!(
            output.contains("warning: metadata.namespace: this controller serves the Plans of namespace \"system-upgrade\" only"),
            "{output}"
        );
        let ((output, _), _) = check_text("r.yaml", text, "cattle-system");
        assert!(!output.contains("metadata.namespace"), "{output}");
    }
}
