//! Kubernetes name and label syntax (the rules of apimachinery's `validation` package), so Plans
//! are checked before the API server or a node update refuses them.

/// A DNS-1123 label: at most 63 lowercase letters, digits and '-', alphanumeric at both ends.
pub fn dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("must be at most 63 characters, not {}", name.len()));
    }
    let lower_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.chars().all(|c| lower_alnum(c) || c == '-')
        || !name.starts_with(lower_alnum)
        || !name.ends_with(lower_alnum)
    {
        return Err(
            "must consist of lowercase letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated DNS labels (names of most
/// objects, e.g. Secrets and service accounts).
pub fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "must be at most 253 characters, not {}",
            name.len()
        ));
    }
    if name.split('.').any(|label| dns_label(label).is_err()) {
        return Err("must consist of lowercase letters, digits, '-' and '.', starting and ending with a letter or digit".into());
    }
    Ok(())
}

/// The name part of a label key, and a non-empty label value: at most 63 letters, digits, '-',
/// '_' and '.', alphanumeric at both ends.
fn label_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("must be at most 63 characters, not {}", name.len()));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !name
        .chars()
        .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        || !name.starts_with(alnum)
        || !name.ends_with(alnum)
    {
        return Err("must consist of letters, digits, '-', '_' and '.', starting and ending with a letter or digit".into());
    }
    Ok(())
}

/// A label (or annotation) key: an optional DNS-subdomain prefix and '/', then a name of at most
/// 63 characters.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix).map_err(|e| format!("prefix {prefix:?} {e}"))?;
    }
    label_name(name).map_err(|e| format!("name part {name:?} {e}"))
}

/// A label value: empty, or at most 63 letters, digits, '-', '_' and '.', alphanumeric at both ends.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    label_name(value)
}

/// An environment variable name: any printable ASCII except '=' (Kubernetes 1.32 and later).
pub fn env_var_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if !name.chars().all(|c| c.is_ascii_graphic() || c == ' ') || name.contains('=') {
        return Err("must consist of printable ASCII characters other than '='".into());
    }
    Ok(())
}

/// Whether an environment variable name is also valid for Kubernetes before 1.32
/// (`[-._a-zA-Z][-._a-zA-Z0-9]*`).
pub fn is_classic_env_var_name(name: &str) -> bool {
    let first_ok = |c: char| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_');
    name.starts_with(first_ok) && name.chars().all(|c| first_ok(c) || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "k3s-server", "0", "a-b-c", &"a".repeat(63)] {
            assert_eq!(dns_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "ä", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dns_label(&"a".repeat(64)),
            Err("must be at most 63 characters, not 64".into())
        );
    }

    #[test]
    fn dns_subdomains() {
        for ok in [
            "a",
            "a.b",
            "my-secret",
            "a.b-c.d",
            &format!("{}.{}", "a".repeat(63), "b".repeat(63)),
        ] {
            assert_eq!(dns_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "A", "a_b", "a/b", &"a".repeat(254)] {
            assert!(dns_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys() {
        for ok in [
            "a",
            "upgrade",
            "kubernetes.io/hostname",
            "plan.upgrade.cattle.io/k3s-server",
            "node-role.kubernetes.io/control-plane",
            "A_b.C-d",
            &"a".repeat(63),
            &format!(
                "{}.{}.{}.{}/{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61),
                "n".repeat(63)
            ),
        ] {
            assert_eq!(label_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a/b/c",
            "-a",
            "a-",
            "a b",
            "Example.com/a",
            "ex_ample.com/a",
            &"a".repeat(64),
            &format!(
                "{}.{}.{}.{}/a",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(62)
            ),
        ] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        assert_eq!(
            label_key("Bad.io/x"),
            Err("prefix \"Bad.io\" must consist of lowercase letters, digits, '-' and '.', starting and ending with a letter or digit".into())
        );
    }

    #[test]
    fn label_values() {
        for ok in ["", "true", "v1.30.4-k3s1", "A_b.C-d", &"a".repeat(63)] {
            assert_eq!(label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-a", "a-", "a b", "a/b", "v1.30.4+k3s1", &"a".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_var_names() {
        for ok in ["A", "HTTP_PROXY", "a.b-c", "_x", "1abc", "with space"] {
            assert_eq!(env_var_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A=B", "tab\tx", "ä"] {
            assert!(env_var_name(bad).is_err(), "{bad}");
        }
        assert!(is_classic_env_var_name("HTTP_PROXY"));
        assert!(is_classic_env_var_name("a.b-c"));
        assert!(!is_classic_env_var_name("1abc"));
        assert!(!is_classic_env_var_name("with space"));
    }
}
