//! The AIP-160 filter subset CLM's List methods accept, as a parser to a small AST.
//!
//! ```text
//! expr       := and_expr ("OR" and_expr)*
//! and_expr   := unary ("AND" unary)*
//! unary      := ("NOT" | "-") unary | "(" expr ")" | comparison
//! comparison := field op value
//! field      := ident ("." ident)*
//! op         := "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//! value      := "string" | number | true | false | * | bare-word
//! ```
//! `AND` binds tighter than `OR`. Errors carry the 1-based column where parsing failed. Which
//! fields exist and what types they take is decided by each service when it compiles the AST
//! to SQL; this module only knows the syntax. The AST prints back to canonical text, and
//! `parse(print(ast)) == ast` (property-tested).

use std::fmt;

/// Longest filter accepted, in bytes, and deepest nesting: bounds work on hostile input.
pub const MAX_FILTER_LEN: usize = 4096;
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Has => ":",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string, or a bare word that is not a number or boolean.
    Text(String),
    Number(f64),
    Bool(bool),
    /// `*`: presence, only meaningful with `:`.
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare { field: Vec<String>, op: Op, value: Value, column: usize },
}

/// A filter that does not parse; `column` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(Op),
    LParen,
    RParen,
    Dot,
    Minus,
    Star,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn tokens(src: &'a str) -> Result<Vec<(Tok, usize)>, ParseError> {
        let mut lx = Lexer { src, pos: 0 };
        let mut out = Vec::new();
        while let Some(t) = lx.next()? {
            out.push(t);
        }
        Ok(out)
    }

    fn err(&self, at: usize, message: impl Into<String>) -> ParseError {
        ParseError { column: self.src[..at].chars().count() + 1, message: message.into() }
    }

    fn next(&mut self) -> Result<Option<(Tok, usize)>, ParseError> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        let start = self.pos;
        let Some(c) = trimmed.chars().next() else { return Ok(None) };
        let two = trimmed.get(..2).unwrap_or("");
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '.' if !trimmed[1..].starts_with(|d: char| d.is_ascii_digit()) => (Tok::Dot, 1),
            '*' => (Tok::Star, 1),
            ':' => (Tok::Op(Op::Has), 1),
            '=' => (Tok::Op(Op::Eq), 1),
            '!' if two == "!=" => (Tok::Op(Op::Ne), 2),
            '<' if two == "<=" => (Tok::Op(Op::Le), 2),
            '<' => (Tok::Op(Op::Lt), 1),
            '>' if two == ">=" => (Tok::Op(Op::Ge), 2),
            '>' => (Tok::Op(Op::Gt), 1),
            '-' if !trimmed[1..].starts_with(|d: char| d.is_ascii_digit() || d == '.') => (Tok::Minus, 1),
            '"' | '\'' => return self.string(c).map(Some),
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let len = trimmed
                    .char_indices()
                    .skip(1)
                    .find(|(_, ch)| {
                        !(ch.is_ascii_alphanumeric() || *ch == '.' || *ch == '+' || *ch == '-' || *ch == ':')
                    })
                    .map_or(trimmed.len(), |(i, _)| i);
                let text = &trimmed[..len];
                match text.parse::<f64>() {
                    Ok(n) if n.is_finite() => (Tok::Num(n), len),
                    // Things like 2024-01-01 are bare words (dates compare as text).
                    _ => (Tok::Ident(text.to_owned()), len),
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let len = trimmed
                    .char_indices()
                    .find(|(_, ch)| !(ch.is_alphanumeric() || *ch == '_'))
                    .map_or(trimmed.len(), |(i, _)| i);
                (Tok::Ident(trimmed[..len].to_owned()), len)
            }
            other => return Err(self.err(start, format!("unexpected character {other:?}"))),
        };
        self.pos += len;
        Ok(Some((tok, start)))
    }

    fn string(&mut self, quote: char) -> Result<(Tok, usize), ParseError> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => match chars.next() {
                    Some((_, e @ ('\\' | '"' | '\''))) => out.push(e),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    _ => return Err(self.err(start + 1 + i, "bad escape in string (use \\\\, \\\", \\', \\n or \\t)")),
                },
                c if c == quote => {
                    self.pos = start + 1 + i + c.len_utf8();
                    return Ok((Tok::Str(out), start));
                }
                c => out.push(c),
            }
        }
        Err(self.err(start, "unterminated string"))
    }
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn col(&self, byte: usize) -> usize {
        self.src[..byte].chars().count() + 1
    }

    fn err_here(&self, message: impl Into<String>) -> ParseError {
        let at = self.toks.get(self.i).map_or(self.src.len(), |t| t.1);
        ParseError { column: self.col(at), message: message.into() }
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.0)
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == kw)
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_here(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let mut left = self.and_expr()?;
        while self.is_keyword("OR") {
            self.i += 1;
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while self.is_keyword("AND") {
            self.i += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.is_keyword("NOT") || self.peek() == Some(&Tok::Minus) {
            self.i += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.err_here(format!("nested deeper than {MAX_DEPTH} levels")));
            }
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.i += 1;
            let inner = self.expr()?;
            if self.peek() != Some(&Tok::RParen) {
                return Err(self.err_here("expected ')'"));
            }
            self.i += 1;
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let column = self.toks.get(self.i).map_or(self.src.len(), |t| t.1);
        let mut field = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Ident(w)) if !matches!(w.as_str(), "AND" | "OR" | "NOT") => {
                    field.push(w.clone());
                    self.i += 1;
                }
                _ => return Err(self.err_here("expected a field name")),
            }
            if self.peek() == Some(&Tok::Dot) {
                self.i += 1;
            } else {
                break;
            }
        }
        let op = match self.peek() {
            Some(Tok::Op(op)) => *op,
            _ => return Err(self.err_here("expected an operator (=, !=, <, <=, >, >=, :)")),
        };
        self.i += 1;
        let value = match self.peek().cloned() {
            Some(Tok::Str(s)) => Value::Text(s),
            Some(Tok::Num(n)) => Value::Number(n),
            Some(Tok::Star) => Value::Any,
            Some(Tok::Ident(w)) if w == "true" => Value::Bool(true),
            Some(Tok::Ident(w)) if w == "false" => Value::Bool(false),
            Some(Tok::Ident(w)) if !matches!(w.as_str(), "AND" | "OR" | "NOT") => Value::Text(w),
            _ => return Err(self.err_here("expected a value (a \"string\", a number, true, false or *)")),
        };
        self.i += 1;
        if value == Value::Any && op != Op::Has {
            return Err(ParseError { column: self.col(column), message: "`*` only goes with `:` (presence)".into() });
        }
        Ok(Expr::Compare { field, op, value, column: self.col(column) })
    }
}

