//! Inputs for property tests of the parser: a corpus of valid PL-GRIZZLY statements, mutations
//! of them, and arbitrary text. The tests here check that parsing never panics and every error
//! points inside the text; gobi-cli's `fuzz` tests carry the same inputs through planning.

use proptest::prelude::*;

#[cfg(test)]
use crate::parse_script;

/// Statements that parse, covering every PL-GRIZZLY addition; mutations start from these.
pub const CORPUS: &[&str] = &[
    "FROM orders",
    "FROM orders WHERE total > 100 ORDER BY id LIMIT 3",
    "FROM users SELECT name WHERE active ORDER BY name",
    "FROM orders o JOIN users u ON o.user_id = u.id SELECT u.name, sum(o.total) GROUP BY u.name",
    "FROM orders |> WHERE status = 'open' |> EXTEND total * 1.2 AS gross |> AGGREGATE sum(gross) AS g GROUP BY user_id |> ORDER BY g DESC |> LIMIT 10",
    "FROM orders |> AS o |> JOIN users u ON o.user_id = u.id |> SELECT o.id",
    "let threshold = 100",
    "let big = FROM orders WHERE total > $threshold",
    "SELECT @TypeOf($threshold), @TypeOf(big)",
    "FUNCTION gross(net, rate) => net * (1 + rate)",
    "FUNCTION tier(total DOUBLE) RETURNS STRING { if total > 1000 then return 'gold'; elif total > 100 then return 'silver'; else return 'bronze'; end }",
    "FUNCTION f(x BIGINT) RETURNS BIGINT { let y = x * 2; if y > 3 then let y = y - 1; end return match y { 1 -> 10, _ -> y }; }",
    "FROM orders SELECT id, gross(total, 0.2), tier(total)",
    "SELECT match status { 'open' -> 1, 'closed' -> 2, _ -> 0 } FROM orders",
    "SELECT * FROM users AS OF VERSION 1",
    "COPY orders TO 'o.parquet'",
    "COPY (FROM orders WHERE total > 1) TO 'o.csv'",
    "COPY 'o.csv' TO orders",
    "SHOW FUNCTIONS",
    "DROP FUNCTION IF EXISTS gross",
    "SHOW HISTORY orders",
    "CREATE TABLE t AS FROM orders WHERE status = 'open'",
    "WITH b AS (FROM orders WHERE total > 1) FROM b SELECT count(*)",
    "INSERT INTO orders VALUES (1, 2, 'open', 3.5)",
    "UPDATE orders SET total = total + 1 WHERE id = 1",
];

/// Pieces that stress the additions' grammar when dropped into a statement.
const FRAGMENTS: &[&str] = &[
    "|>",
    "{",
    "}",
    "(",
    ")",
    "match",
    "->",
    "_",
    "$x",
    "$",
    "let",
    "FUNCTION",
    "=>",
    ";",
    "'",
    "\"",
    "FROM",
    "SELECT",
    "WHERE",
    "if",
    "then",
    "elif",
    "else",
    "end",
    "return",
    "RETURNS",
    "@TypeOf",
    "AS OF VERSION",
    ",",
    "\n",
    "--",
    "/*",
    "AGGREGATE",
    "EXTEND",
    "JOIN",
    "COPY",
    "TO",
    "1e999",
    "NULL",
    "é",
    "\u{0}",
];

/// A corpus statement with one edit: a span deleted, a fragment inserted, or a span repeated.
pub fn mutated() -> impl Strategy<Value = String> {
    (0..CORPUS.len(), 0..3usize, any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0..FRAGMENTS.len()).prop_map(
        |(statement, edit, a, b, fragment)| {
            let text: Vec<char> = CORPUS[statement].chars().collect();
            let (i, j) = (a.index(text.len() + 1), b.index(text.len() + 1));
            let (from, to) = (i.min(j), i.max(j));
            let (head, middle, tail): (String, String, String) = (text[..from].iter().collect(), text[from..to].iter().collect(), text[to..].iter().collect());
            match edit {
                0 => format!("{head}{tail}"),
                1 => format!("{head} {} {middle}{tail}", FRAGMENTS[fragment]),
                _ => format!("{head}{middle}{middle}{tail}"),
            }
        },
    )
}

/// Input with no structure at all, biased toward the characters the grammar cares about.
pub fn arbitrary() -> impl Strategy<Value = String> {
    "[a-z0-9 $@'\"(){};,|>=*_.\n-]{0,60}"
}

/// An error's position lies within the text (one past its end at most).
pub fn within(source: &str, line: u64, column: u64) -> bool {
    let lines: Vec<&str> = source.split('\n').collect();
    line >= 1 && column >= 1 && lines.get(line as usize - 1).is_some_and(|l| column as usize <= l.chars().count() + 1)
}

#[cfg(test)]
proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_statements_parse_or_fail_at_a_position_inside_them(source in mutated()) {
        if let Err(e) = parse_script(&source) {
            prop_assert!(within(&source, e.position.line, e.position.column), "{e} for {source:?}");
        }
    }

    #[test]
    fn arbitrary_text_parses_or_fails_at_a_position_inside_it(source in arbitrary()) {
        if let Err(e) = parse_script(&source) {
            prop_assert!(within(&source, e.position.line, e.position.column), "{e} for {source:?}");
        }
    }
}

#[cfg(test)]
#[test]
fn the_corpus_parses() {
    for statement in CORPUS {
        parse_script(statement).unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}
