//! Splitting a script into statements and parsing each one.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParserBuilder, Statement as Ast};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::{Keyword, RESERVED_FOR_TABLE_ALIAS};
use datafusion::sql::sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer, Whitespace, Word};

use crate::diagnostic::{Position, SyntaxError};
use crate::versioned::{TableVersion, VersionedName};

/// What a statement asks for: SQL, or one of gobi's own statements.
#[derive(Debug, Clone)]
pub enum Command {
    Sql(Ast),
    /// `SHOW HISTORY table`: the table's Delta commits.
    ShowHistory { table: String },
}

/// One parsed statement of a script.
#[derive(Debug, Clone)]
pub struct Statement {
    pub command: Command,
    /// The statement as the user wrote it (without the closing `;`).
    pub text: String,
    /// Where the statement starts in the script.
    pub start: Position,
}

/// Parses every statement of `source`. Nothing is returned unless all of them parse, so a
/// typo in the last statement stops the script before the first one runs.
pub fn parse_script(source: &str) -> Result<Vec<Statement>, SyntaxError> {
    let tokens = tokenize(source)?;
    let lines = LineIndex::new(source);
    split_statements(tokens)
        .into_iter()
        .filter_map(|tokens| {
            let first = tokens.iter().find(|t| !is_trivia(&t.token))?.span;
            let last = tokens.iter().rev().find(|t| !is_trivia(&t.token))?.span;
            Some((tokens, first, last))
        })
        .map(|(tokens, first, last)| {
            let start = position(first);
            let text = lines.slice(source, first.start, last.end).to_string();
            let tokens = rewrite_time_travel(tokens)?;
            let command = match parse_show_history(&tokens)? {
                Some(command) => command,
                None => Command::Sql(parse_tokens(tokens, start)?),
            };
            Ok(Statement { command, text, start })
        })
        .collect()
}

/// True when `source` ends a statement: its last token is a top-level `;`. The REPL keeps
/// reading lines until then. Text that cannot be tokenized counts as complete unless it only
/// lacks a closing quote, so the error is shown instead of waiting forever.
pub fn is_complete(source: &str) -> bool {
    match Tokenizer::new(&GenericDialect {}, source).tokenize_with_location() {
        Ok(tokens) => {
            let mut depth = 0i32;
            let mut ends_statement = false;
            for token in tokens.iter().filter(|t| !is_trivia(&t.token)) {
                match token.token {
                    Token::LParen | Token::LBrace => depth += 1,
                    Token::RParen | Token::RBrace => depth -= 1,
                    _ => {}
                }
                ends_statement = token.token == Token::SemiColon && depth <= 0;
            }
            ends_statement
        }
        Err(e) => !e.message.starts_with("Unterminated"),
    }
}

fn tokenize(source: &str) -> Result<Vec<TokenWithSpan>, SyntaxError> {
    Tokenizer::new(&GenericDialect {}, source)
        .tokenize_with_location()
        .map_err(|e| SyntaxError::from_parser_message(&e.to_string(), Position { line: 1, column: 1 }))
}

