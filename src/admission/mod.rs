//! The admission webhooks: bytes of an `admission.k8s.io/v1` AdmissionReview in, the review to
//! answer out. Pure functions; the HTTP server and the metrics live elsewhere.
//!
//! Both webhooks apply the validation rules. The mutating webhook runs before the API server checks
//! the CRD schema, so denying there gives the user our complete, precise list of problems instead
//! of the schema's; the validating webhook runs last and sees the final object, including changes
//! made by other mutating webhooks. Warnings are only sent by the validating webhook, so kubectl
//! prints each once.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{GROUP, Plan};
use crate::validation;
use crate::validation::versions;

/// Most JSON values (scalars, arrays and objects, map keys included) an admitted object may hold.
/// Reading a value into Rust structures can take 50 times its JSON size, so the values are
/// counted before anything is built; a real Plan holds a few hundred.
pub const MAX_VALUES: usize = 20_000;

/// Longest string an admitted object may hold: the API server allows 256 KiB for all of an
/// object's annotations together, the largest text a Plan legitimately carries.
pub const MAX_STRING: usize = 256 * 1024;

/// Longest request uid echoed back; the API server's are 36 characters.
const MAX_UID: usize = 256;

/// Which webhook a review was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Webhook {
    Mutate,
    Validate,
}

impl Webhook {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutate => "mutate",
            Self::Validate => "validate",
        }
    }
}

/// What the webhook decided, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed without changes.
    Allowed,
    /// Allowed with a patch (defaults applied).
    Patched,
    /// Denied because the Plan is invalid.
    Denied,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Patched => "patched",
            Self::Denied => "denied",
        }
    }
}

/// The parts of an `admission.k8s.io/v1` AdmissionReview the webhooks read. The objects stay
/// JSON text borrowed from the body: nothing is copied or built before they are measured.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    uid: String,
    kind: Kind,
    operation: String,
    /// The object's name (empty when the API server generates it).
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Answer {
    pub response: Response,
    pub operation: &'static str,
    pub decision: Decision,
    /// A K3s or RKE2 Plan admitted so far whose new `spec.version` is still to be checked
    /// against the nodes it selects (which needs the cluster: see [`refuse_on_cluster`]).
    pub check_versions: Option<Box<Plan>>,
    /// A Plan admitted so far with object health gates, to be tried on the objects as they are
    /// now (which needs the cluster): a gate closed now is a warning, never a refusal.
    pub check_objects: Option<Box<Plan>>,
    /// A Plan admitted so far whose `spec.dependsOn` is still to be checked for a cycle through
    /// the other Plans of its namespace (which needs the cluster).
    pub check_order: Option<Box<Plan>>,
}

impl Answer {
    /// Refuses the Plan for `message`, found on the cluster (a version that would downgrade or
    /// skip a node, a cycle of `dependsOn`).
    pub fn refuse_on_cluster(&mut self, message: String) {
        self.response = self.response.clone().deny(message);
        self.decision = Decision::Denied;
    }

    /// Adds a warning to an allowed answer (the nodes could not be read).
    pub fn warn(&mut self, warning: String) {
        if self.response.allowed {
            let warnings = self.response.warnings.get_or_insert_default();
            warnings.push(validation::bounded(&warning));
            warnings.truncate(validation::LISTED_PROBLEMS);
        }
    }
}

/// The `response` of an AdmissionReview, as the API server reads it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The JSON patch, base64-encoded as the API specifies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// Why a review was denied.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    pub code: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Out<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: &'a Response,
}

impl Answer {
    fn out(&self) -> Out<'_> {
        Out {
            api_version: crate::api::ADMISSION_API_VERSION,
            kind: "AdmissionReview",
            response: &self.response,
        }
    }

    /// The review as the API server expects it on the wire.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(&self.out()).unwrap_or_default()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.out()).unwrap_or_default()
    }
}

impl Response {
    fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            status: None,
            patch_type: None,
            patch: None,
            warnings: None,
        }
    }

    fn deny(mut self, message: String) -> Self {
        self.allowed = false;
        self.warnings = None;
        self.status = Some(Status {
            status: "Failure",
            message,
            reason: "Invalid",
            code: 422,
        });
        self
    }
}

