//! Hand-written SQL both backends share: `?` placeholders (numbered for PostgreSQL) and the
//! three ways statements run. Every read-model statement goes through here.

use clm_platform::Result;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};

/// A statement with `?` placeholders, numbered for PostgreSQL.
pub fn stmt(b: DbBackend, sql: &str, vals: Vec<Value>) -> Statement {
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

pub async fn exec(db: &impl ConnectionTrait, sql: &str, vals: Vec<Value>) -> Result<u64> {
    Ok(db.execute_raw(stmt(db.get_database_backend(), sql, vals)).await?.rows_affected())
}

pub async fn rows(db: &impl ConnectionTrait, sql: &str, vals: Vec<Value>) -> Result<Vec<QueryResult>> {
    Ok(db.query_all_raw(stmt(db.get_database_backend(), sql, vals)).await?)
}

pub async fn one(db: &impl ConnectionTrait, sql: &str, vals: Vec<Value>) -> Result<Option<QueryResult>> {
    Ok(db.query_one_raw(stmt(db.get_database_backend(), sql, vals)).await?)
}

pub fn v<T: Into<Value>>(x: T) -> Value {
    x.into()
}
