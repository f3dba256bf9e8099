//! Compile a checked contact filter ([`Cond`]) into a parameterised SQL condition that runs the
//! same on SQLite and PostgreSQL. Lists and attributes are matched with `EXISTS` sub-queries
//! on their indexed side tables, so no row is loaded to be filtered in memory.

use sea_orm::ColumnTrait;
use sea_orm::sea_query::{Condition, Expr, ExprTrait, Func, LikeExpr, Query, SimpleExpr};

use super::entities::{attribute, contact, label};
use crate::domain::filter::{AttrLiteral, Cmp, Cond, IntField, TextField};

fn text_col(f: TextField) -> contact::Column {
    use contact::Column as C;
    match f {
        TextField::Id => C::Id,
        TextField::Email => C::Email,
        TextField::Phone => C::Phone,
        TextField::GivenName => C::GivenName,
        TextField::FamilyName => C::FamilyName,
        TextField::Company => C::Company,
        TextField::JobTitle => C::JobTitle,
        TextField::Locale => C::Locale,
        TextField::CountryCode => C::CountryCode,
        TextField::Region => C::Region,
        TextField::City => C::City,
        TextField::Campaign => C::AcqCampaign,
        TextField::SourceDetail => C::AcqSourceDetail,
        TextField::ReferredBy => C::ReferredBy,
        TextField::Gender => C::Gender,
        TextField::AgeBand => C::AgeBand,
        TextField::AcquisitionChannel => C::AcqChannel,
    }
}

fn int_col(f: IntField) -> contact::Column {
    use contact::Column as C;
    match f {
        IntField::LeadScore => C::LeadScore,
        IntField::BirthYear => C::BirthYear,
        IntField::CreateTime => C::CreateTime,
        IntField::UpdateTime => C::UpdateTime,
        IntField::AcquiredAt => C::AcquiredAt,
    }
}

fn compare(col: SimpleExpr, cmp: Cmp, v: impl Into<sea_orm::Value>) -> SimpleExpr {
    let v: sea_orm::Value = v.into();
    match cmp {
        Cmp::Eq => col.eq(v),
        Cmp::Ne => col.clone().is_null().or(col.ne(v)),
        Cmp::Lt => col.lt(v),
        Cmp::Le => col.lte(v),
        Cmp::Gt => col.gt(v),
        Cmp::Ge => col.gte(v),
    }
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn own_id() -> SimpleExpr {
    Expr::col((contact::Entity, contact::Column::Id))
}

/// SQL for `cond`, scoped to `tenant` in every sub-query.
pub fn to_sql(tenant: &str, cond: &Cond) -> SimpleExpr {
    match cond {
        Cond::And(a, b) => to_sql(tenant, a).and(to_sql(tenant, b)),
        Cond::Or(a, b) => to_sql(tenant, a).or(to_sql(tenant, b)),
        Cond::Not(a) => to_sql(tenant, a).not(),
        Cond::Text { field, cmp, value } => compare(Expr::col(text_col(*field)), *cmp, value.clone()),
        Cond::TextContains { field, needle } => {
            Expr::expr(Func::lower(Expr::col(text_col(*field)))).like(LikeExpr::new(like_escape(needle)).escape('\\'))
        }
        Cond::TextPresent(field) => Expr::col(text_col(*field)).is_not_null().and(Expr::col(text_col(*field)).ne("")),
        Cond::Int { field, cmp, value } => compare(Expr::col(int_col(*field)), *cmp, *value),
        Cond::Label { kind, value } => Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(label::Entity)
                .and_where(Expr::col((label::Entity, label::Column::ContactId)).eq(own_id()))
                .and_where(label::Column::TenantId.eq(tenant))
                .and_where(label::Column::Kind.eq(kind.key()))
                .and_where(label::Column::Value.eq(value.to_lowercase()))
                .to_owned(),
        ),
        Cond::LabelAny(kind) => Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(label::Entity)
                .and_where(Expr::col((label::Entity, label::Column::ContactId)).eq(own_id()))
                .and_where(label::Column::TenantId.eq(tenant))
                .and_where(label::Column::Kind.eq(kind.key()))
                .to_owned(),
        ),
        Cond::AttrPresent(key) => Expr::exists(attr_query(tenant, key.as_str())),
        Cond::Attr { key, cmp, value } => {
            let (col, v): (attribute::Column, sea_orm::Value) = match value {
                AttrLiteral::Text(s) => (attribute::Column::TextValue, s.clone().into()),
                AttrLiteral::Number(n) => (attribute::Column::NumberValue, (*n).into()),
                AttrLiteral::Bool(b) => (attribute::Column::BoolValue, (*b).into()),
            };
            let col_expr = Expr::col((attribute::Entity, col));
            if *cmp == Cmp::Ne {
                // "not equal" includes contacts without the attribute.
                let mut q = attr_query(tenant, key.as_str());
                q.and_where(col_expr.eq(v));
                Expr::not_exists(q)
            } else {
                let mut q = attr_query(tenant, key.as_str());
                q.and_where(compare(col_expr, *cmp, v));
                Expr::exists(q)
            }
        }
    }
}

fn attr_query(tenant: &str, key: &str) -> sea_orm::sea_query::SelectStatement {
    Query::select()
        .expr(Expr::val(1))
        .from(attribute::Entity)
        .and_where(Expr::col((attribute::Entity, attribute::Column::ContactId)).eq(own_id()))
        .and_where(Expr::col((attribute::Entity, attribute::Column::TenantId)).eq(tenant))
        .and_where(Expr::col((attribute::Entity, attribute::Column::Key)).eq(key))
        .to_owned()
}

/// Wrap as a `Condition` for SeaORM's `filter`.
pub fn condition(tenant: &str, cond: Option<&Cond>) -> Condition {
    let mut c = Condition::all();
    if let Some(cond) = cond {
        c = c.add(to_sql(tenant, cond));
    }
    c
}
