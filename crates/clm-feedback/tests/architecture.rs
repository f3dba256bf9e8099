//! Feedback's layering (ARCHITECTURE.md § Feedback), checked on its sources: which top-level
//! modules each may import, no SQL in `api/`, no I/O in `domain/`.

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

/// The code lines (comments aside) of every file under `src/<module>/`, with the file's name.
fn code(module: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root.join(module), &mut files);
    let mut out = Vec::new();
    for f in files {
        let name = f.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            if !line.trim_start().starts_with("//") {
                out.push((name.clone(), line.to_owned()));
            }
        }
    }
    out
}

/// Lines of `module` containing any of `needles`, as `file: line`.
fn offending(module: &str, needles: &[&str]) -> Vec<String> {
    code(module)
        .into_iter()
        .filter(|(_, l)| needles.iter().any(|n| l.contains(n)))
        .map(|(f, l)| format!("{f}: {}", l.trim()))
        .collect()
}

#[test]
fn modules_import_downward_only() {
    // api → domain, store, events; events → domain, store; store → domain; domain → nothing.
    let forbidden: [(&str, &[&str]); 4] = [
        ("domain", &["crate::api", "crate::store", "crate::events"]),
        ("store", &["crate::api", "crate::events"]),
        ("events", &["crate::api"]),
        ("api", &[]),
    ];
    for (module, needles) in forbidden {
        assert_eq!(offending(module, needles), Vec::<String>::new(), "{module} imports upward");
    }
}

#[test]
fn no_sql_in_api_and_no_io_in_domain() {
    let sql = ["sea_query::", "Entity::", "Column::", "execute_unprepared", "Statement::"];
    assert_eq!(offending("api", &sql), Vec::<String>::new(), "api/ calls the store instead");
    let io = ["sea_orm", "tokio", "async fn", "ConnectionTrait", "crate::store", "tonic", "clm_proto"];
    assert_eq!(offending("domain", &io), Vec::<String>::new(), "domain/ is plain Rust");
}
