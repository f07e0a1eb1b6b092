//! `gobi plan`: prints the engine's plan report as a tree that reads in an 80-column terminal,
//! or as JSON (`--format json`).

use std::path::PathBuf;

use gobi_engine::{Estimate, GobiError, Holds, PlanNode, Session};
use gobi_lang::parse_script;
use gobi_memory::ByteSize;

use crate::output::{Format, Printer};
use crate::{CliResult, Failure, MemoryArgs, PlanArgs};

/// Terminal width the text form keeps to.
const WIDTH: usize = 80;

pub async fn run(lakehouse: Option<PathBuf>, memory: &MemoryArgs, args: PlanArgs, format: Format, printer: &Printer) -> CliResult {
    let source = args.statements.source()?;
    let session = args.statements.session(lakehouse, memory).await?;
    let result = print(&session, &source, args.analyze, format, printer).await;
    session.close().await;
    result
}

/// Runs the statements of `source` before its last, then prints the last one's plan (also the
/// REPL's `.plan`).
pub async fn print(session: &Session, source: &str, analyze: bool, format: Format, printer: &Printer) -> CliResult {
    let with_source = |error: GobiError| Failure { error, source: Some(source.to_string()) };
    let statements = parse_script(source).map_err(|e| with_source(e.into()))?;
    let Some((query, setup)) = statements.split_last() else {
        return Err(GobiError::new(gobi_engine::ErrorKind::Usage, "no statements given").with_hint("gobi plan \"SELECT …\"").into());
    };
    for statement in setup {
        session.execute(statement).await.map_err(with_source)?.collect().await.map_err(with_source)?;
    }
    let report = session.plan(query, analyze).await.map_err(with_source)?;
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&report).map_err(|e| GobiError::internal(e.to_string()))?,
        Format::Dot => dot(&report),
        _ => render(&report),
    };
    printer.print_line(text.trim_end())?;
    Ok(())
}

/// The plan as a tree, an operator per entry: its name and estimates, its one-line description,
/// for a join its algorithm and why, and after a run what it did with a bar of its peak
/// reserved bytes against the plan's largest.
fn render(report: &PlanNode) -> String {
    let largest = largest_peak(report);
    let mut out = String::new();
    entry(report, "", "", largest, &mut out);
    out
}

fn largest_peak(node: &PlanNode) -> u64 {
    let own = node.actual.map_or(0, |a| a.peak_reserved_bytes);
    node.children.iter().map(largest_peak).fold(own, u64::max)
}

fn entry(node: &PlanNode, first: &str, rest: &str, largest: u64, out: &mut String) {
    out.push_str(&format!("{first}{}  rows {}  bytes {}\n", node.operator, estimate(node.estimated_rows, false), estimate(node.estimated_bytes, true)));
    let inner = if node.children.is_empty() { format!("{rest}   ") } else { format!("{rest}│  ") };
    cut(&inner, &node.detail, out);
    if let Some(pool) = node.pool {
        let spill = if node.memory == Holds::Spills { "can spill" } else { "cannot spill" };
        wrap(&inner, &format!("memory {} from the {pool} pool, {spill}", estimate(node.estimated_memory, true)), out);
    }
    if let Some(join) = &node.join {
        wrap(&inner, &format!("{}: {}", join.algorithm, join.reason), out);
        wrap(&inner, &format!("build {}, probe {}", join.build, join.probe), out);
    }
    if let Some(actual) = node.actual {
        let rows = match (actual.rows, node.estimated_rows.value()) {
            (Some(rows), Some(estimated)) if estimated > 0 => format!("rows {rows} ({:.2}× the estimate), ", rows as f64 / estimated as f64),
            (Some(rows), _) => format!("rows {rows}, "),
            (None, _) => String::new(),
        };
        let allocated = if actual.peak_allocated_bytes > 0 { format!(", allocated {}", ByteSize(actual.peak_allocated_bytes)) } else { String::new() };
        wrap(&inner, &format!("ran: {rows}{:.1} ms{allocated}", actual.elapsed_ns as f64 / 1e6), out);
        let spills = if actual.spills > 0 { format!(", spilled {} files, {}", actual.spills, ByteSize(actual.spilled_bytes)) } else { String::new() };
        let bar = crate::memory::bar(actual.peak_reserved_bytes as usize, largest as usize);
        wrap(&inner, &format!("reserved {:>9} {bar}{spills}", ByteSize(actual.peak_reserved_bytes).to_string()), out);
        if let Some(join) = actual.join.filter(|join| join.spilled_buckets > 0) {
            let text = format!("buckets {} ({} spilled), {} rounds, re-split depth {}", join.buckets, join.spilled_buckets, join.rounds, join.max_depth);
            wrap(&inner, &text, out);
        }
    }
    let count = node.children.len();
    for (i, child) in node.children.iter().enumerate() {
        let (first, next) = if i + 1 == count { ("└─ ", "   ") } else { ("├─ ", "│  ") };
        entry(child, &format!("{rest}{first}"), &format!("{rest}{next}"), largest, out);
    }
}

