//! Identifiers as SQL resolves them: the one rule for folding a name's case.

use datafusion::sql::sqlparser::ast::Ident;

/// An identifier as SQL resolves it: folded to lower case unless quoted.
pub fn normalize(ident: Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value
    } else {
        ident.value.to_lowercase()
    }
}
