use super::*;
use serde_json::{Value, json};

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

fn plan(spec: Value) -> Value {
    json!({
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": "k3s-server", "namespace": "system-upgrade"},
        "spec": spec,
    })
}

fn valid_spec() -> Value {
    json!({"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {}, "upgrade": {"image": "rancher/k3s-upgrade"}})
}

fn review(operation: &str, object: Option<Value>, old: Option<Value>) -> Vec<u8> {
    review_of("upgrade.cattle.io", "Plan", operation, object, old, false)
}

fn review_of(
    group: &str,
    kind: &str,
    operation: &str,
    object: Option<Value>,
    old: Option<Value>,
    dry_run: bool,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "plans"},
            "name": "k3s-server",
            "namespace": "system-upgrade",
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "oldObject": old,
            "dryRun": dry_run,
        }
    }))
    .unwrap()
}

/// The answer as the API server reads it.
fn answer(webhook: Webhook, body: &[u8]) -> (Value, Decision) {
    let answer = handle(webhook, "system-upgrade", body).unwrap();
    let json = answer.to_json();
    assert_eq!(json["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(json["kind"], "AdmissionReview");
    assert_eq!(json["response"]["uid"], UID, "the uid is always echoed");
    (json["response"].clone(), answer.decision)
}

fn patch_of(response: &Value) -> Option<Value> {
    use base64::Engine as _;
    let encoded = response.get("patch")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn valid_plan_is_allowed_by_both() {
    for webhook in [Webhook::Mutate, Webhook::Validate] {
        let (response, decision) =
            answer(webhook, &review("CREATE", Some(plan(valid_spec())), None));
        assert_eq!(response["allowed"], true);
        assert_eq!(decision, Decision::Allowed);
        assert!(response.get("patch").is_none());
        assert!(response.get("warnings").is_none());
    }
}

#[test]
fn missing_concurrency_defaults_to_one_and_the_patch_is_idempotent() {
    let mut spec = valid_spec();
    spec.as_object_mut().unwrap().remove("concurrency");
    let object = plan(spec);
    let (response, decision) = answer(
        Webhook::Mutate,
        &review("CREATE", Some(object.clone()), None),
    );
    assert_eq!(decision, Decision::Patched);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = patch_of(&response).unwrap();
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/spec/concurrency", "value": 1}])
    );

    let mut patched = object;
    json_patch::patch(
        &mut patched,
        &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
    )
    .unwrap();
    assert_eq!(patched["spec"]["concurrency"], 1);
    let (again, decision) = answer(Webhook::Mutate, &review("CREATE", Some(patched), None));
    assert_eq!(decision, Decision::Allowed);
    assert!(
        again.get("patch").is_none(),
        "a second pass yields no patch"
    );
}

#[test]
fn null_concurrency_is_defaulted_too() {
    let mut spec = valid_spec();
    spec["concurrency"] = Value::Null;
    let (response, _) = answer(Webhook::Mutate, &review("CREATE", Some(plan(spec)), None));
    assert_eq!(patch_of(&response).unwrap()[0]["path"], "/spec/concurrency");
}

#[test]
fn updates_keep_a_missing_concurrency_and_warn() {
    let mut old_spec = valid_spec();
    old_spec.as_object_mut().unwrap().remove("concurrency");
    let mut new_spec = old_spec.clone();
    new_spec["version"] = json!("v1.31.0+k3s1");
    let request = review("UPDATE", Some(plan(new_spec)), Some(plan(old_spec)));
    let (response, decision) = answer(Webhook::Mutate, &request);
    assert_eq!(decision, Decision::Allowed);
    assert!(response.get("patch").is_none(), "no silent start on update");
    let (response, decision) = answer(Webhook::Validate, &request);
    assert_eq!(decision, Decision::Allowed);
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("spec.concurrency is not set"),
        "{response}"
    );
}

#[test]
fn validating_webhook_never_patches() {
    let mut spec = valid_spec();
    spec.as_object_mut().unwrap().remove("concurrency");
    let (response, decision) = answer(Webhook::Validate, &review("CREATE", Some(plan(spec)), None));
    assert_eq!(decision, Decision::Allowed);
    assert!(response.get("patch").is_none());
}

#[test]
fn invalid_plan_is_denied_with_every_problem() {
    let mut spec = valid_spec();
    spec["concurrency"] = json!(0);
    spec["version"] = json!("v1.20");
    for webhook in [Webhook::Mutate, Webhook::Validate] {
        let (response, decision) =
            answer(webhook, &review("CREATE", Some(plan(spec.clone())), None));
        assert_eq!(decision, Decision::Denied);
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 422);
        assert_eq!(response["status"]["reason"], "Invalid");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Plan \"k3s-server\" is invalid (2 problems):\n- "),
            "{message}"
        );
        assert!(
            message.contains("\n- spec.concurrency: must be at least 1, got 0"),
            "{message}"
        );
        assert!(
            message.contains("\n- spec.version: \"v1.20\" is not SemVer"),
            "{message}"
        );
    }
}

