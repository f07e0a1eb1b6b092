//! Splitting a script into statements and parsing each one.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParserBuilder, Statement as Ast};
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use datafusion::sql::sqlparser::keywords::{Keyword, RESERVED_FOR_TABLE_ALIAS};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer, Whitespace, Word};

use crate::diagnostic::{Position, SyntaxError};
use crate::dialect::{is_keyword as is_word, GrizzlyDialect};
use crate::function::{parse_function, FunctionDef};
use crate::versioned::{TableVersion, VersionedName};

/// What a statement asks for: SQL, or one of gobi's own statements.
#[derive(Debug, Clone)]
pub enum Command {
    Sql(Ast),
    /// `SHOW HISTORY table`: the table's Delta commits.
    ShowHistory {
        table: String,
    },
    /// `let name = value`: a session variable, replaced if it exists.
    Let {
        name: String,
        value: LetValue,
    },
    /// `FUNCTION name(…) …`: defines (or replaces) a user function.
    DefineFunction(Box<FunctionDef>),
    /// `SHOW FUNCTIONS`
    ShowFunctions,
    /// `DROP FUNCTION [IF EXISTS] name`
    DropFunction {
        name: String,
        if_exists: bool,
    },
    /// `COPY 'file' TO table`: appends the file's rows to a table.
    CopyFrom {
        file: String,
        table: String,
    },
    /// `OPTIMIZE table [ZORDER BY (columns)]`: compacts small files (and clusters rows).
    Optimize {
        table: String,
        zorder: Vec<String>,
    },
    /// `VACUUM table [RETAIN n HOURS] [DRY RUN]`: removes files no retained version needs.
    Vacuum {
        table: String,
        retain_hours: Option<u64>,
        dry_run: bool,
    },
    /// `RESTORE [TABLE] table TO VERSION n | TO TIMESTAMP 'time'`: makes an old version current.
    Restore {
        table: String,
        to: TableVersion,
    },
    /// `DESCRIBE DETAIL table`: files, bytes, rows, versions and checkpoints of a table.
    DescribeDetail {
        table: String,
    },
}

/// What a `let` binds: a scalar (read as `$name`) or a table (named in `FROM`).
#[derive(Debug, Clone)]
pub enum LetValue {
    Scalar(SqlExpr),
    Table(Ast),
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
            // A statement that ends too early is reported where it ends.
            let end = Position { line: last.end.line, column: last.end.column };
            let at_end = |mut e: SyntaxError| {
                if e.message.ends_with("found: EOF") && e.position == start {
                    e.position = end;
                }
                e
            };
            let tokens = rewrite_time_travel(tokens)?;
            let command = match parse_gobi_statement(&tokens, &text, start).map_err(at_end)? {
                Some(command) => command,
                None => Command::Sql(parse_tokens(tokens, start).map_err(at_end)?),
            };
            Ok(Statement { command, text, start })
        })
        .collect()
}

/// True when `source` ends a statement: its last token is a top-level `;` (or the `}` that
/// closes a block function). The REPL keeps reading lines until then. Text that cannot be
/// tokenized counts as complete unless it only lacks a closing quote, so the error is shown
/// instead of waiting forever.
pub fn is_complete(source: &str) -> bool {
    match Tokenizer::new(&GrizzlyDialect, source).tokenize_with_location() {
        Ok(tokens) => {
            let statements = split_statements(tokens);
            let ended = statements.len() > 1;
            ended && statements.last().is_none_or(|rest| rest.iter().all(|t| is_trivia(&t.token)))
        }
        Err(e) => !e.message.starts_with("Unterminated"),
    }
}

fn tokenize(source: &str) -> Result<Vec<TokenWithSpan>, SyntaxError> {
    Tokenizer::new(&GrizzlyDialect, source)
        .tokenize_with_location()
        .map_err(|e| SyntaxError::from_parser_message(&e.to_string(), Position { line: 1, column: 1 }))
}

