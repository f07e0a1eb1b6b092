//! Session variables: `let x = <expr>` (a scalar, read as `$x`) and `let t = <query>` (a table,
//! named in `FROM`). Both live until the session ends; `let` again replaces.
//!
//! A table value is computed once, when `let` runs, and its Arrow batches are kept by one
//! owner, [`TableValue`], which knows its size in bytes and holds that many bytes of the
//! **temp** pool for as long as it lives. The catalog sees the same batches through a
//! `MemTable` (shared `Arc` buffers, no copy), so what a table value costs is exactly
//! [`TableValue::bytes`].

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use datafusion::sql::unparser::Unparser;

use gobi_memory::{MemoryManager, PoolKind, Reservation};

use crate::error::{GobiError, Result};

/// The batches of a table variable, and the temp-pool reservation for their bytes.
#[derive(Debug, Clone)]
pub struct TableValue {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
    _reservation: Arc<Reservation>,
}

impl TableValue {
    /// Takes ownership of the batches once their bytes are reserved from the temp pool, in
    /// the name of `what` (`let t`, `table t`).
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>, memory: &Arc<MemoryManager>, what: &str) -> Result<Self> {
        let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let reservation = memory.reserve(PoolKind::Temp, bytes, what)?;
        Ok(Self { schema, batches, bytes, _reservation: Arc::new(reservation) })
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The value's batches (sharing its buffers).
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches.clone()
    }

    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// A table the catalog can scan, sharing this value's buffers.
    pub fn table(&self) -> Result<MemTable> {
        Ok(MemTable::try_new(Arc::clone(&self.schema), vec![self.batches.clone()])?)
    }

    /// `table(id Int64, total Float64)`: what `@TypeOf` says of a table.
    pub fn type_name(&self) -> String {
        let columns: Vec<String> = self.schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
        format!("table({})", columns.join(", "))
    }
}

#[derive(Debug, Clone)]
pub enum Value {
    Scalar(ScalarValue),
    Table(TableValue),
}

impl Value {
    pub fn type_name(&self) -> String {
        match self {
            Value::Scalar(v) => v.data_type().to_string(),
            Value::Table(t) => t.type_name(),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Value::Scalar(v) => v.size(),
            Value::Table(t) => t.bytes(),
        }
    }
}

/// The variables of one session, by name.
#[derive(Debug, Default)]
pub struct Variables {
    values: BTreeMap<String, Value>,
}

impl Variables {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Sets `name`, returning what it held before.
    pub fn set(&mut self, name: String, value: Value) -> Option<Value> {
        self.values.insert(name, value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.values.iter()
    }

    pub fn scalar_names(&self) -> Vec<String> {
        self.values.iter().filter(|(_, v)| matches!(v, Value::Scalar(_))).map(|(k, _)| k.clone()).collect()
    }

    /// The SQL literal that stands for scalar variable `name` in a statement.
    pub fn literal(&self, name: &str) -> Option<SqlExpr> {
        match self.values.get(name)? {
            Value::Scalar(value) => scalar_literal(value).ok(),
            Value::Table(_) => None,
        }
    }
}

/// A literal that plans back to `value` with its exact type: DataFusion reads an unadorned
/// number as Int64 or Float64 and a string as Utf8, so other types keep an explicit cast.
fn scalar_literal(value: &ScalarValue) -> Result<SqlExpr> {
    use datafusion::logical_expr::{cast, lit};
    let plain = matches!(value, ScalarValue::Int64(_) | ScalarValue::Float64(_) | ScalarValue::Utf8(Some(_)) | ScalarValue::Boolean(_) | ScalarValue::Null);
    let expr = if plain { lit(value.clone()) } else { cast(lit(value.clone()), value.data_type()) };
    Unparser::default().expr_to_sql(&expr).map_err(|e| GobiError::internal(format!("cannot write the value {value} as SQL: {e}")))
}