fn parse_tokens(tokens: Vec<TokenWithSpan>, start: Position) -> Result<Ast, SyntaxError> {
    let dialect = GenericDialect {};
    let syntax_error = |e: DataFusionError| {
        let message = match e.find_root() {
            DataFusionError::SQL(parser_error, _) => parser_error.to_string(),
            other => other.strip_backtrace(),
        };
        SyntaxError::from_parser_message(&message, start)
    };
    let mut parser = DFParserBuilder::new(tokens).with_dialect(&dialect).build().map_err(syntax_error)?;
    let mut statements = parser.parse_statements().map_err(syntax_error)?;
    match (statements.pop_front(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        _ => Err(SyntaxError { message: "expected one statement".into(), position: start }),
    }
}

/// `SHOW HISTORY name`; `None` when the statement is something else.
fn parse_show_history(tokens: &[TokenWithSpan]) -> Result<Option<Command>, SyntaxError> {
    let significant: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !is_trivia(&t.token)).collect();
    let [show, history, rest @ ..] = significant.as_slice() else {
        return Ok(None);
    };
    if !(is_word(&show.token, "show") && is_word(&history.token, "history")) {
        return Ok(None);
    }
    match rest {
        [TokenWithSpan { token: Token::Word(name), .. }] => {
            let table = if name.quote_style.is_some() { name.value.clone() } else { name.value.to_lowercase() };
            Ok(Some(Command::ShowHistory { table }))
        }
        [] => Err(SyntaxError { message: "expected a table name after SHOW HISTORY".into(), position: position(history.span) }),
        [_, extra, ..] | [extra] => Err(SyntaxError {
            message: format!("expected one table name after SHOW HISTORY, found {}", extra.token),
            position: position(extra.span),
        }),
    }
}

/// Cuts the token stream at every `;` outside parentheses and braces.
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut statements = vec![];
    let mut current = vec![];
    let mut depth = 0i32;
    for token in tokens {
        match token.token {
            Token::LParen | Token::LBrace => depth += 1,
            Token::RParen | Token::RBrace => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                statements.push(std::mem::take(&mut current));
                depth = 0;
                continue;
            }
            _ => {}
        }
        current.push(token);
    }
    statements.push(current);
    statements
}

fn is_trivia(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_) | Token::EOF)
}

fn position(span: Span) -> Position {
    Position { line: span.start.line, column: span.start.column }
}

fn is_word(token: &Token, text: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(text))
}

