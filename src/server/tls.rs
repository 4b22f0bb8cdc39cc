//! The serving certificate: a rustls resolver whose certificate can be replaced at any time, and
//! the two simple sources (self-signed in memory, files in a directory that are watched).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Hands rustls the current certificate; replacing it affects new handshakes only.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: ArcSwapOption<CertifiedKey>,
}

impl CertResolver {
    /// Installs a certificate chain and key given as PEM.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), Error> {
        self.current
            .store(Some(Arc::new(certified_key(cert_pem, key_pem)?)));
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// Parses a PEM certificate chain and private key into what rustls serves.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, Error> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Tls("certificate: no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Tls(format!("private key: {e}")))?;
    let signing_key =
        any_supported_type(&key).map_err(|e| Error::Tls(format!("private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        Error::Tls(format!(
            "the private key does not match the certificate: {e}"
        ))
    })?;
    Ok(certified)
}

/// The rustls server configuration: HTTP/2 and HTTP/1.1, certificate from the resolver.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A self-signed certificate for local use (`run --webhook-only` without `--cert-dir`), valid
/// for localhost, the loopback addresses and this host's name.
pub fn self_signed(resolver: &CertResolver) -> Result<(), Error> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    let tls = |e: rcgen::Error| Error::Tls(e.to_string());
    let mut params = rcgen::CertificateParams::new(names).map_err(tls)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "system-upgrade-controller (self-signed)",
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let key = rcgen::KeyPair::generate().map_err(tls)?;
    let cert = params.self_signed(&key).map_err(tls)?;
    resolver.set_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}

/// Files of a certificate directory: `tls.crt` and `tls.key`, as in a kubernetes.io/tls Secret.
pub struct CertDir {
    cert: PathBuf,
    key: PathBuf,
}

impl CertDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Loads the files into the resolver; an error names the file and the problem.
    pub fn load(&self, resolver: &CertResolver) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let (cert, key) = self.read()?;
        resolver.set_pem(&cert, &key).map_err(|e| {
            Error::Tls(format!(
                "{} / {}: {e}",
                self.cert.display(),
                self.key.display()
            ))
        })?;
        Ok((cert, key))
    }

    /// Re-reads the files every `every` and installs them when their content changed. Files are
    /// polled rather than watched: Secret volumes replace them through symlink swaps, which
    /// polling the content always sees. A broken replacement is logged and the old pair kept.
    pub async fn watch(
        self,
        resolver: Arc<CertResolver>,
        mut last: (Vec<u8>, Vec<u8>),
        every: Duration,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.read() {
                Ok(pair) if pair != last => match resolver.set_pem(&pair.0, &pair.1) {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert.display(), "serving the replaced certificate");
                        last = pair;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the previous certificate: the replacement is not usable")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "keeping the previous certificate"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn loads_matching_pairs_and_names_problems() {
        let resolver = CertResolver::default();
        assert!(!resolver.is_loaded());
        let (cert, key) = pair("a");
        resolver.set_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert!(resolver.is_loaded());

        let (_, other_key) = pair("b");
        let mismatch = resolver
            .set_pem(cert.as_bytes(), other_key.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(mismatch.contains("does not match"), "{mismatch}");
        let none = resolver
            .set_pem(b"", key.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(none.contains("no PEM certificate"), "{none}");
        let bad_key = resolver
            .set_pem(cert.as_bytes(), b"garbage")
            .unwrap_err()
            .to_string();
        assert!(bad_key.contains("private key"), "{bad_key}");
    }

    #[test]
    fn cert_dir_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = CertDir::new(dir.path())
            .load(&CertResolver::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("tls.crt"), "{error}");
    }

    #[test]
    fn self_signed_is_loaded() {
        let resolver = CertResolver::default();
        self_signed(&resolver).unwrap();
        assert!(resolver.is_loaded());
    }
}
