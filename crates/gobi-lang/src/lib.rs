//! gobi-lang: the text side of gobi.
//!
//! It turns a script into parsed statements and turns positions into readable error snippets.
//! It knows nothing about tables, files or execution: the engine plans and runs what this crate
//! parses.
//!
//! ```text
//!  script text ──tokenize──► tokens ──split at top-level `;`──► statement tokens
//!                                         │
//!                             rewrite `t AS OF VERSION n` into a versioned table name
//!                                         │
//!                                         ▼
//!                           DataFusion's parser ──► `Statement` (AST + source slice)
//! ```
//!
//! Positions are those of the original script: the rewrite keeps each token's span, so an
//! error in the third statement of a file points at the right line and column.

mod diagnostic;
mod script;
mod versioned;

pub use diagnostic::{render_snippet, Position, SyntaxError};
pub use script::{is_complete, parse_script, Command, Statement};
pub use versioned::{TableVersion, VersionedName};

/// The AST types gobi works with, re-exported so that callers use the same sqlparser.
pub use datafusion::sql::parser::Statement as Ast;
pub use datafusion::sql::sqlparser;
