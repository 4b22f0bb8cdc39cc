//! `system-upgrade-controller check -f FILE|DIR...`: the webhook's rules, offline, for GitOps
//! pipelines. Documents that are not Plans are skipped (but for the notifications' ConfigMap,
//! checked as the controller reads it); every problem of every Plan is reported, as text or as
//! JSON or YAML for scripts.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::api::GROUP;
use crate::validation;

/// What checking files found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub files: Vec<FileReport>,
    /// Plans checked.
    pub plans: usize,
    /// Every Plan (and notifications ConfigMap) is valid and every file was read.
    pub valid: bool,
    /// A file (or directory) could not be read: the check is incomplete.
    pub unreadable: bool,
}

/// One file: why it could not be read or parsed, or its documents.
#[derive(Debug, Default, Serialize)]
pub struct FileReport {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// It could not be read at all (what it holds was not checked).
    pub unreadable: bool,
    pub documents: Vec<DocumentReport>,
}

impl FileReport {
    fn unreadable(file: String, error: &std::io::Error) -> FileReport {
        FileReport {
            file,
            error: Some(format!("cannot read: {error}")),
            unreadable: true,
            documents: Vec::new(),
        }
    }
}

/// A document checked: a Plan, or the notifications' ConfigMap.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReport {
    /// Its place in the file, from 1.
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub valid: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// For the notifications' ConfigMap: how many receivers it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receivers: Option<usize>,
    /// A Plan's namespace (the one served when it names none) and `spec.dependsOn`, for the
    /// order between the Plans of every file.
    #[serde(skip)]
    namespace: String,
    #[serde(skip)]
    depends_on: Vec<String>,
}

use crate::error::{EXIT_INVALID, EXIT_UNREADABLE};

impl Report {
    /// The exit status: unreadable before invalid, since an unread file may hold anything.
    pub fn exit_code(&self) -> u8 {
        if self.unreadable {
            EXIT_UNREADABLE
        } else if self.valid {
            0
        } else {
            EXIT_INVALID
        }
    }

    /// The report as people read it: a line per problem, warning or valid document.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for file in &self.files {
            if let Some(error) = &file.error {
                out.push_str(&format!("{}: {error}\n", file.file));
            }
            for doc in &file.documents {
                let place = format!(
                    "{}: document {}: {} {:?}",
                    file.file, doc.document, doc.kind, doc.name
                );
                for error in &doc.errors {
                    out.push_str(&format!("{place}: error: {error}\n"));
                }
                for warning in &doc.warnings {
                    out.push_str(&format!("{place}: warning: {warning}\n"));
                }
                match (doc.valid, doc.receivers) {
                    (true, Some(n)) => out.push_str(&format!("{place}: valid ({n} receiver(s))\n")),
                    (true, None) => out.push_str(&format!("{place}: valid\n")),
                    (false, _) => {}
                }
            }
        }
        let verdict = match (self.valid, self.unreadable) {
            (_, true) => "files could not be read",
            (true, false) => "all valid",
            (false, false) => "invalid Plans found",
        };
        out.push_str(&format!("{} Plan(s) checked: {verdict}\n", self.plans));
        out
    }
}

/// Checks every Plan in the given files and directories (`-` is standard input; a directory's
/// `.yaml`, `.yml` and `.json` files, and with `recursive` those of its subdirectories), for a
/// controller serving the Plans of namespace `served`.
pub fn run(paths: &[impl AsRef<Path>], served: &str, recursive: bool) -> Report {
    let mut report = Report::default();
    for path in paths {
        let path = path.as_ref();
        match expand(path, recursive) {
            Ok(files) => {
                for file in files {
                    let name = file.display().to_string();
                    match read(&file) {
                        Ok(text) => report.files.push(check_text(&name, &text, served)),
                        Err(e) => report.files.push(FileReport::unreadable(name, &e)),
                    }
                }
            }
            Err(e) => report
                .files
                .push(FileReport::unreadable(path.display().to_string(), &e)),
        }
    }
    finish(report.files)
}

