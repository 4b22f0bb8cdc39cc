//! Event writing (events.k8s.io/v1) on Plans, Nodes and the node the controller runs on.
//!
//! Each transition is its own event: kube's recorder folds events of one reason into a series
//! that keeps the first message, which would hide, say, the version a Plan resolved to after a
//! bump. One-shot events ([`Note::once`]) are sent once per Plan and key while the process lives. Plan
//! events of a rollout's progress ([`Note::merging`]) are held for [`HOLD`] and merged with the
//! Plan's later ones of the same reason, so a wave of completions is one event, not one per pass.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};

use crate::api::{PLAN_API_VERSION, PLAN_KIND, Plan, Reason};
use crate::controller::decide::{Note, Target};

/// How many one-shot event keys are remembered before the memory is cleared (a cleared key can
/// send its event once more).
const SAID_LIMIT: usize = 10_000;
/// Longest event note written; longer ones are cut.
const NOTE_LIMIT: usize = 1000;
/// How long a mergeable Plan event waits for more of its kind before it is written.
pub const HOLD: Duration = Duration::from_secs(1);

/// Who records events.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub controller: String,
    /// The node the controller runs on (or its host name).
    pub instance: Option<String>,
}

impl Reporter {
    pub fn new(controller: &str, node_name: Option<&str>) -> Self {
        Reporter {
            controller: controller.to_owned(),
            instance: node_name
                .map(str::to_owned)
                .or_else(|| std::env::var("HOSTNAME").ok()),
        }
    }
}

/// Writes the events of reconciles and drains.
pub struct Events {
    client: Client,
    reporter: Reporter,
    /// The Node cache, to point node events at the node's UID.
    nodes: Store<Node>,
    /// Keys of the one-shot events already recorded.
    said: Mutex<HashSet<String>>,
    /// Mergeable Plan events waiting to be written, by Plan UID and reason.
    held: Mutex<HashMap<(String, Reason), (ObjectReference, Note)>>,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter, nodes: Store<Node>) -> Self {
        Events {
            client,
            reporter,
            nodes,
            said: Mutex::default(),
            held: Mutex::default(),
        }
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Whether an event of the Plan of UID `plan` should be recorded: always, unless it is
    /// one-shot and was recorded before for that Plan (keys are per Plan: two Plans held for the
    /// same reason each say so).
    pub fn first_time(&self, plan: &str, note: &Note) -> bool {
        let Some(key) = &note.once else {
            return true;
        };
        let mut said = crate::sync::lock(&self.said);
        if said.len() >= SAID_LIMIT {
            said.clear();
        }
        said.insert(format!("{plan}/{key}"))
    }

    /// Records a note of a Plan's reconcile on its target, unless it is one-shot and was sent.
    pub async fn publish(self: &Arc<Self>, plan: &Plan, note: &Note) {
        let uid = plan.metadata.uid.as_deref().unwrap_or_default();
        if !self.first_time(uid, note) {
            return;
        }
        match &note.target {
            Target::Plan if note.merge.is_some() => self.hold(plan.object_ref(&()), note),
            Target::Plan => self.record(&plan.object_ref(&()), note).await,
            Target::Node(name) => {
                if let Some(node) = self.nodes.get(&ObjectRef::new(name)) {
                    self.on_node(&node, note).await;
                }
            }
        }
    }

    /// Holds a mergeable Plan event for [`HOLD`], merging it into one already held for the same
    /// Plan and reason; the first one held starts the timer that writes it.
    fn hold(self: &Arc<Self>, reference: ObjectReference, note: &Note) {
        let key = (reference.uid.clone().unwrap_or_default(), note.reason);
        {
            let mut held = crate::sync::lock(&self.held);
            if let Some((_, waiting)) = held.get_mut(&key) {
                waiting.absorb(note);
                return;
            }
            held.insert(key.clone(), (reference, note.clone()));
        }
        let events = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(HOLD).await;
            let taken = crate::sync::lock(&events.held).remove(&key);
            if let Some((reference, note)) = taken {
                events.record(&reference, &note).await;
            }
        });
    }

    /// Records an event on a node.
    pub async fn on_node(&self, node: &Node, note: &Note) {
        let reference = ObjectReference {
            namespace: None,
            ..node.object_ref(&())
        };
        self.record(&reference, note).await;
    }

    /// Records an event on a Plan known by name and UID, and on a node (a drain's events).
    pub async fn on_plan_and_node(&self, plan: &PlanRef, node: &str, note: &Note) {
        let reference = ObjectReference {
            api_version: Some(PLAN_API_VERSION.into()),
            kind: Some(PLAN_KIND.into()),
            name: Some(plan.name.clone()),
            namespace: Some(plan.namespace.clone()),
            uid: Some(plan.uid.clone()),
            ..ObjectReference::default()
        };
        self.record(&reference, note).await;
        if let Some(node) = self.nodes.get(&ObjectRef::new(node)) {
            self.on_node(&node, note).await;
        }
    }

    async fn record(&self, reference: &ObjectReference, note: &Note) {
        record(&self.client, &self.reporter, reference, note).await;
    }
}

