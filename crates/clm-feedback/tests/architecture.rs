//! Feedback's layering (ARCHITECTURE.md § Feedback), checked on its sources: its modules
//! depend downward only, no SQL in `api/`, no I/O in `domain/`.

use std::path::Path;

use clm_testkit::arch::{self, assert_acyclic, assert_layered, module_of};

/// Top-level modules, top to bottom: each uses only modules after it.
const LAYERS: &[&str] = &["pages", "api", "events", "store", "domain"];

fn files() -> Vec<(String, String)> {
    arch::files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// Lines of the files under `module/` containing any of `needles`, as `file: line`.
fn offending(module: &str, needles: &[&str]) -> Vec<String> {
    files()
        .into_iter()
        .filter(|(rel, _)| module_of(rel).first().is_some_and(|m| m == module))
        .flat_map(|(rel, text)| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with("//") && needles.iter().any(|n| l.contains(n)))
                .map(|l| format!("{rel}: {}", l.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn modules_import_downward_only() {
    // pages → api (and below); api → events, store, domain; events → store, domain; store →
    // domain; domain → nothing.
    let files = files();
    assert_layered(&files, &[], LAYERS);
    assert_acyclic(&files);
}

#[test]
fn no_sql_in_api_and_no_io_in_domain() {
    let sql = ["sea_query::", "Entity::", "Column::", "execute_unprepared", "Statement::"];
    assert_eq!(offending("api", &sql), Vec::<String>::new(), "api/ calls the store instead");
    let io = ["sea_orm", "tokio", "async fn", "ConnectionTrait", "crate::store", "tonic", "clm_proto"];
    assert_eq!(offending("domain", &io), Vec::<String>::new(), "domain/ is plain Rust");
}

#[test]
fn every_invitation_is_throttled_in_one_place() {
    // The fatigue cap: an invitation row is written only by `events::invite`, right after it
    // claimed the contact's ask against the throttle window; every path (API, batch, stage
    // entry, automation, recurring rounds) calls it. Reminders publish, they do not invite.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_eq!(arch::users(&src, "insert_invitation("), ["events/mod.rs", "store/invitations.rs"]);
    assert_eq!(arch::users(&src, "claim_ask("), ["events/mod.rs", "store/invitations.rs"]);
    let events = std::fs::read_to_string(src.join("events/mod.rs")).unwrap();
    let (ask, insert) = (events.find("store::claim_ask(").unwrap(), events.find("store::insert_invitation(").unwrap());
    assert!(ask < insert, "invite claims the ask before it writes the invitation");
}