/// The report of files checked: the order between their Plans, the counts and the verdict.
fn finish(files: Vec<FileReport>) -> Report {
    let mut report = Report {
        files,
        ..Report::default()
    };
    check_order(&mut report);
    report.plans = (report.files.iter())
        .flat_map(|f| &f.documents)
        .filter(|d| d.kind == "Plan")
        .count();
    report.unreadable = report.files.iter().any(|f| f.unreadable);
    report.valid = report
        .files
        .iter()
        .all(|f| f.error.is_none() && f.documents.iter().all(|d| d.valid));
    report
}

/// The files a path names: itself, or a directory's manifests in name order.
fn expand(path: &Path, recursive: bool) -> std::io::Result<Vec<PathBuf>> {
    if path.as_os_str() == "-" || !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                files.extend(expand(&entry, true)?);
            }
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(entry);
        }
    }
    if files.is_empty() && !recursive {
        return Err(std::io::Error::other(format!(
            "no .yaml, .yml or .json file in directory {} (-R reads its subdirectories too)",
            path.display()
        )));
    }
    Ok(files)
}

/// Plans that wait for each other (`spec.dependsOn`) across every file checked: each Plan of a
/// cycle gets the error.
fn check_order(report: &mut Report) {
    // By namespace, then Plan: where it is (file, document) and its dependsOn.
    type Placed = ((usize, usize), Vec<String>);
    let mut order: BTreeMap<String, BTreeMap<String, Placed>> = BTreeMap::new();
    for (f, file) in report.files.iter().enumerate() {
        for (d, doc) in file.documents.iter().enumerate() {
            if doc.kind == "Plan" && !doc.depends_on.is_empty() {
                order
                    .entry(doc.namespace.clone())
                    .or_default()
                    .insert(doc.name.clone(), ((f, d), doc.depends_on.clone()));
            }
        }
    }
    for graph in order.values() {
        let edges: BTreeMap<String, Vec<String>> = graph
            .iter()
            .map(|(plan, (_, deps))| (plan.clone(), deps.clone()))
            .collect();
        for (plan, ((f, d), _)) in graph {
            if let Some(cycle) = validation::order::cycle(plan, &edges) {
                let doc = &mut report.files[*f].documents[*d];
                doc.errors.push(validation::order::cycle_message(&cycle));
                doc.valid = false;
            }
        }
    }
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

/// Checks one file's text.
pub fn check_text(name: &str, text: &str, served: &str) -> FileReport {
    let mut report = FileReport {
        file: name.to_owned(),
        ..FileReport::default()
    };
    let documents = match crate::yaml::documents(text) {
        Ok(documents) => documents,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    for (index, document) in documents.iter().enumerate() {
        let text = |pointer: &str| document.pointer(pointer).and_then(|v| v.as_str());
        let (api_version, kind) = (
            text("/apiVersion").unwrap_or_default(),
            text("/kind").unwrap_or_default(),
        );
        let mut doc = DocumentReport {
            document: index + 1,
            kind: kind.to_owned(),
            name: text("/metadata/name").unwrap_or("(unnamed)").to_owned(),
            ..DocumentReport::default()
        };
        if kind == "ConfigMap" && api_version == "v1" {
            if doc.name == crate::notify::config::CONFIGMAP {
                check_notifications(&mut doc, document);
                report.documents.push(doc);
            }
            continue;
        }
        if kind != "Plan" || api_version.split('/').next() != Some(GROUP) {
            continue;
        }
        if api_version != format!("{GROUP}/v1") {
            doc.errors.push(format!(
                "apiVersion: {api_version:?} is not served; use {GROUP}/v1"
            ));
            report.documents.push(doc);
            continue;
        }
        let checked = validation::validate_value(document);
        doc.valid = checked.is_valid();
        doc.errors = checked.problems.iter().map(ToString::to_string).collect();
        doc.warnings = checked.warnings;
        doc.warnings.extend(validation::foreign_namespace(
            text("/metadata/namespace"),
            served,
        ));
        doc.namespace = text("/metadata/namespace").unwrap_or(served).to_owned();
        doc.depends_on = (document
            .pointer("/spec/dependsOn")
            .and_then(|d| d.as_array()))
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
        report.documents.push(doc);
    }
    report
}

/// Checks the notifications' ConfigMap as the controller reads it.
fn check_notifications(doc: &mut DocumentReport, document: &serde_json::Value) {
    use crate::notify::config;
    let Some(text) = document
        .pointer("/data")
        .and_then(|d| d.get(config::CONFIG_KEY))
        .and_then(|t| t.as_str())
    else {
        doc.errors.push(format!(
            "data.{}: missing; put the receivers there",
            config::CONFIG_KEY
        ));
        return;
    };
    match config::parse(text) {
        Ok(parsed) => {
            doc.valid = true;
            doc.receivers = Some(parsed.receivers.len());
        }
        Err(problems) => doc.errors = problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One file's text checked: the printed report, whether valid, and how many Plans.
    fn check_one(name: &str, text: &str, served: &str) -> ((String, bool), usize) {
        let report = finish(vec![check_text(name, text, served)]);
        ((report.text(), report.valid), report.plans)
    }

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
        let ((output, valid), plans) = check_one("plans.yaml", text, "system-upgrade");
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
        let ((output, valid), _) = check_one("x.yaml", "a: [1\n", "system-upgrade");
        assert!(!valid);
        assert!(output.starts_with("x.yaml: YAML: "), "{output}");
        let ((output, valid), plans) = check_one(
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
        let ((output, valid), _) = check_one("w.yaml", text, "system-upgrade");
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
        let outcome = run(&[&os], "system-upgrade", false);
        assert!(outcome.valid, "alone, os only waits: {}", outcome.text());
        let outcome = run(&[&os, &k3s], "system-upgrade", false);
        assert!(!outcome.valid);
        assert_eq!(outcome.exit_code(), EXIT_INVALID);
        assert!(
            outcome.text().contains(&format!(
                "{}: document 1: Plan \"os\": error: spec.dependsOn: Plans os → k3s → os wait for each other",
                os.display()
            )),
            "{}",
            outcome.text()
        );
        // The directory holds both.
        let outcome = run(&[dir.path()], "system-upgrade", false);
        assert_eq!(outcome.plans, 2);
        assert!(!outcome.valid);
    }

    #[test]
    fn the_notifications_configmap_is_checked_as_the_controller_reads_it() {
        let good = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: system-upgrade-controller-notifications}\n\
                    data:\n  notifications.yaml: |\n    receivers:\n    - {name: chat, type: discord, url: 'https://discord.example/api/webhooks/1/x'}\n\
                    ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {a: b}\n";
        let ((output, valid), plans) = check_one("n.yaml", good, "system-upgrade");
        assert!(valid, "{output}");
        assert_eq!(plans, 0);
        assert_eq!(
            output,
            "n.yaml: document 1: ConfigMap \"system-upgrade-controller-notifications\": valid (1 receiver(s))\n\
             0 Plan(s) checked: all valid\n"
        );
        let bad = good.replace("https://discord.example", "discord.example");
        let ((output, valid), _) = check_one("n.yaml", &bad, "system-upgrade");
        assert!(!valid);
        assert!(
            output.contains("error: receivers[0].url: not a URL"),
            "{output}"
        );
    }

    #[test]
    fn a_plan_of_another_namespace_is_warned_about() {
        let text = "apiVersion: upgrade.cattle.io/v1\nkind: Plan\nmetadata: {name: p, namespace: cattle-system}\nspec: {version: v1.2.3, concurrency: 1, nodeSelector: {}, upgrade: {image: x}}\n";
        let ((output, valid), _) = check_one("r.yaml", text, "system-upgrade");
        assert!(valid, "{output}");
        assert!(
            output.contains("warning: metadata.namespace: this controller serves the Plans of namespace \"system-upgrade\" only"),
            "{output}"
        );
        let ((output, _), _) = check_one("r.yaml", text, "cattle-system");
        assert!(!output.contains("metadata.namespace"), "{output}");
    }
}
