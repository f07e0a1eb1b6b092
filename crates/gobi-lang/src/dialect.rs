//! The PL-GRIZZLY dialect: sqlparser's generic SQL plus the expression syntax gobi adds.
//!
//! It reports itself to the parser as [`GenericDialect`] (so every rule the parser keys on the
//! generic dialect still applies and plain SQL parses exactly as before) and adds two hooks:
//!
//! - `match subject { pattern -> result, …, _ -> default }` parses into a SQL `CASE subject
//!   WHEN pattern THEN result … ELSE default END`, so it plans, folds and vectorizes like one.
//! - `->` binds nothing, so a pattern ends where its arrow starts (generic SQL would read
//!   `'a' -> 1` as JSON access, which DataFusion does not plan anyway).
//!
//! FROM-first selects and `|>` pipes need no hook: the generic dialect parses both and
//! DataFusion plans each pipe step as a `LogicalPlan` node.

use std::any::TypeId;

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{CaseWhen, Expr};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

#[derive(Debug, Default, Clone, Copy)]
pub struct GrizzlyDialect;

macro_rules! like_generic {
    ($($method:ident,)*) => {
        $(fn $method(&self) -> bool {
            GenericDialect {}.$method()
        })*
    };
}

impl Dialect for GrizzlyDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        GenericDialect {}.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        GenericDialect {}.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        GenericDialect {}.is_identifier_part(ch)
    }

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        (parser.peek_token().token == Token::Arrow).then_some(Ok(0))
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        if !is_keyword(&parser.peek_token().token, "match") {
            return None;
        }
        // `match` is also a valid column name: it starts a match expression only when a
        // subject and `{` follow.
        let subject = parser.maybe_parse(|p| {
            p.next_token();
            let subject = p.parse_expr()?;
            p.expect_token(&Token::LBrace)?;
            Ok(subject)
        });
        match subject {
            Ok(Some(subject)) => Some(parse_match_arms(parser, subject)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    like_generic! {
        supports_unicode_string_literal,
        supports_partition_by_after_order_by,
        supports_array_join_syntax,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_update_order_by,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_comma_separated_trim,
        supports_cte_without_as,
        supports_select_item_multi_column_alias,
        supports_xml_expressions,
    }
}

/// The arms after `match subject {`, through the closing `}`.
fn parse_match_arms(parser: &mut Parser, subject: Expr) -> Result<Expr, ParserError> {
    let mut conditions = vec![];
    let mut default = None;
    loop {
        if parser.consume_token(&Token::RBrace) {
            break;
        }
        if default.is_some() {
            return parser.expected("`}` after the `_` arm, which must come last", parser.peek_token());
        }
        let is_default =
            matches!(&parser.peek_token().token, Token::Word(w) if w.quote_style.is_none() && w.value == "_") && parser.peek_nth_token(1).token == Token::Arrow;
        let pattern = if is_default {
            parser.next_token();
            None
        } else {
            Some(parser.parse_expr()?)
        };
        parser.expect_token(&Token::Arrow)?;
        let result = parser.parse_expr()?;
        match pattern {
            Some(condition) => conditions.push(CaseWhen { condition, result }),
            None => default = Some(Box::new(result)),
        }
        if !parser.consume_token(&Token::Comma) {
            parser.expect_token(&Token::RBrace)?;
            break;
        }
    }
    if conditions.is_empty() {
        return parser.expected("at least one `pattern -> result` arm in match", parser.peek_token());
    }
    Ok(Expr::Case { case_token: AttachedToken::empty(), end_token: AttachedToken::empty(), operand: Some(Box::new(subject)), conditions, else_result: default })
}

pub(crate) fn is_keyword(token: &Token, text: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(text))
}