#[test]
fn one_problem_reads_as_one_line() {
    let mut spec = valid_spec();
    spec["channel"] = json!("not a url");
    spec.as_object_mut().unwrap().remove("version");
    let (response, _) = answer(Webhook::Validate, &review("CREATE", Some(plan(spec)), None));
    assert_eq!(
        response["status"]["message"],
        "Plan \"k3s-server\" is invalid: spec.channel: \"not a url\" is not an absolute http or https URL with a host (e.g. https://update.k3s.io/v1-release/channels/stable)"
    );
}

#[test]
fn ill_typed_plans_are_denied_naming_the_field() {
    let mut spec = valid_spec();
    spec["concurrency"] = json!("three");
    let (response, decision) = answer(Webhook::Mutate, &review("CREATE", Some(plan(spec)), None));
    assert_eq!(decision, Decision::Denied);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.concurrency: \"three\" is neither a number of nodes nor a percentage")
    );
}

#[test]
fn warnings_come_from_the_validating_webhook_only() {
    let mut spec = valid_spec();
    spec["drain"] = json!({"force": true});
    let (response, _) = answer(
        Webhook::Validate,
        &review("CREATE", Some(plan(spec.clone())), None),
    );
    assert_eq!(response["allowed"], true);
    let warnings = response["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("spec.drain.force:")
    );
    let (response, _) = answer(Webhook::Mutate, &review("CREATE", Some(plan(spec)), None));
    assert!(response.get("warnings").is_none());
}

#[test]
fn updates_are_validated() {
    let old = plan(valid_spec());
    let mut spec = valid_spec();
    spec["concurrency"] = json!(-1);
    let (response, _) = answer(
        Webhook::Validate,
        &review("UPDATE", Some(plan(spec)), Some(old)),
    );
    assert_eq!(response["allowed"], false);
}

#[test]
fn updates_that_keep_an_invalid_spec_are_allowed() {
    let mut spec = valid_spec();
    spec["concurrency"] = json!(0);
    let old = plan(spec.clone());
    let mut new = plan(spec);
    new["metadata"]["labels"] = json!({"team": "a"});
    for webhook in [Webhook::Mutate, Webhook::Validate] {
        let (response, _) = answer(
            webhook,
            &review("UPDATE", Some(new.clone()), Some(old.clone())),
        );
        assert_eq!(response["allowed"], true, "{webhook:?}");
    }
}

#[test]
fn deletes_and_other_kinds_are_allowed_untouched() {
    let mut invalid = valid_spec();
    invalid["concurrency"] = json!(0);
    for webhook in [Webhook::Mutate, Webhook::Validate] {
        let (response, decision) = answer(
            webhook,
            &review("DELETE", None, Some(plan(invalid.clone()))),
        );
        assert_eq!(
            (response["allowed"].clone(), decision),
            (json!(true), Decision::Allowed)
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {}});
        let (response, decision) = answer(
            webhook,
            &review_of("", "Pod", "CREATE", Some(pod), None, false),
        );
        assert_eq!(
            (response["allowed"].clone(), decision),
            (json!(true), Decision::Allowed)
        );
        assert!(response.get("patch").is_none());
    }
}

