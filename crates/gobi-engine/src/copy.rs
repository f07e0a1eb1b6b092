//! `COPY 'file' TO table`: appends a file's rows to a lakehouse table in one Delta commit.
//!
//! Columns are matched by name. Every value is checked against the table's column type before
//! anything is written, so a bad value is reported by row and column and the table stays at
//! its version. CSV is read as text and converted here, which is what lets the message name
//! the row; Parquet and JSON carry types, which are converted the same way.
//!
//! (`COPY t TO 'file'` and `COPY (query) TO 'file'` are DataFusion's own COPY.)

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::catalog::MemTable;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use datafusion::datasource::provider_as_source;
use gobi_lang::closest_name;

use crate::catalog::LakehouseSchema;
use crate::error::{GobiError, Result};
use crate::session::Output;
use crate::writes;

pub async fn copy_from(ctx: &SessionContext, schema: &LakehouseSchema, file: &str, table: &str) -> Result<Output> {
    if !schema.lakehouse().table_exists(table) {
        return Err(crate::catalog::unknown_table(table, &schema.lakehouse().table_names()));
    }
    let target: SchemaRef = ctx.table_provider(table).await?.schema();
    let batches = read(ctx, file).await?;
    let file_schema = match batches.first() {
        Some(batch) => batch.schema(),
        None => return Ok(Output::Done(format!("{file} has no rows; {table} is unchanged"))),
    };
    let mapping = match_columns(&file_schema, &target, file, table)?;
    let mut converted = Vec::with_capacity(batches.len());
    let mut first_row = 1;
    for batch in &batches {
        converted.push(convert(batch, &mapping, &target, first_row, file)?);
        first_row += batch.num_rows();
    }
    let source = MemTable::try_new(Arc::clone(&target), vec![converted])?;
    let plan = LogicalPlanBuilder::scan("copy_source", provider_as_source(Arc::new(source)), None)?.build()?;
    writes::insert(&ctx.state(), schema, table, plan, InsertOp::Append).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    Ok(Output::Done(format!("copied {rows} rows from {file} into {table}")))
}

/// The file's rows; CSV columns stay text so conversion errors can name their row.
async fn read(ctx: &SessionContext, file: &str) -> Result<Vec<RecordBatch>> {
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
    Ok(frame.collect().await?)
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
    Ok(target
        .fields()
        .iter()
        .map(|f| file_schema.fields().iter().position(|g| g.name().eq_ignore_ascii_case(f.name())))
        .collect())
}

/// One batch in the table's columns and types; the first value that does not convert is an
/// error naming its row (counted from 1 over the whole file) and column.
fn convert(batch: &RecordBatch, mapping: &[Option<usize>], target: &SchemaRef, first_row: usize, file: &str) -> Result<RecordBatch> {
    let options = CastOptions { safe: true, ..Default::default() };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(mapping.len());
    for (field, source) in target.fields().iter().zip(mapping) {
        let Some(source) = source else {
            if !field.is_nullable() && batch.num_rows() > 0 {
                return Err(GobiError::data(format!("row {first_row} of {file}: column {} is NOT NULL and the file does not have it", field.name())));
            }
            columns.push(new_null_array(field.data_type(), batch.num_rows()));
            continue;
        };
        let column = batch.column(*source);
        let cast = cast_with_options(column, field.data_type(), &options)?;
        if cast.null_count() > column.null_count() {
            let row = (0..column.len()).find(|&i| column.is_valid(i) && cast.is_null(i)).expect("a value was lost");
            let value = array_value_to_string(column, row).unwrap_or_default();
            return Err(GobiError::data(format!(
                "row {} of {file}, column {}: {value:?} is not a valid {}",
                first_row + row,
                field.name(),
                field.data_type()
            )));
        }
        if !field.is_nullable() && cast.null_count() > 0 {
            let row = (0..cast.len()).find(|&i| cast.is_null(i)).expect("counted a null");
            return Err(GobiError::data(format!("row {} of {file}, column {}: NULL in a NOT NULL column", first_row + row, field.name())));
        }
        columns.push(cast);
    }
    Ok(RecordBatch::try_new(Arc::clone(target), columns)?)
}
