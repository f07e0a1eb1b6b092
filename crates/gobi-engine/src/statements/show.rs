//! SHOW TABLES, SHOW MEMORY, SHOW SETTINGS (and `SHOW memory.x`), and SET memory.* and
//! maintenance.*.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value as SqlValue};

use crate::error::{GobiError, Result};
use crate::output::Output;
use crate::session::Session;
use crate::settings::{self, Owner, Setting, SETTINGS};

impl Session {
    /// `SET memory.name = value` (or `maintenance.name`): an engine setting changes for every session of the engine
    /// (and says so), a session setting for this session's statements.
    pub(crate) fn set_setting(&self, name: &str, value: &SqlExpr) -> Result<Output> {
        let setting = settings::find(name)?;
        let text = match value {
            SqlExpr::Value(v) => match &v.value {
                SqlValue::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        };
        let value = settings::parse(setting, &text)?;
        let now = match setting.owner {
            Owner::Engine => self.engine().apply(setting, value)?,
            Owner::Session => {
                let mut settings = self.settings.write();
                settings.apply(setting, value);
                settings.value(setting)
            }
        };
        let whose = match setting.owner {
            Owner::Engine => "for every session of this engine",
            Owner::Session => "for this session",
        };
        Ok(Output::Done(format!("{} = {now} ({whose})", setting.full_name())))
    }

    /// A setting's value now, as `SHOW` prints it.
    fn setting_value(&self, setting: &Setting) -> String {
        match setting.owner {
            Owner::Engine => self.engine().current(setting),
            Owner::Session => self.settings.read().value(setting),
        }
    }

    /// `SHOW SETTINGS` (every setting) or `SHOW memory.name` (one): name, value, default, whose
    /// it is, and what it does.
    pub(crate) fn show_settings(&self, only: Option<&str>) -> Result<Output> {
        let chosen: Vec<&Setting> = match only {
            Some(name) => vec![settings::find(name)?],
            None => SETTINGS.iter().collect(),
        };
        let column = |f: &dyn Fn(&Setting) -> String| Arc::new(StringArray::from(chosen.iter().map(|s| f(s)).collect::<Vec<_>>())) as _;
        let schema = Arc::new(Schema::new(["name", "value", "default", "scope", "description"].map(|name| Field::new(name, DataType::Utf8, false)).to_vec()));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                column(&|s| s.full_name()),
                column(&|s| self.setting_value(s)),
                column(&|s| s.default.to_string()),
                column(&|s| s.owner.name().to_string()),
                column(&|s| s.doc.to_string()),
            ],
        )?;
        Ok(Output::rows(vec![batch], schema))
    }

    /// `SHOW MEMORY`: one row per pool.
    pub(crate) fn show_memory(&self) -> Result<Output> {
        let batch = crate::memory_tables::pools_batch(self.engine().memory())?;
        Ok(Output::rows(vec![batch.clone()], batch.schema()))
    }

    pub(crate) async fn show_tables(&self) -> Result<Output> {
        let schema = self.ctx.catalog("datafusion").and_then(|c| c.schema("public")).ok_or_else(|| GobiError::internal("the public schema is missing"))?;
        let names = schema.table_names();
        let mut kinds = Vec::with_capacity(names.len());
        // Known without opening a table: one whose log is broken is still listed.
        for name in &names {
            let kind = match self.lakehouse() {
                Some(lakehouse) if lakehouse.table_exists(name) => "table",
                Some(lakehouse) if lakehouse.view_sql(name).is_some() => "view",
                _ => match schema.table_type(name).await? {
                    Some(datafusion::datasource::TableType::View) => "view",
                    _ => "session table",
                },
            };
            kinds.push(kind);
        }
        let result_schema = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false), Field::new("kind", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(Arc::clone(&result_schema), vec![Arc::new(StringArray::from(names)), Arc::new(StringArray::from(kinds))])?;
        Ok(Output::rows(vec![batch], result_schema))
    }
}
