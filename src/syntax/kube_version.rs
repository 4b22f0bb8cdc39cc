//! Kubernetes versions as K3s and RKE2 write them, and the rules of moving between them: a Plan's
//! `spec.version` or channel answer (`v1.30.4+k3s1`, munged `v1.30.4-k3s1` in
//! `status.latestVersion` and image tags) and a node's `status.nodeInfo.kubeletVersion`
//! (`v1.30.4+k3s1`). Ordered by Kubernetes version, then release candidate before release, then
//! the distribution's revision (`k3s1` < `k3s2`). Not the `semver` crate's order: it ignores build
//! metadata (the revision) and reads the munged `-k3s1` as a pre-release.

use std::cmp::Ordering;
use std::fmt;

/// A Kubernetes version with its distribution's suffix, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// The pre-release (`rc1`), if any; it sorts before the release.
    pub pre: Option<String>,
    /// The distribution and its revision: `("k3s", 1)`, `("rke2r", 1)`.
    pub distro: Option<(String, u64)>,
}

impl KubeVersion {
    /// Parses `v1.30.4+k3s1`, `1.30.4+rke2r1`, `v1.31.0-rc1+k3s1`, the munged `v1.30.4-k3s1`
    /// and `v1.31.0-rc1-k3s1`, and plain `v1.30.4`; `None` for anything else (a tag such as
    /// `22.04`, or a version without a patch).
    pub fn parse(text: &str) -> Option<KubeVersion> {
        let text = text.trim();
        let number = text.strip_prefix('v').unwrap_or(text);
        let (core, build) = match number.split_once('+') {
            Some((core, build)) => (core, Some(build)),
            None => (number, None),
        };
        let (triple, suffix) = match core.split_once('-') {
            Some((triple, suffix)) => (triple, Some(suffix)),
            None => (core, None),
        };
        let mut parts = triple.split('.');
        let mut next = || -> Option<u64> {
            let part = parts.next()?;
            let leading_zero = part.len() > 1 && part.starts_with('0');
            (!leading_zero && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse().ok())
                .flatten()
        };
        let (major, minor, patch) = (next()?, next()?, next()?);
        if parts.next().is_some() {
            return None;
        }
        // The munged form carries the distribution after a '-': its last part, when it is one.
        let (pre, distro) = match (suffix, build) {
            (suffix, Some(build)) => (suffix.map(str::to_owned), Some(distro(build)?)),
            (Some(suffix), None) => match suffix.rsplit_once('-') {
                Some((pre, last)) if distro(last).is_some() => (Some(pre.to_owned()), distro(last)),
                _ if distro(suffix).is_some() => (None, distro(suffix)),
                _ => (Some(suffix.to_owned()), None),
            },
            (None, None) => (None, None),
        };
        if pre.as_deref().is_some_and(|p| {
            p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        }) {
            return None;
        }
        Some(KubeVersion {
            major,
            minor,
            patch,
            pre,
            distro,
        })
    }
}

/// `k3s1` → `("k3s", 1)`, `rke2r1` → `("rke2r", 1)`: letters, then a revision number.
fn distro(text: &str) -> Option<(String, u64)> {
    let digits = text.len() - text.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (name, revision) = text.split_at(digits);
    let known = matches!(name, "k3s" | "rke2r");
    (known && !revision.is_empty())
        .then(|| revision.parse().ok())
        .flatten()
        .map(|revision| (name.to_owned(), revision))
}

impl Ord for KubeVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre(a, b),
            })
            .then_with(|| {
                let revision = |v: &KubeVersion| v.distro.as_ref().map_or(0, |(_, r)| *r);
                revision(self).cmp(&revision(other))
            })
    }
}

impl PartialOrd for KubeVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pre-releases as SemVer orders them: dot-separated parts, numbers by value and below words;
/// `rc1` < `rc2` < `rc10` by the number a word ends with.
fn compare_pre(a: &str, b: &str) -> Ordering {
    let key = |part: &str| -> (u8, String, u64) {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            return (0, String::new(), part.parse().unwrap_or(u64::MAX));
        }
        let digits = part.len() - part.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (word, number) = part.split_at(digits);
        (1, word.to_owned(), number.parse().unwrap_or(0))
    };
    let (a, b): (Vec<_>, Vec<_>) = (
        a.split('.').map(key).collect(),
        b.split('.').map(key).collect(),
    );
    a.cmp(&b)
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        if let Some((name, revision)) = &self.distro {
            write!(f, "+{name}{revision}")?;
        }
        Ok(())
    }
}

