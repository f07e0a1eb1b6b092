//! The thin pass that turns PL-GRIZZLY's additions inside a parsed statement into plain SQL,
//! so DataFusion plans them like any other query:
//!
//! ```text
//!  FROM t                     ─► SELECT * FROM t
//!  $threshold                 ─► the variable's value, as a literal (constant folding sees it)
//!  gross(total, 0.2)          ─► (total) * (1 + (0.2))      expression functions are inlined
//!  @TypeOf(x) / @TypeOf(big)  ─► arrow_typeof(x) / 'table(id Int64, …)'
//!  FROM read_csv('f', header = false)  ─► FROM read_csv('f', 'header', false)
//!  +x                         ─► (x)       unary plus is the identity on any type, as in SQLite
//! ```
//!
//! (DataFusion plans only positional arguments to a table function, and an identifier in one
//! as a column: a `name = value`, `name => value` or `name := value` option becomes the name
//! in quotes and the value, which the function reads in pairs.)
//!
//! Block functions are left as calls: the engine registers them as scalar UDFs. Their arity is
//! checked here, where the call's position is known.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, ObjectNamePart, Query, SelectFlavor, SelectItem, SetExpr,
    TableFactor, TableFunctionArgs, UnaryOperator, Value, ValueWithSpan, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::tokenizer::Span;

use crate::diagnostic::{closest_name, NameError, Position};
use crate::function::{FunctionBody, FunctionDef};
use crate::Ast;

/// What the pass needs to know about the session.
pub trait Scope {
    /// The value of scalar variable `name` as a SQL literal.
    fn variable(&self, name: &str) -> Option<Expr>;
    fn variable_names(&self) -> Vec<String>;
    /// A user function by (normalized) name.
    fn function(&self, name: &str) -> Option<Arc<FunctionDef>>;
    /// `table(col Type, …)` when `name` is a table variable.
    fn table_type(&self, name: &str) -> Option<String>;
}

/// Expression functions may call each other; deeper than this is taken for recursion.
const MAX_INLINE_DEPTH: usize = 32;