/// The room a line under an entry has after its prefix.
fn room(prefix: &str) -> usize {
    WIDTH.saturating_sub(prefix.chars().count()).max(24)
}

/// A line under an entry cut to the terminal's width (DataFusion's description of a node can
/// run to pages; `--format json` has it whole).
fn cut(prefix: &str, text: &str, out: &mut String) {
    let room = room(prefix);
    let text: String = if text.chars().count() > room { text.chars().take(room - 1).chain(['…']).collect() } else { text.to_string() };
    out.push_str(&format!("{prefix}{text}\n"));
}

/// Lines under an entry, the words of `text` wrapped to the terminal's width.
fn wrap(prefix: &str, text: &str, out: &mut String) {
    let room = room(prefix);
    let mut current = String::new();
    for word in text.split(' ') {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > room {
            out.push_str(&format!("{prefix}{current}\n"));
            current = format!("  {word}");
        } else {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    out.push_str(&format!("{prefix}{current}\n"));
}

fn estimate(estimate: Estimate, bytes: bool) -> String {
    let show = |n: u64| if bytes { ByteSize(n).to_string() } else { n.to_string() };
    match estimate {
        Estimate::Exact(n) => show(n),
        Estimate::About(n) => format!("≈{}", show(n)),
        Estimate::Unknown => "?".to_string(),
    }
}

/// The plan as a Graphviz graph, rows flowing up: each node labelled with its operator, its
/// estimates, a join's algorithm and, after a run, its rows and peak.
fn dot(report: &PlanNode) -> String {
    fn node(plan: &PlanNode, id: &mut usize, out: &mut String) -> usize {
        let own = *id;
        *id += 1;
        let mut label = vec![plan.operator.clone(), format!("rows {} · bytes {}", estimate(plan.estimated_rows, false), estimate(plan.estimated_bytes, true))];
        if let Some(pool) = plan.pool {
            label.push(format!("memory {} ({pool})", estimate(plan.estimated_memory, true)));
        }
        if let Some(join) = &plan.join {
            label.push(join.algorithm.to_string());
        }
        if let Some(actual) = plan.actual {
            let rows = actual.rows.map_or_else(String::new, |rows| format!("rows {rows} · "));
            label.push(format!("ran: {rows}reserved {}", ByteSize(actual.peak_reserved_bytes)));
        }
        let label = label.join("\\n").replace('"', "\\\"");
        out.push_str(&format!("  n{own} [label=\"{label}\"];\n"));
        for child in &plan.children {
            let child = node(child, id, out);
            out.push_str(&format!("  n{child} -> n{own};\n"));
        }
        own
    }
    let mut out = String::from("digraph plan {\n  node [shape=box, fontname=\"monospace\"];\n");
    node(report, &mut 0, &mut out);
    out.push_str("}\n");
    out
}
