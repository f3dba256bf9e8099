//! The metrics crate's architecture invariants (ARCHITECTURE.md § Metrics), checked on its
//! sources: its modules depend downward only, and every statement is scoped to a tenant.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clm_testkit::arch::{self, assert_layered, cycle, edges, module_of, references};

/// Top-level modules, top to bottom: each uses only modules after it.
const LAYERS: &[&str] = &["api", "events", "store", "watch", "domain"];
/// `store`'s modules, top to bottom.
const STORE_LAYERS: &[&str] = &["write", "read", "goals", "migrations", "counters", "sql"];

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
