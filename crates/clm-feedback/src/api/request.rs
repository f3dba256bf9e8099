//! What every feedback handler does with a request's common fields: page sizes, free text,
//! durations, etags, update masks and filters, each turned into a value or a field violation
//! naming the field.

use clm_platform::convert::etag_version;
use clm_platform::filter_sql::Field;
use clm_platform::pagination::page_size;
use clm_platform::{Error, FieldViolation, Violations};

use crate::domain::values;
use crate::store::Filter;

/// Longest names and notes, in characters.
pub const MAX_NAME: usize = 200;
pub const MAX_NOTE: usize = 5000;

/// The page size asked for (its violation recorded, 0 then).
pub fn limit(v: &mut Violations, raw: i32) -> u64 {
    page_size(raw).unwrap_or_else(|e| {
        if let Error::InvalidArgument(mut fv) = e {
            v.add("page_size", fv.pop().map(|f| f.description).unwrap_or_default());
        }
        0
    })
}

/// Trimmed free text (`values::text`), its violations recorded.
pub fn text(v: &mut Violations, field: &str, raw: &str, max: usize, required: bool) -> String {
    values::text(field, raw, max, required).unwrap_or_else(|(t, fv)| {
        extend(v, fv);
        t
    })
}

/// Record violations a domain `parse` returned.
pub fn extend(v: &mut Violations, violations: Vec<FieldViolation>) {
    for fv in violations {
        v.add(fv.field, fv.description);
    }
}

/// Check an etag field against the stored version.
pub fn check_etag(field: &str, raw: &str, version: i64) -> Result<(), Error> {
    match etag_version(field, raw) {
        Err(fv) => Err(Error::InvalidArgument(vec![fv])),
        Ok(Some(v)) if v != version => {
            Err(Error::Aborted(format!("{field} does not match: the resource changed; read it again")))
        }
        Ok(_) => Ok(()),
    }
}

/// The update mask's paths; empty mask: the `set` fields (those given non-default values).
pub fn mask_paths(mask: Option<&prost_types::FieldMask>, allowed: &[&str], set: &[&str]) -> Result<Vec<String>, Error> {
    let paths: Vec<String> = match mask {
        Some(m) if !m.paths.is_empty() => m.paths.clone(),
        _ => set.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut v = Violations::new();
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            v.add("update_mask", format!("cannot update {p:?}; updatable: {}", allowed.join(", ")));
        }
    }
    if paths.is_empty() {
        v.add("update_mask", format!("name the fields to change: {}", allowed.join(", ")));
    }
    v.finish()?;
    Ok(paths)
}

/// The names of `fields` given a non-default value (`(name, set)` pairs), for `mask_paths`.
pub fn set_fields<'a>(fields: &[(&'a str, bool)]) -> Vec<&'a str> {
    fields.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect()
}

/// A list's `filter` over the columns the list declares (`store::*_FILTER`), its violation
/// recorded.
pub fn filter(v: &mut Violations, raw: &str, columns: &[Field]) -> Filter {
    v.check(Filter::parse("filter", raw, columns)).unwrap_or_default()
}
