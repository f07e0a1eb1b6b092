//! `gobi plan`: a query planned (and with `analyze`, run) as a governed statement, reported
//! operator by operator (see `plan_report`).

use datafusion::logical_expr::LogicalPlan;
use gobi_lang::Statement;

use crate::error::{GobiError, Result};
use crate::plan_report::{self, PlanNode};
use crate::runner::Statement as Governed;
use crate::session::Session;

impl Session {
    /// The physical plan `statement` (a query) runs as under this session's memory, with what
    /// is known of each operator; `analyze` runs it (its rows are dropped) and adds what each
    /// operator did. What is shown is what runs: the plan comes from the same governed
    /// statement a query makes.
    pub async fn plan(&self, statement: &Statement, analyze: bool) -> Result<PlanNode> {
        let logical = self.logical_plan(statement).await.map_err(|e| e.at(statement.start))?;
        if matches!(logical, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_)) {
            return Err(GobiError::plan("gobi plan shows queries; this statement changes or defines something").at(statement.start));
        }
        let settings = self.settings.read().limits;
        // A plan not run is not a statement of the query log.
        let mut governed = Governed::begin(self.engine(), &statement.text, settings, analyze && self.logged(), &self.progress, &self.stops).await?;
        let state = governed.state(&self.ctx.state())?;
        let physical = governed.physical_plan(&state, &logical).await?;
        let memory = governed.statement_memory();
        if analyze {
            governed.run_to_end(&state, &physical).await.map_err(|e| e.at(statement.start))?;
        }
        Ok(plan_report::report(&physical, memory, self.engine().spilling_join_on(), analyze))
    }
}
