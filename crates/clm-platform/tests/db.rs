//! `db::insert_all` against real SQLite and PostgreSQL: every insert lands, or none does.

use clm_platform::config::DatabaseSettings;
use clm_platform::db;
use clm_platform::testing::{Backend, TestDb};
use sea_orm::sea_query::{Alias, Expr, Func, Index, InsertStatement, Query, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection};

async fn setup(backend: Backend) -> Option<(TestDb, DatabaseConnection)> {
    let tdb = TestDb::create(backend, "insert_all").await?;
    let settings = DatabaseSettings {
        max_connections: 4,
        min_connections: 1,
        connect_timeout_ms: 5000,
        acquire_timeout_ms: 5000,
        migrate_on_start: true,
    };
    let conn = db::connect(&tdb.url, &settings).await.expect("connect");
    for t in ["parent", "child"] {
        conn.execute(
            Table::create()
                .table(Alias::new(t))
                .col(sea_orm::sea_query::ColumnDef::new(Alias::new("id")).string().not_null().primary_key())
                .col(sea_orm::sea_query::ColumnDef::new(Alias::new("note")).string().not_null()),
        )
        .await
        .expect("create table");
    }
    conn.execute(Index::create().name("ux_parent_note").table(Alias::new("parent")).col(Alias::new("note")).unique())
        .await
        .expect("create index");
    Some((tdb, conn))
}

fn row(table: &str, id: &str, note: &str) -> InsertStatement {
    Query::insert()
        .into_table(Alias::new(table))
        .columns([Alias::new("id"), Alias::new("note")])
        .values_panic([id.into(), note.into()])
        .to_owned()
}

async fn count(conn: &DatabaseConnection, table: &str) -> i64 {
    let q = Query::select().expr(Func::count(Expr::col(Alias::new("id")))).from(Alias::new(table)).to_owned();
    let r = conn.query_one(&q).await.expect("count").expect("a row");
    r.try_get_by_index::<i64>(0).expect("a number")
}

async fn all_or_nothing(backend: Backend) {
    let Some((tdb, conn)) = setup(backend).await else { return };

    // Three rows in two tables, one write.
    db::insert_all(&conn, vec![row("parent", "p1", "first"), row("child", "c1", "of p1"), row("child", "c2", "of p1")])
        .await
        .expect("first write");
    assert_eq!((count(&conn, "parent").await, count(&conn, "child").await), (1, 2));

    // The parent violates the unique note: the children written with it must not land either,
    // wherever the failing insert is in the list.
    for order in [0, 1, 2] {
        let mut inserts = vec![row("child", "c3", "orphan?"), row("child", "c4", "orphan?")];
        inserts.insert(order, row("parent", "p2", "first"));
        let err = db::insert_all(&conn, inserts).await.expect_err("duplicate note");
        assert!(
            matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))),
            "a unique violation, got {err}"
        );
        assert_eq!((count(&conn, "parent").await, count(&conn, "child").await), (1, 2), "order {order}");
    }

    // One insert alone and an empty list.
    db::insert_all(&conn, vec![row("parent", "p3", "third")]).await.expect("single");
    db::insert_all(&conn, vec![]).await.expect("empty");
    assert_eq!(count(&conn, "parent").await, 2);
    drop(conn);
    tdb.cleanup().await;
}

#[tokio::test]
async fn insert_all_sqlite() {
    all_or_nothing(Backend::Sqlite).await;
}

#[tokio::test]
async fn insert_all_postgres() {
    all_or_nothing(Backend::Postgres).await;
}
