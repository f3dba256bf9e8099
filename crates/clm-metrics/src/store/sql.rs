//! Hand-written SQL, scoped to one tenant by construction.
//!
//! Every statement of the read model and of goals is a [`Sql`], and every way to make one takes
//! the `TenantId`: a select, update or delete starts its WHERE with `tenant_id = ?`, an insert
//! puts the tenant first in every row, a join adds `ON x.tenant_id = y.tenant_id`, and unions
//! and sub-queries are [`Sql`] values of the same tenant. [`exec`], [`rows`] and [`one`] run only
//! a [`Sql`], so a query that forgets the tenant cannot be written; `tests/architecture.rs`
//! keeps raw statements out of every other file. The one statement over every tenant, the
//! consumer's reset before a replay, says so in its name ([`clear_every_tenant`]).
//!
//! Placeholders are `?`, numbered for PostgreSQL.

use clm_platform::{Result, TenantId};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};

/// One statement over one tenant's rows: `head` (SELECT … FROM … JOIN …, UPDATE … SET …,
/// DELETE FROM …, INSERT … VALUES …), `cond` (the WHERE, led by the tenant) and `tail`
/// (GROUP BY, UNION, ORDER BY, LIMIT, ON CONFLICT), each with the values its `?` bind, in order.
#[derive(Debug, Clone)]
#[must_use]
pub struct Sql {
    tenant: TenantId,
    /// The main table's alias with its dot ("p."), or "".
    alias: String,
    head: String,
    head_vals: Vec<Value>,
    cond: String,
    cond_vals: Vec<Value>,
    tail: String,
    tail_vals: Vec<Value>,
}

impl Sql {
    fn new(tenant: &TenantId, alias: String, head: String, head_vals: Vec<Value>, scoped: bool) -> Self {
        let (cond, cond_vals) =
            if scoped { (format!("{alias}tenant_id = ?"), vec![v(tenant.as_str())]) } else { (String::new(), vec![]) };
        Self {
            tenant: tenant.clone(),
            alias,
            head,
            head_vals,
            cond,
            cond_vals,
            tail: String::new(),
            tail_vals: Vec::new(),
        }
    }

    /// `SELECT {cols} FROM {from} WHERE {alias.}tenant_id = ?`; `from` is a table, with an alias
    /// or without ("contact_now n").
    pub fn select(tenant: &TenantId, cols: &str, from: &str) -> Self {
        let alias = from.split_whitespace().nth(1).map(|a| format!("{a}.")).unwrap_or_default();
        Self::new(tenant, alias, format!("SELECT {cols} FROM {from}"), Vec::new(), true)
    }

    /// `SELECT {cols} FROM ({inner}) x`: an outer query over a scoped one (a sum over a union).
    pub fn around(cols: &str, inner: Sql) -> Self {
        let tenant = inner.tenant.clone();
        let (text, vals) = inner.text();
        Self::new(&tenant, String::new(), format!("SELECT {cols} FROM ({text}) x"), vals, false)
    }

    /// `DELETE FROM {table} WHERE tenant_id = ?`.
    pub fn delete(tenant: &TenantId, table: &str) -> Self {
        Self::new(tenant, String::new(), format!("DELETE FROM {table}"), Vec::new(), true)
    }

    /// `UPDATE {table} SET {set} WHERE tenant_id = ?`; `vals` bind the `?` of `set`.
    pub fn update(tenant: &TenantId, table: &str, set: &str, vals: impl IntoIterator<Item = Value>) -> Self {
        Self::new(tenant, String::new(), format!("UPDATE {table} SET {set}"), vals.into_iter().collect(), true)
    }

