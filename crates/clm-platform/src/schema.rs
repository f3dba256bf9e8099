//! Column and index helpers for services' schema migrations (sea-orm-migration), so every
//! service spells its DDL the same way on SQLite and PostgreSQL. Times are BIGINT µs.

use sea_orm_migration::prelude::*;

/// A string primary key (UUIDs as text).
pub fn id(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).string().not_null().primary_key().to_owned()
}
pub fn text(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).string().not_null().to_owned()
}
pub fn text_null(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).string().null().to_owned()
}
pub fn long_text(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).text().not_null().to_owned()
}
pub fn big(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).big_integer().not_null().to_owned()
}
pub fn big_null(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).big_integer().null().to_owned()
}
pub fn int(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).integer().not_null().to_owned()
}
pub fn int_null(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).integer().null().to_owned()
}
pub fn flag(c: &'static str) -> ColumnDef {
    ColumnDef::new(Alias::new(c)).boolean().not_null().to_owned()
}

/// Create index `name` on `table` (`cols` in order).
pub async fn index(m: &SchemaManager<'_>, name: &str, table: &str, cols: &[&str], unique: bool) -> Result<(), DbErr> {
    let mut i = Index::create();
    i.name(name).table(Alias::new(table));
    for c in cols {
        i.col(Alias::new(*c));
    }
    if unique {
        i.unique();
    }
    m.create_index(i).await
}
