//! Architecture checks on a crate's sources, for the crates' `tests/architecture.rs` and the
//! workspace's: which files use what, the module graph (`crate::`, `super::` and `self::`
//! paths, `use` trees expanded), its cycles and its layers. Text-level by design: it reads the
//! code as written, comments aside, so a test names the files a rule allows.

use std::collections::{BTreeMap, BTreeSet};
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

/// Files under `root` whose code (comments aside) contains `needle`.
pub fn users(root: &Path, needle: &str) -> Vec<String> {
    files(root)
        .into_iter()
        .filter(|(_, text)| text.lines().filter(|l| !l.trim_start().starts_with("//")).any(|l| l.contains(needle)))
        .map(|(rel, _)| rel)
        .collect()
}

/// The library's files under `root` (a crate's `src/`): (path, `/`-separated, text up to its
/// unit-test module: tests may reach any module); `main.rs` (the binary) left out.
pub fn files(root: &Path) -> Vec<(String, String)> {
    let mut paths = Vec::new();
    sources(root, &mut paths);
    let mut out: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(p).unwrap();
            let lib = match text.find("\n#[cfg(test)]\n") {
                Some(at) => text[..=at].to_owned(),
                None => text,
            };
            (rel, lib)
        })
        .filter(|(rel, _)| rel != "main.rs")
        .collect();
    out.sort();
    out
}

/// The module a file is: `store/read/mod.rs` → [store, read], `api/kpi.rs` → [api, kpi].
pub fn module_of(rel: &str) -> Vec<String> {
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
pub fn references(rel: &str, text: &str) -> Vec<Vec<String>> {
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
pub fn edges(files: &[(String, String)], parent: &[&str]) -> BTreeMap<(String, String), String> {
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
pub fn cycle(edges: &BTreeMap<(String, String), String>) -> Option<Vec<String>> {
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
pub fn assert_layered(files: &[(String, String)], parent: &[&str], layers: &[&str]) {
    for ((a, b), file) in edges(files, parent) {
        let (ia, ib) = (layers.iter().position(|l| *l == a), layers.iter().position(|l| *l == b));
        assert!(ia.is_some() && ib.is_some(), "{parent:?}: {a} or {b} is not in the layers {layers:?}");
        assert!(ia < ib, "{parent:?}: {a} uses {b} ({file}), but {b} is above it in {layers:?}");
    }
}

/// No directory of the crate has a cycle among its modules.
pub fn assert_acyclic(files: &[(String, String)]) {
    let dirs: BTreeSet<Vec<String>> = files.iter().map(|(rel, _)| module_of(rel)).collect();
    for dir in dirs {
        let parent: Vec<&str> = dir.iter().map(String::as_str).collect();
        let e = edges(files, &parent);
        assert_eq!(cycle(&e), None, "a cycle among the modules of {parent:?}: {e:?}");
    }
}
