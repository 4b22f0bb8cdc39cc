//! Order between Plans: `spec.dependsOn` names Plans of the namespace that must be Complete
//! first, `spec.exclusiveGroup` names a group of Plans that start nodes one Plan at a time. A
//! Plan alone can be checked for names that parse and for waiting on itself; a cycle needs the
//! other Plans of the namespace, which the webhook lists and `check` reads from its files
//! ([`cycle`]); the controller holds a Plan of a cycle that got in and says so.

use std::collections::{BTreeMap, BTreeSet};

use super::Report;
use crate::api::{PLAN_LABEL_PREFIX, Plan};
use crate::syntax::k8s;

/// At most this many Plans in `spec.dependsOn`.
pub const MAX_DEPENDS_ON: usize = 16;

/// `spec.dependsOn` and `spec.exclusiveGroup` of one Plan.
pub(super) fn check(plan: &Plan, report: &mut Report) {
    let own = plan.metadata.name.as_deref().unwrap_or_default();
    let names = plan.spec.depends_on.as_deref().unwrap_or_default();
    if names.len() > MAX_DEPENDS_ON {
        report.problem(
            "spec.dependsOn",
            format!(
                "{} Plans; at most {MAX_DEPENDS_ON} are allowed (a Plan that waits for one that \
                 waits for others waits for those too)",
                names.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().enumerate().take(MAX_DEPENDS_ON) {
        let field = format!("spec.dependsOn[{i}]");
        if let Err(reason) = k8s::label_key(&format!("{PLAN_LABEL_PREFIX}{name}")) {
            report.problem(
                field,
                format!("{name:?} is not a Plan name ({reason}); name a Plan of this namespace"),
            );
        } else if name == own {
            report.problem(
                field,
                format!("Plan {own:?} cannot wait for itself; remove it"),
            );
        } else if !seen.insert(name.as_str()) {
            report.problem(field, format!("{name:?} is listed twice; keep one"));
        }
    }
    let group = plan.spec.exclusive_group.as_deref();
    if let Some(group) = group
        && let Err(reason) = match group {
            "" => Err("it is empty".to_owned()),
            _ => k8s::label_value(group),
        }
    {
        report.problem(
            "spec.exclusiveGroup",
            format!("{group:?} is not a group name ({reason}); use e.g. node-maintenance"),
        );
    }
}

/// The cycle `spec.dependsOn` makes through the Plan `name`, if any, as the Plans along it from
/// `name` back to `name` (`graph`: every Plan of the namespace and the Plans it depends on).
pub fn cycle(name: &str, graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    // Depth first from `name`; each Plan is entered once, so this ends on any graph.
    let mut path = vec![name.to_owned()];
    let mut visited = BTreeSet::new();
    fn walk(
        graph: &BTreeMap<String, Vec<String>>,
        start: &str,
        path: &mut Vec<String>,
        visited: &mut BTreeSet<String>,
    ) -> bool {
        let at = path.last().cloned().unwrap_or_default();
        for next in graph.get(&at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if visited.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, visited) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(graph, name, &mut path, &mut visited).then_some(path)
}

/// The cycle `depends_on` would make for the Plan `name` among `others` (each Plan of the
/// namespace with the Plans it depends on; an entry for `name` itself is replaced).
pub fn cycle_with<'a>(
    name: &str,
    depends_on: &[String],
    others: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Option<Vec<String>> {
    let mut graph: BTreeMap<String, Vec<String>> = others
        .into_iter()
        .map(|(plan, deps)| (plan.to_owned(), deps.to_vec()))
        .collect();
    graph.insert(name.to_owned(), depends_on.to_vec());
    cycle(name, &graph)
}

/// What to say of a cycle: `spec.dependsOn: Plans a → b → a wait for each other, so none of
/// them would ever start; remove one of these dependencies`.
pub fn cycle_message(cycle: &[String]) -> String {
    format!(
        "spec.dependsOn: Plans {} wait for each other, so none of them would ever start; remove \
         one of these dependencies",
        cycle.join(" → ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_cycle_through_the_plan_is_found_and_others_are_not() {
        let g = graph(&[("a", &["b"]), ("b", &["c", "d"]), ("c", &["a"]), ("d", &[])]);
        assert_eq!(cycle("a", &g).unwrap(), ["a", "b", "c", "a"]);
        // A cycle elsewhere is not this Plan's.
        let g = graph(&[("x", &["b"]), ("b", &["c"]), ("c", &["b"])]);
        assert_eq!(cycle("x", &g), None);
        assert!(cycle("b", &g).is_some());
        // Missing Plans and diamonds are no cycle.
        let g = graph(&[
            ("a", &["b", "c"]),
            ("b", &["d"]),
            ("c", &["d"]),
            ("d", &["gone"]),
        ]);
        assert_eq!(cycle("a", &g), None);
    }
}
