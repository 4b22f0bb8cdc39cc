//! Webhook certificates in the cluster, with no cert-manager needed: a CA kept in a Secret that
//! every replica shares, a serving certificate issued from it in memory for the Service's DNS
//! names, and the CA written into the `caBundle` of our webhook configurations. The serving
//! certificate is renewed well before it expires and the `caBundle` is re-asserted periodically,
//! with each webhook's `namespaceSelector`: the webhooks act on Plans of the controller's own
//! namespace only, so another controller's Plans elsewhere (Rancher's in `cattle-system`) are
//! never gated by this one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::server::tls::CertResolver;

/// The label Kubernetes gives every Namespace, valued with its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
const CA_CERT_KEY: &str = "ca.crt";
const CA_KEY_KEY: &str = "ca.key";
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// A CA closer than this to its end is replaced.
const CA_RENEW_BEFORE: time::Duration = time::Duration::days(30);
const LEAF_VALIDITY: time::Duration = time::Duration::days(30);
/// The serving certificate is renewed when less than this is left (a third of its life).
const LEAF_RENEW_BEFORE: time::Duration = time::Duration::days(10);

/// Where the certificates live and who they are for.
#[derive(Clone)]
pub struct Bootstrap {
    pub client: Client,
    pub namespace: String,
    pub service: String,
    pub ca_secret: String,
    pub webhook_config: String,
    /// More names for the serving certificate, beyond the Service's.
    pub extra_names: Vec<String>,
    /// How often the certificate and the caBundle are checked.
    pub check_interval: Duration,
}

/// The CA as stored in the Secret.
#[derive(Clone, PartialEq, Eq)]
struct Ca {
    cert_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
}

/// The state kept between maintenance rounds.
pub struct Serving {
    ca: Ca,
    leaf_not_after: OffsetDateTime,
}

impl Bootstrap {
    /// The DNS names the API server may use for the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (service, namespace) = (&self.service, &self.namespace);
        let mut names = vec![
            format!("{service}.{namespace}.svc"),
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        names.extend(self.extra_names.iter().filter(|n| !n.is_empty()).cloned());
        names
    }

    /// Loads (or creates) the CA, serves a fresh certificate from it and injects the caBundle.
    pub async fn start(&self, resolver: &CertResolver) -> Result<Serving, Error> {
        let ca = self.ensure_ca().await?;
        let leaf_not_after = self.issue(&ca, resolver)?;
        if let Err(e) = self.inject_ca_bundle(&ca).await {
            tracing::warn!(error = %e, "could not update the webhooks' caBundle yet; retrying");
        }
        Ok(Serving { ca, leaf_not_after })
    }

