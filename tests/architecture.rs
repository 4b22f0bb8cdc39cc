//! The module graph of `src/`: dependencies run one way. A module's dependencies are the
//! `crate::` paths it names outside its tests; a cycle (two modules importing each other, or a
//! longer loop) fails with the modules involved.

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

/// The modules each module names through `crate::` (the longest known prefix of each path).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<&String> = modules.keys().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut deps = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let path: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':'
                })
                .collect();
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
    assert!(graph["controller::decide"].contains("controller::job"));
    assert!(graph["controller::reconcile"].contains("controller::decide"));
    if let Some(path) = cycle(&graph) {
        panic!("modules import each other: {}", path.join(" -> "));
    }
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
