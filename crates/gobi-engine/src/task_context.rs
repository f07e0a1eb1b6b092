//! DataFusion's `TaskContext` is not `Clone`, and its `with_…` setters take it by value: an
//! operator that runs an inner plan in a context of its own (other memory, other settings)
//! starts from a copy made here.

use datafusion::execution::TaskContext;

/// A copy of `ctx`: its task and session, settings, functions and runtime.
pub(crate) fn copied(ctx: &TaskContext) -> TaskContext {
    TaskContext::new(
        ctx.task_id(),
        ctx.session_id(),
        ctx.session_config().clone(),
        ctx.scalar_functions().clone(),
        ctx.higher_order_functions().clone(),
        ctx.aggregate_functions().clone(),
        ctx.window_functions().clone(),
        ctx.runtime_env(),
    )
}
