//! User functions: `FUNCTION name(params) => expr` and `FUNCTION name(params) RETURNS type { … }`.
//!
//! ```text
//!  FUNCTION gross(net, rate) => net * (1 + rate);        expression body: inlined at each call
//!
//!  FUNCTION tier(total DOUBLE) RETURNS STRING {          block body: run by the engine's
//!      let big = total > 1000;                           evaluator over whole Arrow arrays
//!      if big then return 'gold';
//!      elif total > 100 then return 'silver';
//!      else return 'bronze';
//!      end
//!  }
//! ```
//!
//! This module only parses; the engine decides what a definition means.

use datafusion::sql::sqlparser::ast::{DataType, Expr};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::dialect::is_keyword;
use crate::Position;

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDef {
    pub name: String,
    pub params: Vec<Param>,
    pub returns: Option<DataType>,
    pub body: FunctionBody,
    /// The whole definition as written, which is what the lakehouse stores.
    pub text: String,
    /// Where the definition starts in its script.
    pub start: Position,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    /// Required for block bodies, optional (and ignored) for expression bodies.
    pub data_type: Option<DataType>,
}

// One body per defined function: its size does not matter, and boxing would only add a hop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum FunctionBody {
    Expr(Expr),
    Block(Vec<BlockStatement>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum BlockStatement {
    Let {
        name: String,
        value: Expr,
    },
    /// `if c1 then … elif c2 then … else … end`: the first true condition's branch runs.
    If {
        branches: Vec<(Expr, Vec<BlockStatement>)>,
        otherwise: Vec<BlockStatement>,
    },
    Return(Expr),
}

impl FunctionDef {
    /// The signature as users see it: `tier(total DOUBLE) RETURNS STRING`.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| match &p.data_type {
                Some(t) => format!("{} {t}", p.name),
                None => p.name.clone(),
            })
            .collect();
        match &self.returns {
            Some(t) => format!("{}({}) RETURNS {t}", self.name, params.join(", ")),
            None => format!("{}({})", self.name, params.join(", ")),
        }
    }

    pub fn is_block(&self) -> bool {
        matches!(self.body, FunctionBody::Block(_))
    }
}

/// Parses what follows the `FUNCTION` keyword. `text` and `start` describe the statement.
pub(crate) fn parse_function(parser: &mut Parser, text: String, start: Position) -> Result<FunctionDef, ParserError> {
    let name = crate::ident::normalize(parser.parse_identifier()?);
    parser.expect_token(&Token::LParen)?;
    let mut params: Vec<Param> = vec![];
    if !parser.consume_token(&Token::RParen) {
        loop {
            let ident = parser.parse_identifier()?;
            let param_name = crate::ident::normalize(ident.clone());
            if params.iter().any(|p| p.name == param_name) {
                return Err(ParserError::ParserError(format!(
                    "parameter {param_name} appears twice at Line: {}, Column: {}",
                    ident.span.start.line, ident.span.start.column
                )));
            }
            let data_type = match parser.peek_token().token {
                Token::Comma | Token::RParen => None,
                _ => Some(parser.parse_data_type()?),
            };
            params.push(Param { name: param_name, data_type });
            if parser.consume_token(&Token::RParen) {
                break;
            }
            parser.expect_token(&Token::Comma)?;
        }
    }
    if parser.consume_token(&Token::RArrow) {
        let body = FunctionBody::Expr(parser.parse_expr()?);
        return Ok(FunctionDef { name, params, returns: None, body, text, start });
    }
    let returns = if is_keyword(&parser.peek_token().token, "returns") {
        parser.next_token();
        Some(parser.parse_data_type()?)
    } else {
        None
    };
    if parser.peek_token().token != Token::LBrace {
        return parser.expected("`=> expression` or `RETURNS type { … }`", parser.peek_token());
    }
    parser.next_token();
    let statements = parse_block(parser, &[])?;
    parser.expect_token(&Token::RBrace)?;
    Ok(FunctionDef { name, params, returns, body: FunctionBody::Block(statements), text, start })
}

/// Statements up to (not including) one of the words in `until`, or a `}`.
fn parse_block(parser: &mut Parser, until: &[&str]) -> Result<Vec<BlockStatement>, ParserError> {
    let mut statements = vec![];
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let next = parser.peek_token();
        let ends = until.iter().any(|word| is_keyword(&next.token, word));
        if ends || next.token == Token::RBrace || next.token == Token::EOF {
            return Ok(statements);
        }
        statements.push(parse_block_statement(parser)?);
    }
}

fn parse_block_statement(parser: &mut Parser) -> Result<BlockStatement, ParserError> {
    let token = parser.next_token();
    if is_keyword(&token.token, "let") {
        let name = crate::ident::normalize(parser.parse_identifier()?);
        parser.expect_token(&Token::Eq)?;
        return Ok(BlockStatement::Let { name, value: parser.parse_expr()? });
    }
    if is_keyword(&token.token, "return") {
        return Ok(BlockStatement::Return(parser.parse_expr()?));
    }
    if is_keyword(&token.token, "if") {
        let mut branches = vec![];
        let mut otherwise = vec![];
        loop {
            let condition = parser.parse_expr()?;
            expect_word(parser, "then")?;
            branches.push((condition, parse_block(parser, &["elif", "else", "end"])?));
            let next = parser.next_token();
            if is_keyword(&next.token, "elif") {
                continue;
            }
            if is_keyword(&next.token, "else") {
                otherwise = parse_block(parser, &["end"])?;
                expect_word(parser, "end")?;
            } else if !is_keyword(&next.token, "end") {
                return parser.expected("elif, else or end", next);
            }
            return Ok(BlockStatement::If { branches, otherwise });
        }
    }
    parser.expected("let, if or return", token)
}

fn expect_word(parser: &mut Parser, word: &str) -> Result<(), ParserError> {
    let token = parser.next_token();
    if is_keyword(&token.token, word) {
        Ok(())
    } else {
        parser.expected(&word.to_uppercase(), token)
    }
}