    /// `INSERT INTO {table} (tenant_id, {cols}) VALUES (?, …), …`: the tenant first in each of
    /// `rows` (each one value per column of `cols`). Follow with [`Sql::then`] for ON CONFLICT.
    pub fn insert(tenant: &TenantId, table: &str, cols: &[&str], rows: impl IntoIterator<Item = Vec<Value>>) -> Self {
        let tuple = format!("(?, {})", vec!["?"; cols.len()].join(", "));
        let mut vals = Vec::new();
        let mut tuples = Vec::new();
        for row in rows {
            debug_assert_eq!(row.len(), cols.len(), "{table}: a value per column");
            vals.push(v(tenant.as_str()));
            vals.extend(row);
            tuples.push(tuple.as_str());
        }
        let head = format!("INSERT INTO {table} (tenant_id, {}) VALUES {}", cols.join(", "), tuples.join(", "));
        Self::new(tenant, String::new(), head, vals, false)
    }

    /// `LEFT JOIN {from} ON {alias}.tenant_id = {main}.tenant_id AND {on}`: rows of the same
    /// tenant only. `from` is a table with its alias ("contact_facts f").
    pub fn left_join(mut self, from: &str, on: &str) -> Self {
        let alias = from.split_whitespace().nth(1).map(|a| format!("{a}.")).unwrap_or_default();
        let join = format!(" LEFT JOIN {from} ON {alias}tenant_id = {}tenant_id AND {on}", self.alias);
        self.head.push_str(&join);
        self
    }

    /// ` AND {cond}`; `vals` bind its `?`.
    pub fn and(mut self, cond: &str, vals: impl IntoIterator<Item = Value>) -> Self {
        assert!(!self.cond.is_empty(), "AND on a statement without a WHERE: {}", self.head);
        self.cond.push_str(" AND ");
        self.cond.push_str(cond);
        self.cond_vals.extend(vals);
        self
    }

    /// ` AND {col} IN (?, …)` for `ids` (none: nothing is added; an empty list: no row).
    pub fn and_in(self, col: &str, ids: Option<&[String]>) -> Self {
        match ids {
            Some([]) => self.and("1 = 0", []),
            Some(ids) => {
                let marks = vec!["?"; ids.len()].join(", ");
                self.and(&format!("{col} IN ({marks})"), ids.iter().map(|i| v(i.as_str())))
            }
            None => self,
        }
    }

    /// ` AND {col} IN ({sub})`, a sub-query of the same tenant.
    pub fn and_in_select(self, col: &str, sub: Sql) -> Self {
        assert_eq!(self.tenant, sub.tenant, "a sub-query of another tenant");
        let (text, vals) = sub.text();
        self.and(&format!("{col} IN ({text})"), vals)
    }

    /// Text after the WHERE (GROUP BY, ORDER BY, LIMIT, ON CONFLICT); `vals` bind its `?`.
    pub fn then(mut self, text: &str, vals: impl IntoIterator<Item = Value>) -> Self {
        self.tail.push_str(text);
        self.tail_vals.extend(vals);
        self
    }

    /// ` UNION ALL {other}`, a query of the same tenant.
    pub fn union_all(self, other: Sql) -> Self {
        self.union_with(" UNION ALL ", other)
    }

    /// ` UNION {other}` (distinct rows), a query of the same tenant.
    pub fn union(self, other: Sql) -> Self {
        self.union_with(" UNION ", other)
    }

    fn union_with(self, op: &str, other: Sql) -> Self {
        assert_eq!(self.tenant, other.tenant, "a union with another tenant's query");
        let (text, vals) = other.text();
        self.then(&format!("{op}{text}"), vals)
    }

    /// The statement's text and its values, in order.
    fn text(self) -> (String, Vec<Value>) {
        let mut text = self.head;
        let mut vals = self.head_vals;
        if !self.cond.is_empty() {
            text.push_str(" WHERE ");
            text.push_str(&self.cond);
            vals.extend(self.cond_vals);
        }
        text.push_str(&self.tail);
        vals.extend(self.tail_vals);
        (text, vals)
    }

    fn statement(self, b: DbBackend) -> Statement {
        let (text, vals) = self.text();
        stmt(b, &text, vals)
    }
}