/// Rewrites every PL-GRIZZLY addition in `statement` (see the module docs).
pub fn expand_statement(statement: &mut Ast, scope: &dyn Scope) -> Result<(), NameError> {
    let mut expander = Expander { scope, depth: 0 };
    let flow = match statement {
        Ast::Statement(s) => s.visit(&mut expander),
        Ast::Explain(explain) => return expand_statement(&mut explain.statement, scope),
        Ast::CopyTo(copy) => match &mut copy.source {
            datafusion::sql::parser::CopyToSource::Query(query) => query.visit(&mut expander),
            datafusion::sql::parser::CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        Ast::CreateExternalTable(_) | Ast::Reset(_) => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Rewrites the additions inside one expression (a `let` value, a function body).
pub fn expand_expr(expr: &mut Expr, scope: &dyn Scope) -> Result<(), NameError> {
    match expr.visit(&mut Expander { scope, depth: 0 }) {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Expander<'a> {
    scope: &'a dyn Scope,
    depth: usize,
}

impl VisitorMut for Expander<'_> {
    type Break = NameError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<NameError> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                name_after_the_call(item, self.scope);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<NameError> {
        if let TableFactor::Table { args: Some(TableFunctionArgs { args, .. }), .. } = factor {
            *args = std::mem::take(args).into_iter().flat_map(option_as_pair).collect();
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<NameError> {
        select_star_when_from_first(&mut query.body);
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<NameError> {
        match self.rewrite(expr) {
            Ok(Some(new)) => {
                *expr = new;
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

/// A table function's named option as two positional arguments (see the module's doc).
fn option_as_pair(arg: FunctionArg) -> Vec<FunctionArg> {
    let quoted = |name: &Ident| FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::value(Value::SingleQuotedString(name.value.to_lowercase()))));
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::BinaryOp { left, op: BinaryOperator::Eq, right })) if matches!(*left, Expr::Identifier(_)) => {
            let Expr::Identifier(name) = *left else { unreachable!("matched above") };
            vec![quoted(&name), FunctionArg::Unnamed(FunctionArgExpr::Expr(*right))]
        }
        FunctionArg::Named { name, arg, .. } => vec![quoted(&name), FunctionArg::Unnamed(arg)],
        other => vec![other],
    }
}

impl Expander<'_> {
    fn rewrite(&mut self, expr: &Expr) -> Result<Option<Expr>, NameError> {
        match expr {
            Expr::Value(ValueWithSpan { value: Value::Placeholder(placeholder), span }) => {
                let Some(name) = placeholder.strip_prefix('$').filter(|n| !n.starts_with(|c: char| c.is_ascii_digit())) else {
                    return Ok(None);
                };
                let name = name.to_lowercase();
                match self.scope.variable(&name) {
                    Some(value) => Ok(Some(Expr::Nested(Box::new(value)))),
                    None => {
                        Err(unknown("variable", &format!("${name}"), &self.scope.variable_names().iter().map(|n| format!("${n}")).collect::<Vec<_>>(), *span))
                    }
                }
            }
            Expr::UnaryOp { op: UnaryOperator::Plus, expr } => Ok(Some(Expr::Nested(expr.clone()))),
            Expr::Function(call) => {
                let Some(name) = single_name(&call.name) else { return Ok(None) };
                let span = call.name.0.first().and_then(ObjectNamePart::as_ident).map_or(Span::empty(), |i| i.span);
                if name == "@typeof" {
                    return self.type_of(call, span).map(Some);
                }
                let Some(function) = self.scope.function(&name) else { return Ok(None) };
                let args = plain_args(&call.args).ok_or_else(|| error(format!("{} takes plain arguments: {}", function.name, function.signature()), span))?;
                if args.len() != function.params.len() {
                    return Err(error(
                        format!(
                            "function {} takes {} argument{}, got {}: {}",
                            function.name,
                            function.params.len(),
                            if function.params.len() == 1 { "" } else { "s" },
                            args.len(),
                            function.signature()
                        ),
                        span,
                    ));
                }
                let FunctionBody::Expr(body) = &function.body else { return Ok(None) };
                self.inline(&function, body, args, span).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn inline(&mut self, function: &FunctionDef, body: &Expr, args: Vec<Expr>, span: Span) -> Result<Expr, NameError> {
        if self.depth >= MAX_INLINE_DEPTH {
            return Err(error(format!("function {} calls itself (directly or through other functions)", function.name), span));
        }
        let mut inlined = body.clone();
        let mut params = Parameters { names: function.params.iter().map(|p| p.name.as_str()).collect(), args, call: span };
        let _ = inlined.visit(&mut params);
        self.depth += 1;
        let expanded = inlined.visit(self);
        self.depth -= 1;
        match expanded {
            // The body's positions are in the definition's text: point at this call instead.
            ControlFlow::Break(e) => Err(NameError { position: error(String::new(), span).position, ..e }),
            ControlFlow::Continue(()) => Ok(Expr::Nested(Box::new(inlined))),
        }
    }

    fn type_of(&self, call: &datafusion::sql::sqlparser::ast::Function, span: Span) -> Result<Expr, NameError> {
        let args = plain_args(&call.args).filter(|a| a.len() == 1).ok_or_else(|| error("@TypeOf takes one expression or table".into(), span))?;
        if let Expr::Identifier(ident) = &args[0] {
            if let Some(table_type) = self.scope.table_type(&normalize(ident)) {
                return Ok(Expr::Value(Value::SingleQuotedString(table_type).with_empty_span()));
            }
        }
        let mut typeof_call = call.clone();
        typeof_call.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::with_span(span, "arrow_typeof"))]);
        Ok(Expr::Function(typeof_call))
    }
}

/// An output column computed with a variable, `@TypeOf` or an expression function is named
/// after what the user wrote (`gross(total, 0.2)`), not after the expression it expands into.
fn name_after_the_call(item: &mut SelectItem, scope: &dyn Scope) {
    let SelectItem::UnnamedExpr(expr) = item else { return };
    let mut finder = FindsAdditions { scope, found: false };
    let _ = expr.visit(&mut finder);
    if finder.found {
        let alias = Ident::with_quote('"', expr.to_string());
        *item = SelectItem::ExprWithAlias { expr: expr.clone(), alias };
    }
}

struct FindsAdditions<'a> {
    scope: &'a dyn Scope,
    found: bool,
}

impl VisitorMut for FindsAdditions<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        self.found = match expr {
            Expr::Value(ValueWithSpan { value: Value::Placeholder(_), .. }) => true,
            Expr::Function(call) => single_name(&call.name).is_some_and(|name| name == "@typeof" || self.scope.function(&name).is_some_and(|f| !f.is_block())),
            _ => false,
        };
        if self.found {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Replaces a function's parameter names with the call's arguments, and moves the rest of the
/// body to the call's position (the body's own spans are in the definition's text, which may
/// be a stored file), so a later error points at the call.
struct Parameters<'a> {
    names: Vec<&'a str>,
    args: Vec<Expr>,
    call: Span,
}

impl VisitorMut for Parameters<'_> {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(ident) => match self.names.iter().position(|n| *n == normalize(ident)) {
                Some(i) => *expr = Expr::Nested(Box::new(self.args[i].clone())),
                None => ident.span = self.call,
            },
            Expr::CompoundIdentifier(parts) => parts.iter_mut().for_each(|p| p.span = self.call),
            Expr::Value(value) => value.span = self.call,
            Expr::Function(call) => {
                for part in &mut call.name.0 {
                    if let ObjectNamePart::Identifier(ident) = part {
                        ident.span = self.call;
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// `FROM t` alone means `SELECT * FROM t`.
fn select_star_when_from_first(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) if select.flavor == SelectFlavor::FromFirstNoSelect => {
            select.projection = vec![SelectItem::Wildcard(Default::default())];
            select.flavor = SelectFlavor::Standard;
        }
        SetExpr::Select(select) if select.flavor == SelectFlavor::FromFirst => select.flavor = SelectFlavor::Standard,
        SetExpr::SetOperation { left, right, .. } => {
            select_star_when_from_first(left);
            select_star_when_from_first(right);
        }
        _ => {}
    }
}

fn plain_args(args: &FunctionArguments) -> Option<Vec<Expr>> {
    match args {
        FunctionArguments::None => Some(vec![]),
        FunctionArguments::List(list) if list.duplicate_treatment.is_none() && list.clauses.is_empty() => list
            .args
            .iter()
            .map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [part] => part.as_ident().map(normalize),
        _ => None,
    }
}

fn normalize(ident: &Ident) -> String {
    crate::ident::normalize(ident.clone())
}

fn error(message: String, span: Span) -> NameError {
    NameError { message, position: Position { line: span.start.line.max(1), column: span.start.column.max(1) } }
}

/// "unknown variable $thresold" with "did you mean $threshold?" when one is close.
fn unknown(kind: &str, name: &str, known: &[String], span: Span) -> NameError {
    let mut message = format!("unknown {kind} {name}");
    if let Some(close) = closest_name(name, known) {
        message.push_str(&format!("; did you mean {close}?"));
    }
    error(message, span)
}
