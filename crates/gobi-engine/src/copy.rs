//! `COPY 'file' TO table`: appends a file's rows to a lakehouse table in one Delta commit.
//!
//! Columns are matched by name. Every value is checked against the table's column type before
//! anything is written (a first pass over the file, one batch at a time), so a bad value is
//! reported by row and column and the table stays at its version; a second pass streams the
//! same conversions into the commit. Nothing proportional to the file is held in memory. CSV is read as text and converted here, which is what lets the message name
//! the row; Parquet and JSON carry types, which are converted the same way.
//!
//! (`COPY t TO 'file'` and `COPY (query) TO 'file'` are DataFusion's own COPY.)

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::ScalarValue;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{cast, ident, lit};
use datafusion::prelude::{CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use gobi_lang::closest_name;

use crate::catalog::LakehouseSchema;
use crate::error::{GobiError, Result};
use crate::writes::{self, Written};

/// Runs with `state`, the statement's (its memory pool is the statement's scope).
pub async fn copy_from(state: &SessionState, schema: &LakehouseSchema, file: &str, table: &str) -> Result<Written> {
    let ctx = &SessionContext::new_with_state(state.clone());
    if !schema.lakehouse().table_exists(table) {
        return Err(crate::catalog::unknown_table(table, &schema.lakehouse().table_names()));
    }
    let target: SchemaRef = ctx.table_provider(table).await?.schema();
    let frame = read(ctx, file).await?;
    let file_schema = Arc::clone(frame.schema().inner());
    let mapping = match_columns(&file_schema, &target, file, table)?;
    // First pass: check every value, one batch at a time (partitions in file order, so row
    // numbers are the file's). Nothing is kept, so the file's size does not matter.
    let mut rows = 0;
    for mut partition in frame.clone().execute_stream_partitioned().await? {
        while let Some(batch) = partition.next().await.transpose()? {
            check(&batch, &mapping, &target, rows + 1, file)?;
            rows += batch.num_rows();
        }
    }
    if rows == 0 {
        return Ok(Written::done(0, format!("{file} has no rows; {table} is unchanged")));
    }
    // Second pass: the same conversions as a plan, streamed into the one commit.
    let columns = target
        .fields()
        .iter()
        .zip(&mapping)
        .map(|(field, source)| {
            let value = match source {
                Some(i) => ident(file_schema.field(*i).name()),
                None => lit(ScalarValue::Null),
            };
            cast(value, field.data_type().clone()).alias(field.name())
        })
        .collect::<Vec<_>>();
    let plan = frame.select(columns)?.into_unoptimized_plan();
    let written = writes::insert(state, schema, table, plan, InsertOp::Append).await?;
    Ok(Written::done(written.rows, format!("copied {rows} rows from {file} into {table}")))
}

/// The file as a frame; CSV columns stay text so conversion errors can name their row.
async fn read(ctx: &SessionContext, file: &str) -> Result<DataFrame> {
    if !std::path::Path::new(file).exists() {
        return Err(GobiError::data(format!("file {file} not found")));
    }
    let lower = file.to_lowercase();
    let frame = if lower.ends_with(".csv") {
        let inferred = ctx.read_csv(file, CsvReadOptions::new()).await?;
        let text: Vec<Field> = inferred.schema().fields().iter().map(|f| Field::new(f.name(), DataType::Utf8, true)).collect();
        let text = Schema::new(text);
        ctx.read_csv(file, CsvReadOptions::new().schema(&text)).await?
    } else if lower.ends_with(".parquet") {
        ctx.read_parquet(file, ParquetReadOptions::default()).await?
    } else if lower.ends_with(".json") || lower.ends_with(".ndjson") {
        ctx.read_json(file, JsonReadOptions::default()).await?
    } else {
        return Err(GobiError::plan(format!("cannot tell the format of {file}")).with_hint("COPY reads .csv, .parquet and .json (one object per line)"));
    };
    Ok(frame)
}

/// For each table column, the file column that fills it (or none: NULL).
fn match_columns(file_schema: &Schema, target: &Schema, file: &str, table: &str) -> Result<Vec<Option<usize>>> {
    let target_names: Vec<String> = target.fields().iter().map(|f| f.name().clone()).collect();
    for field in file_schema.fields() {
        if !target_names.iter().any(|n| n.eq_ignore_ascii_case(field.name())) {
            let error = GobiError::data(format!("{file} has a column {} that {table} does not have", field.name()));
            return Err(match closest_name(field.name(), &target_names) {
                Some(close) => error.with_hint(format!("did you mean {close}? (COPY matches columns by name)")),
                None => error.with_hint(format!("{table} has columns {}", target_names.join(", "))),
            });
        }
    }
    Ok(target.fields().iter().map(|f| file_schema.fields().iter().position(|g| g.name().eq_ignore_ascii_case(f.name()))).collect())
}

/// Checks that one batch converts to the table's columns and types; the first value that does
/// not is an error naming its row (counted from 1 over the whole file) and column.
fn check(batch: &RecordBatch, mapping: &[Option<usize>], target: &SchemaRef, first_row: usize, file: &str) -> Result<()> {
    let options = CastOptions { safe: true, ..Default::default() };
    for (field, source) in target.fields().iter().zip(mapping) {
        let Some(source) = source else {
            if !field.is_nullable() && batch.num_rows() > 0 {
                return Err(GobiError::data(format!("row {first_row} of {file}: column {} is NOT NULL and the file does not have it", field.name())));
            }
            continue;
        };
        let column = batch.column(*source);
        let cast = cast_with_options(column, field.data_type(), &options)?;
        if cast.null_count() > column.null_count() {
            let row = (0..column.len()).find(|&i| column.is_valid(i) && cast.is_null(i)).expect("a value was lost");
            let value = array_value_to_string(column, row).unwrap_or_default();
            return Err(GobiError::data(format!("row {} of {file}, column {}: {value:?} is not a valid {}", first_row + row, field.name(), field.data_type())));
        }
        if !field.is_nullable() && cast.null_count() > 0 {
            let row = (0..cast.len()).find(|&i| cast.is_null(i)).expect("counted a null");
            return Err(GobiError::data(format!("row {} of {file}, column {}: NULL in a NOT NULL column", first_row + row, field.name())));
        }
    }
    Ok(())
}