/// Parse a filter; `Ok(None)` for an empty (or all-whitespace) filter.
pub fn parse(src: &str) -> Result<Option<Expr>, ParseError> {
    if src.len() > MAX_FILTER_LEN {
        return Err(ParseError { column: 1, message: format!("filter longer than {MAX_FILTER_LEN} bytes") });
    }
    if src.trim().is_empty() {
        return Ok(None);
    }
    let toks = Lexer::tokens(src)?;
    let mut p = Parser { src, toks, i: 0, depth: 0 };
    let e = p.expr()?;
    if p.i < p.toks.len() {
        return Err(p.err_here("expected AND, OR or the end of the filter"));
    }
    Ok(Some(e))
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            Value::Number(n) => write!(f, "{n:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Any => f.write_str("*"),
        }
    }
}

impl fmt::Display for Expr {
    /// Canonical text: fully parenthesised, so printing never changes the meaning.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::And(a, b) => write!(f, "({a} AND {b})"),
            Expr::Or(a, b) => write!(f, "({a} OR {b})"),
            Expr::Not(a) => write!(f, "NOT {a}"),
            Expr::Compare { field, op, value, .. } => write!(f, "{} {} {}", field.join("."), op.as_str(), value),
        }
    }
}

impl Expr {
    /// The same tree with every `column` set to 0 (to compare trees parsed from different text).
    pub fn without_positions(&self) -> Expr {
        match self {
            Expr::And(a, b) => Expr::And(Box::new(a.without_positions()), Box::new(b.without_positions())),
            Expr::Or(a, b) => Expr::Or(Box::new(a.without_positions()), Box::new(b.without_positions())),
            Expr::Not(a) => Expr::Not(Box::new(a.without_positions())),
            Expr::Compare { field, op, value, .. } => {
                Expr::Compare { field: field.clone(), op: *op, value: value.clone(), column: 0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Expr {
        parse(s).unwrap().unwrap().without_positions()
    }

    fn cmp(field: &str, op: Op, value: Value) -> Expr {
        Expr::Compare { field: field.split('.').map(str::to_owned).collect(), op, value, column: 0 }
    }

    #[test]
    fn precedence_and_grouping() {
        let e = p(r#"a = 1 OR b = "x" AND NOT c:*"#);
        let expected = Expr::Or(
            Box::new(cmp("a", Op::Eq, Value::Number(1.0))),
            Box::new(Expr::And(
                Box::new(cmp("b", Op::Eq, Value::Text("x".into()))),
                Box::new(Expr::Not(Box::new(cmp("c", Op::Has, Value::Any)))),
            )),
        );
        assert_eq!(e, expected);
        assert_eq!(
            p("(a = 1 OR b = 2) AND c >= -3.5"),
            Expr::And(
                Box::new(Expr::Or(
                    Box::new(cmp("a", Op::Eq, Value::Number(1.0))),
                    Box::new(cmp("b", Op::Eq, Value::Number(2.0)))
                )),
                Box::new(cmp("c", Op::Ge, Value::Number(-3.5)))
            )
        );
    }

    #[test]
    fn values_and_fields() {
        assert_eq!(p(r#"attributes.plan = "pro""#), cmp("attributes.plan", Op::Eq, Value::Text("pro".into())));
        assert_eq!(p("tags:vip"), cmp("tags", Op::Has, Value::Text("vip".into())));
        assert_eq!(p("x = true"), cmp("x", Op::Eq, Value::Bool(true)));
        assert_eq!(p(r#"create_time > "2024-01-01T00:00:00Z""#).to_string(), r#"create_time > "2024-01-01T00:00:00Z""#);
        assert_eq!(p(r"n = 'it''s'".replace("''", "\\'").as_str()), cmp("n", Op::Eq, Value::Text("it's".into())));
        assert_eq!(p("given_name = \"Zoë 😀\""), cmp("given_name", Op::Eq, Value::Text("Zoë 😀".into())));
        assert!(parse("   ").unwrap().is_none());
    }

    #[test]
    fn errors_say_where() {
        let e = parse("a = 1 AND").unwrap_err();
        assert_eq!(e.column, 10, "{e}");
        let e = parse("a == 1").unwrap_err();
        assert_eq!(e.column, 4, "{e}");
        let e = parse(r#"a = "open"#).unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
        let e = parse("(a = 1").unwrap_err();
        assert!(e.message.contains("')'"), "{e}");
        let e = parse("a = 1 b = 2").unwrap_err();
        assert!(e.message.contains("AND, OR"), "{e}");
        let e = parse("a = *").unwrap_err();
        assert!(e.message.contains("presence"), "{e}");
        let e = parse("a ; 1").unwrap_err();
        assert_eq!(e.column, 3);
        let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("nested"));
        let not_deep = format!("{}a = 1", "NOT ".repeat(100));
        assert!(parse(&not_deep).unwrap_err().message.contains("nested"));
        assert!(parse(&"a = 1 AND ".repeat(1000)).is_err());
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<String>().prop_map(Value::Text),
            (-1.0e9..1.0e9f64).prop_map(Value::Number),
            any::<bool>().prop_map(Value::Bool),
        ]
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        let leaf = (
            prop::collection::vec("[a-z_][a-z0-9_]{0,8}".prop_filter("keyword", |s| s != "true" && s != "false"), 1..3),
            prop_oneof![
                Just(Op::Eq),
                Just(Op::Ne),
                Just(Op::Lt),
                Just(Op::Le),
                Just(Op::Gt),
                Just(Op::Ge),
                Just(Op::Has)
            ],
            arb_value(),
        )
            .prop_map(|(field, op, value)| Expr::Compare { field, op, value, column: 0 });
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
                inner.prop_map(|a| Expr::Not(Box::new(a))),
            ]
        })
    }

    proptest! {
        #[test]
        fn print_then_parse_round_trips(e in arb_expr()) {
            let text = e.to_string();
            let back = parse(&text).unwrap().unwrap().without_positions();
            prop_assert_eq!(back, e);
        }

        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_filter_like_text(s in r#"[a-z.() "'=!<>:*0-9\-ANDORNOT\\]{0,80}"#) {
            let _ = parse(&s);
        }
    }
}
