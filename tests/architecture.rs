//! The module graph of `src/`: dependencies point down. Every module belongs to one layer of
//! [`LAYERS`] and may use modules of its own layer and of those below it, never above; and no
//! two modules import each other, however long the loop. A module's dependencies are the
//! `crate::` paths it names outside its tests (`use crate::a::{b, c::d}` names `a::b` and
//! `a::c::d`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`controller::decide`) of each source file, with its text outside `mod tests`.
fn modules() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let root = dirs[0].clone();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap();
            if !name.ends_with(".rs") || name == "tests.rs" {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_str().unwrap().to_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap()
                .to_owned();
            found.insert(parts.join("::"), code);
        }
    }
    found
}

/// The layers of `src/`, bottom first, each with the modules in it (a module path names its
/// submodules too, unless they are listed themselves).
const LAYERS: &[(&str, &[&str])] = &[
    // Words every module may use: errors, syntax, metrics, start-up retries, locks.
    (
        "base",
        &[
            "error",
            "syntax",
            "metrics",
            "retry",
            "server::conn",
            "sync",
        ],
    ),
    // The Plan's types and the CRD; YAML reading.
    ("api", &["api", "yaml"]),
    // Every rule a Plan is held to; the command line and logging.
    (
        "rules",
        &[
            "validation",
            "config",
            "telemetry",
            "notify::config",
            "notify::message",
        ],
    ),
    // Pure pieces of the controller and the admission review.
    (
        "pieces",
        &[
            "admission",
            "controller::hash",
            "controller::status",
            "controller::job",
            "controller::select",
            "controller::resolve",
            "controller::expect",
            "controller::crd",
            "controller::budgets",
            "controller::cordon",
            "controller::detach",
        ],
    ),
    // The rules of a rollout, as one pure function.
    (
        "decision",
        &[
            "controller::decide",
            "controller::refusals",
            "controller::simulate",
            "controller::notices",
        ],
    ),
    // What talks to the API server and serves HTTPS: the controller's shell, the server.
    (
        "shell",
        &["controller", "server", "certs", "leader", "notify"],
    ),
    // The commands and the process.
    (
        "commands",
        &["check", "preview", "switchback", "lib", "main"],
    ),
];

/// The layer of a module: that of the longest listed path it is, or is inside of.
fn layer(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, paths))| paths.iter().map(move |p| (i, *p)))
        .filter(|(_, p)| module == *p || module.starts_with(&format!("{p}::")))
        .max_by_key(|(_, p)| p.len())
        .map(|(i, _)| i)
}

/// The paths a `crate::` use names, braces expanded: `a::{b, c::{d, self}}` gives `a::b`,
/// `a::c::d` and `a::c`. `text` starts right after `crate::`.
fn paths(text: &str) -> Vec<String> {
    fn expand(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, prefix: &str) -> Vec<String> {
        let mut path = prefix.to_owned();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                path.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if chars.peek() != Some(&'{') {
            return vec![path.trim_end_matches(':').to_owned()];
        }
        chars.next();
        let mut found = Vec::new();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            match chars.peek() {
                None => break,
                Some('}') => {
                    chars.next();
                    break;
                }
                Some(_) => {
                    let before = chars.clone().count();
                    for inner in expand(chars, &path) {
                        found.push(inner.replace("::self", ""));
                    }
                    // Skip what a path does not take (`as x`, a rename), up to , or }.
                    while chars.peek().is_some_and(|c| *c != ',' && *c != '}') {
                        chars.next();
                    }
                    if chars.clone().count() == before {
                        chars.next();
                    }
                }
            }
        }
        found
    }
    expand(&mut text.chars().peekable(), "")
}

/// The modules each module names through `crate::` (the longest known prefix of each path).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<&String> = modules.keys().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut deps = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            for path in paths(&code[at + "crate::".len()..]) {
                let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
                let target = (1..=parts.len())
                    .rev()
                    .map(|n| parts[..n].join("::"))
                    .find(|candidate| known.contains(candidate));
                match target {
                    Some(target) if target != *module => {
                        deps.insert(target);
                    }
                    Some(_) => {}
                    // `crate::Error` and other items of the root: the root is not to be imported.
                    None => panic!("{module} imports from the crate root: crate::{path}"),
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// A loop in the graph, as the path around it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // A depth-first search, from each module, for a path back to it.
    fn reaches(
        graph: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        target: &str,
        seen: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> bool {
        for next in graph.get(from).into_iter().flatten() {
            path.push(next.clone());
            if next == target
                || (seen.insert(next.clone()) && reaches(graph, next, target, seen, path))
            {
                return true;
            }
            path.pop();
        }
        false
    }
    graph.keys().find_map(|module| {
        let mut path = vec![module.clone()];
        reaches(graph, module, module, &mut BTreeSet::new(), &mut path).then_some(path)
    })
}

#[test]
fn modules_depend_on_each_other_one_way() {
    let graph = graph();
    assert!(graph.len() > 20, "found only {:?}", graph.keys());
    // Known edges, so the reading of the sources is checked too.
    assert!(graph["controller::decide::track"].contains("controller::job"));
    assert!(graph["controller::decide::plan"].contains("controller::hash"));
    assert!(graph["controller::reconcile"].contains("controller::decide"));
    if let Some(path) = cycle(&graph) {
        panic!("modules import each other: {}", path.join(" -> "));
    }
}

#[test]
fn dependencies_point_down_the_layers() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(own) = layer(module) else {
            wrong.push(format!("{module} is in no layer: add it to LAYERS"));
            continue;
        };
        for dep in deps {
            let theirs = layer(dep).unwrap_or(usize::MAX);
            if theirs > own {
                wrong.push(format!(
                    "{module} ({}) uses {dep} ({}), a layer above it",
                    LAYERS[own].0,
                    LAYERS.get(theirs).map_or("no layer", |l| l.0)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn braces_in_a_use_name_each_module() {
    assert_eq!(paths("api::Plan;"), ["api::Plan"]);
    assert_eq!(
        paths("controller::{hash, resolve::{self, munge}, select};"),
        [
            "controller::hash",
            "controller::resolve",
            "controller::resolve::munge",
            "controller::select"
        ]
    );
    assert_eq!(
        paths("syntax::{duration as d, window};"),
        ["syntax::duration", "syntax::window"]
    );
}

#[test]
fn a_loop_is_found_however_long() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            graph
                .entry((*from).into())
                .or_default()
                .insert((*to).into());
            graph.entry((*to).into()).or_default();
        }
        graph
    };
    assert_eq!(cycle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        cycle(&edges(&[("a", "b"), ("b", "a")])),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert!(cycle(&edges(&[("x", "a"), ("a", "b"), ("b", "c"), ("c", "a")])).is_some());
}
