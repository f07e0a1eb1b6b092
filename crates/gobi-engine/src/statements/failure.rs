//! Errors raised while a statement is planned or run, made to point at what failed: DataFusion
//! knows where a name is in the text, but not which value of the statement it could not
//! convert, nor what a missing column in a query without FROM means.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{visit_expressions, Expr as SqlExpr, SetExpr, Statement as SqlStatement, Value, ValueWithSpan, Visit};
use datafusion::sql::sqlparser::tokenizer::Span;
use gobi_lang::Ast;

use crate::error::{failed_cast, GobiError};
use crate::session::Session;
use crate::statements::query::object_name;

impl Session {
    /// `error`, raised by `ast`, with the place and words a user needs where they can be known:
    /// a value that does not convert to its column's type is pointed at and named with the
    /// column (`INSERT … VALUES`); an unknown column in a query that reads no table hints at
    /// a missing FROM.
    pub(crate) async fn located(&self, error: GobiError, ast: &Ast) -> GobiError {
        let Ast::Statement(statement) = ast else { return error };
        if let Some((value, to)) = failed_cast(&error.message) {
            let Some((span, index)) = quoted_literal(statement, &value) else { return error };
            let column = match index {
                Some(index) => self.insert_column(statement, index).await,
                None => None,
            };
            let column = column.map_or(String::new(), |c| format!(" for column {c}"));
            let message = format!("cannot convert '{value}' to {to}{column}");
            let reworded = GobiError { message, ..error };
            return match datafusion::common::Span::try_from_sqlparser_span(span) {
                Some(span) => reworded.pointing_at(&span),
                None => reworded,
            };
        }
        if error.message.starts_with("No field named ") && reads_no_table(statement) {
            return error.with_hint("missing FROM? the query reads no table, so it has no columns");
        }
        error
    }

    /// The name of the `index`th column an `INSERT` fills: from its column list, else the
    /// table's own columns in order.
    async fn insert_column(&self, statement: &SqlStatement, index: usize) -> Option<String> {
        let SqlStatement::Insert(insert) = statement else { return None };
        if !insert.columns.is_empty() {
            return insert.columns.get(index).map(ToString::to_string);
        }
        let datafusion::sql::sqlparser::ast::TableObject::TableName(name) = &insert.table else { return None };
        let table = self.ctx.table_provider(object_name(name).as_str()).await.ok()?;
        table.schema().fields().get(index).map(|field| field.name().clone())
    }
}

/// Where the first single-quoted literal of the statement whose text is `value` is, and its
/// column index when it is one of an `INSERT … VALUES` row's values.
fn quoted_literal(statement: &SqlStatement, value: &str) -> Option<(Span, Option<usize>)> {
    if let SqlStatement::Insert(insert) = statement {
        if let Some(SetExpr::Values(values)) = insert.source.as_ref().map(|q| q.body.as_ref()) {
            for row in &values.rows {
                if let Some((index, span)) = row.content.iter().enumerate().find_map(|(index, expr)| Some((index, literal_in(expr, value)?))) {
                    return Some((span, Some(index)));
                }
            }
        }
    }
    literal_in(statement, value).map(|span| (span, None))
}

/// The span of the first literal `'value'` in `node`.
fn literal_in(node: &impl Visit, value: &str) -> Option<Span> {
    let found = visit_expressions(node, |expr| match expr {
        SqlExpr::Value(ValueWithSpan { value: Value::SingleQuotedString(s), span }) if s == value => ControlFlow::Break(*span),
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(span) => Some(span),
        ControlFlow::Continue(()) => None,
    }
}

/// A query (or the query of a CREATE TABLE AS, an INSERT) whose SELECT has no FROM.
fn reads_no_table(statement: &SqlStatement) -> bool {
    let query = match statement {
        SqlStatement::Query(query) => query,
        SqlStatement::Insert(insert) => match &insert.source {
            Some(query) => query,
            None => return false,
        },
        SqlStatement::CreateTable(create) => match &create.query {
            Some(query) => query,
            None => return false,
        },
        _ => return false,
    };
    matches!(query.body.as_ref(), SetExpr::Select(select) if select.from.is_empty())
}
