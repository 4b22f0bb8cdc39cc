//! Reading YAML the way kubectl does (YAML 1.1 numbers such as octal `0400`), for Plan files.

/// Most YAML nodes one stream may expand to, aliases included: a "billion laughs" file of a few
/// lines must not take gigabytes. A Plan has a few hundred nodes.
pub const MAX_NODES: usize = 100_000;

/// Parses every non-empty document of a multi-document YAML stream into JSON values.
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>, crate::error::Error> {
    // kubectl's YAML reader follows YAML 1.1, where `defaultMode: 0400` is octal (256).
    let mut budget = serde_saphyr::budget::Budget::default();
    budget.max_nodes = MAX_NODES;
    let options = serde_saphyr::options! { legacy_octal_numbers: true, budget: Some(budget) };
    serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| crate::error::Error::Yaml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_documents_like_kubectl() {
        let docs = documents("---\na: 0400\nb: yes\n---\n---\nc: [1, x]\n").unwrap();
        assert_eq!(
            docs,
            [
                serde_json::json!({"a": 256, "b": true}),
                serde_json::json!({"c": [1, "x"]})
            ]
        );
    }

    #[test]
    fn alias_bombs_stop_at_the_node_budget() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (last, next) in ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g"])
        {
            bomb.push_str(&format!(
                "{next}: &{next} [{}]\n",
                vec![format!("*{last}"); 9].join(", ")
            ));
        }
        let error = documents(&bomb).unwrap_err().to_string();
        assert!(error.contains("budget"), "{error}");
        assert!(
            documents("a: &a [x, x]\nb: [*a, *a]\n").is_ok(),
            "ordinary aliases are read"
        );
    }

    #[test]
    fn reports_syntax_errors() {
        let error = documents("a: [1, 2\n").unwrap_err().to_string();
        assert!(error.starts_with("YAML: "), "{error}");
        assert!(
            documents("a: 1\na: 2\n").is_err(),
            "duplicate keys are refused, as by kubectl"
        );
    }
}
