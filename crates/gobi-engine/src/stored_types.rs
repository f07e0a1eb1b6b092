//! The Arrow types a Delta table cannot hold as they are, and how gobi stores them.
//!
//! Delta has signed integers, floating point, decimals, strings, binary, booleans, dates,
//! microsecond timestamps, and lists, maps and structs of them. Where a type outside that has
//! a lossless Delta form, gobi writes that form and keeps the declared type in the column's
//! metadata ([`DECLARED_TYPE`]), so gobi reads the column back as declared; other readers see
//! the stored type:
//!
//! ```text
//!   declared             stored                 read by gobi as
//!   UInt8/16/32          Int16/32/64            declared
//!   UInt64               Decimal(20, 0)         declared
//!   Float16              Float32                declared
//!   Time32(s|ms)         Int32 (its units)      declared
//!   Time64(us|ns)        Int64 (its units)      declared
//!   Duration(unit)       Int64 (its units)      declared
//!   run-end encoded,     the values' type       the values' type (an encoding, not a type)
//!   dictionary
//!   NULL (untyped)       String                 String
//!   Timestamp(s|ms|ns)   Timestamp(us)          Timestamp(us): Delta's only unit (ns truncated)
//! ```
//!
//! Anything else Delta cannot hold (intervals, unions, lists of the types above) is refused
//! with the column's name and type, before anything is written.

use std::str::FromStr;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::StructField;

use crate::error::{GobiError, Result};

/// The column metadata holding the type a column was declared with, where Delta stores another.
pub(crate) const DECLARED_TYPE: &str = "gobi.type";

/// The type Delta stores `data_type` as, if not as it is.
pub(crate) fn stored_type(data_type: &DataType) -> Option<DataType> {
    Some(match data_type {
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Float16 => DataType::Float32,
        DataType::Time32(_) => DataType::Int32,
        DataType::Time64(_) | DataType::Duration(_) => DataType::Int64,
        DataType::RunEndEncoded(_, values) => stored_type(values.data_type()).unwrap_or_else(|| values.data_type().clone()),
        DataType::Dictionary(_, values) => stored_type(values).unwrap_or_else(|| values.as_ref().clone()),
        DataType::Null => DataType::Utf8,
        DataType::Timestamp(unit, zone) if *unit != TimeUnit::Microsecond => DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
        _ => return None,
    })
}

/// Whether gobi reads a column stored as [`stored_type`] back as its declared type.
fn keeps_declared(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float16
            | DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::Duration(_)
    )
}

/// The field Delta stores for `field`: its stored type, and its declared type in its metadata
/// where gobi reads it back so. An error naming the column when Delta cannot hold it at all.
pub(crate) fn stored_field(field: &Field) -> Result<Field> {
    let declared = field.data_type();
    let Some(stored) = stored_type(declared) else {
        kernel_field(field)?;
        return Ok(field.clone());
    };
    let mut metadata = field.metadata().clone();
    if keeps_declared(declared) {
        metadata.insert(DECLARED_TYPE.to_string(), declared.to_string());
    }
    let stored = field.clone().with_data_type(stored).with_metadata(metadata);
    kernel_field(&stored)?;
    Ok(stored)
}

/// `field` as a Delta column; the error names the column, its type and what Delta holds.
pub(crate) fn kernel_field(field: &Field) -> Result<StructField> {
    field.try_into_kernel().map_err(|_| {
        GobiError::plan(format!("column {} has type {}, which a Delta table cannot hold", field.name(), field.data_type())).with_hint(
            "Delta holds integers, floating point, decimals, strings, binary, booleans, dates, timestamps, and lists, maps and structs of them: CAST the column to one",
        )
    })
}

/// The schema gobi reads a stored table as: each column with a declared type (see
/// [`DECLARED_TYPE`]) as declared. `None` when every column reads as stored.
pub(crate) fn declared_schema(stored: &Schema) -> Option<Schema> {
    let mut changed = false;
    let fields: Vec<Field> = stored
        .fields()
        .iter()
        .map(|field| match field.metadata().get(DECLARED_TYPE).and_then(|t| DataType::from_str(t).ok()) {
            Some(declared) if &declared != field.data_type() => {
                changed = true;
                field.as_ref().clone().with_data_type(declared)
            }
            _ => field.as_ref().clone(),
        })
        .collect();
    changed.then(|| Schema::new_with_metadata(fields, stored.metadata().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_round_trip_through_the_stored_schema() {
        let declared = [
            DataType::UInt8,
            DataType::UInt64,
            DataType::Float16,
            DataType::Time32(TimeUnit::Millisecond),
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Duration(TimeUnit::Second),
            DataType::Int64,
        ];
        let fields: Vec<Field> = declared.iter().enumerate().map(|(i, t)| stored_field(&Field::new(format!("c{i}"), t.clone(), true)).unwrap()).collect();
        let stored: Vec<&DataType> = fields.iter().map(Field::data_type).collect();
        assert_eq!(
            stored,
            [&DataType::Int16, &DataType::Decimal128(20, 0), &DataType::Float32, &DataType::Int32, &DataType::Int64, &DataType::Int64, &DataType::Int64]
        );
        let read = declared_schema(&Schema::new(fields)).unwrap();
        assert_eq!(read.fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>(), declared);
        assert!(declared_schema(&Schema::new(vec![Field::new("a", DataType::Int64, true)])).is_none());
    }

    #[test]
    fn encodings_store_their_values_and_what_delta_cannot_hold_is_named() {
        let ree = DataType::RunEndEncoded(Field::new("run_ends", DataType::Int32, false).into(), Field::new("values", DataType::Utf8, true).into());
        assert_eq!(stored_field(&Field::new("r", ree, true)).unwrap().data_type(), &DataType::Utf8);
        let interval = Field::new("gap", DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano), true);
        let error = stored_field(&interval).unwrap_err();
        assert_eq!(error.message, "column gap has type Interval(MonthDayNano), which a Delta table cannot hold");
    }
}
