//! The comparison and the report: when two snapshot values are the same (defaults left off the
//! wire, float tolerance, a contact's predicted value as of the moment asked), A's and B's
//! snapshots compared key by key (`compare`), and the findings grouped by read model or
//! invariant and rendered a few per group (`Report`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::snapshot::Val;

/// Durations shorter than this (µs: 10 minutes) compare equal (see `same`).
const RUN_NOISE: i64 = 600_000_000;

/// Mismatches shown per read model (the count of the rest is given).
const SHOWN: usize = 4;

fn is_default(v: &Val) -> bool {
    match v {
        Val::Int(i) => *i == 0,
        Val::Num(x) => *x == 0.0,
        Val::Str(s) => s.is_empty(),
        Val::Dur(d) => *d == 0,
        _ => false,
    }
}

fn same(key: &str, a: Option<&Val>, b: Option<&Val>) -> bool {
    // Proto3 leaves defaults off the wire.
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (Some(v), None) | (None, Some(v)) => return is_default(v),
        (None, None) => return true,
    };
    // A contact's predicted value is as of the moment asked (seconds apart).
    let loose = key.starts_with("GetCustomerValue") && key.contains("predicted_clv");
    let close = |x: f64, y: f64| {
        let tol = if loose { 1e-3 } else { 1e-9 };
        (x - y).abs() <= tol * x.abs().max(y.abs()).max(1.0)
    };
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => close(*x, *y),
        (Val::Money(c, x), Val::Money(d, y)) => c == d && (x == y || loose && close(*x as f64, *y as f64)),
        // Durations of a few minutes are between two moments of the test run itself (survey
        // answers cannot be backdated: they are submitted now, seconds apart and in another
        // order in A and B), so their exact length is not part of the history.
        (Val::Dur(x), Val::Dur(y)) => x == y || (*x).max(*y) < RUN_NOISE,
        (Val::Int(x), Val::Int(y)) | (Val::Time(x), Val::Time(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Now, Val::Now) => true,
        _ => false,
    }
}

#[derive(Debug, Default)]
pub(super) struct Report {
    /// Read model (or "api", or "invariant: …") → findings.
    groups: BTreeMap<String, Vec<String>>,
}

impl Report {
    pub(super) fn add(&mut self, group: impl Into<String>, line: String) {
        self.groups.entry(group.into()).or_default().push(line);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Each group's count and its first findings, one per subject (the read model and scope
    /// or contact before `}`), so one broken contact does not hide the rest.
    pub(super) fn render(&self, out: &mut String) {
        for (g, lines) in &self.groups {
            let subject = |l: &str| l.split('}').next().unwrap_or(l).to_owned();
            let subjects: BTreeSet<String> = lines.iter().map(|l| subject(l)).collect();
            let _ = writeln!(out, "  {g}: {} finding(s) in {} read(s)", lines.len(), subjects.len());
            // Refused calls are few and often the root of the rest: all of them.
            let (distinct, shown) = if g.starts_with("api") { (false, 12) } else { (true, SHOWN) };
            let mut seen = BTreeSet::new();
            for l in lines.iter().filter(|l| seen.insert(subject(l)) || !distinct).take(shown) {
                let _ = writeln!(out, "    {l}");
            }
        }
    }
}

pub(super) fn compare(a: &BTreeMap<String, Val>, b: &BTreeMap<String, Val>, report: &mut Report) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if !same(k, x, y) {
            let group = k.split('{').next().unwrap_or(k).to_owned();
            let show = |v: Option<&Val>| v.map_or_else(|| "(absent)".to_owned(), ToString::to_string);
            report.add(group, format!("{k}: A (in order) = {}, B (shuffled) = {}", show(x), show(y)));
        }
    }
}