/// What moving a node from `from` to `to` would be, by Kubernetes' rules for a control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: the node runs this version.
    Same,
    /// Up within a minor, or to the next minor.
    Up,
    /// To an older version (a lower patch, minor or revision).
    Down,
    /// Up by more than one minor: the minors in between, in order, to go through first.
    SkipsMinors(Vec<String>),
}

/// The step from `from` to `to`.
pub fn step(from: &KubeVersion, to: &KubeVersion) -> Step {
    match to.cmp(from) {
        Ordering::Equal => Step::Same,
        Ordering::Less => Step::Down,
        Ordering::Greater if from.major == to.major && to.minor > from.minor + 1 => {
            Step::SkipsMinors(
                (from.minor + 1..to.minor)
                    .map(|m| format!("v{}.{m}", to.major))
                    .collect(),
            )
        }
        Ordering::Greater if from.major != to.major => Step::SkipsMinors(Vec::new()),
        Ordering::Greater => Step::Up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse(text).unwrap_or_else(|| panic!("{text} parses"))
    }

    #[test]
    fn k3s_and_rke2_versions_parse_in_both_spellings() {
        assert_eq!(
            v("v1.30.4+k3s1"),
            KubeVersion {
                major: 1,
                minor: 30,
                patch: 4,
                pre: None,
                distro: Some(("k3s".into(), 1)),
            }
        );
        assert_eq!(v("v1.30.4-k3s1"), v("v1.30.4+k3s1"), "munged as a tag");
        assert_eq!(v("1.30.4+rke2r2").distro, Some(("rke2r".into(), 2)));
        assert_eq!(v("v1.30.4-rke2r2"), v("v1.30.4+rke2r2"));
        assert_eq!(v("v1.31.0-rc1+k3s1").pre.as_deref(), Some("rc1"));
        assert_eq!(v("v1.31.0-rc1-k3s1"), v("v1.31.0-rc1+k3s1"));
        assert_eq!(v("v1.30.4"), v("1.30.4"));
        assert_eq!(v("v1.31.0-rc.1").pre.as_deref(), Some("rc.1"));
        for bad in [
            "22.04",
            "v1.30",
            "v01.30.4",
            "latest",
            "v1.30.4.1",
            "v1.30.4+ubuntu1",
            "",
            "v1.30.4-",
        ] {
            assert_eq!(KubeVersion::parse(bad), None, "{bad}");
        }
        assert_eq!(v("v1.31.0-rc1+k3s1").to_string(), "v1.31.0-rc1+k3s1");
        assert_eq!(v("v1.30.4-k3s1").to_string(), "v1.30.4+k3s1");
    }

    #[test]
    fn versions_order_by_release_then_candidate_then_revision() {
        let ordered = [
            "v1.29.9+k3s1",
            "v1.30.0-rc1+k3s1",
            "v1.30.0-rc2+k3s1",
            "v1.30.0-rc10+k3s1",
            "v1.30.0+k3s1",
            "v1.30.4+k3s1",
            "v1.30.4+k3s2",
            "v1.30.10+k3s1",
            "v1.31.0+k3s1",
            "v2.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("v1.30.4").cmp(&v("v1.30.4+k3s1")), Ordering::Less);
    }

    #[test]
    fn steps_are_up_down_or_skip_minors() {
        let step_of = |a, b| step(&v(a), &v(b));
        assert_eq!(step_of("v1.30.4+k3s1", "v1.30.4-k3s1"), Step::Same);
        assert_eq!(step_of("v1.30.4+k3s1", "v1.30.5+k3s1"), Step::Up);
        assert_eq!(step_of("v1.30.4+k3s1", "v1.31.2+k3s1"), Step::Up);
        assert_eq!(step_of("v1.30.4+k3s1", "v1.30.4+k3s2"), Step::Up);
        assert_eq!(step_of("v1.30.4+k3s2", "v1.30.4+k3s1"), Step::Down);
        assert_eq!(step_of("v1.31.0+k3s1", "v1.26.3+k3s1"), Step::Down);
        assert_eq!(
            step_of("v1.28.9+k3s1", "v1.30.4+k3s1"),
            Step::SkipsMinors(vec!["v1.29".into()])
        );
        assert_eq!(
            step_of("v1.27.1+rke2r1", "v1.30.0+rke2r1"),
            Step::SkipsMinors(vec!["v1.28".into(), "v1.29".into()])
        );
    }
}