    /// Keeps the certificate fresh and the caBundle asserted until `stop`.
    pub async fn maintain(
        self,
        resolver: Arc<CertResolver>,
        mut serving: Serving,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.check_interval) => {}
            }
            if let Err(e) = self.maintain_once(&resolver, &mut serving).await {
                tracing::warn!(error = %e, "webhook certificate maintenance failed; retrying");
            }
        }
    }

    async fn maintain_once(
        &self,
        resolver: &CertResolver,
        serving: &mut Serving,
    ) -> Result<(), Error> {
        // Another replica may have replaced the CA; follow it so every replica serves from one CA.
        let ca = self.ensure_ca().await?;
        let now = OffsetDateTime::now_utc();
        if ca != serving.ca || serving.leaf_not_after - now < LEAF_RENEW_BEFORE {
            serving.leaf_not_after = self.issue(&ca, resolver)?;
            serving.ca = ca;
            tracing::info!(expires = %serving.leaf_not_after, "renewed the webhook serving certificate");
        }
        self.inject_ca_bundle(&serving.ca).await
    }

    /// Returns the CA from its Secret, creating the Secret if it does not exist. Creation is
    /// atomic in the API server, so replicas racing to create it all end up with the winner's CA.
    async fn ensure_ca(&self) -> Result<Ca, Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..5 {
            match secrets.get_opt(&self.ca_secret).await? {
                Some(secret) => match read_ca(&secret) {
                    Some(ca) if ca.not_after - OffsetDateTime::now_utc() > CA_RENEW_BEFORE => {
                        return Ok(ca);
                    }
                    _ => {
                        tracing::warn!(secret = %self.ca_secret, "the webhook CA is missing, unreadable or about to expire; replacing it");
                        let mut replacement = self.ca_secret(&new_ca()?);
                        replacement.metadata.resource_version =
                            secret.metadata.resource_version.clone();
                        match secrets
                            .replace(&self.ca_secret, &PostParams::default(), &replacement)
                            .await
                        {
                            Ok(_) => {}
                            Err(kube::Error::Api(status)) if status.code == 409 => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                },
                None => {
                    let secret = self.ca_secret(&new_ca()?);
                    match secrets.create(&PostParams::default(), &secret).await {
                        Ok(_) => tracing::info!(secret = %self.ca_secret, "created the webhook CA"),
                        Err(kube::Error::Api(status)) if status.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(Error::Tls(format!(
            "could not settle the webhook CA in Secret {}/{}",
            self.namespace, self.ca_secret
        )))
    }

    fn ca_secret(&self, ca: &Ca) -> Secret {
        let data = BTreeMap::from([
            (
                CA_CERT_KEY.to_owned(),
                ByteString(ca.cert_pem.clone().into_bytes()),
            ),
            (
                CA_KEY_KEY.to_owned(),
                ByteString(ca.key_pem.clone().into_bytes()),
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(self.ca_secret.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    crate::api::LABEL_APP_NAME.to_owned(),
                    "system-upgrade-controller".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Issues a serving certificate for the Service from the CA and serves it.
    fn issue(&self, ca: &Ca, resolver: &CertResolver) -> Result<OffsetDateTime, Error> {
        let (cert_pem, key_pem, not_after) = issue_leaf(ca, &self.dns_names())?;
        resolver.set_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
        Ok(not_after)
    }

    /// Writes the CA, and the namespace served, into every webhook of our two configurations
    /// where either differs.
    async fn inject_ca_bundle(&self, ca: &Ca) -> Result<(), Error> {
        let bundle = ca.cert_pem.as_bytes();
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let stale = mutating.get_opt(&self.webhook_config).await?.map(|c| {
            let webhooks = c.webhooks.unwrap_or_default();
            webhooks
                .into_iter()
                .map(|w| {
                    let current = self.current(&w.client_config.ca_bundle, &w.namespace_selector);
                    (w.name, current(bundle))
                })
                .collect()
        });
        self.patch_bundles(&mutating, "MutatingWebhookConfiguration", stale, bundle)
            .await?;
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let stale = validating.get_opt(&self.webhook_config).await?.map(|c| {
            let webhooks = c.webhooks.unwrap_or_default();
            webhooks
                .into_iter()
                .map(|w| {
                    let current = self.current(&w.client_config.ca_bundle, &w.namespace_selector);
                    (w.name, current(bundle))
                })
                .collect()
        });
        self.patch_bundles(&validating, "ValidatingWebhookConfiguration", stale, bundle)
            .await
    }

    /// Whether a webhook trusts `bundle` and selects this controller's namespace (other
    /// selectors a user added are left as they are).
    fn current<'a>(
        &'a self,
        ca_bundle: &'a Option<ByteString>,
        selector: &'a Option<LabelSelector>,
    ) -> impl Fn(&[u8]) -> bool + 'a {
        move |bundle| {
            let trusted = ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle);
            let scoped = selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get(NAMESPACE_NAME_LABEL))
                == Some(&self.namespace);
            trusted && scoped
        }
    }

    /// One strategic merge patch: webhooks merge by name, so only the named webhooks change.
    /// `webhooks` are the configuration's webhook names with whether each is as wanted, `None`
    /// when the configuration does not exist.
    async fn patch_bundles<K>(
        &self,
        api: &Api<K>,
        kind: &str,
        webhooks: Option<Vec<(String, bool)>>,
        bundle: &[u8],
    ) -> Result<(), Error>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let Some(webhooks) = webhooks else {
            tracing::warn!(name = %self.webhook_config, "{kind} not found; apply webhook-config.yaml");
            return Ok(());
        };
        let names: Vec<String> = webhooks
            .into_iter()
            .filter(|(_, current)| !current)
            .map(|(n, _)| n)
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let bundle = ByteString(bundle.to_vec());
        let webhooks: Vec<_> = names
            .iter()
            .map(|name| {
                serde_json::json!({
                    "name": name,
                    "clientConfig": {"caBundle": bundle},
                    "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}},
                })
            })
            .collect();
        let patch = serde_json::json!({"webhooks": webhooks});
        api.patch(
            &self.webhook_config,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
        tracing::info!(name = %self.webhook_config, webhooks = ?names, "injected the CA into caBundle");
        Ok(())
    }
}

fn read_ca(secret: &Secret) -> Option<Ca> {
    let data = secret.data.as_ref()?;
    let cert_pem = String::from_utf8(data.get(CA_CERT_KEY)?.0.clone()).ok()?;
    let key_pem = String::from_utf8(data.get(CA_KEY_KEY)?.0.clone()).ok()?;
    let not_after = not_after(&cert_pem)?;
    // The pair must be usable for signing.
    let key = KeyPair::from_pem(&key_pem).ok()?;
    Issuer::from_ca_cert_pem(&cert_pem, key).ok()?;
    Some(Ca {
        cert_pem,
        key_pem,
        not_after,
    })
}

/// The end of validity of a PEM certificate.
fn not_after(cert_pem: &str) -> Option<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

fn new_ca() -> Result<Ca, Error> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "system-upgrade-controller webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    let key = KeyPair::generate().map_err(tls_error)?;
    let cert = params.self_signed(&key).map_err(tls_error)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: params.not_after,
    })
}

/// A serving certificate for `names`, signed by the CA: (certificate PEM, key PEM, expiry).
fn issue_leaf(ca: &Ca, names: &[String]) -> Result<(String, String, OffsetDateTime), Error> {
    let issuer = Issuer::from_ca_cert_pem(
        &ca.cert_pem,
        KeyPair::from_pem(&ca.key_pem).map_err(tls_error)?,
    )
    .map_err(tls_error)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::new(names.to_vec()).map_err(tls_error)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.last().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::hours(1);
    // Never outlive the CA.
    params.not_after = (now + LEAF_VALIDITY).min(ca.not_after);
    let key = KeyPair::generate().map_err(tls_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;
    Ok((cert.pem(), key.serialize_pem(), params.not_after))
}

fn tls_error(e: rcgen::Error) -> Error {
    Error::Tls(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_is_signed_by_the_ca_for_the_service_names() {
        let ca = new_ca().unwrap();
        let names = vec!["svc".to_owned(), "svc.ns.svc".to_owned()];
        let (cert_pem, key_pem, expiry) = issue_leaf(&ca, &names).unwrap();
        crate::server::tls::certified_key(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
        let leaf = pem.parse_x509().unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, ["DNSName(svc)", "DNSName(svc.ns.svc)"]);
        let days = (expiry - OffsetDateTime::now_utc()).whole_days();
        assert!((29..=30).contains(&days), "{days}");
    }

    #[test]
    fn ca_round_trips_through_its_secret() {
        let ca = new_ca().unwrap();
        let mut data = BTreeMap::new();
        data.insert(
            CA_CERT_KEY.to_owned(),
            ByteString(ca.cert_pem.clone().into_bytes()),
        );
        data.insert(
            CA_KEY_KEY.to_owned(),
            ByteString(ca.key_pem.clone().into_bytes()),
        );
        let secret = Secret {
            data: Some(data.clone()),
            ..Secret::default()
        };
        let read = read_ca(&secret).unwrap();
        assert_eq!(read.cert_pem, ca.cert_pem);
        assert_eq!(
            read.not_after.unix_timestamp(),
            ca.not_after.unix_timestamp()
        );
        data.insert(CA_KEY_KEY.to_owned(), ByteString(b"garbage".to_vec()));
        assert!(
            read_ca(&Secret {
                data: Some(data),
                ..Secret::default()
            })
            .is_none()
        );
        assert!(read_ca(&Secret::default()).is_none());
    }

    /// Two replicas start at once: the other creates the CA Secret first. This one takes that
    /// CA (so both serve from one), issues its certificate from it, and writes it into the
    /// webhook that lacks it, scoped to its namespace; a missing configuration is left alone.
    #[tokio::test]
    async fn a_replica_that_loses_the_race_for_the_ca_serves_from_the_winners() {
        let (client, mut api) = crate::controller::testing::client();
        let bootstrap = Bootstrap {
            client,
            namespace: "system-upgrade".into(),
            service: "suc".into(),
            ca_secret: "suc-ca".into(),
            webhook_config: "suc".into(),
            extra_names: Vec::new(),
            check_interval: Duration::from_secs(60),
        };
        let resolver = Arc::new(CertResolver::default());
        let starting = tokio::spawn({
            let (bootstrap, resolver) = (bootstrap.clone(), resolver.clone());
            async move { bootstrap.start(&resolver).await.map(|_| ()) }
        });
        const SECRET: &str = "/api/v1/namespaces/system-upgrade/secrets";
        api.refuse("GET", &format!("{SECRET}/suc-ca"), 404).await;
        let created = api.refuse("POST", SECRET, 409).await;
        assert!(created.body["data"][CA_KEY_KEY].is_string());
        let winner = new_ca().unwrap();
        let stored = serde_json::to_value(bootstrap.ca_secret(&winner)).unwrap();
        api.expect("GET", &format!("{SECRET}/suc-ca"), 200, stored)
            .await;
        const MUTATING: &str =
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/suc";
        let configuration = serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration", "metadata": {"name": "suc"},
            "webhooks": [{"name": "mutate.plans.upgrade.cattle.io", "admissionReviewVersions": ["v1"],
                "sideEffects": "None", "clientConfig": {"service": {"name": "suc", "namespace": "system-upgrade"}}}]});
        api.expect("GET", MUTATING, 200, configuration.clone())
            .await;
        let patched = api.expect("PATCH", MUTATING, 200, configuration).await;
        let webhook = &patched.body["webhooks"][0];
        assert_eq!(webhook["name"], "mutate.plans.upgrade.cattle.io");
        let bundle = ByteString(winner.cert_pem.clone().into_bytes());
        assert_eq!(
            webhook["clientConfig"]["caBundle"],
            serde_json::to_value(&bundle).unwrap()
        );
        assert_eq!(
            webhook["namespaceSelector"]["matchLabels"][NAMESPACE_NAME_LABEL],
            "system-upgrade"
        );
        api.refuse(
            "GET",
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/suc",
            404,
        )
        .await;
        starting.await.unwrap().unwrap();
        api.done().await;
        assert!(resolver.is_loaded());
    }
}
