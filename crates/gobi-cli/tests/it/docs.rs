//! Every example in `docs/pl-grizzly.md` runs: `sql` blocks in order in one lakehouse, each
//! with `gobi query --file`; a `sql error` block must fail with the text of the `text` block
//! that follows it.

use crate::support::{exit, gobi, Lakehouse};

struct Example {
    line: usize,
    sql: String,
    /// For `sql error` blocks: the lines the error must show.
    error: Option<Vec<String>>,
}

fn examples(markdown: &str) -> Vec<Example> {
    let mut examples: Vec<Example> = vec![];
    let mut lines = markdown.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        let fence = line.trim();
        let body = |lines: &mut dyn Iterator<Item = (usize, &str)>| lines.take_while(|(_, l)| l.trim() != "```").map(|(_, l)| l).collect::<Vec<_>>().join("\n");
        match fence {
            "```sql" | "```sql error" => examples.push(Example { line: number + 1, sql: body(&mut lines), error: (fence == "```sql error").then(Vec::new) }),
            "```text" => {
                let text = body(&mut lines);
                if let Some(Example { error: Some(expected), .. }) = examples.last_mut() {
                    if expected.is_empty() {
                        expected.extend(text.lines().map(str::to_string));
                    }
                }
            }
            _ => {}
        }
    }
    examples
}

#[test]
fn docs_examples_run() {
    let markdown = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/pl-grizzly.md")).unwrap();
    let examples = examples(&markdown);
    assert!(examples.len() >= 15, "found only {} examples", examples.len());
    let lh = Lakehouse::new();
    for example in &examples {
        let file = lh.path().join("example.sql");
        std::fs::write(&file, &example.sql).unwrap();
        let run = gobi(&["query", "--file", "example.sql"], lh.path());
        match &example.error {
            None => assert_eq!(run.code, 0, "docs/pl-grizzly.md:{} failed:\n{}\n{}", example.line, example.sql, run.stderr),
            Some(expected) => {
                // A statement that fails, or one that does not parse.
                let run = run.fails_with_one_of(&[exit::FAILED, exit::SYNTAX]);
                assert!(!expected.is_empty(), "docs/pl-grizzly.md:{}: an error example needs a text block after it", example.line);
                for line in expected {
                    assert!(run.stderr.contains(line.as_str()), "docs/pl-grizzly.md:{}: wanted {line:?} in:\n{}", example.line, run.stderr);
                }
            }
        }
    }
}

/// `docs/cli.md` names every command, every flag `--help` lists and every dot command `.help`
/// lists.
#[test]
fn the_cli_page_lists_every_command_flag_and_dot_command() {
    let page = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| gobi(args, dir.path()).ok().stdout;
    let commands = ["init", "query", "run", "repl", "memory", "plan", "demo"];
    for command in commands {
        assert!(page.contains(&format!("`{command}")), "docs/cli.md lacks the command {command}");
        let text = help(&[command, "--help"]);
        for flag in text.split_whitespace().filter(|w| w.starts_with("--")).map(|w| w.trim_end_matches([',', '.', ')'])) {
            let flag = flag.split(['=', '<', '[']).next().unwrap();
            assert!(page.contains(flag), "docs/cli.md lacks {flag} (from gobi {command} --help)");
        }
    }
    for report in ["stats", "pressure", "leaks", "cleanup"] {
        assert!(page.contains(&format!("`memory {report}")), "docs/cli.md lacks gobi memory {report}");
    }
    let dots = crate::support::gobi_stdin(&["repl"], dir.path(), ".help\n").ok().stderr;
    let listed: Vec<&str> = dots.lines().filter_map(|l| l.trim_start().strip_prefix('.').and(l.split_whitespace().next())).collect();
    assert!(listed.len() >= 12, "{dots}");
    for dot in listed {
        assert!(page.contains(&format!("`{dot}")), "docs/cli.md lacks the dot command {dot}");
    }
}