/// A statement with `?` placeholders, numbered for PostgreSQL.
fn stmt(b: DbBackend, sql: &str, vals: Vec<Value>) -> Statement {
    let sql = if b == DbBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut i = 0;
        for c in sql.chars() {
            if c == '?' {
                i += 1;
                out.push('$');
                out.push_str(&i.to_string());
            } else {
                out.push(c);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(b, sql, vals)
}

pub async fn exec(db: &impl ConnectionTrait, q: Sql) -> Result<u64> {
    Ok(db.execute_raw(q.statement(db.get_database_backend())).await?.rows_affected())
}

pub async fn rows(db: &impl ConnectionTrait, q: Sql) -> Result<Vec<QueryResult>> {
    Ok(db.query_all_raw(q.statement(db.get_database_backend())).await?)
}

pub async fn one(db: &impl ConnectionTrait, q: Sql) -> Result<Option<QueryResult>> {
    Ok(db.query_one_raw(q.statement(db.get_database_backend())).await?)
}

/// Delete every row of `tables`, of every tenant: the consumer's reset before a replay
/// rebuilds them. The only statement here not scoped to one tenant.
pub async fn clear_every_tenant(db: &impl ConnectionTrait, tables: &[&str]) -> Result<()> {
    for t in tables {
        db.execute_unprepared(&format!("DELETE FROM {t}")).await?;
    }
    Ok(())
}

pub fn v<T: Into<Value>>(x: T) -> Value {
    x.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn every_statement_is_led_by_its_tenant() {
        let t = acme();
        let (text, vals) = Sql::select(&t, "p.n", "contact_periods p")
            .left_join("contact_facts f", "f.contact_id = p.contact_id")
            .and("p.gran = ?", [v("day")])
            .and_in("p.contact_id", Some(&["a".to_owned(), "b".to_owned()]))
            .then(" LIMIT ?", [v(5)])
            .text();
        assert_eq!(
            text,
            "SELECT p.n FROM contact_periods p LEFT JOIN contact_facts f ON f.tenant_id = p.tenant_id AND \
             f.contact_id = p.contact_id WHERE p.tenant_id = ? AND p.gran = ? AND p.contact_id IN (?, ?) LIMIT ?"
        );
        assert_eq!(vals, vec![v("acme"), v("day"), v("a"), v("b"), v(5)]);
        let (text, vals) = Sql::update(&t, "goals", "version = ?", [v(2)]).and("id = ?", [v("g")]).text();
        assert_eq!(text, "UPDATE goals SET version = ? WHERE tenant_id = ? AND id = ?");
        assert_eq!(vals, vec![v(2), v("acme"), v("g")]);
        let (text, vals) = Sql::insert(&t, "x", &["a"], [vec![v(1)], vec![v(2)]]).text();
        assert_eq!(text, "INSERT INTO x (tenant_id, a) VALUES (?, ?), (?, ?)");
        assert_eq!(vals, vec![v("acme"), v(1), v("acme"), v(2)]);
        let u = Sql::select(&t, "id", "a").union(Sql::select(&t, "id", "b")).then(" ORDER BY id", []);
        let (text, vals) = Sql::around("COUNT(*) AS n", u).text();
        assert_eq!(
            text,
            "SELECT COUNT(*) AS n FROM (SELECT id FROM a WHERE tenant_id = ? UNION SELECT id FROM b WHERE tenant_id = ? ORDER BY id) x"
        );
        assert_eq!(vals, vec![v("acme"), v("acme")]);
        assert_eq!(stmt(DbBackend::Postgres, "a = ? AND b = ?", vec![]).sql, "a = $1 AND b = $2");
    }

    #[test]
    #[should_panic(expected = "another tenant")]
    fn a_sub_query_of_another_tenant_is_refused() {
        let _ = Sql::select(&acme(), "id", "a")
            .and_in_select("id", Sql::select(&TenantId::parse("other").unwrap(), "id", "b"));
    }
}
