//! Container image references (`[registry[:port]/]path[:tag][@digest]`), following the grammar of
//! the distribution project that Docker, containerd and Kubernetes use.

use std::fmt;

/// A parsed image reference. `domain` is only set when the first path element is a registry host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub domain: Option<String>,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Why an image reference is invalid; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the image reference is empty")]
    Empty,
    #[error("{0:?} is not a valid registry host (expected e.g. registry.example.com:5000)")]
    Domain(String),
    #[error(
        "{0:?} is not a valid repository path component (lowercase letters and digits, \
         separated by '.', '_', '__' or '-', e.g. rancher/k3s-upgrade)"
    )]
    PathComponent(String),
    #[error("the repository name is longer than 255 characters")]
    NameTooLong,
    #[error(
        "{0:?} is not a valid tag (at most 128 letters, digits, '_', '.' or '-', not starting \
         with '.' or '-')"
    )]
    Tag(String),
    #[error("{0:?} is not a valid digest (expected sha256: followed by 64 lowercase hex digits)")]
    Digest(String),
}

impl ImageRef {
    /// Parses a reference such as `rancher/k3s-upgrade`, `registry:5000/a/b:v1` or
    /// `alpine@sha256:<64 hex>`.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        if text.is_empty() {
            return Err(ImageError::Empty);
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                if !is_digest(digest) {
                    return Err(ImageError::Digest(digest.to_owned()));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        // A ':' after the last '/' separates the tag; one before it belongs to a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let (name, tag) = rest.split_at(last_slash + i);
                let tag = &tag[1..];
                if !is_tag(tag) {
                    return Err(ImageError::Tag(tag.to_owned()));
                }
                (name, Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        if name.len() > 255 {
            return Err(ImageError::NameTooLong);
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_domain(first) => {
                if !is_domain(first) {
                    return Err(ImageError::Domain(first.to_owned()));
                }
                (Some(first.to_owned()), path)
            }
            _ => (None, name),
        };
        for component in path.split('/') {
            if !is_path_component(component) {
                return Err(ImageError::PathComponent(component.to_owned()));
            }
        }
        Ok(Self {
            domain,
            path: path.to_owned(),
            tag,
            digest,
        })
    }

    /// The name without tag or digest, as written (no `docker.io/library/` added).
    pub fn name(&self) -> String {
        match &self.domain {
            Some(domain) => format!("{domain}/{}", self.path),
            None => self.path.clone(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The first element names a registry when it has a '.' or ':' or is `localhost`. (Docker also
/// takes a single uppercase word such as `Rancher` for a registry host; that is nearly always a
/// mistyped repository, so it is reported as one.)
fn looks_like_domain(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

fn is_domain(domain: &str) -> bool {
    let (host, port) = if let Some(ipv6) = domain.strip_prefix('[') {
        match ipv6.split_once(']') {
            Some((address, after)) => {
                if address.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match after {
                    "" => return true,
                    _ => match after.strip_prefix(':') {
                        Some(port) => return is_port(port),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    host_ok && port.is_none_or(is_port)
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or one or more `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

/// An image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= 128
        && bytes.next().is_some_and(word)
        && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

fn is_digest(digest: &str) -> bool {
    let hex = |h: &str, len: usize| {
        h.len() == len && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match digest.split_once(':') {
        Some(("sha256", h)) => hex(h, 64),
        Some(("sha512", h)) => hex(h, 128),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parts(text: &str) -> (Option<String>, String, Option<String>, Option<String>) {
        let r = ImageRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (r.domain, r.path, r.tag, r.digest)
    }

    #[test]
    fn accepts_valid_references() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(parts("ubuntu"), (None, "ubuntu".into(), None, None));
        assert_eq!(
            parts("rancher/k3s-upgrade"),
            (None, "rancher/k3s-upgrade".into(), None, None)
        );
        assert_eq!(
            parts("alpine:3.18"),
            (None, "alpine".into(), some("3.18"), None)
        );
        assert_eq!(
            parts("registry:5000/a/b"),
            (some("registry:5000"), "a/b".into(), None, None)
        );
        assert_eq!(
            parts("img.example.com:5000/test/image:x"),
            (
                some("img.example.com:5000"),
                "test/image".into(),
                some("x"),
                None
            )
        );
        assert_eq!(
            parts("localhost/x"),
            (some("localhost"), "x".into(), None, None)
        );
        assert_eq!(
            parts(&format!("alpine@{SHA}")),
            (None, "alpine".into(), None, some(SHA))
        );
        assert_eq!(
            parts(&format!("docker.io/library/alpine:3@{SHA}")),
            (
                some("docker.io"),
                "library/alpine".into(),
                some("3"),
                some(SHA)
            )
        );
        assert_eq!(
            parts("[::1]:5000/a"),
            (some("[::1]:5000"), "a".into(), None, None)
        );
        assert_eq!(
            parts("a__b/c.d/e-f/g---h_i"),
            (None, "a__b/c.d/e-f/g---h_i".into(), None, None)
        );
        assert_eq!(
            parts("Registry.Example.com/a"),
            (some("Registry.Example.com"), "a".into(), None, None)
        );
        assert_eq!(
            parts("x:v1.30.4-k3s1"),
            (None, "x".into(), some("v1.30.4-k3s1"), None)
        );
        assert_eq!(parts("x:_under"), (None, "x".into(), some("_under"), None));
    }

    #[test]
    fn rejects_invalid_references() {
        let cases: &[(&str, ImageError)] = &[
            ("", ImageError::Empty),
            ("Rancher/k3s", ImageError::PathComponent("Rancher".into())),
            ("rancher/K3s", ImageError::PathComponent("K3s".into())),
            ("rancher//k3s", ImageError::PathComponent("".into())),
            ("rancher/k3s/", ImageError::PathComponent("".into())),
            ("-rancher", ImageError::PathComponent("-rancher".into())),
            ("a..b", ImageError::PathComponent("a..b".into())),
            ("a___b", ImageError::PathComponent("a___b".into())),
            ("a b", ImageError::PathComponent("a b".into())),
            ("x:", ImageError::Tag("".into())),
            ("x:.v1", ImageError::Tag(".v1".into())),
            ("x:-v1", ImageError::Tag("-v1".into())),
            ("x:v1+k3s1", ImageError::Tag("v1+k3s1".into())),
            ("x@sha256:abc", ImageError::Digest("sha256:abc".into())),
            ("x@md5:0123", ImageError::Digest("md5:0123".into())),
            ("reg_istry.io/x", ImageError::Domain("reg_istry.io".into())),
            (
                "registry:port/x",
                ImageError::Domain("registry:port".into()),
            ),
            ("-registry.io/x", ImageError::Domain("-registry.io".into())),
            ("[zz]:5000/x", ImageError::Domain("[zz]:5000".into())),
        ];
        for (text, want) in cases {
            assert_eq!(ImageRef::parse(text).as_ref(), Err(want), "{text:?}");
        }
        assert_eq!(
            ImageRef::parse(&format!("x:{}", "a".repeat(129))),
            Err(ImageError::Tag("a".repeat(129)))
        );
        assert!(ImageRef::parse(&format!("x:{}", "a".repeat(128))).is_ok());
        assert_eq!(
            ImageRef::parse(&"a".repeat(256)),
            Err(ImageError::NameTooLong)
        );
    }

    #[test]
    fn displays_as_written() {
        for text in ["ubuntu", "registry:5000/a/b:v1", &format!("alpine:3@{SHA}")] {
            assert_eq!(
                ImageRef::parse(text).map(|r| r.to_string()).as_deref(),
                Ok(text)
            );
        }
    }

    #[test]
    fn tags() {
        for ok in [
            "v1",
            "latest",
            "v1.30.4-k3s1",
            "_x",
            "A.b-C_d",
            &"t".repeat(128),
        ] {
            assert!(is_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "v1+k3s1", "a b", "ä", &"t".repeat(129)] {
            assert!(!is_tag(bad), "{bad}");
        }
    }
}