/// Rewrites `name AS OF VERSION n` / `name AS OF TIMESTAMP 'ts'` into `"name@version=n" AS name`
/// (see [`VersionedName`]). The new tokens keep the spans of the ones they replace.
fn rewrite_time_travel(tokens: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>, SyntaxError> {
    // Work on significant tokens only; whitespace between them is re-inserted as single spaces.
    let significant: Vec<TokenWithSpan> = tokens.into_iter().filter(|t| !is_trivia(&t.token)).collect();
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(significant.len());
    let mut i = 0;
    while i < significant.len() {
        let is_clause = is_word(&significant[i].token, "as")
            && significant.get(i + 1).is_some_and(|t| is_word(&t.token, "of"))
            && significant
                .get(i + 2)
                .is_some_and(|t| is_word(&t.token, "version") || is_word(&t.token, "timestamp"));
        let previous_is_name = matches!(out.last().map(|t| &t.token), Some(Token::Word(_)));
        if !(is_clause && previous_is_name) {
            out.push(significant[i].clone());
            i += 1;
            continue;
        }
        let kind = &significant[i + 2];
        let literal = significant.get(i + 3);
        let version = match (literal.map(|t| &t.token), is_word(&kind.token, "version")) {
            (Some(Token::Number(n, _)), true) => n.parse().ok().map(TableVersion::Version),
            (Some(Token::SingleQuotedString(ts)), false) => Some(TableVersion::Timestamp(ts.clone())),
            _ => None,
        };
        let Some(version) = version else {
            let expected = if is_word(&kind.token, "version") { "a version number" } else { "a quoted timestamp" };
            return Err(SyntaxError {
                message: format!("expected {expected} after AS OF {}", kind.token.to_string().to_uppercase()),
                position: position(literal.unwrap_or(kind).span),
            });
        };
        let name_token = out.pop().expect("checked above");
        let Token::Word(name) = &name_token.token else { unreachable!("checked above") };
        let table = if name.quote_style.is_some() { name.value.clone() } else { name.value.to_lowercase() };
        let span = name_token.span;
        let versioned = VersionedName { table: table.clone(), version }.to_string();
        out.push(word(versioned, Some('"'), Keyword::NoKeyword, span));
        let alias_follows = significant.get(i + 4).is_some_and(|t| match &t.token {
            Token::Word(w) => w.quote_style.is_some() || !RESERVED_FOR_TABLE_ALIAS.contains(&w.keyword),
            _ => false,
        });
        if !alias_follows {
            out.push(word("AS".into(), None, Keyword::AS, span));
            out.push(word(table, Some('"'), Keyword::NoKeyword, span));
        }
        i += 4;
    }
    Ok(out
        .into_iter()
        .flat_map(|t| {
            let space = TokenWithSpan { token: Token::Whitespace(Whitespace::Space), span: t.span };
            [t, space]
        })
        .collect())
}

fn word(value: String, quote_style: Option<char>, keyword: Keyword, span: Span) -> TokenWithSpan {
    TokenWithSpan { token: Token::Word(Word { value, quote_style, keyword }), span }
}

/// Maps line/column locations back to byte offsets, to slice a statement's text.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    fn offset(&self, source: &str, line: u64, column: u64) -> usize {
        let Some(&start) = self.starts.get(line.saturating_sub(1) as usize) else {
            return source.len();
        };
        source[start..]
            .char_indices()
            .nth(column.saturating_sub(1) as usize)
            .map_or(source.len(), |(i, _)| start + i)
    }

    fn slice<'a>(
        &self,
        source: &'a str,
        from: datafusion::sql::sqlparser::tokenizer::Location,
        to: datafusion::sql::sqlparser::tokenizer::Location,
    ) -> &'a str {
        let a = self.offset(source, from.line, from.column);
        let b = self.offset(source, to.line, to.column).max(a);
        &source[a..b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_keeps_their_text() {
        let script = "CREATE TABLE t (a INT);\n-- note; not a split\nINSERT INTO t VALUES (';');\n\nSELECT * FROM t";
        let statements = parse_script(script).unwrap();
        let texts: Vec<_> = statements.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["CREATE TABLE t (a INT)", "INSERT INTO t VALUES (';')", "SELECT * FROM t"]);
        assert_eq!(statements[2].start, Position { line: 5, column: 1 });
    }

    #[test]
    fn syntax_error_points_at_the_offending_token_of_a_later_statement() {
        let err = parse_script("SELECT 1;\nSELECT * FORM t;").unwrap_err();
        assert_eq!(err.position, Position { line: 2, column: 10 });
        assert!(err.message.contains("FORM"), "{}", err.message);
    }

    #[test]
    fn time_travel_becomes_a_versioned_name_with_the_original_alias() {
        let statements = parse_script("SELECT * FROM users AS OF VERSION 3 JOIN x ON true; SELECT old.id FROM Users AS OF TIMESTAMP '2026-01-01' old").unwrap();
        let sql = |s: &Statement| match &s.command {
            Command::Sql(ast) => ast.to_string(),
            other => panic!("not SQL: {other:?}"),
        };
        let first = sql(&statements[0]);
        assert!(first.contains("\"users@version=3\" AS \"users\""), "{first}");
        let second = sql(&statements[1]);
        assert!(second.contains("\"users@timestamp=2026-01-01\" old"), "{second}");
    }

    #[test]
    fn time_travel_without_a_literal_is_a_positioned_error() {
        let err = parse_script("SELECT * FROM t AS OF VERSION x").unwrap_err();
        assert_eq!(err.position, Position { line: 1, column: 31 });
    }

    #[test]
    fn show_history_is_gobis_own_statement() {
        let statements = parse_script("SHOW HISTORY Users").unwrap();
        assert!(matches!(&statements[0].command, Command::ShowHistory { table } if table == "users"));
        let err = parse_script("SHOW HISTORY users extra").unwrap_err();
        assert_eq!(err.position, Position { line: 1, column: 20 });
    }

    #[test]
    fn completeness_follows_top_level_semicolons() {
        assert!(is_complete("SELECT 1;"));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete("SELECT (1;"));
    }
}
