//! `let` variables and user functions: what a session defines for its later statements.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, SelectItem, SetExpr, Statement as SqlStatement};
use gobi_lang::{expand_expr, parse_script, Ast, Command, FunctionDef, LetValue, Statement};

use crate::error::{GobiError, Result};
use crate::functions::BlockFunction;
use crate::lakehouse::Definition;
use crate::output::{Collected, Output};
use crate::session::{Session, SessionScope};
use crate::variables::{TableValue, Value, Variables};

impl Session {
    pub(crate) async fn let_variable(&self, name: &str, value: &LetValue) -> Result<Output> {
        let value = match value {
            LetValue::Scalar(expr) => {
                let mut expr = expr.clone();
                expand_expr(&mut expr, &SessionScope { variables: &self.variables.read(), functions: &self.functions.read(), defining: None })?;
                Value::Scalar(self.evaluate_scalar(expr).await?)
            }
            LetValue::Table(query) => {
                let Collected::Rows { schema, batches } = self.execute_sql(&self.expand(query)?, &query.to_string()).await?.collect().await? else {
                    return Err(GobiError::plan(format!("let {name} = … must be a query that returns rows")));
                };
                Value::Table(TableValue::new(schema, batches, self.engine().memory(), &format!("let {name}"))?)
            }
        };
        let description = match &value {
            Value::Scalar(v) => format!("{name} = {v} ({})", v.data_type()),
            Value::Table(t) => format!("{name} = {} rows, {} ({})", t.rows(), gobi_memory::ByteSize(t.bytes() as u64), t.type_name()),
        };
        let previous = self.variables.read().get(name).cloned();
        if matches!(previous, Some(Value::Table(_))) {
            self.ctx.deregister_table(name)?;
        }
        if let Value::Table(table) = &value {
            if let Err(e) = self.ctx.register_table(name, Arc::new(table.table()?)) {
                if let Some(Value::Table(old)) = &previous {
                    self.ctx.register_table(name, Arc::new(old.table()?))?;
                }
                return Err(GobiError::from(e).with_hint("a table variable needs a name no table or view has"));
            }
        }
        self.variables.write().set(name.to_string(), value);
        Ok(Output::Done(format!("let {description}")))
    }

    /// The value of `SELECT expr`.
    async fn evaluate_scalar(&self, expr: SqlExpr) -> Result<datafusion::common::ScalarValue> {
        let mut select = parse_script("SELECT NULL")?.remove(0);
        if let Command::Sql(Ast::Statement(statement)) = &mut select.command {
            if let SqlStatement::Query(query) = statement.as_mut() {
                if let SetExpr::Select(body) = query.body.as_mut() {
                    body.projection = vec![SelectItem::UnnamedExpr(expr)];
                }
            }
        }
        let Command::Sql(ast) = &select.command else { unreachable!("parsed as SQL") };
        let Collected::Rows { batches, .. } = self.execute_sql(ast, &ast.to_string()).await?.collect().await? else {
            return Err(GobiError::internal("SELECT returned no rows"));
        };
        let batch = batches.iter().find(|b| b.num_rows() > 0).ok_or_else(|| GobiError::internal("SELECT returned no rows"))?;
        Ok(datafusion::common::ScalarValue::try_from_array(batch.column(0), 0)?)
    }

    /// Defines the functions stored in the lakehouse. One that no longer compiles (say, it
    /// calls a function since dropped) is skipped with a warning rather than failing the session.
    pub(crate) fn load_functions(&self) {
        let Some(lakehouse) = self.lakehouse() else { return };
        for name in lakehouse.definition_names(Definition::Function) {
            let Some(text) = lakehouse.definition(Definition::Function, &name) else { continue };
            let defined = parse_script(&text).map_err(GobiError::from).and_then(|statements| match statements.into_iter().next() {
                Some(Statement { command: Command::DefineFunction(def), .. }) => self.define_function(*def),
                _ => Err(GobiError::internal("not a FUNCTION statement")),
            });
            if let Err(e) = defined {
                tracing::warn!("stored function {name} is not available: {}", e.message);
            }
        }
    }

