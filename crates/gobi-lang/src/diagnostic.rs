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

/// A statement that parses but names a PL-GRIZZLY variable or function that cannot be used
/// there (unknown, recursive, wrong arguments): found when the statement is expanded, just
/// before it runs, so the statements before it have run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} at {position}")]
pub struct NameError {
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
                let mut numbers = tail.split(", Column: ").map(|n| n.trim().parse::<u64>().ok());
                match (numbers.next().flatten(), numbers.next().flatten()) {
                    (Some(line), Some(column)) if line > 0 => (raw[..at].to_string(), Position { line, column }),
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
    let indent: String = line_text.chars().take(position.column.saturating_sub(1) as usize).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    format!("{gutter}--> {position}\n{gutter} |\n{number} | {line_text}\n{gutter} | {indent}{}\n", "^".repeat(width.max(1)))
}

/// The known name within a small edit distance of `name`, if any.
pub fn closest_name<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(&name.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Edits (insert, delete, replace, swap of neighbours) that turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}
