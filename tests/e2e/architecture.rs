//! The workspace's architecture rules, checked on every crate's sources (ARCHITECTURE.md §
//! Layers): inside each crate, modules depend downward only — no cycle among the modules of
//! any directory — and no source file outgrows a room (over 600 lines of code, tests aside)
//! unless its header says it is one cohesive thing. The crates' own `tests/architecture.rs`
//! add their layer orders and rules.

use std::path::{Path, PathBuf};

use clm_testkit::arch::{assert_acyclic, cycle, edges, files};

/// Lines of code a file may have before it needs a reason (tests aside).
const ROOM: usize = 600;

fn crate_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path().join("src")).filter(|src| src.is_dir()).collect();
    out.sort();
    out
}

#[test]
fn every_crate_depends_downward_only() {
    let crates = crate_sources();
    assert!(crates.len() >= 8, "the crates are found: {crates:?}");
    for src in crates {
        let files = files(&src);
        assert!(!files.is_empty(), "{}", src.display());
        eprintln!("{}: {} files", src.display(), files.len());
        assert_acyclic(&files);
    }
}

#[test]
fn the_check_sees_a_cycle() {
    // The parser follows `use` trees and `super::` paths, so a cycle made either way is seen.
    let files = vec![
        ("a.rs".to_owned(), "use crate::{b::B, c};\n".to_owned()),
        ("b/mod.rs".to_owned(), "pub struct B;\nfn f() { crate::a::g(); }\n".to_owned()),
        ("c/x.rs".to_owned(), "use super::super::b;\n".to_owned()),
    ];
    let e = edges(&files, &[]);
    assert!(e.contains_key(&("a".into(), "b".into())) && e.contains_key(&("c".into(), "b".into())), "{e:?}");
    assert!(cycle(&e).is_some(), "a ↔ b: {e:?}");
}

#[test]
fn big_files_say_why() {
    let mut big = Vec::new();
    for src in crate_sources() {
        for (rel, text) in files(&src) {
            // `files` gives the code up to the unit tests.
            let code = text.lines().count();
            let header: String = text.lines().take_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join(" ");
            if code > ROOM && !header.contains("one cohesive") {
                big.push(format!("{}/{rel}: {code} lines", src.display()));
            }
        }
    }
    assert_eq!(big, Vec::<String>::new(), "split these, or say in the header why each is one cohesive thing");
}