fn parse_tokens(tokens: Vec<TokenWithSpan>, start: Position) -> Result<Ast, SyntaxError> {
    let tokens = copy_options_as_datafusion(select_star_for_bare_from(tokens));
    let dialect = GrizzlyDialect;
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

/// gobi's own statements: `SHOW HISTORY`, `let`, `FUNCTION`, `SHOW FUNCTIONS`,
/// `DROP FUNCTION`, `COPY 'file' TO table`, OPTIMIZE, VACUUM, RESTORE, DESCRIBE DETAIL. `None` when the statement is plain SQL.
fn parse_gobi_statement(tokens: &[TokenWithSpan], text: &str, start: Position) -> Result<Option<Command>, SyntaxError> {
    let significant: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !is_trivia(&t.token)).collect();
    let word = |i: usize, text: &str| significant.get(i).is_some_and(|t| is_word(&t.token, text));
    let is_copy_from_file = word(0, "copy") && matches!(significant.get(1).map(|t| &t.token), Some(Token::SingleQuotedString(_)));
    let ours = (word(0, "show") && (word(1, "history") || word(1, "functions")))
        || (word(0, "drop") && word(1, "function"))
        || word(0, "function")
        || word(0, "let")
        || is_copy_from_file
        || ["optimize", "vacuum", "restore"].iter().any(|w| word(0, w))
        || (word(0, "describe") && word(1, "detail"));
    if !ours {
        return Ok(None);
    }
    let parser_error = |e: ParserError| SyntaxError::from_parser_message(&e.to_string(), start);
    let mut parser = Parser::new(&GrizzlyDialect).with_tokens_with_locations(tokens.to_vec());
    let command = if word(0, "show") && word(1, "history") {
        parser.next_token();
        parser.next_token();
        let table = crate::ident::normalize(parser.parse_identifier().map_err(parser_error)?);
        Command::ShowHistory { table }
    } else if word(0, "show") && word(1, "functions") {
        parser.next_token();
        parser.next_token();
        Command::ShowFunctions
    } else if word(0, "drop") && word(1, "function") {
        parser.next_token();
        parser.next_token();
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = crate::ident::normalize(parser.parse_identifier().map_err(parser_error)?);
        Command::DropFunction { name, if_exists }
    } else if word(0, "function") {
        parser.next_token();
        let definition = parse_function(&mut parser, text.to_string(), start).map_err(parser_error)?;
        Command::DefineFunction(Box::new(definition))
    } else if is_copy_from_file {
        parser.next_token();
        let file = parser.parse_literal_string().map_err(parser_error)?;
        parser.expect_keyword(Keyword::TO).map_err(parser_error)?;
        let table = crate::ident::normalize(parser.parse_identifier().map_err(parser_error)?);
        Command::CopyFrom { file, table }
    } else if word(0, "optimize") || word(0, "vacuum") || word(0, "restore") || word(0, "describe") {
        parse_maintenance(&mut parser, parser_error)?
    } else if word(0, "let") {
        parser.next_token();
        let name = crate::ident::normalize(parser.parse_identifier().map_err(parser_error)?);
        let equals = parser.expect_token(&Token::Eq).map_err(parser_error)?;
        let starts_query = ["select", "from", "with", "values", "table"].iter().any(|w| word(3, w));
        if starts_query {
            let rest: Vec<TokenWithSpan> = tokens.iter().skip_while(|t| t.span != equals.span).skip(1).cloned().collect();
            let value = LetValue::Table(parse_tokens(rest, position(equals.span))?);
            return Ok(Some(Command::Let { name, value }));
        }
        let value = LetValue::Scalar(parser.parse_expr().map_err(parser_error)?);
        Command::Let { name, value }
    } else {
        return Ok(None);
    };
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(SyntaxError { message: format!("expected the end of the statement, found {}", next.token), position: position(next.span) });
    }
    Ok(Some(command))
}