/// A body that is not an `admission.k8s.io/v1` AdmissionReview with a request; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Handles one AdmissionReview body for the given webhook, on a server whose controller serves
/// the Plans of namespace `served`.
pub fn handle(webhook: Webhook, served: &str, body: &[u8]) -> Result<Answer, BadRequest> {
    // Parsed plainly first; only a body that fails is parsed again to say where (tracking the
    // path costs a third of a typical review's time).
    let parsed = serde_json::from_slice::<Review>(body).or_else(|_| {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
    });
    let review: Review = parsed.map_err(|e| {
        let path = e.path().to_string();
        let place = match path.as_str() {
            "." | "?" => String::new(),
            _ => format!("{path}: "),
        };
        BadRequest(validation::bounded(&format!(
            "the body is not an AdmissionReview: {place}{}",
            e.inner()
        )))
    })?;
    if review.api_version != crate::api::ADMISSION_API_VERSION || review.kind != "AdmissionReview" {
        return Err(BadRequest(validation::bounded(&format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {:?} and {:?}",
            review.api_version, review.kind
        ))));
    }
    let request = review
        .request
        .ok_or_else(|| BadRequest("the AdmissionReview has no request".to_owned()))?;
    if request.uid.len() > MAX_UID {
        return Err(BadRequest(format!(
            "request.uid is {} bytes long; at most {MAX_UID} are accepted",
            request.uid.len()
        )));
    }
    let operation = match request.operation.as_str() {
        "CREATE" => "CREATE",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        other => {
            return Err(BadRequest(validation::bounded(&format!(
                "request.operation: {other:?} is not CREATE, UPDATE, DELETE or CONNECT"
            ))));
        }
    };
    let (response, decision, plan) = respond(webhook, served, &request, operation);
    let (check_versions, check_objects, check_order) = plan;
    Ok(Answer {
        response,
        operation,
        decision,
        check_versions,
        check_objects,
        check_order,
    })
}

/// Longest object name or namespace shown in a log span (the longest valid name).
const SPAN_NAME_LIMIT: usize = 253;

fn cut(text: &str) -> &str {
    match text.char_indices().nth(SPAN_NAME_LIMIT) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// An admitted Plan to check on the cluster: its new version against the nodes, its object
/// gates on the objects, its `dependsOn` against the other Plans (see [`Answer`]).
type ToCheck = (Option<Box<Plan>>, Option<Box<Plan>>, Option<Box<Plan>>);

#[tracing::instrument(name = "review", skip_all, fields(uid = %request.uid, operation, namespace = cut(&request.namespace), plan = cut(&request.name)))]
fn respond(
    webhook: Webhook,
    served: &str,
    request: &Request,
    operation: &str,
) -> (Response, Decision, ToCheck) {
    let (response, decision, plan) = judge(webhook, served, request, operation);
    // Checked against the nodes only when the version is new: an unrelated edit of a Plan is
    // not refused because nodes moved on meanwhile.
    let version_changed = |p: &Plan| {
        let old = request
            .old_object
            .and_then(|o| serde_json::from_str::<VersionOf>(o.get()).ok());
        old.is_none_or(|o| o.spec.version != p.spec.version)
    };
    let admitted = plan.filter(|_| webhook == Webhook::Validate && response.allowed);
    let check = admitted
        .clone()
        .filter(|p| versions::admission_target(&p.spec).is_some() && version_changed(p));
    let order = admitted
        .clone()
        .filter(|p| p.spec.depends_on.as_ref().is_some_and(|d| !d.is_empty()));
    let objects = admitted.filter(|p| {
        p.spec
            .health_gates
            .as_ref()
            .and_then(|g| g.objects.as_ref())
            .is_some_and(|o| !o.is_empty())
    });
    (
        response,
        decision,
        (
            check.map(Box::new),
            objects.map(Box::new),
            order.map(Box::new),
        ),
    )
}

/// Of a Plan, only `spec.version` (the old object of an update is read for nothing else).
#[derive(Deserialize)]
struct VersionOf {
    #[serde(default)]
    spec: SpecVersion,
}

#[derive(Deserialize, Default)]
struct SpecVersion {
    #[serde(default)]
    version: Option<String>,
}

/// The judgement of a review without the cluster: the answer, and the Plan as read.
fn judge(
    webhook: Webhook,
    served: &str,
    request: &Request,
    operation: &str,
) -> (Response, Decision, Option<Plan>) {
    let allow = Response::allow(&request.uid);
    let is_plan = request.kind.group == GROUP && request.kind.kind == "Plan";
    let update = operation == "UPDATE";
    if !is_plan || !(update || operation == "CREATE") {
        return (allow, Decision::Allowed, None);
    }
    // Another controller's Plan (a webhook configuration without our namespaceSelector sent it):
    // neither judged nor changed, only a word that this controller will not run it.
    if let Some(warning) = validation::foreign_namespace(Some(&request.namespace), served) {
        let mut response = allow;
        if webhook == Webhook::Validate {
            response.warnings = Some(vec![warning]);
        }
        return (response, Decision::Allowed, None);
    }
    let denied = |message: String| (allow.clone().deny(message), Decision::Denied, None);
    let Some(object) = request.object else {
        return denied("the request carries no object to admit".to_owned());
    };
    if let Err(e) = measure(object) {
        return denied(format!("the Plan cannot be reviewed: {e}"));
    }
    // An update that leaves the spec alone (labels, annotations, finalizers, deletion) is always
    // allowed, so a Plan stored while the webhook was down can still be edited and deleted.
    if update && request.old_object.is_some_and(|old| same_spec(old, object)) {
        return (allow, Decision::Allowed, None);
    }
    let (plan, mut report) = validation::validate_json(object.get());
    let concurrency_missing = plan.as_ref().is_some_and(|p| p.spec.concurrency.is_none());
    if update && concurrency_missing {
        // Defaulted on create only: a Plan stored without it (under the Go controller, where it
        // upgraded nothing) must not start upgrading because of an unrelated edit.
        report.warnings.push(
            "spec.concurrency is not set, so this Plan upgrades no node; set it (e.g. to 1) to \
             start"
                .to_owned(),
        );
    }
    if !report.is_valid() {
        let name = plan
            .as_ref()
            .and_then(|p| p.metadata.name.as_deref())
            .unwrap_or_default();
        return denied(denial_message(name, &report));
    }
    match webhook {
        Webhook::Validate if !report.warnings.is_empty() => {
            let mut response = allow;
            report.warnings.truncate(validation::LISTED_PROBLEMS);
            response.warnings = Some(report.warnings);
            (response, Decision::Allowed, plan)
        }
        Webhook::Mutate if !update && concurrency_missing => {
            use base64::Engine as _;
            let mut response = allow;
            response.patch_type = Some("JSONPatch");
            response.patch =
                Some(base64::engine::general_purpose::STANDARD.encode(DEFAULT_CONCURRENCY));
            (response, Decision::Patched, plan)
        }
        _ => (allow, Decision::Allowed, plan),
    }
}

/// The defaults a Plan gets on create: the Go controller treats a missing concurrency as 0 and
/// silently upgrades nothing. (`add` also replaces an explicit `null`.)
const DEFAULT_CONCURRENCY: &str = r#"[{"op":"add","path":"/spec/concurrency","value":1}]"#;

/// A Plan as the mutating webhook would store it when created (`preview` of a Plan that is
/// not in the cluster yet): the same patch, applied.
pub fn created(plan: &Plan) -> Plan {
    if plan.spec.concurrency.is_some() {
        return plan.clone();
    }
    let patched = serde_json::to_value(plan).and_then(|mut value| {
        let patch: json_patch::Patch = serde_json::from_str(DEFAULT_CONCURRENCY)?;
        if json_patch::patch(&mut value, &patch).is_ok() {
            serde_json::from_value(value)
        } else {
            Ok(plan.clone())
        }
    });
    patched.unwrap_or_else(|_| plan.clone())
}

/// Whether two objects have the same `spec` (both may have none). Equal text settles it; text
/// that differs (the API server writes both the same way, so rarely) is compared as JSON.
fn same_spec(old: &RawValue, new: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct SpecOf<'a> {
        #[serde(borrow, default)]
        spec: Option<&'a RawValue>,
    }
    fn spec(raw: &RawValue) -> Option<Option<&RawValue>> {
        serde_json::from_str::<SpecOf>(raw.get())
            .ok()
            .map(|o| o.spec)
    }
    match (spec(old), spec(new)) {
        (Some(None), Some(None)) => true,
        (Some(Some(a)), Some(Some(b))) if a.get() == b.get() => true,
        (Some(Some(a)), Some(Some(b))) => {
            measure(old).is_ok()
                && serde_json::from_str::<serde_json::Value>(a.get()).ok()
                    == serde_json::from_str::<serde_json::Value>(b.get()).ok()
        }
        _ => false,
    }
}

