//! Compile a parsed filter ([`crate::filter::Expr`]) over plain columns into a parameterised
//! sea-query condition that runs the same on SQLite and PostgreSQL. Each List method declares
//! its fields ([`Field`]); anything else is an error naming the field, so a typo never silently
//! matches everything.

use sea_orm::sea_query::{Alias, Expr as Sql, ExprTrait, SimpleExpr};

use crate::filter::{Expr, Op, Value};

/// How a filter field maps to a column.
#[derive(Debug, Clone, Copy)]
pub enum FieldKind {
    /// Text compared as given (`=`, `!=`).
    Text,
    /// Integer (all comparisons).
    Int,
    /// Boolean (`=`, `!=`).
    Bool,
    /// RFC 3339 time, stored as µs since the epoch (all comparisons).
    Time,
    /// One of the listed (filter word, stored value) pairs (`=`, `!=`).
    Enum(&'static [(&'static str, &'static str)]),
}

/// A filterable field: its name in filters, its column and kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub column: &'static str,
    pub kind: FieldKind,
}

/// The field names, for error messages.
fn names(fields: &[Field]) -> String {
    fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

fn cmp(col: SimpleExpr, op: Op, v: sea_orm::Value) -> SimpleExpr {
    match op {
        Op::Eq | Op::Has => col.eq(v),
        Op::Ne => col.clone().is_null().or(col.ne(v)),
        Op::Lt => col.lt(v),
        Op::Le => col.lte(v),
        Op::Gt => col.gt(v),
        Op::Ge => col.gte(v),
    }
}

/// Compile `expr` against `fields`. Errors are messages for the `filter` field.
pub fn compile(expr: &Expr, fields: &[Field]) -> Result<SimpleExpr, String> {
    match expr {
        Expr::And(a, b) => Ok(compile(a, fields)?.and(compile(b, fields)?)),
        Expr::Or(a, b) => Ok(compile(a, fields)?.or(compile(b, fields)?)),
        Expr::Not(a) => Ok(compile(a, fields)?.not()),
        Expr::Compare { field, op, value, column } => {
            let name = field.join(".");
            let f = fields
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| format!("at column {column}: unknown field {name:?}; filterable: {}", names(fields)))?;
            let col = Sql::col(Alias::new(f.column));
            let ordered = matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
            let bad = |what: &str| format!("at column {column}: {name} {what}");
            match (f.kind, value) {
                (FieldKind::Text, Value::Text(t)) if !ordered => Ok(cmp(col, *op, t.clone().into())),
                (FieldKind::Text, _) => Err(bad("takes a quoted string with = or !=")),
                (FieldKind::Int, Value::Number(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 =>
                {
                    #[allow(clippy::cast_possible_truncation)]
                    Ok(cmp(col, *op, (*n as i64).into()))
                }
                (FieldKind::Int, _) => Err(bad("takes a whole number")),
                (FieldKind::Bool, Value::Bool(b)) if !ordered => Ok(cmp(col, *op, (*b).into())),
                (FieldKind::Bool, _) => Err(bad("takes true or false with = or !=")),
                (FieldKind::Time, Value::Text(t)) => {
                    let at = chrono::DateTime::parse_from_rfc3339(t)
                        .map_err(|_| bad("takes an RFC 3339 time, e.g. \"2026-01-31T00:00:00Z\""))?;
                    Ok(cmp(col, *op, at.timestamp_micros().into()))
                }
                (FieldKind::Time, _) => Err(bad("takes a quoted RFC 3339 time")),
                (FieldKind::Enum(options), Value::Text(t)) if !ordered => {
                    let stored = options.iter().find(|(word, _)| word == t).map(|(_, s)| *s).ok_or_else(|| {
                        let words: Vec<_> = options.iter().map(|(w, _)| *w).collect();
                        bad(&format!("is one of {}", words.join(", ")))
                    })?;
                    Ok(cmp(col, *op, stored.into()))
                }
                (FieldKind::Enum(_), _) => Err(bad("takes one of its values with = or !=")),
            }
        }
    }
}

/// Parse and compile `src` (empty: no condition).
pub fn parse_and_compile(src: &str, fields: &[Field]) -> Result<Option<SimpleExpr>, String> {
    match crate::filter::parse(src) {
        Ok(None) => Ok(None),
        Ok(Some(e)) => compile(&e, fields).map(Some),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[Field] = &[
        Field { name: "survey_id", column: "survey_id", kind: FieldKind::Text },
        Field { name: "score", column: "score", kind: FieldKind::Int },
        Field { name: "complete", column: "complete", kind: FieldKind::Bool },
        Field { name: "create_time", column: "create_time", kind: FieldKind::Time },
        Field { name: "band", column: "band", kind: FieldKind::Enum(&[("detractor", "detractor")]) },
    ];

    fn sql(src: &str) -> Result<String, String> {
        use sea_orm::sea_query::{Query, SqliteQueryBuilder};
        let cond = parse_and_compile(src, FIELDS)?.expect("non-empty");
        Ok(Query::select().column(Alias::new("id")).from(Alias::new("t")).and_where(cond).to_string(SqliteQueryBuilder))
    }

    #[test]
    fn compiles_known_fields_and_names_bad_ones() {
        let s = sql(r#"score <= 6 AND band = "detractor" AND create_time >= "2026-01-01T00:00:00Z""#).unwrap();
        assert!(s.contains(r#""score" <= 6"#) && s.contains("'detractor'") && s.contains("1767225600000000"), "{s}");
        assert!(sql("complete = true").unwrap().contains(r#""complete" = TRUE"#));
        assert!(sql("nope = 1").unwrap_err().contains("unknown field \"nope\""));
        assert!(sql("score = \"x\"").unwrap_err().contains("whole number"));
        assert!(sql("survey_id > \"a\"").unwrap_err().contains("quoted string"));
        assert!(sql("band = \"fan\"").unwrap_err().contains("one of detractor"));
        assert!(sql("create_time > \"yesterday\"").unwrap_err().contains("RFC 3339"));
        assert!(parse_and_compile("", FIELDS).unwrap().is_none());
        assert!(parse_and_compile("score = ", FIELDS).is_err());
    }
}
