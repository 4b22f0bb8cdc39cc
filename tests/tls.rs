//! The real HTTPS listener on loopback with a real client: TLS, HTTP/2, certificate replacement
//! from a directory, and graceful shutdown that lets an in-flight request finish.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.

use std::sync::Arc;
use std::time::Duration;

use system_upgrade_controller::metrics::Metrics;
use system_upgrade_controller::server::tls::{CertDir, CertResolver};
use system_upgrade_controller::server::{BODY_LIMIT, Readiness, bind, router};
use tokio_util::sync::CancellationToken;

/// A CA and a serving certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
fn ca_and_leaf(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

fn client(ca_pem: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

use rustls_pki_types::pem::PemObject;

struct Server {
    url: String,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start(resolver: Arc<CertResolver>) -> Server {
    let readiness = Readiness::new(resolver.clone());
    let stop = CancellationToken::new();
    let app = router("system-upgrade", Metrics::new(), readiness.clone(), None);
    let (address, serve) = bind(
        "127.0.0.1:0".parse().unwrap(),
        app,
        resolver,
        readiness.clone(),
        stop.clone(),
    )
    .unwrap();
    Server {
        url: format!("https://{address}"),
        readiness,
        stop,
        done: tokio::spawn(serve),
    }
}

#[tokio::test]
async fn serves_https_and_picks_up_replaced_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = ca_and_leaf("first CA");
    std::fs::write(dir.path().join("tls.crt"), &cert1).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key1).unwrap();
    let resolver = Arc::new(CertResolver::default());
    let cert_dir = CertDir::new(dir.path());
    let loaded = cert_dir.load(&resolver).unwrap();
    let server = start(resolver.clone());
    tokio::spawn(cert_dir.watch(
        resolver,
        loaded,
        Duration::from_millis(100),
        server.stop.clone(),
    ));

    let trusts_first = client(&ca1);
    let response = trusts_first
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "ok\n");
    let ready = trusts_first
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let (ca2, cert2, key2) = ca_and_leaf("second CA");
    let trusts_second = client(&ca2);
    assert!(
        trusts_second
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_err()
    );

    // A broken replacement is ignored; the old certificate keeps being served.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        client(&ca1)
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_ok()
    );

    // Replace the files the way a Secret volume does: new files, then an atomic rename.
    std::fs::write(dir.path().join("tls.key.new"), &key2).unwrap();
    std::fs::write(dir.path().join("tls.crt.new"), &cert2).unwrap();
    std::fs::rename(dir.path().join("tls.key.new"), dir.path().join("tls.key")).unwrap();
    std::fs::rename(dir.path().join("tls.crt.new"), dir.path().join("tls.crt")).unwrap();
    let mut switched = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client(&ca2)
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_ok()
        {
            switched = true;
            break;
        }
    }
    assert!(switched, "the replaced certificate was not picked up");
    assert!(
        client(&ca1)
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_err(),
        "old CA no longer matches"
    );

    server.stop.cancel();
    server.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn too_large_bodies_get_413_over_http2() {
    let (ca, cert, key) = ca_and_leaf("ca");
    let resolver = Arc::new(CertResolver::default());
    resolver.set_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let server = start(resolver);
    let response = client(&ca)
        .post(format!("{}/validate", server.url))
        .body(vec![b'x'; BODY_LIMIT + 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 413);
    server.stop.cancel();
}

#[tokio::test]
async fn shutdown_turns_readiness_off_and_lets_in_flight_requests_finish() {
    let (ca, cert, key) = ca_and_leaf("ca");
    let resolver = Arc::new(CertResolver::default());
    resolver.set_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let server = start(resolver);
    let client = client(&ca);
    assert_eq!(
        client
            .get(format!("{}/readyz", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A request whose body is still arriving when the shutdown begins.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let in_flight = tokio::spawn(
        client
            .post(format!("{}/validate", server.url))
            .body(body)
            .send(),
    );
    sender
        .send(Ok(b"{\"apiVersion\":\"admission.k8s.io/v1\",".to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.readiness.problem().as_deref(), Some("shutting down"));
    sender
        .send(Ok(b"\"kind\":\"AdmissionReview\"}".to_vec()))
        .await
        .unwrap();
    drop(sender);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 400, "the in-flight request was answered");
    assert!(response.text().await.unwrap().contains("no request"));
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
