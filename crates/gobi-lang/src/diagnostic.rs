//! Positions in a script and the snippet with a caret that every gobi error shows.

use std::fmt;

/// A 1-based line and column in the script, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A script that could not be split or parsed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("syntax error at {position}: {message}")]
pub struct SyntaxError {
    pub message: String,
    pub position: Position,
}

impl SyntaxError {
    /// Reads the position sqlparser appends to its messages (`... at Line: 3, Column: 7`).
    pub(crate) fn from_parser_message(raw: &str, fallback: Position) -> Self {
        let raw = raw.strip_prefix("sql parser error: ").unwrap_or(raw);
        let (message, position) = match raw.rfind(" at Line: ") {
            Some(at) => {
                let tail = &raw[at + " at Line: ".len()..];
                let mut numbers = tail
                    .split(", Column: ")
                    .map(|n| n.trim().parse::<u64>().ok());
                match (numbers.next().flatten(), numbers.next().flatten()) {
                    (Some(line), Some(column)) if line > 0 => {
                        (raw[..at].to_string(), Position { line, column })
                    }
                    _ => (raw.to_string(), fallback),
                }
            }
            None => (raw.to_string(), fallback),
        };
        SyntaxError { message, position }
    }
}

/// The offending line of `source` with a caret under `position`, numbered like rustc does:
///
/// ```text
///   --> 2:8
///    |
///  2 | SELECT nme FROM users
///    |        ^
/// ```
pub fn render_snippet(source: &str, position: Position, width: usize) -> String {
    let Some(line_text) = source.lines().nth(position.line.saturating_sub(1) as usize) else {
        return format!("  --> {position}\n");
    };
    let number = position.line.to_string();
    let gutter = " ".repeat(number.len());
    let indent: String = line_text
        .chars()
        .take(position.column.saturating_sub(1) as usize)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!(
        "{gutter}--> {position}\n{gutter} |\n{number} | {line_text}\n{gutter} | {indent}{}\n",
        "^".repeat(width.max(1))
    )
}