/// OPTIMIZE, VACUUM, RESTORE and DESCRIBE DETAIL, from their first word on.
fn parse_maintenance(parser: &mut Parser, parser_error: impl Fn(ParserError) -> SyntaxError) -> Result<Command, SyntaxError> {
    let first = parser.next_token();
    let table_name = |parser: &mut Parser| parser.parse_identifier().map(crate::ident::normalize).map_err(&parser_error);
    Ok(match first.token.to_string().to_lowercase().as_str() {
        "optimize" => {
            let table = table_name(parser)?;
            let mut zorder = vec![];
            if next_word_is(parser, "zorder") {
                expect_word(parser, "by")?;
                parser.expect_token(&Token::LParen).map_err(&parser_error)?;
                zorder = parser.parse_comma_separated(|p| p.parse_identifier()).map_err(&parser_error)?.into_iter().map(crate::ident::normalize).collect();
                parser.expect_token(&Token::RParen).map_err(&parser_error)?;
            }
            Command::Optimize { table, zorder }
        }
        "vacuum" => {
            let table = table_name(parser)?;
            let retain_hours = if next_word_is(parser, "retain") {
                let hours = parser.parse_literal_uint().map_err(&parser_error)?;
                if !next_word_is(parser, "hours") {
                    expect_word(parser, "hour")?;
                }
                Some(hours)
            } else {
                None
            };
            let dry_run = next_word_is(parser, "dry");
            if dry_run {
                expect_word(parser, "run")?;
            }
            Command::Vacuum { table, retain_hours, dry_run }
        }
        "restore" => {
            next_word_is(parser, "table");
            let table = table_name(parser)?;
            expect_word(parser, "to")?;
            let to = if next_word_is(parser, "version") {
                TableVersion::Version(i64::try_from(parser.parse_literal_uint().map_err(&parser_error)?).unwrap_or(i64::MAX))
            } else if next_word_is(parser, "timestamp") {
                TableVersion::Timestamp(parser.parse_literal_string().map_err(&parser_error)?)
            } else {
                return Err(unexpected(parser, "VERSION n or TIMESTAMP '…'"));
            };
            Command::Restore { table, to }
        }
        _ => {
            expect_word(parser, "detail")?;
            Command::DescribeDetail { table: table_name(parser)? }
        }
    })
}