#[test]
fn dry_run_gets_the_same_answer() {
    let mut spec = valid_spec();
    spec.as_object_mut().unwrap().remove("concurrency");
    let body = review_of(
        "upgrade.cattle.io",
        "Plan",
        "CREATE",
        Some(plan(spec.clone())),
        None,
        true,
    );
    let (response, decision) = answer(Webhook::Mutate, &body);
    assert_eq!(decision, Decision::Patched);
    assert!(patch_of(&response).is_some());
}

#[test]
fn operation_is_reported() {
    let answer = handle(
        Webhook::Validate,
        "system-upgrade",
        &review("UPDATE", Some(plan(valid_spec())), Some(plan(valid_spec()))),
    )
    .unwrap();
    assert_eq!(answer.operation, "UPDATE");
}

#[test]
fn malformed_bodies_are_bad_requests_with_a_reason() {
    let cases: [(&[u8], &str); 5] = [
        (b"", "the body is not an AdmissionReview"),
        (b"{not json", "the body is not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "the AdmissionReview has no request",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
            "request.uid",
        ),
    ];
    for (body, want) in cases {
        let error = handle(Webhook::Mutate, "system-upgrade", body).unwrap_err();
        assert!(
            error.0.contains(want),
            "{:?}: {error}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn objects_with_too_many_values_are_denied_before_they_are_read() {
    let mut spec = valid_spec();
    spec["tolerations"] = Value::Array(vec![json!({}); MAX_VALUES]);
    for webhook in [Webhook::Mutate, Webhook::Validate] {
        let (response, decision) =
            answer(webhook, &review("CREATE", Some(plan(spec.clone())), None));
        assert_eq!(decision, Decision::Denied);
        let message = response["status"]["message"].as_str().unwrap();
        assert_eq!(
            message,
            format!(
                "the Plan cannot be reviewed: it holds more than {MAX_VALUES} JSON values; a Plan needs a few hundred at line 1 column {}",
                message.rsplit(' ').next().unwrap()
            )
        );
    }
    // Under the bound the object is read and validated as usual.
    spec["tolerations"] = Value::Array(vec![json!({"operator": "Exists"}); MAX_VALUES / 4]);
    let (response, _) = answer(Webhook::Validate, &review("CREATE", Some(plan(spec)), None));
    assert_eq!(response["allowed"], true, "{response}");
}

#[test]
fn deep_nesting_is_refused_without_recursing_further() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","kind":{{"group":"upgrade.cattle.io","version":"v1","kind":"Plan"}},"operation":"CREATE","object":{deep}}}}}"#
    );
    let (response, decision) = answer(Webhook::Validate, body.as_bytes());
    assert_eq!(decision, Decision::Denied);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the Plan cannot be reviewed: recursion limit exceeded"),
        "{message}"
    );
    // Within the parser's limit the object is counted and then denied for its shape.
    let object = format!(r#"{{"spec":{}{}}}"#, "[".repeat(120), "]".repeat(120));
    let body = review_of("upgrade.cattle.io", "Plan", "CREATE", None, None, false);
    let body = String::from_utf8(body)
        .unwrap()
        .replace(r#""object":null"#, &format!(r#""object":{object}"#));
    let (response, decision) = answer(Webhook::Validate, body.as_bytes());
    assert_eq!(decision, Decision::Denied);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec"),
        "{response}"
    );
}

#[test]
fn denials_list_fifty_problems_and_cut_long_values() {
    let mut spec = valid_spec();
    spec["version"] = json!(format!("v1.2.3-{}", "x".repeat(100_000)));
    spec["secrets"] = Value::Array(
        (0..500)
            .map(|i| json!({"name": format!("Bad_{i}"), "path": "/x"}))
            .collect(),
    );
    let (response, _) = answer(Webhook::Mutate, &review("CREATE", Some(plan(spec)), None));
    let message = response["status"]["message"].as_str().unwrap();
    let listed = message.lines().filter(|l| l.starts_with("- spec.")).count();
    assert_eq!(listed, crate::validation::LISTED_PROBLEMS, "{message}");
    let total: usize = message
        .split_once(" problems)")
        .and_then(|(head, _)| head.rsplit('(').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 500, "{message}");
    assert!(
        message.ends_with(&format!(
            "\n- and {} more",
            total - crate::validation::LISTED_PROBLEMS
        )),
        "{message}"
    );
    assert!(message.len() < 60 * 1024, "{}", message.len());
}

