//! The SQL helpers every statement of the crate shares: identifier lists, qualified names,
//! statement templates, and whether a connection is inside a transaction (which decides how a failed statement is classified and
//! whether the crate may open a transaction of its own).
//!
//! This module is the foundation's: it imports nothing of the crate.

use diesel::backend::Backend;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;

/// Pushes `names` as quoted identifiers separated by commas: `"a", "b"`.
pub(crate) fn push_identifiers<DB: Backend>(
    out: &mut AstPass<'_, '_, DB>,
    names: &[&str],
) -> QueryResult<()> {
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_sql(", ");
        }
        out.push_identifier(name)?;
    }
    Ok(())
}

/// Pushes `qualifier.column` as quoted identifiers: `"t"."c"` (PostgreSQL's statements name
/// their common table expressions' columns so).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn push_qualified<DB: Backend>(
    out: &mut AstPass<'_, '_, DB>,
    qualifier: &str,
    column: &str,
) -> QueryResult<()> {
    out.push_identifier(qualifier)?;
    out.push_sql(".");
    out.push_identifier(column)
}

/// What a `{name}` of a [`push_template`] stands for.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) enum Word {
    /// A quoted identifier: a column of the declaration.
    Ident(&'static str),
    /// `'text'`: a literal of the declaration, checked where it is declared to need no
    /// escaping (a claim queue's statuses).
    Literal(&'static str),
    /// The statement's table.
    Table,
}

/// Writes `template` as SQL text, each `{name}` in it as `words(name)` says: a quoted
/// identifier, a declared literal, or `table`. A statement reads as its SQL, its identifiers
/// still quoted by the backend and every value still bound by the caller between templates. A
/// name `words` does not know, or a `{` without its `}`, is the statement's own bug: a
/// query-builder error, nothing sent.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) fn push_template<'b, DB: Backend, T: QueryFragment<DB>>(
    out: &mut AstPass<'_, 'b, DB>,
    table: &'b T,
    template: &str,
    words: fn(&str) -> Option<Word>,
) -> QueryResult<()> {
    let unknown =
        || diesel::result::Error::QueryBuilderError(format!("bad template: {template}").into());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_sql(&rest[..open]);
        let len = rest[open..].find('}').ok_or_else(unknown)?;
        match words(&rest[open + 1..open + len]).ok_or_else(unknown)? {
            Word::Ident(name) => out.push_identifier(name)?,
            Word::Literal(text) => {
                out.push_sql("'");
                out.push_sql(text);
                out.push_sql("'");
            }
            Word::Table => table.walk_ast(out.reborrow())?,
        }
        rest = &rest[open + len + 1..];
    }
    out.push_sql(rest);
    Ok(())
}

/// Whether `conn` has an open transaction (or its transaction state is broken, which counts as
/// open: nothing may assume autocommit then).
pub fn in_transaction<C>(conn: &mut C) -> bool
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
{
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map_or(true, |depth| depth.is_some())
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;
    use diesel::pg::Pg;
    use diesel::query_builder::QueryId;

    /// A statement of one template over the table `t`, its names `{x}` (an identifier) and
    /// `{lit}` (a literal).
    #[derive(QueryId)]
    struct Template(&'static str);

    struct T;

    impl QueryFragment<Pg> for T {
        fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
            out.push_identifier("t")
        }
    }

    fn word(name: &str) -> Option<Word> {
        match name {
            "t" => Some(Word::Table),
            "x" => Some(Word::Ident("x y")),
            "lit" => Some(Word::Literal("done")),
            _ => None,
        }
    }

    impl QueryFragment<Pg> for Template {
        fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
            push_template(&mut out, &T, self.0, word)
        }
    }

    fn text(template: &'static str) -> Result<String, String> {
        let mut builder = <Pg as Backend>::QueryBuilder::default();
        Template(template)
            .to_sql(&mut builder, &Pg)
            .map_err(|e| e.to_string())?;
        Ok(diesel::query_builder::QueryBuilder::finish(builder))
    }

    #[test]
    fn a_template_quotes_its_identifiers_and_writes_its_literals_and_table() {
        assert_eq!(
            text("UPDATE {t} SET {x} = {lit} WHERE {t}.{x} > 1").unwrap(),
            r#"UPDATE "t" SET "x y" = 'done' WHERE "t"."x y" > 1"#
        );
        assert_eq!(text("SELECT 1").unwrap(), "SELECT 1");
    }

    #[test]
    fn a_template_with_an_unknown_name_or_an_open_brace_fails() {
        for bad in ["SELECT {nope}", "SELECT {x", "SELECT {}"] {
            let e = text(bad).unwrap_err();
            assert!(e.contains("bad template"), "{bad}: {e}");
        }
    }
}