/// Takes the next token if it is the unquoted word `word`.
fn next_word_is(parser: &mut Parser, word: &str) -> bool {
    let is = matches!(&parser.peek_token().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    if is {
        parser.next_token();
    }
    is
}

fn expect_word(parser: &mut Parser, word: &str) -> Result<(), SyntaxError> {
    if next_word_is(parser, word) {
        Ok(())
    } else {
        Err(unexpected(parser, &word.to_uppercase()))
    }
}

/// "expected …, found …" at the next token.
fn unexpected(parser: &Parser, expected: &str) -> SyntaxError {
    let next = parser.peek_token();
    SyntaxError { message: format!("expected {expected}, found {}", next.token), position: position(next.span) }
}

/// Cuts the token stream at every `;` outside parentheses and braces, and after the `}` that
/// closes the body of a block function (`FUNCTION f(…) RETURNS t { … }` needs no `;`).
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut statements = vec![];
    let mut current: Vec<TokenWithSpan> = vec![];
    let mut depth = 0i32;
    let mut block_function = false;
    for token in tokens {
        if !block_function && current.iter().all(|t| is_trivia(&t.token)) {
            block_function = is_word(&token.token, "function");
        }
        match token.token {
            Token::LParen | Token::LBrace => depth += 1,
            Token::RParen => depth -= 1,
            Token::RArrow if depth == 0 => block_function = false,
            Token::RBrace => {
                depth -= 1;
                if depth == 0 && block_function {
                    current.push(token);
                    statements.push(std::mem::take(&mut current));
                    block_function = false;
                    continue;
                }
            }
            Token::SemiColon if depth <= 0 => {
                statements.push(std::mem::take(&mut current));
                depth = 0;
                block_function = false;
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
            && significant.get(i + 2).is_some_and(|t| is_word(&t.token, "version") || is_word(&t.token, "timestamp"));
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

/// `FROM t WHERE …` (FROM-first without SELECT) gets `SELECT *` before its first clause that
/// belongs to a SELECT (`WHERE`, `GROUP BY`, `HAVING`, `QUALIFY`, `WINDOW`), since sqlparser
/// reads a bare `FROM t` only when a pipe, ORDER BY, LIMIT or the end follows.
fn select_star_for_bare_from(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    const STARTS_QUERY_AFTER: [&str; 8] = ["as", "union", "intersect", "except", "all", "distinct", "explain", "analyze"];
    const SELECT_CLAUSES: [&str; 5] = ["where", "group", "having", "qualify", "window"];
    const QUERY_ENDS: [&str; 6] = ["union", "intersect", "except", "order", "limit", "select"];
    let significant: Vec<usize> = (0..tokens.len()).filter(|&i| !is_trivia(&tokens[i].token)).collect();
    let mut inserts = vec![];
    for (k, &i) in significant.iter().enumerate() {
        if !is_word(&tokens[i].token, "from") {
            continue;
        }
        let starts_query = match k.checked_sub(1).map(|p| &tokens[significant[p]].token) {
            None | Some(Token::LParen) => true,
            Some(token) => STARTS_QUERY_AFTER.iter().any(|w| is_word(token, w)),
        };
        if !starts_query {
            continue;
        }
        let mut depth = 0i32;
        for &j in &significant[k + 1..] {
            let token = &tokens[j].token;
            match token {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::VerticalBarRightAngleBracket if depth == 0 => break,
                _ if depth > 0 => {}
                _ if QUERY_ENDS.iter().any(|w| is_word(token, w)) => break,
                _ if SELECT_CLAUSES.iter().any(|w| is_word(token, w)) => {
                    inserts.push(j);
                    break;
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::with_capacity(tokens.len() + 4 * inserts.len());
    for (i, token) in tokens.into_iter().enumerate() {
        if inserts.contains(&i) {
            let span = token.span;
            let space = TokenWithSpan { token: Token::Whitespace(Whitespace::Space), span };
            out.push(word("SELECT".into(), None, Keyword::SELECT, span));
            out.push(space.clone());
            out.push(TokenWithSpan { token: Token::Mul, span });
            out.push(space);
        }
        out.push(token);
    }
    out
}

/// DuckDB's `COPY … TO 'f' (FORMAT csv, HEADER false, DELIMITER '|')` in DataFusion's words:
/// `STORED AS csv OPTIONS ('format.has_header' 'false', 'format.delimiter' '|')`. An option
/// without a value (`HEADER`) is true; a name DataFusion does not know is passed on as
/// `format.<name>`, for DataFusion to refuse by name.
fn copy_options_as_datafusion(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let significant: Vec<usize> = (0..tokens.len()).filter(|&i| !is_trivia(&tokens[i].token)).collect();
    if !significant.first().is_some_and(|&i| is_word(&tokens[i].token, "copy")) {
        return tokens;
    }
    // `TO 'file' (` at depth 0, its `)` the statement's last token.
    let mut depth = 0i32;
    let mut open = None;
    for (k, &i) in significant.iter().enumerate() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(_) if depth == 0 && is_word(&tokens[i].token, "to") => {
                let target = significant.get(k + 1).map(|&j| &tokens[j].token);
                let paren = significant.get(k + 2).map(|&j| &tokens[j].token);
                if matches!(target, Some(Token::SingleQuotedString(_))) && paren == Some(&Token::LParen) {
                    open = Some(k + 2);
                }
                break;
            }
            _ => {}
        }
    }
    let Some(open) = open else { return tokens };
    let Some((&close, inside)) = significant[open + 1..].split_last() else { return tokens };
    if tokens[close].token != Token::RParen || inside.iter().any(|&i| matches!(tokens[i].token, Token::LParen | Token::RParen)) {
        return tokens;
    }
    let span = tokens[significant[open]].span;
    let text = |i: usize| match &tokens[i].token {
        Token::Word(w) => w.value.clone(),
        Token::SingleQuotedString(s) => s.clone(),
        Token::Number(n, _) => n.clone(),
        other => other.to_string(),
    };
    let (mut stored_as, mut options) = (None, vec![]);
    for option in inside.split(|&i| tokens[i].token == Token::Comma) {
        let Some((&name, value)) = option.split_first() else { return tokens };
        let value = match value {
            [] => "true".to_string(),
            [value] => text(*value),
            _ => return tokens,
        };
        let name = text(name).to_lowercase();
        let key = match name.as_str() {
            "format" => {
                stored_as = Some(value);
                continue;
            }
            "header" => "has_header".to_string(),
            "delim" | "sep" => "delimiter".to_string(),
            "nullstr" | "null" => "null_value".to_string(),
            other => other.to_string(),
        };
        options.push((format!("format.{key}"), value));
    }
    let space = || TokenWithSpan { token: Token::Whitespace(Whitespace::Space), span };
    let quoted = |text: String| TokenWithSpan { token: Token::SingleQuotedString(text), span };
    let mut rewritten = vec![];
    if let Some(format) = stored_as {
        rewritten.extend([space(), word("STORED".into(), None, Keyword::STORED, span), space(), word("AS".into(), None, Keyword::AS, span), space()]);
        rewritten.push(word(format, None, Keyword::NoKeyword, span));
    }
    if !options.is_empty() {
        rewritten.extend([space(), word("OPTIONS".into(), None, Keyword::OPTIONS, span), space(), TokenWithSpan { token: Token::LParen, span }]);
        for (i, (key, value)) in options.into_iter().enumerate() {
            if i > 0 {
                rewritten.extend([TokenWithSpan { token: Token::Comma, span }, space()]);
            }
            rewritten.extend([quoted(key), space(), quoted(value)]);
        }
        rewritten.push(TokenWithSpan { token: Token::RParen, span });
    }
    let (before, after) = (significant[open], close + 1);
    let mut out: Vec<TokenWithSpan> = tokens[..before].to_vec();
    out.extend(rewritten);
    out.extend(tokens[after..].iter().cloned());
    out
}

/// Maps line/column locations back to byte offsets, to slice a statement's text.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let starts = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { starts }
    }

    fn offset(&self, source: &str, line: u64, column: u64) -> usize {
        let Some(&start) = self.starts.get(line.saturating_sub(1) as usize) else {
            return source.len();
        };
        source[start..].char_indices().nth(column.saturating_sub(1) as usize).map_or(source.len(), |(i, _)| start + i)
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
    fn duckdb_copy_options_become_datafusions() {
        let sql = |text: &str| match &parse_script(text).unwrap()[0].command {
            Command::Sql(ast) => ast.to_string(),
            other => panic!("not SQL: {other:?}"),
        };
        let copy = sql("COPY (SELECT 1 AS a) TO 'out.csv' (FORMAT csv, HEADER false, DELIMITER '|')");
        assert!(copy.ends_with("TO out.csv STORED AS CSV OPTIONS ('format.has_header' 'false', 'format.delimiter' '|')"), "{copy}");
        let header = sql("copy t to 'out.csv' (header, sep ';')");
        assert!(header.ends_with("OPTIONS ('format.has_header' 'true', 'format.delimiter' ';')"), "{header}");
        let native = sql("COPY t TO 'out.csv' STORED AS CSV OPTIONS ('format.has_header' 'false')");
        assert!(native.ends_with("STORED AS CSV OPTIONS ('format.has_header' 'false')"), "DataFusion's own form is untouched: {native}");
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
    fn maintenance_statements_parse_and_point_at_mistakes() {
        let commands: Vec<Command> = parse_script(
            "OPTIMIZE T; OPTIMIZE t ZORDER BY (a, B); VACUUM t; VACUUM t RETAIN 0 HOURS DRY RUN; RESTORE TABLE t TO VERSION 3; \
             RESTORE t TO TIMESTAMP '2026-01-01'; DESCRIBE DETAIL t",
        )
        .unwrap()
        .into_iter()
        .map(|s| s.command)
        .collect();
        assert!(matches!(&commands[0], Command::Optimize { table, zorder } if table == "t" && zorder.is_empty()));
        assert!(matches!(&commands[1], Command::Optimize { zorder, .. } if zorder == &["a", "b"]));
        assert!(matches!(&commands[2], Command::Vacuum { retain_hours: None, dry_run: false, .. }));
        assert!(matches!(&commands[3], Command::Vacuum { retain_hours: Some(0), dry_run: true, .. }));
        assert!(matches!(&commands[4], Command::Restore { to: TableVersion::Version(3), .. }));
        assert!(matches!(&commands[5], Command::Restore { to: TableVersion::Timestamp(t), .. } if t == "2026-01-01"));
        assert!(matches!(&commands[6], Command::DescribeDetail { table } if table == "t"));
        let err = parse_script("RESTORE t TO 3").unwrap_err();
        assert_eq!((err.message.as_str(), err.position), ("expected VERSION n or TIMESTAMP '…', found 3", Position { line: 1, column: 14 }));
        let err = parse_script("VACUUM t RETAIN 2 DAYS").unwrap_err();
        assert_eq!(err.position, Position { line: 1, column: 19 });
        assert!(parse_script("OPTIMIZE t ZORDER (a)").unwrap_err().message.contains("expected BY"));
    }

    #[test]
    fn completeness_follows_top_level_semicolons() {
        assert!(is_complete("SELECT 1;"));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete("SELECT (1;"));
    }
}