/// A Plan by name, namespace and UID (what a drain task keeps of its Plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Records an event about the node the controller runs on (`Starting`, `Started`,
/// `StartFailed`, as the Go controller does); nothing without a node name.
pub async fn controller_event(
    client: &Client,
    reporter: &Reporter,
    warning: bool,
    reason: Reason,
    message: String,
) {
    let Some(node) = reporter.instance.clone() else {
        return;
    };
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node),
        ..ObjectReference::default()
    };
    let note = Note::new(Target::Plan, warning, reason, message);
    record(client, reporter, &reference, &note).await;
}

/// The event recording `note` about `reference` at `now`.
pub fn event(
    reporter: &Reporter,
    reference: &ObjectReference,
    note: &Note,
    now: jiff::Timestamp,
) -> Event {
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    // Event names are DNS subdomains: the object's name (cut to leave room) and a time.
    let object: String = reference
        .name
        .clone()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Event {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(if note.warning { "Warning" } else { "Normal" }.to_owned()),
        reason: Some(note.reason.as_str().to_owned()),
        action: Some(note.reason.as_str().to_owned()),
        note: Some(truncate(&note.message, NOTE_LIMIT)),
        regarding: Some(reference.clone()),
        reporting_controller: Some(format!("{}/{}", crate::api::GROUP, reporter.controller)),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        ..Event::default()
    }
}

