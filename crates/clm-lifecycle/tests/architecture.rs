//! The lifecycle's architecture invariants (ARCHITECTURE.md § Lifecycle), checked on its
//! sources: its modules depend downward only, and each rule names the only files allowed to do
//! something.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clm_testkit::arch::{self, assert_layered, cycle, edges, module_of};

/// Top-level modules, top to bottom: each uses only modules after it (lib.rs).
const LAYERS: &[&str] =
    &["pages", "api", "events", "journeys", "messaging", "contacts_client", "publish", "convert", "store", "domain"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files() -> Vec<(String, String)> {
    arch::files(&src())
}

fn users(needle: &str) -> Vec<String> {
    arch::users(&src(), needle)
}

#[test]
fn modules_depend_downward_only() {
    let files = files();
    assert_layered(&files, &[], LAYERS);
    // The parser sees the edges there are.
    let top = edges(&files, &[]);
    for (a, b) in [
        ("api", "journeys"),
        ("api", "events"),
        ("events", "journeys"),
        ("journeys", "contacts_client"),
        ("contacts_client", "publish"),
        ("publish", "convert"),
        ("convert", "store"),
        ("store", "domain"),
    ] {
        assert!(top.contains_key(&(a.into(), b.into())), "{a} → {b} not seen: {top:?}");
    }
    // And no cycle among the modules of any directory.
    let dirs: BTreeSet<Vec<String>> = files.iter().map(|(rel, _)| module_of(rel)).collect();
    for dir in dirs {
        let parent: Vec<&str> = dir.iter().map(String::as_str).collect();
        let e = edges(&files, &parent);
        assert_eq!(cycle(&e), None, "a cycle among the modules of {parent:?}: {e:?}");
    }
}

#[test]
fn the_layer_check_sees_the_cycles_that_were() {
    // Before `publish` and `convert`: the publisher lived in `events`, which consumed through
    // `journeys`, whose automations held the `contacts_client`'s Automator, which held the
    // publisher; `events` also borrowed the API's conversions.
    let old = [
        ("contacts_client.rs", "pub struct Automator {\n    pub publisher: crate::events::Publisher,\n}"),
        (
            "events/mod.rs",
            "use crate::api::convert::{SURVEY_RESPONSE, kind_key};\nuse crate::journeys::{Happened, advance};",
        ),
        ("events/scheduler.rs", "use crate::contacts_client::Automator;"),
        (
            "journeys/automations.rs",
            "use crate::contacts_client::{Automator, ContactsProbe};\nuse crate::events::Publisher;",
        ),
        ("api/mod.rs", "pub mod convert;\nuse crate::events::Publisher;"),
        ("api/convert.rs", "use crate::store::ModelRecord;"),
        ("store/mod.rs", "use crate::domain::model::StageKey;"),
    ];
    let files: Vec<(String, String)> = old.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
    let e = edges(&files, &[]);
    for (a, b) in
        [("contacts_client", "events"), ("events", "journeys"), ("journeys", "contacts_client"), ("events", "api")]
    {
        assert!(e.contains_key(&(a.into(), b.into())), "{a} → {b} not seen: {e:?}");
    }
    assert_eq!(cycle(&e), Some(vec!["api".into(), "events".into(), "api".into()]));
    let without_api: BTreeMap<_, _> = e.into_iter().filter(|((a, b), _)| a != "api" && b != "api").collect();
    assert_eq!(cycle(&without_api), Some(vec!["contacts_client".into(), "events".into(), "contacts_client".into()]));
    // Without the scheduler's edge, still contacts client → events → automations → contacts client.
    let three: BTreeMap<_, _> = without_api
        .into_iter()
        .filter(|((a, b), _)| (a.as_str(), b.as_str()) != ("events", "contacts_client"))
        .collect();
    assert_eq!(
        cycle(&three),
        Some(vec!["contacts_client".into(), "events".into(), "journeys".into(), "contacts_client".into()])
    );
}

#[test]
fn only_advance_changes_journeys() {
    // Rebuilding a history, writing a move and publishing StageChanged: `journeys::advance`.
    assert_eq!(users("rebuild_journey("), ["journeys/mod.rs", "store/journeys.rs"]);
    assert_eq!(users("insert_move("), ["journeys/mod.rs", "store/journeys.rs"]);
    assert_eq!(users(".stage_changes("), ["journeys/mod.rs"]);
    assert_eq!(users("automations::enqueue("), ["journeys/mod.rs"]);
}

#[test]
fn deliveries_are_queued_in_one_place() {
    // A delivery is written by `messaging::enqueue`, in the caller's unit of work, so it exists
    // exactly when the change that asked for it committed.
    assert_eq!(users("insert_delivery("), ["messaging/mod.rs", "store/messaging.rs"]);
    assert_eq!(users("messaging::enqueue("), ["api/deliveries.rs", "events/mod.rs", "journeys/actions.rs"]);
}

#[test]
fn automations_and_campaigns_act_through_one_module() {
    // One engine: the triggers, the conditions and the actions of automations and campaigns
    // are the same code (`journeys::{triggers, conditions, actions}`).
    assert_eq!(users("perform("), ["journeys/actions.rs", "journeys/automations.rs", "journeys/campaigns.rs"]);
    assert_eq!(users("evaluate("), ["journeys/automations.rs", "journeys/campaigns.rs", "journeys/conditions.rs"]);
}

#[test]
fn unsubscribes_are_recorded_in_one_place() {
    // A suppression and its UnsubscribeRecorded are written together by
    // `messaging::unsubscribe::record` (one unit of work), which only the hosted page calls.
    assert_eq!(users("suppress("), ["messaging/unsubscribe.rs", "store/messaging.rs"]);
    assert_eq!(users(".unsubscribed("), ["messaging/unsubscribe.rs"]);
    assert_eq!(users("unsubscribe::record("), ["pages.rs"]);
}

#[test]
fn contacts_is_asked_in_one_place_with_no_transaction_open() {
    // `journeys::conditions::ask` is given no transaction; the code that runs inside one (an
    // automation's `Run`, a campaign's `run_step`) holds no contacts client.
    assert_eq!(users(".matches(tenant"), ["journeys/conditions.rs"]);
    assert_eq!(users(".in_segment("), ["journeys/conditions.rs"]);
    let campaigns =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/journeys/campaigns.rs")).unwrap();
    let run_step = &campaigns[campaigns.find("async fn run_step(").unwrap()..];
    let signature = &run_step[..run_step.find('{').unwrap()];
    assert!(
        !signature.contains("ContactsProbe") && !signature.contains("Automator"),
        "run_step must not hold a client: {signature}"
    );
    // Messages read the contact before any transaction opens (the sender, SendMessage, the
    // preview): each `contacts.get` comes before the file's first `UnitOfWork::begin`.
    assert_eq!(users("contacts.get("), ["api/deliveries.rs", "api/templates.rs", "messaging/sender.rs"]);
    let before = |f: &str, first: &str, then: &str| {
        let text = std::fs::read_to_string(src().join(f)).unwrap();
        let (a, b) = (text.find(first).unwrap(), text.find(then).unwrap());
        assert!(a < b, "{f}: `{first}` must come before `{then}`");
    };
    before("api/deliveries.rs", "contacts.get(", "UnitOfWork::begin");
    // The sender asks contacts in `process`, which is given no transaction; `take` opens one
    // only after `process` has returned.
    before("messaging/sender.rs", "self.process(&tenant, &d)", "UnitOfWork::begin");
    let sender = std::fs::read_to_string(src().join("messaging/sender.rs")).unwrap();
    let process = &sender[sender.find("async fn process(").unwrap()..];
    let signature = &process[..process.find('{').unwrap()];
    assert!(
        !signature.contains("txn") && !signature.contains("UnitOfWork"),
        "process gets no transaction: {signature}"
    );
    let engine =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/journeys/automations.rs")).unwrap();
    let run = &engine[engine.find("struct Run<'a>").unwrap()..];
    let fields = &run[..run.find('}').unwrap()];
    assert!(!fields.contains("ContactsProbe") && !fields.contains("Automator"), "Run must not hold a client: {fields}");
    let conditions =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/journeys/conditions.rs")).unwrap();
    let ask = &conditions[conditions.find("pub async fn ask(").unwrap()..];
    let signature = &ask[..ask.find('{').unwrap()];
    assert!(!signature.contains("txn") && !signature.contains("Transaction"), "ask gets no transaction: {signature}");
}

#[test]
fn the_tenant_is_a_tenant_id() {
    // Every function that is given the tenant takes the platform's `TenantId`, never text.
    assert_eq!(users("tenant: &str"), Vec::<String>::new());
    assert_eq!(users("tenant: String"), Vec::<String>::new());
}
