//! gobi-lang: the text side of gobi.
//!
//! It turns a PL-GRIZZLY script into parsed statements, rewrites the language's additions into
//! plain SQL ([`expand_statement`]), and turns positions into readable error snippets. It knows
//! nothing about tables, files or execution: the engine plans and runs what this crate parses,
//! and answers the questions of [`Scope`] (which variables and functions exist).
//!
//! ```text
//!  script text ──tokenize──► tokens ──split at top-level `;`──► statement tokens
//!                                         │
//!                             rewrite `t AS OF VERSION n` into a versioned table name
//!                                         │
//!                                         ▼
//!              gobi's statements (let, FUNCTION, COPY 'f' TO t, SHOW HISTORY …)
//!                 or DataFusion's parser with the PL-GRIZZLY dialect (`match`)
//!                                         │
//!                                         ▼
//!                           `Statement` (command + source slice + position)
//!                                         │   at run time, with the session's Scope:
//!                                         ▼
//!        expand_statement: FROM-first → SELECT *, $var → literal, f(x) → inlined body
//! ```
//!
//! Positions are those of the original script: the rewrite keeps each token's span, so an
//! error in the third statement of a file points at the right line and column.

mod diagnostic;
mod dialect;
mod expand;
mod function;
mod ident;
mod script;
mod versioned;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

pub use diagnostic::{closest_name, render_snippet, NameError, Position, SyntaxError};
pub use dialect::GrizzlyDialect;
pub use expand::{expand_expr, expand_statement, Scope};
pub use function::{BlockStatement, FunctionBody, FunctionDef, Param};
pub use ident::normalize as normalize_ident;
pub use script::{is_complete, parse_script, Command, LetValue, Statement};
pub use versioned::{TableVersion, VersionedName};

/// The AST types gobi works with, re-exported so that callers use the same sqlparser.
pub use datafusion::sql::parser::Statement as Ast;
pub use datafusion::sql::sqlparser;