/// Records an event about `reference`; a failure is logged, never returned (events are
/// best effort).
async fn record(client: &Client, reporter: &Reporter, reference: &ObjectReference, note: &Note) {
    let event = event(reporter, reference, note, jiff::Timestamp::now());
    let namespace = event.metadata.namespace.clone().unwrap_or_default();
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(error = %e, reason = %note.reason, "could not record an event");
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> Reporter {
        Reporter {
            controller: "suc".into(),
            instance: Some("node-1".into()),
        }
    }

    #[test]
    fn an_event_names_its_object_reason_and_reporter() {
        let reference = ObjectReference {
            name: Some("x".repeat(300)),
            namespace: Some("ns".into()),
            ..ObjectReference::default()
        };
        let note = Note::new(Target::Plan, true, Reason::JobFailed, "é".repeat(600));
        let now: jiff::Timestamp = "2026-11-28T10:00:00Z".parse().unwrap();
        let event = event(&reporter(), &reference, &note, now);
        let name = event.metadata.name.unwrap();
        assert!(
            name.starts_with(&"x".repeat(200)) && name.len() < 253,
            "{name}"
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("JobFailed"));
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some("upgrade.cattle.io/suc")
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
        // Cut at a character boundary within the limit.
        let text = event.note.unwrap();
        assert!(text.ends_with('…') && text.len() <= NOTE_LIMIT + '…'.len_utf8());
    }

    #[test]
    fn an_event_on_a_cluster_scoped_object_goes_to_default() {
        let reference = ObjectReference {
            name: Some("node-a".into()),
            ..ObjectReference::default()
        };
        let note = Note::new(Target::Plan, false, Reason::Started, "up".into());
        let event = event(&reporter(), &reference, &note, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(event.type_.as_deref(), Some("Normal"));
    }

    #[tokio::test]
    async fn one_shot_notes_are_sent_once() {
        let (client, _handle) = crate::controller::testing::client();
        let events = Events::new(client, reporter(), kube::runtime::reflector::store().0);
        let once = Note::new(Target::Plan, false, Reason::JobComplete, "m".into()).once("k".into());
        assert!(events.first_time("plan-a", &once));
        assert!(!events.first_time("plan-a", &once));
        assert!(events.first_time("plan-b", &once), "each Plan says it once");
        let always = Note::new(Target::Plan, false, Reason::JobComplete, "m".into());
        assert!(events.first_time("plan-a", &always) && events.first_time("plan-a", &always));
    }

    fn plan() -> Plan {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": "p", "namespace": "system-upgrade", "uid": "plan-uid"},
            "spec": {"upgrade": {"image": "i"}},
        }))
        .unwrap()
    }

    fn completed(nodes: &[&str]) -> Note {
        let nodes: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
        Note::new(
            Target::Plan,
            false,
            Reason::JobComplete,
            crate::controller::decide::completed_message(&nodes),
        )
        .merging(crate::controller::decide::Merge::Nodes(nodes))
    }

    /// Takes the next request, which must post an event in the Plan's namespace.
    async fn posted(
        api: &mut crate::controller::testing::ApiServer,
    ) -> crate::controller::testing::Seen {
        api.expect(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/system-upgrade/events",
            201,
            serde_json::json!({}),
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn progress_events_of_a_plan_are_held_and_merged_into_one() {
        let (client, mut api) = crate::controller::testing::client();
        let events = Arc::new(Events::new(
            client,
            reporter(),
            kube::runtime::reflector::store().0,
        ));
        let plan = plan();
        events.publish(&plan, &completed(&["a"])).await;
        events.publish(&plan, &completed(&["b", "c"])).await;
        events.publish(&plan, &completed(&["a"])).await;
        let sync = |nodes: &str| {
            Note::new(
                Target::Plan,
                false,
                Reason::SyncJob,
                format!("on Nodes {nodes}"),
            )
            .merging(crate::controller::decide::Merge::Latest)
        };
        events.publish(&plan, &sync("d")).await;
        events.publish(&plan, &sync("d,e")).await;
        // An event that is not mergeable is written at once.
        let validated = Note::new(Target::Plan, false, Reason::Validated, "ok".into());
        let (_, seen) = tokio::join!(events.publish(&plan, &validated), posted(&mut api),);
        assert_eq!(seen.body["reason"], "Validated");

        tokio::time::advance(HOLD).await;
        let mut notes = Vec::new();
        for _ in 0..2 {
            let seen = posted(&mut api).await;
            notes.push((
                seen.body["reason"].as_str().unwrap().to_owned(),
                seen.body["note"].as_str().unwrap().to_owned(),
            ));
        }
        notes.sort();
        assert_eq!(
            notes,
            [
                (
                    "JobComplete".to_owned(),
                    "Jobs completed on Nodes a,b,c".to_owned()
                ),
                ("SyncJob".to_owned(), "on Nodes d,e".to_owned()),
            ]
        );
        // Nothing is held any more: the next one starts a new hold.
        events.publish(&plan, &completed(&["f"])).await;
        tokio::time::advance(HOLD).await;
        let seen = posted(&mut api).await;
        assert_eq!(seen.body["note"], "Job completed on Node f");
        api.done().await;
    }
}
