//! The lifecycle's architecture invariants (ARCHITECTURE.md § Lifecycle), checked on its
//! sources: its modules depend downward only, and each rule names the only files allowed to do
//! something.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, top to bottom: each uses only modules after it (lib.rs).
const LAYERS: &[&str] = &["api", "events", "journeys", "contacts_client", "publish", "convert", "store", "domain"];

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

/// The library's files: (path under `src/`, `/`-separated, text).
fn files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&root, &mut paths);
    let mut out: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            (rel, std::fs::read_to_string(p).unwrap())
        })
        .filter(|(rel, _)| rel != "main.rs")
        .collect();
    out.sort();
    out
}

/// The module a file is: `store/read/mod.rs` → [store, read], `api/kpi.rs` → [api, kpi].
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

fn ident_end(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len())
}

/// The paths a use tree names: `a::{b, c::d}` → [a, b], [a, c, d] (leaves as written).
fn expand(tree: &str, base: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = base.to_vec();
    let mut rest = tree.trim_start();
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand(&group[start..i], &path, out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&group[start..i], &path, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let n = ident_end(rest);
        if n == 0 {
            out.push(path);
            return;
        }
        path.push(rest[..n].to_owned());
        rest = &rest[n..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r.trim_start(),
            None => {
                out.push(path);
                return;
            }
        }
    }
}

/// The use tree at the start of `s`: `a::b::{c, d::{e}}` of `a::b::{c, d::{e}};`.
fn use_tree(s: &str) -> &str {
    let mut at = 0;
    loop {
        at += ident_end(&s[at..]);
        if s[at..].starts_with("::") {
            at += 2;
        } else if s[at..].starts_with('{') {
            let mut depth = 0;
            for (i, c) in s[at..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            return &s[..=(at + i)];
                        }
                    }
                    _ => {}
                }
            }
            return &s[at..];
        } else {
            return &s[..at];
        }
    }
}

/// The absolute paths (`crate::…`, `super::…`, `self::…`) a file's code names.
fn references(rel: &str, text: &str) -> Vec<Vec<String>> {
    let me = module_of(rel);
    let code = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    for (i, _) in code.match_indices("::") {
        // The first segment of a path: an identifier before `::` not itself after `::`.
        let before = &code[..i];
        let start = before.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
        if before[..start].ends_with("::") {
            continue;
        }
        let head = &before[start..];
        let mut base: Vec<String> = match head {
            "crate" => Vec::new(),
            "self" => me.clone(),
            "super" => me[..me.len().saturating_sub(1)].to_vec(),
            _ => continue,
        };
        let mut rest = &code[i + 2..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        expand(use_tree(rest), &base, &mut out);
    }
    out
}

/// Edges between the child modules of `parent` (`a` uses `b`), each with a file that shows it.
fn edges(files: &[(String, String)], parent: &[&str]) -> BTreeMap<(String, String), String> {
    let parent: Vec<String> = parent.iter().map(|s| (*s).to_owned()).collect();
    let children: BTreeSet<String> = files
        .iter()
        .map(|(rel, _)| module_of(rel))
        .filter(|m| m.len() > parent.len() && m.starts_with(&parent))
        .map(|m| m[parent.len()].clone())
        .collect();
    let mut out = BTreeMap::new();
    for (rel, text) in files {
        let me = module_of(rel);
        if !(me.len() > parent.len() && me.starts_with(&parent)) {
            continue;
        }
        for path in references(rel, text) {
            if path.len() > parent.len() && path.starts_with(&parent) {
                let (a, b) = (&me[parent.len()], &path[parent.len()]);
                if a != b && children.contains(b) {
                    out.entry((a.clone(), b.clone())).or_insert_with(|| rel.clone());
                }
            }
        }
    }
    out
}

/// A cycle among the edges, if any, as the modules along it.
fn cycle(edges: &BTreeMap<(String, String), String>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<(String, String), String>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for (a, b) in edges.keys() {
            if a == n
                && let Some(c) = visit(b, edges, path, done)
            {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|(a, _)| visit(a, edges, &mut Vec::new(), &mut done))
}

/// Every edge among `parent`'s modules goes down `layers`; and no directory has a cycle.
fn assert_layered(files: &[(String, String)], parent: &[&str], layers: &[&str]) {
    for ((a, b), file) in edges(files, parent) {
        let (ia, ib) = (layers.iter().position(|l| *l == a), layers.iter().position(|l| *l == b));
        assert!(ia.is_some() && ib.is_some(), "{parent:?}: {a} or {b} is not in the layers {layers:?}");
        assert!(ia < ib, "{parent:?}: {a} uses {b} ({file}), but {b} is above it in {layers:?}");
    }
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

#[test]
fn the_tenant_is_a_tenant_id() {
    // Every function that is given the tenant takes the platform's `TenantId`, never text.
    assert_eq!(users("tenant: &str"), Vec::<String>::new());
    assert_eq!(users("tenant: String"), Vec::<String>::new());
}
