//! The metrics crate's architecture invariants (ARCHITECTURE.md § Metrics), checked on its
//! sources: its modules depend downward only, and every statement is scoped to a tenant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, top to bottom: each uses only modules after it.
const LAYERS: &[&str] = &["api", "events", "store", "watch", "domain"];
/// `store`'s modules, top to bottom.
const STORE_LAYERS: &[&str] = &["write", "read", "goals", "migrations", "counters", "sql"];

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

/// Files under `src/` whose code (comments aside) contains `needle`.
fn users(needle: &str) -> Vec<String> {
    files()
        .into_iter()
        .filter(|(_, text)| text.lines().filter(|l| !l.trim_start().starts_with("//")).any(|l| l.contains(needle)))
        .map(|(rel, _)| rel)
        .collect()
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
    assert_layered(&files, &["store"], STORE_LAYERS);
    // The parser sees the edges there are.
    let top = edges(&files, &[]);
    for (a, b) in [("api", "store"), ("api", "watch"), ("events", "store"), ("events", "domain"), ("store", "domain")] {
        assert!(top.contains_key(&(a.into(), b.into())), "{a} → {b} not seen: {top:?}");
    }
    let store = edges(&files, &["store"]);
    for (a, b) in [("write", "counters"), ("read", "sql"), ("migrations", "counters"), ("counters", "sql")] {
        assert!(store.contains_key(&(a.into(), b.into())), "{a} → {b} not seen: {store:?}");
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
    // The store before its split: counters read the model's tables, migrations filled the
    // roll-ups through the counters, and the model (queries and writes) used both.
    let old = [
        ("store/counters.rs", "use crate::store::model::{Key, ROLL_SPANS};"),
        ("store/migrations.rs", "use super::counters::{FUNNEL_ROLL, TIME_HIST_ROLL};"),
        ("store/model.rs", "use super::{counters, migrations::READ_MODEL_TABLES};\nuse super::sql::{rows, v};"),
        ("store/sql.rs", "pub fn v() {}"),
        ("api/mod.rs", "use crate::store::model::{self, Slice};"),
    ];
    let files: Vec<(String, String)> = old.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
    let e = edges(&files, &["store"]);
    assert!(e.contains_key(&("model".into(), "migrations".into())), "{e:?}");
    assert!(e.contains_key(&("model".into(), "sql".into())), "{e:?}");
    assert_eq!(cycle(&e), Some(vec!["counters".into(), "model".into(), "counters".into()]));
    assert!(edges(&files, &[]).contains_key(&("api".into(), "store".into())));
    assert_eq!(
        references("a/b.rs", "use super::super::x::{y, z::{w}};\nlet q = crate::m::f(1);"),
        [vec!["x".to_owned(), "y".into()], vec!["x".into(), "z".into(), "w".into()], vec!["m".into(), "f".into()]]
    );
}

#[test]
fn statements_are_written_in_one_place() {
    // Every statement is a tenant-scoped `store::sql::Sql`, run by `store/sql.rs`; only the
    // schema's migrations speak SQL of their own (DDL, backfills over every tenant).
    for raw in ["from_sql_and_values", "execute_unprepared", "execute_raw", "query_all_raw", "query_one_raw"] {
        let found: Vec<String> = users(raw).into_iter().filter(|f| !f.starts_with("store/migrations/")).collect();
        assert_eq!(found, ["store/sql.rs"], "{raw}");
    }
    // No SeaORM entity queries, which would not go through it.
    assert_eq!(users("EntityTrait"), Vec::<String>::new());
    assert_eq!(users("Entity::"), Vec::<String>::new());
    // The store's functions take the tenant as a `TenantId`, never as text.
    assert_eq!(users("tenant: &str"), Vec::<String>::new());
    assert_eq!(users("tenant: String"), Vec::<String>::new());
}
