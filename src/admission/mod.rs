//! The admission webhooks: bytes of an `admission.k8s.io/v1` AdmissionReview in, the review to
//! answer out. Pure functions; the HTTP server and the metrics live elsewhere.
//!
//! Both webhooks apply the validation rules. The mutating webhook runs before the API server checks
//! the CRD schema, so denying there gives the user our complete, precise list of problems instead
//! of the schema's; the validating webhook runs last and sees the final object, including changes
//! made by other mutating webhooks. Warnings are only sent by the validating webhook, so kubectl
//! prints each once.

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};

use crate::api::GROUP;
use crate::validation;

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

/// The answer to one review.
#[derive(Debug)]
pub struct Answer {
    pub review: AdmissionReview<DynamicObject>,
    pub operation: &'static str,
    pub decision: Decision,
}

impl Answer {
    /// The review as the API server expects it on the wire. kube serializes the patch bytes as a
    /// JSON array of numbers; the AdmissionReview API specifies a base64 string, so it is sent so.
    pub fn to_json(&self) -> serde_json::Value {
        use base64::Engine as _;
        let mut json = serde_json::to_value(&self.review).unwrap_or_default();
        if let Some(patch) = self.review.response.as_ref().and_then(|r| r.patch.as_ref()) {
            json["response"]["patch"] =
                serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(patch));
        }
        json
    }
}

/// A body that is not an `admission.k8s.io/v1` AdmissionReview with a request; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Handles one AdmissionReview body for the given webhook.
pub fn handle(webhook: Webhook, body: &[u8]) -> Result<Answer, BadRequest> {
    let review: AdmissionReview<DynamicObject> = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_slice(body),
    )
    .map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." | "?" => BadRequest(format!("the body is not an AdmissionReview: {}", e.inner())),
            _ => BadRequest(format!(
                "the body is not an AdmissionReview: {path}: {}",
                e.inner()
            )),
        }
    })?;
    let (api_version, kind) = (review.types.api_version.clone(), review.types.kind.clone());
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(BadRequest(format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {api_version:?} and {kind:?}"
        )));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| BadRequest("the AdmissionReview has no request".to_owned()))?;
    let operation = match request.operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    };
    let (response, decision) = respond(webhook, &request);
    Ok(Answer {
        review: response.into_review(),
        operation,
        decision,
    })
}

fn respond(
    webhook: Webhook,
    request: &AdmissionRequest<DynamicObject>,
) -> (AdmissionResponse, Decision) {
    let allow = AdmissionResponse::from(request);
    let is_plan = request.kind.group == GROUP && request.kind.kind == "Plan";
    let writes = matches!(request.operation, Operation::Create | Operation::Update);
    if !is_plan || !writes {
        return (allow, Decision::Allowed);
    }
    let Some(object) = &request.object else {
        return (
            deny(allow, "the request carries no object to admit".to_owned()),
            Decision::Denied,
        );
    };
    let value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(e) => {
            return (
                deny(allow, format!("the object cannot be read: {e}")),
                Decision::Denied,
            );
        }
    };
    // An update that leaves the spec alone (labels, annotations, finalizers, deletion) is always
    // allowed, so a Plan stored while the webhook was down can still be edited and deleted.
    let spec_unchanged = request.operation == Operation::Update
        && request
            .old_object
            .as_ref()
            .and_then(|old| old.data.get("spec"))
            == value.get("spec");

    if !spec_unchanged {
        let mut report = validation::validate_value(&value);
        if request.operation == Operation::Update && concurrency_missing(&value) {
            // Defaulted on create only: a Plan stored without it (under the Go controller, where
            // it upgraded nothing) must not start upgrading because of an unrelated edit.
            report.warnings.push(
                "spec.concurrency is not set, so this Plan upgrades no node; set it (e.g. to 1) \
                 to start"
                    .to_owned(),
            );
        }
        if !report.is_valid() {
            return (
                deny(allow, denial_message(&value, &report)),
                Decision::Denied,
            );
        }
        if webhook == Webhook::Validate && !report.warnings.is_empty() {
            let mut response = allow;
            response.warnings = Some(report.warnings);
            return (response, Decision::Allowed);
        }
    }
    let defaulted = (request.operation == Operation::Create)
        .then(|| defaults(&value))
        .flatten();
    match (webhook, defaulted) {
        (Webhook::Mutate, Some(patch)) => match allow.clone().with_patch(patch) {
            Ok(response) => (response, Decision::Patched),
            Err(e) => (
                deny(allow, format!("the defaults cannot be applied: {e}")),
                Decision::Denied,
            ),
        },
        _ => (allow, Decision::Allowed),
    }
}

/// The defaults a Plan needs, as a JSON patch; `None` when it already has them. Applying the
/// patch and asking again yields `None`.
pub fn defaults(plan: &serde_json::Value) -> Option<Patch> {
    // The Go controller treats a missing concurrency as 0 and silently upgrades nothing.
    concurrency_missing(plan).then(|| {
        Patch(vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["spec", "concurrency"]),
            value: serde_json::Value::from(1),
        })])
    })
}

fn concurrency_missing(plan: &serde_json::Value) -> bool {
    plan.get("spec")
        .and_then(|s| s.as_object())
        .is_some_and(|spec| {
            spec.get("concurrency")
                .is_none_or(serde_json::Value::is_null)
        })
}

fn denial_message(plan: &serde_json::Value, report: &validation::Report) -> String {
    let name = plan
        .pointer("/metadata/name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    let problems: Vec<&str> = report.problems.iter().map(|p| p.message.as_str()).collect();
    match problems.as_slice() {
        [one] => format!("Plan {name:?} is invalid: {one}"),
        many => format!(
            "Plan {name:?} is invalid ({} problems):\n- {}",
            many.len(),
            many.join("\n- ")
        ),
    }
}

fn deny(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut response = response.deny(message.clone());
    response.result = Status::failure(&message, "Invalid").with_code(422);
    response
}

#[cfg(test)]
mod tests;