#[test]
fn an_equal_spec_written_differently_is_unchanged() {
    let mut invalid = valid_spec();
    invalid["concurrency"] = json!(0);
    let new = serde_json::to_string(&plan(invalid.clone())).unwrap();
    let old = serde_json::to_string_pretty(&plan(invalid)).unwrap();
    let body = review("UPDATE", None, None);
    let body = String::from_utf8(body)
        .unwrap()
        .replace(r#""object":null"#, &format!(r#""object":{new}"#))
        .replace(r#""oldObject":null"#, &format!(r#""oldObject":{old}"#));
    let (response, decision) = answer(Webhook::Validate, body.as_bytes());
    assert_eq!(
        (response["allowed"].clone(), decision),
        (json!(true), Decision::Allowed)
    );
}

#[test]
fn oversized_uids_and_unknown_operations_are_bad_requests() {
    let body = String::from_utf8(review("CREATE", Some(plan(valid_spec())), None)).unwrap();
    let long = body.replace(UID, &"u".repeat(10_000));
    let error = handle(Webhook::Validate, "system-upgrade", long.as_bytes()).unwrap_err();
    assert!(
        error.0.contains("request.uid is 10000 bytes long"),
        "{error}"
    );
    let odd = body.replace("\"CREATE\"", "\"PATCH\"");
    let error = handle(Webhook::Validate, "system-upgrade", odd.as_bytes()).unwrap_err();
    assert!(error.0.contains("\"PATCH\" is not CREATE"), "{error}");
    let huge_kind = body.replace("\"Plan\"", &format!("{:?}", "P".repeat(1_000_000)));
    let (response, decision) = answer(Webhook::Validate, huge_kind.as_bytes());
    assert_eq!(
        (response["allowed"].clone(), decision),
        (json!(true), Decision::Allowed)
    );
    let garbage = format!(r#"{{"apiVersion":{:?}}}"#, "v".repeat(1_000_000));
    let error = handle(Webhook::Validate, "system-upgrade", garbage.as_bytes()).unwrap_err();
    assert!(error.0.len() < 1200, "{}", error.0.len());
}

#[test]
fn overlong_strings_are_denied_before_they_are_read() {
    let mut spec = valid_spec();
    spec["version"] = json!(format!("v1.2.3-{}", "x".repeat(MAX_STRING)));
    let (response, decision) = answer(Webhook::Validate, &review("CREATE", Some(plan(spec)), None));
    assert_eq!(decision, Decision::Denied);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "the Plan cannot be reviewed: it holds a string of {} bytes; at most {MAX_STRING} are accepted",
            MAX_STRING + 7
        )),
        "{message}"
    );
}

#[test]
fn plans_of_another_namespace_are_left_to_their_controller_with_a_word() {
    // Rancher's own controller serves cattle-system; a webhook configuration without our
    // namespaceSelector sends its Plans here.
    let mut body: Value = serde_json::from_slice(&review(
        "CREATE",
        Some(plan(json!({"upgrade": {"image": "x"}}))),
        None,
    ))
    .unwrap();
    body["request"]["namespace"] = json!("cattle-system");
    let body = serde_json::to_vec(&body).unwrap();
    let (validated, decision) = answer(Webhook::Validate, &body);
    assert_eq!(
        validated["allowed"], true,
        "an invalid Plan of another controller passes"
    );
    assert_eq!(decision, Decision::Allowed);
    let warning = validated["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("serves the Plans of namespace \"system-upgrade\" only")
            && warning.contains("\"cattle-system\""),
        "{warning}"
    );
    let (mutated, _) = answer(Webhook::Mutate, &body);
    assert!(patch_of(&mutated).is_none(), "not defaulted either");
}
