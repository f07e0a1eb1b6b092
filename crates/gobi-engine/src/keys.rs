//! Declared keys (`PRIMARY KEY`, `UNIQUE`), kept as informational constraints, as Databricks
//! keeps them: gobi does not enforce them (a duplicate key is not refused), but reports them to
//! DataFusion, so what a key determines is known (`SELECT id, name FROM t GROUP BY id` on a key
//! `id`, as PostgreSQL allows).
//!
//! A Delta table keeps them in its columns' metadata, which the schema carries in the same
//! commit as the data: each key column has [`METADATA`], the JSON list of the keys it belongs
//! to (`["primary_key"]`, `["unique_1"]`). Other readers ignore it. A `CREATE OR REPLACE`
//! writes the new schema, so the keys follow the statement.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::datatypes::Schema;
use datafusion::common::{Constraint, Constraints};

/// The column metadata holding the keys a column belongs to.
pub(crate) const METADATA: &str = "gobi.keys";

/// [`METADATA`]'s value for a column in no key.
pub(crate) const NO_KEYS: &str = "[]";

/// For each column of `schema`, the value of [`METADATA`] that `constraints` give it:
/// [`NO_KEYS`] for a column in no key (written only over a column copied from a keyed table,
/// so it does not bring its keys along).
pub(crate) fn column_metadata(constraints: &Constraints, schema: &Schema) -> Vec<String> {
    let mut keys: Vec<Vec<String>> = vec![vec![]; schema.fields().len()];
    for (number, constraint) in constraints.iter().enumerate() {
        let (name, indices) = match constraint {
            Constraint::PrimaryKey(indices) => ("primary_key".to_string(), indices),
            Constraint::Unique(indices) => (format!("unique_{number}"), indices),
        };
        for &i in indices {
            keys[i].push(name.clone());
        }
    }
    keys.iter().map(|names| serde_json::to_string(names).expect("names serialize")).collect()
}

/// The keys `schema`'s column metadata declares; `None` when there are none.
pub(crate) fn from_schema(schema: &Schema) -> Option<Constraints> {
    let mut keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let names: Vec<String> = field.metadata().get(METADATA).and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default();
        for name in names {
            keys.entry(name).or_default().push(i);
        }
    }
    let constraints: Vec<Constraint> =
        keys.into_iter().map(|(name, indices)| if name == "primary_key" { Constraint::PrimaryKey(indices) } else { Constraint::Unique(indices) }).collect();
    (!constraints.is_empty()).then(|| Constraints::new_unverified(constraints))
}

/// `metadata` with the key metadata set to `keys`.
pub(crate) fn with_keys(metadata: &HashMap<String, String>, keys: &str) -> HashMap<String, String> {
    let mut metadata = metadata.clone();
    metadata.insert(METADATA.to_string(), keys.to_string());
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    fn schema(names: &[&str]) -> Schema {
        Schema::new(names.iter().map(|n| Field::new(*n, DataType::Int64, true)).collect::<Vec<_>>())
    }

    #[test]
    fn keys_round_trip_through_column_metadata() {
        let plain = schema(&["id", "a", "b", "other"]);
        let declared = Constraints::new_unverified(vec![Constraint::PrimaryKey(vec![0]), Constraint::Unique(vec![1, 2]), Constraint::Unique(vec![2])]);
        let metadata = column_metadata(&declared, &plain);
        assert_eq!(metadata, [r#"["primary_key"]"#, r#"["unique_1"]"#, r#"["unique_1","unique_2"]"#, "[]"]);
        let fields: Vec<Field> =
            plain.fields().iter().zip(&metadata).map(|(f, keys)| f.as_ref().clone().with_metadata(with_keys(f.metadata(), keys))).collect();
        let read = from_schema(&Schema::new(fields)).unwrap();
        assert_eq!(&*read, &[Constraint::PrimaryKey(vec![0]), Constraint::Unique(vec![1, 2]), Constraint::Unique(vec![2])]);
        assert!(from_schema(&plain).is_none());
    }
}