/// Counts the JSON values of `raw` without building anything, failing past [`MAX_VALUES`] or at
/// a string longer than [`MAX_STRING`].
/// Nesting deeper than serde_json's limit (128) fails too.
fn measure(raw: &RawValue) -> Result<usize, String> {
    let count = Cell::new(0);
    let mut json = serde_json::Deserializer::from_str(raw.get());
    Counted(&count)
        .deserialize(&mut json)
        .map_err(|e| e.to_string())?;
    Ok(count.get())
}

/// Visits every value of a JSON document, counting it.
#[derive(Clone, Copy)]
struct Counted<'c>(&'c Cell<usize>);

impl Counted<'_> {
    fn tick<E: de::Error>(self) -> Result<(), E> {
        let n = self.0.get() + 1;
        self.0.set(n);
        if n > MAX_VALUES {
            return Err(E::custom(format!(
                "it holds more than {MAX_VALUES} JSON values; a Plan needs a few hundred"
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counted<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.tick()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.tick()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.tick()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.tick()
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        if text.len() > MAX_STRING {
            return Err(E::custom(format!(
                "it holds a string of {} bytes; at most {MAX_STRING} are accepted",
                text.len()
            )));
        }
        self.tick()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.tick()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            self.tick()?;
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// The denial: one line for one problem, a list for several, at most
/// [`validation::LISTED_PROBLEMS`] of them.
fn denial_message(name: &str, report: &validation::Report) -> String {
    let name = validation::bounded(&format!("{name:?}"));
    let problems: Vec<&str> = report
        .problems
        .iter()
        .take(validation::LISTED_PROBLEMS)
        .map(|p| p.message.as_str())
        .collect();
    let mut message = match problems.as_slice() {
        [one] => format!("Plan {name} is invalid: {one}"),
        many => format!(
            "Plan {name} is invalid ({} problems):\n- {}",
            report.problems.len(),
            many.join("\n- ")
        ),
    };
    if let Some(more) = report.unlisted() {
        message.push_str(&format!("\n- and {more} more"));
    }
    message
}

#[cfg(test)]
mod tests;
