//! The lifecycle's architecture invariants (ARCHITECTURE.md § Lifecycle), checked on its
//! sources: each names the only files allowed to do something.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files under `src/` (relative, `/`-separated) whose code (comments aside) contains `needle`.
fn users(needle: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(needle))
        })
        .map(|f| f.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/"))
        .collect();
    out.sort();
    out
}

#[test]
fn only_advance_changes_journeys() {
    // Rebuilding a history, writing a move and publishing StageChanged: `journeys::advance`.
    assert_eq!(users("rebuild_journey("), ["journeys/mod.rs", "store/journeys.rs"]);
    assert_eq!(users("insert_move("), ["journeys/mod.rs", "store/journeys.rs"]);
    assert_eq!(users(".stage_changes("), ["journeys/mod.rs"]);
    assert_eq!(users("enqueue("), ["journeys/mod.rs", "store/automations.rs"]);
}

#[test]
fn contacts_is_asked_in_one_place_with_no_transaction_open() {
    // `journeys::automations::ask` is given no transaction; the code that runs inside one
    // (`Run`) holds no contacts client.
    assert_eq!(users(".matches(tenant"), ["journeys/automations.rs"]);
    assert_eq!(users(".in_segment("), ["journeys/automations.rs"]);
    let engine =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/journeys/automations.rs")).unwrap();
    let run = &engine[engine.find("struct Run<'a>").unwrap()..];
    let fields = &run[..run.find('}').unwrap()];
    assert!(!fields.contains("ContactsProbe") && !fields.contains("Automator"), "Run must not hold a client: {fields}");
    let ask = &engine[engine.find("pub async fn ask(").unwrap()..];
    let signature = &ask[..ask.find('{').unwrap()];
    assert!(!signature.contains("txn") && !signature.contains("Transaction"), "ask gets no transaction: {signature}");
}