    pub(crate) fn create_function(&self, def: &FunctionDef) -> Result<Output> {
        let state = self.ctx.state();
        if state.scalar_functions().contains_key(&def.name) && !self.functions.read().names().contains(&def.name)
            || state.aggregate_functions().contains_key(&def.name)
            || state.window_functions().contains_key(&def.name)
        {
            return Err(GobiError::plan(format!("{} is a built-in function", def.name)).with_hint("give your function another name"));
        }
        if let gobi_lang::FunctionBody::Expr(body) = &def.body {
            // Expanding the body once, with the function itself in scope, finds recursion now
            // rather than at every call.
            let scope = SessionScope { variables: &Variables::default(), functions: &self.functions.read(), defining: Some(Arc::new(def.clone())) };
            expand_expr(&mut body.clone(), &scope)?;
        }
        // Saved first: a name the lakehouse refuses defines nothing.
        if let Some(lakehouse) = self.lakehouse() {
            lakehouse.save_definition(Definition::Function, &def.name, &def.text)?;
        }
        let replaced = self.functions.read().get(&def.name).is_some();
        self.define_function(def.clone())?;
        let verb = if replaced { "replaced" } else { "created" };
        Ok(Output::Done(format!("{verb} function {}", def.signature())))
    }

    /// Makes `def` callable in this session: block bodies are compiled and registered as UDFs.
    fn define_function(&self, mut def: FunctionDef) -> Result<()> {
        let block = if let gobi_lang::FunctionBody::Block(statements) = &mut def.body {
            let scope = SessionScope { variables: &Variables::default(), functions: &self.functions.read(), defining: None };
            expand_block(statements, &scope)?;
            let block = Arc::new(BlockFunction::compile(&self.ctx.state(), &def, Arc::clone(self.engine().memory()))?);
            self.ctx.register_udf(block.udf());
            Some(block)
        } else {
            None
        };
        if block.is_none() && self.functions.read().block(&def.name).is_some() {
            self.ctx.deregister_udf(&def.name);
        }
        self.functions.write().insert(Arc::new(def), block);
        Ok(())
    }

    pub(crate) fn show_functions(&self) -> Result<Output> {
        let functions = self.functions.read();
        let mut columns: [Vec<String>; 3] = Default::default();
        let mut memo: [Vec<u64>; 3] = Default::default();
        for def in functions.iter() {
            columns[0].push(def.name.clone());
            columns[1].push(if def.is_block() { "block" } else { "expression" }.to_string());
            columns[2].push(def.signature());
            let (bytes, hits, misses) = functions.block(&def.name).map_or((0, 0, 0), |b| b.memo_stats());
            memo[0].push(bytes as u64);
            memo[1].push(hits);
            memo[2].push(misses);
        }
        let [names, kinds, signatures] = columns;
        let [bytes, hits, misses] = memo;
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("signature", DataType::Utf8, false),
            Field::new("memo_bytes", DataType::UInt64, false),
            Field::new("memo_hits", DataType::UInt64, false),
            Field::new("memo_misses", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(signatures)),
                Arc::new(UInt64Array::from(bytes)),
                Arc::new(UInt64Array::from(hits)),
                Arc::new(UInt64Array::from(misses)),
            ],
        )?;
        Ok(Output::rows(vec![batch], schema))
    }

    pub(crate) fn drop_function(&self, name: &str, if_exists: bool) -> Result<Output> {
        let removed = self.functions.write().remove(name);
        if let Some(lakehouse) = self.lakehouse() {
            lakehouse.remove_definition(Definition::Function, name)?;
        }
        match removed {
            Some(def) => {
                if def.is_block() {
                    self.ctx.deregister_udf(name);
                }
                Ok(Output::Done(format!("dropped function {name}")))
            }
            None if if_exists => Ok(Output::Done(format!("function {name} does not exist; nothing done"))),
            None => {
                let error = GobiError::plan(format!("function {name} not found"));
                Err(match gobi_lang::closest_name(name, &self.functions.read().names()) {
                    Some(close) => error.with_hint(format!("did you mean {close}?")),
                    None => error,
                })
            }
        }
    }
}

/// Expands every expression of a block body (nested functions inlined, no session variables:
/// a stored function must mean the same in every session).
fn expand_block(statements: &mut [gobi_lang::BlockStatement], scope: &SessionScope) -> Result<()> {
    use gobi_lang::BlockStatement;
    for statement in statements {
        match statement {
            BlockStatement::Let { value, .. } | BlockStatement::Return(value) => expand_expr(value, scope)?,
            BlockStatement::If { branches, otherwise } => {
                for (condition, body) in branches {
                    expand_expr(condition, scope)?;
                    expand_block(body, scope)?;
                }
                expand_block(otherwise, scope)?;
            }
        }
    }
    Ok(())
}
