//! User functions: the registry (persisted under `_gobi/functions/`) and the evaluator of
//! block bodies.
//!
//! Expression bodies never reach this module's evaluator: gobi-lang inlines them into the
//! statement, so the optimizer sees through them. Block bodies become a DataFusion scalar UDF,
//! [`BlockFunction`], compiled once into physical expressions and run over whole batches:
//!
//! ```text
//!  tier(total) over a batch of N rows
//!   if total > 1000 then return 'gold'      cond evaluated for all N rows ──► rows where true
//!   elif total > 100 then return 'silver'   cond evaluated for the rest    ──► rows where true
//!   else return 'bronze'                    the rows left                  ──► their values
//!   end                                     pieces interleaved back into row order
//! ```
//!
//! A branch runs on its selection only (`filter_record_batch`), so every expression is an
//! Arrow kernel over an array; nothing runs per row. Rows that reach the end of the body
//! without `return` yield NULL.
//!
//! Block functions are pure, so results are memoized per argument values in a [`Memo`] with a
//! byte bound, used when a batch's arguments repeat enough for lookups to pay.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::kernels::boolean::{and, not};
use datafusion::arrow::compute::{cast, concat, concat_batches, filter, filter_record_batch, interleave, prep_null_mask_filter, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{ColumnarValue, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{DataType as SqlDataType, Expr as SqlExpr};
use gobi_lang::{BlockStatement, FunctionBody, FunctionDef};
use parking_lot::Mutex;

use crate::error::{GobiError, Result};
use crate::memo::Memo;
use gobi_memory::MemoryManager;

/// Bytes the memo of one block function may hold at most (all of it reserved from the cache
/// pool, which may allow less).
const MEMO_LIMIT: usize = 4 << 20;

/// The user functions of a session, by name.
#[derive(Debug, Default)]
pub struct Functions {
    defs: BTreeMap<String, Arc<FunctionDef>>,
    compiled: HashMap<String, Arc<BlockFunction>>,
}

impl Functions {
    pub fn get(&self, name: &str) -> Option<Arc<FunctionDef>> {
        self.defs.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.defs.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<FunctionDef>> {
        self.defs.values()
    }

    /// The compiled block function, for its memo statistics.
    pub fn block(&self, name: &str) -> Option<&Arc<BlockFunction>> {
        self.compiled.get(name)
    }

    /// Adds or replaces a definition; a block body must have been compiled into `block`.
    pub fn insert(&mut self, def: Arc<FunctionDef>, block: Option<Arc<BlockFunction>>) {
        match block {
            Some(block) => self.compiled.insert(def.name.clone(), block),
            None => self.compiled.remove(&def.name),
        };
        self.defs.insert(def.name.clone(), def);
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<FunctionDef>> {
        self.compiled.remove(name);
        self.defs.remove(name)
    }
}

/// The Arrow type a SQL type name stands for, as DataFusion's CAST reads it.
pub fn arrow_type(state: &SessionState, data_type: &SqlDataType) -> Result<DataType> {
    let probe = SqlExpr::Cast {
        kind: datafusion::sql::sqlparser::ast::CastKind::Cast,
        expr: Box::new(SqlExpr::Value(datafusion::sql::sqlparser::ast::Value::Null.with_empty_span())),
        data_type: data_type.clone(),
        array: false,
        format: None,
    };
    let empty = DFSchema::empty();
    let expr = sql_to_expr(state, probe, &empty)?;
    Ok(expr.get_type(&empty)?)
}

fn sql_to_expr(state: &SessionState, expr: SqlExpr, schema: &DFSchema) -> Result<datafusion::logical_expr::Expr> {
    Ok(state.create_logical_expr_from_sql_expr(datafusion::sql::sqlparser::ast::ExprWithAlias { expr, alias: None }, schema)?)
}

/// A block-bodied user function, compiled once and registered as a scalar UDF.
#[derive(Debug)]
pub struct BlockFunction {
    name: String,
    text: String,
    params: Vec<(String, DataType)>,
    /// One column per parameter: the batch the body runs on.
    input_schema: SchemaRef,
    return_type: DataType,
    signature: Signature,
    body: Vec<Step>,
    memo: Mutex<Memo>,
}

/// One compiled statement of a block body.
#[derive(Debug)]
enum Step {
    /// `let name = expr`: a new column (`slot: None`) or a new value for an existing one.
    Let {
        expr: Arc<dyn PhysicalExpr>,
        name: String,
        data_type: DataType,
        slot: Option<usize>,
    },
    If {
        branches: Vec<(Arc<dyn PhysicalExpr>, Vec<Step>)>,
        otherwise: Vec<Step>,
    },
    Return(Arc<dyn PhysicalExpr>),
}

impl BlockFunction {
    /// Plans every expression of the body against the parameters and the `let`s before it.
    pub fn compile(state: &SessionState, def: &FunctionDef, memory: Arc<MemoryManager>) -> Result<Self> {
        let FunctionBody::Block(statements) = &def.body else {
            return Err(GobiError::internal("an expression function reached the block compiler"));
        };
        let mut params = vec![];
        for param in &def.params {
            let Some(data_type) = &param.data_type else {
                return Err(GobiError::plan(format!(
                    "parameter {} of {} needs a type: block functions declare them, e.g. `{}({} DOUBLE)`",
                    param.name, def.name, def.name, param.name
                )));
            };
            params.push((param.name.clone(), arrow_type(state, data_type)?));
        }
        let Some(returns) = &def.returns else {
            return Err(GobiError::plan(format!("{} needs a return type: `FUNCTION {}(…) RETURNS type {{ … }}`", def.name, def.name)));
        };
        let return_type = arrow_type(state, returns)?;
        let fields: Vec<Field> = params.iter().map(|(n, t)| Field::new(n, t.clone(), true)).collect();
        let input_schema = Arc::new(Schema::new(fields.clone()));
        let mut compiler = Compiler { state, return_type: &return_type, function: &def.name };
        let body = compiler.block(statements, fields)?;
        let signature = Signature::user_defined(Volatility::Immutable);
        Ok(Self {
            name: def.name.clone(),
            text: def.text.clone(),
            params,
            input_schema,
            return_type,
            signature,
            body,
            memo: Mutex::new(Memo::new(MEMO_LIMIT, memory)),
        })
    }

    pub fn udf(self: &Arc<Self>) -> ScalarUDF {
        ScalarUDF::new_from_shared_impl(Arc::clone(self) as Arc<dyn ScalarUDFImpl>)
    }

    /// Bytes the memo holds now, and its hits and misses so far.
    pub fn memo_stats(&self) -> (usize, u64, u64) {
        let memo = self.memo.lock();
        (memo.bytes(), memo.hits(), memo.misses())
    }

    /// Runs the body over `batch` (one column per parameter).
    fn evaluate(&self, batch: RecordBatch) -> DfResult<ArrayRef> {
        let rows = batch.num_rows();
        let ids = UInt32Array::from_iter_values(0..rows as u32);
        let mut pieces = vec![];
        run(&self.body, batch, ids, &mut pieces)?;
        assemble(pieces, rows, &self.return_type)
    }

    /// Like [`Self::evaluate`], but each distinct argument tuple is computed once (and at most
    /// once per memo lifetime); worth it only when the arguments repeat.
    fn evaluate_memoized(&self, batch: RecordBatch) -> DfResult<ArrayRef> {
        let converter = RowConverter::new(self.params.iter().map(|(_, t)| SortField::new(t.clone())).collect())?;
        let rows = converter.convert_columns(batch.columns())?;
        let mut distinct: HashMap<&[u8], u32> = HashMap::new();
        let mut representatives = vec![];
        let keys: UInt32Array = (0..rows.num_rows())
            .map(|i| {
                let next = distinct.len() as u32;
                *distinct.entry(rows.row(i).data()).or_insert_with(|| {
                    representatives.push(i as u32);
                    next
                })
            })
            .collect();
        let mut memo = self.memo.lock();
        let mut results: Vec<Option<ScalarValue>> = representatives.iter().map(|&i| memo.get(rows.row(i as usize).data())).collect();
        let missing: Vec<u32> = (0..results.len() as u32).filter(|&d| results[d as usize].is_none()).collect();
        if !missing.is_empty() {
            let indices = UInt32Array::from_iter_values(missing.iter().map(|&d| representatives[d as usize]));
            let columns = batch.columns().iter().map(|c| take(c, &indices, None)).collect::<Result<Vec<_>, _>>()?;
            let computed = self.evaluate(RecordBatch::try_new(batch.schema(), columns)?)?;
            for (j, &d) in missing.iter().enumerate() {
                let value = ScalarValue::try_from_array(&computed, j)?;
                memo.insert(rows.row(representatives[d as usize] as usize).data(), value.clone());
                results[d as usize] = Some(value);
            }
        }
        let values = ScalarValue::iter_to_array(results.into_iter().map(|v| v.expect("filled above")))?;
        Ok(take(&values, &keys, None)?)
    }
}

/// Rows in a batch sampled to decide whether memoizing pays.
const MEMO_SAMPLE: usize = 1024;

/// Whether the first rows of `batch` repeat enough (at most one distinct tuple in eight) that
/// looking results up beats computing them.
fn arguments_repeat(batch: &RecordBatch, converter_fields: Vec<SortField>) -> DfResult<bool> {
    let sample = batch.slice(0, batch.num_rows().min(MEMO_SAMPLE));
    if sample.num_rows() < 64 {
        return Ok(false);
    }
    let rows = RowConverter::new(converter_fields)?.convert_columns(sample.columns())?;
    let distinct: std::collections::HashSet<&[u8]> = rows.iter().map(|r| r.data()).collect();
    Ok(distinct.len() * 8 <= sample.num_rows())
}

/// Runs `steps` on the rows of `batch` (`ids` are their row numbers in the original batch).
/// Values returned go to `out`; rows that fall off the end come back, with their columns.
fn run(steps: &[Step], mut batch: RecordBatch, mut ids: UInt32Array, out: &mut Vec<(ArrayRef, UInt32Array)>) -> DfResult<Option<(RecordBatch, UInt32Array)>> {
    for step in steps {
        match step {
            Step::Let { expr, name, data_type, slot } => {
                let value = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mut columns = batch.columns().to_vec();
                let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                match slot {
                    Some(i) => columns[*i] = value,
                    None => {
                        columns.push(value);
                        fields.push(Field::new(name, data_type.clone(), true));
                    }
                }
                batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            }
            Step::Return(expr) => {
                out.push((expr.evaluate(&batch)?.into_array(batch.num_rows())?, ids));
                return Ok(None);
            }
            Step::If { branches, otherwise } => {
                let outer: Vec<usize> = (0..batch.num_columns()).collect();
                let mut continuing: Vec<(RecordBatch, UInt32Array)> = vec![];
                let mut remaining: Option<BooleanArray> = None;
                for (condition, body) in branches {
                    let mut chosen = as_mask(condition.evaluate(&batch)?.into_array(batch.num_rows())?)?;
                    if let Some(remaining) = &remaining {
                        chosen = and(&chosen, remaining)?;
                    }
                    if chosen.true_count() > 0 {
                        let fell_through = run(body, filter_record_batch(&batch, &chosen)?, as_ids(filter(&ids, &chosen)?), out)?;
                        if let Some((b, i)) = fell_through {
                            continuing.push((b.project(&outer)?, i));
                        }
                    }
                    let left = not(&chosen)?;
                    let left = match &remaining {
                        Some(remaining) => and(&left, remaining)?,
                        None => left,
                    };
                    remaining = Some(left);
                    if remaining.as_ref().is_some_and(|r| r.true_count() == 0) {
                        break;
                    }
                }
                let rest = remaining.expect("an if has at least one branch");
                if rest.true_count() > 0 {
                    let fell_through = run(otherwise, filter_record_batch(&batch, &rest)?, as_ids(filter(&ids, &rest)?), out)?;
                    if let Some((b, i)) = fell_through {
                        continuing.push((b.project(&outer)?, i));
                    }
                }
                if continuing.is_empty() {
                    return Ok(None);
                }
                let schema = continuing[0].0.schema();
                batch = concat_batches(&schema, continuing.iter().map(|(b, _)| b))?;
                let id_arrays: Vec<&dyn Array> = continuing.iter().map(|(_, i)| i as &dyn Array).collect();
                ids = as_ids(concat(&id_arrays)?);
            }
        }
    }
    Ok(Some((batch, ids)))
}

/// A condition's rows that count as true (NULL counts as false, as in SQL `CASE`).
fn as_mask(array: ArrayRef) -> DfResult<BooleanArray> {
    let mask = array
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| DataFusionError::Plan(format!("an if condition must be BOOLEAN, got {}", array.data_type())))?;
    Ok(if mask.null_count() > 0 { prep_null_mask_filter(mask) } else { mask.clone() })
}

fn as_ids(array: ArrayRef) -> UInt32Array {
    array.as_any().downcast_ref::<UInt32Array>().expect("row ids are UInt32").clone()
}

/// Puts returned values back in row order; rows that returned nothing are NULL.
fn assemble(pieces: Vec<(ArrayRef, UInt32Array)>, rows: usize, return_type: &DataType) -> DfResult<ArrayRef> {
    let pieces: Vec<(ArrayRef, UInt32Array)> = pieces
        .into_iter()
        .map(|(values, ids)| Ok((if values.data_type() == return_type { values } else { cast(&values, return_type)? }, ids)))
        .collect::<DfResult<_>>()?;
    if let [(values, ids)] = pieces.as_slice() {
        if ids.len() == rows && ids.values().windows(2).all(|w| w[0] < w[1]) {
            return Ok(Arc::clone(values));
        }
    }
    let null_piece = pieces.len();
    let mut order = vec![(null_piece, 0usize); rows];
    for (p, (_, ids)) in pieces.iter().enumerate() {
        for (j, &id) in ids.values().iter().enumerate() {
            order[id as usize] = (p, j);
        }
    }
    let nulls = new_null_array(return_type, 1);
    let mut arrays: Vec<&dyn Array> = pieces.iter().map(|(v, _)| v.as_ref()).collect();
    arrays.push(nulls.as_ref());
    Ok(interleave(&arrays, &order)?)
}

struct Compiler<'a> {
    state: &'a SessionState,
    return_type: &'a DataType,
    function: &'a str,
}

impl Compiler<'_> {
    fn block(&mut self, statements: &[BlockStatement], mut fields: Vec<Field>) -> Result<Vec<Step>> {
        let mut steps = vec![];
        for statement in statements {
            let schema = DFSchema::try_from(Schema::new(fields.clone()))?;
            let step = match statement {
                BlockStatement::Let { name, value } => {
                    let slot = fields.iter().position(|f| f.name() == name);
                    let mut expr = self.expr(value, &schema)?;
                    let data_type = match slot {
                        Some(i) => {
                            let existing = fields[i].data_type().clone();
                            expr = expr.cast_to(&existing, &schema)?;
                            existing
                        }
                        None => {
                            let data_type = expr.get_type(&schema)?;
                            fields.push(Field::new(name, data_type.clone(), true));
                            data_type
                        }
                    };
                    Step::Let { expr: self.physical(expr, &schema)?, name: name.clone(), data_type, slot }
                }
                BlockStatement::Return(value) => {
                    let expr = self.expr(value, &schema)?.cast_to(self.return_type, &schema)?;
                    Step::Return(self.physical(expr, &schema)?)
                }
                BlockStatement::If { branches, otherwise } => {
                    let mut compiled = vec![];
                    for (condition, body) in branches {
                        let condition = self.expr(condition, &schema)?;
                        let condition_type = condition.get_type(&schema)?;
                        if !matches!(condition_type, DataType::Boolean | DataType::Null) {
                            return Err(GobiError::plan(format!("in {}: an if condition must be BOOLEAN, `{condition}` is {condition_type}", self.function)));
                        }
                        compiled.push((self.physical(condition, &schema)?, self.block(body, fields.clone())?));
                    }
                    Step::If { branches: compiled, otherwise: self.block(otherwise, fields.clone())? }
                }
            };
            steps.push(step);
        }
        Ok(steps)
    }

    fn expr(&self, expr: &SqlExpr, schema: &DFSchema) -> Result<datafusion::logical_expr::Expr> {
        sql_to_expr(self.state, expr.clone(), schema).map_err(|e| GobiError { message: format!("in {}: {}", self.function, e.message), ..e })
    }

    fn physical(&self, expr: datafusion::logical_expr::Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(self.state.create_physical_expr(expr, schema)?)
    }
}

impl ScalarUDFImpl for BlockFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.return_type.clone())
    }

    /// Arguments convert to the declared types the way an assignment would; anything else is
    /// an error that names the parameter.
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if arg_types.len() != self.params.len() {
            return Err(DataFusionError::Plan(format!("function {} takes {} arguments, got {}", self.name, self.params.len(), arg_types.len())));
        }
        for (i, (given, (name, wanted))) in arg_types.iter().zip(&self.params).enumerate() {
            let fits = given == wanted
                || given.is_null()
                || (given.is_numeric() && wanted.is_numeric())
                || (is_string(given) && is_string(wanted))
                || (given.is_temporal() && wanted.is_temporal());
            if !fits {
                return Err(DataFusionError::Plan(format!("function {}: argument {} ({name}) must be {wanted}, got {given}", self.name, i + 1)));
            }
        }
        Ok(self.params.iter().map(|(_, t)| t.clone()).collect())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let columns = args.args.iter().map(|a| a.to_array(rows)).collect::<DfResult<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(&self.input_schema),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let fields = self.params.iter().map(|(_, t)| SortField::new(t.clone())).collect();
        let result = if !self.params.is_empty() && arguments_repeat(&batch, fields)? { self.evaluate_memoized(batch)? } else { self.evaluate(batch)? };
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

impl PartialEq for BlockFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.text == other.text
    }
}

impl Eq for BlockFunction {}

impl Hash for BlockFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.text.hash(state);
    }
}
