//! `gobi memory stats|pressure|leaks|cleanup` and the REPL's `.memory …`: reports built from
//! the memory manager and the lakehouse's logs, in sections. As tables (human units, a usage
//! bar per pool), as one JSON object with a snake_case key per section, or as CSV (each section
//! a `# key` line, its header and rows, then a blank line); byte figures are plain numbers in
//! JSON and CSV.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use crate::output::Format;
use gobi_engine::{Collected, GobiError, Session};
use gobi_lang::parse_script;
use gobi_memory::{ByteSize, PoolKind};
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, clap::Subcommand)]
pub enum Report {
    /// Pools (limit, reserved, peak, counters, a bar each), the process (allocator, RSS,
    /// untracked) and recent queries from the query log.
    #[command(after_help = "Example:\n  gobi memory stats\n  gobi memory stats --json")]
    Stats,
    /// Pressure per pool and overall (normal < 80 % ≤ high < 95 % ≤ critical); `--history`
    /// lists what gobi did about it.
    #[command(after_help = "Example:\n  gobi memory pressure --history")]
    Pressure {
        #[arg(long)]
        history: bool,
    },
    /// Memory held past its query's end or past memory.leak_threshold, now and in the log.
    #[command(after_help = "Example:\n  gobi memory leaks --json")]
    Leaks,
    /// Release what ended queries hold, remove stale spill folders, return free pages to the OS.
    #[command(after_help = "Example:\n  gobi memory cleanup")]
    Cleanup,
}

/// One titled list of rows; each row's fields in the order they are shown.
struct Section {
    /// Its name in JSON and CSV (snake_case); the tables show it with spaces.
    key: &'static str,
    rows: Vec<Row>,
}

type Row = Vec<(String, Value)>;

pub async fn report(session: &Session, report: Report, format: Format) -> Result<String, GobiError> {
    let sections = match report {
        Report::Stats => vec![
            pools(session),
            Section { key: "process", rows: sql_rows(session, "SELECT * FROM gobi_memory_process()").await? },
            Section { key: "result_cache", rows: sql_rows(session, "SELECT * FROM gobi_result_cache()").await? },
            totals(session).await?,
            recent(session).await?,
        ],
        Report::Pressure { history } => {
            let mut sections = vec![pressure(session)];
            if history {
                sections.push(Section { key: "events", rows: sql_rows(session, "SELECT * FROM gobi_memory_events() ORDER BY at").await? });
            }
            sections
        }
        Report::Leaks => vec![
            Section { key: "leaks", rows: sql_rows(session, "SELECT * FROM gobi_memory_leaks()").await? },
            Section {
                key: "leaked_by_earlier_queries",
                rows: sql_rows(
                    session,
                    "SELECT started_at, right(statement_id, 8) AS id, process, leaked_bytes, substr(text, 1, 60) AS text FROM gobi_query_log() WHERE leaked_bytes > 0 ORDER BY started_at DESC LIMIT 20",
                )
                .await?,
            },
        ],
        Report::Cleanup => {
            let cleaned = session.engine().cleanup().await;
            let freed = cleaned.freed.iter().map(|(what, count, bytes)| row(vec![("freed", json!(what)), ("count", json!(count)), ("bytes", json!(bytes))])).collect();
            let rss = vec![row(vec![("rss_before_bytes", json!(cleaned.rss_before)), ("rss_after_bytes", json!(cleaned.rss_after))])];
            let mut sections = vec![Section { key: "cleanup", rows: freed }, Section { key: "process", rows: rss }];
            if !cleaned.vacuumable.is_empty() {
                let rows = cleaned
                    .vacuumable
                    .iter()
                    .map(|(table, files, bytes)| row(vec![("table", json!(table)), ("files", json!(files)), ("bytes", json!(bytes)), ("run", json!(format!("VACUUM {table}")))]))
                    .collect();
                sections.push(Section { key: "files_for_vacuum", rows });
            }
            sections
        }
    };
    Ok(match format {
        Format::Table | Format::Line | Format::Markdown => render_tables(&sections),
        Format::Csv => render_csv(&sections),
        Format::Json => render_json(&sections),
        Format::Dot => return Err(crate::output::dot_needs_a_plan()),
    })
}

fn row(fields: Vec<(&str, Value)>) -> Row {
    fields.into_iter().map(|(name, value)| (name.to_string(), value)).collect()
}

/// A bar of 20 cells, filled in proportion to `part / whole`.
pub fn bar(part: usize, whole: usize) -> String {
    let filled = (part.min(whole) * 20).checked_div(whole).unwrap_or(0);
    format!("{}{}", "█".repeat(filled), "░".repeat(20 - filled))
}

fn pools(session: &Session) -> Section {
    let memory = session.engine().memory();
    let rows = memory
        .stats()
        .iter()
        .map(|s| {
            row(vec![
                ("pool", json!(s.kind.name())),
                ("limit_bytes", json!(s.limit)),
                ("reserved_bytes", json!(s.reserved)),
                ("peak_bytes", json!(s.peak)),
                ("pressure", json!(memory.pressure(s.kind).name())),
                ("allocations", json!(s.allocations)),
                ("deallocations", json!(s.deallocations)),
                ("rejected", json!(s.rejected)),
                ("overruns", json!(s.overruns)),
            ])
        })
        .collect();
    Section { key: "pools", rows }
}

async fn totals(session: &Session) -> Result<Section, GobiError> {
    let rows = sql_rows(
        session,
        "SELECT count(*) AS queries, count(*) FILTER (WHERE status = 'error') AS failed, \
         count(*) FILTER (WHERE status = 'cancelled') AS cancelled, coalesce(sum(rejected), 0) AS rejected, \
         coalesce(sum(spills), 0) AS spills, coalesce(sum(spilled_bytes), 0) AS spilled_bytes, \
         coalesce(max(peak_reserved_bytes), 0) AS max_peak_reserved_bytes, coalesce(max(peak_actual_bytes), 0) AS max_peak_actual_bytes, \
         coalesce(sum(leaked_bytes), 0) AS leaked_bytes FROM gobi_query_log()",
    )
    .await?;
    Ok(Section { key: "query_log_totals", rows })
}

async fn recent(session: &Session) -> Result<Section, GobiError> {
    let rows = sql_rows(
        session,
        "SELECT started_at, right(statement_id, 8) AS id, status, round(duration_ms, 1) AS duration_ms, peak_reserved_bytes, peak_actual_bytes, \
         spills, spilled_bytes, substr(text, 1, 50) AS text FROM gobi_query_log() ORDER BY started_at DESC LIMIT 10",
    )
    .await?;
    Ok(Section { key: "recent_queries", rows })
}

fn pressure(session: &Session) -> Section {
    let memory = session.engine().memory();
    let mut rows: Vec<_> = PoolKind::ALL
        .iter()
        .map(|&kind| {
            let pool = memory.pool(kind);
            row(vec![
                ("pool", json!(kind.name())),
                ("level", json!(pool.pressure().name())),
                ("reserved_bytes", json!(pool.reserved())),
                ("limit_bytes", json!(pool.limit())),
            ])
        })
        .collect();
    let (reserved, limit) = PoolKind::ALL.iter().fold((0, 0), |(r, l), &kind| (r + memory.pool(kind).reserved(), l + memory.pool(kind).limit()));
    rows.push(row(vec![
        ("pool", json!("overall")),
        ("level", json!(memory.overall_pressure().name())),
        ("reserved_bytes", json!(reserved)),
        ("limit_bytes", json!(limit)),
    ]));
    Section { key: "pressure", rows }
}

/// Runs one query and returns its rows, fields in the result's column order.
async fn sql_rows(session: &Session, sql: &str) -> Result<Vec<Row>, GobiError> {
    let statement = parse_script(sql)?.into_iter().next().ok_or_else(|| GobiError::internal("an empty report query"))?;
    let Collected::Rows { batches, schema } = session.execute_report(&statement).await? else { return Ok(vec![]) };
    let mut bytes = vec![];
    {
        let mut writer =
            datafusion::arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, datafusion::arrow::json::writer::JsonArray>(&mut bytes);
        writer.write_batches(&batches.iter().collect::<Vec<_>>()).map_err(|e| GobiError::internal(e.to_string()))?;
        writer.finish().map_err(|e| GobiError::internal(e.to_string()))?;
    }
    if bytes.is_empty() {
        return Ok(vec![]);
    }
    let objects: Vec<Map<String, Value>> = serde_json::from_slice(&bytes).map_err(|e| GobiError::internal(e.to_string()))?;
    Ok(objects
        .into_iter()
        .map(|mut object| schema.fields().iter().map(|f| (f.name().clone(), object.remove(f.name()).unwrap_or(Value::Null))).collect())
        .collect())
}

fn render_json(sections: &[Section]) -> String {
    let object: Map<String, Value> =
        sections.iter().map(|s| (s.key.to_string(), Value::Array(s.rows.iter().map(|r| Value::Object(r.iter().cloned().collect())).collect()))).collect();
    format!("{}\n", Value::Object(object))
}

/// Each section as `# key`, a header and its rows, then a blank line.
fn render_csv(sections: &[Section]) -> String {
    let field = |value: &Value| {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if text.contains([',', '"', '\n']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text
        }
    };
    let mut text = String::new();
    for section in sections {
        text.push_str(&format!("# {}\n", section.key));
        if let Some(first) = section.rows.first() {
            text.push_str(&first.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(","));
            text.push('\n');
        }
        for row in &section.rows {
            text.push_str(&row.iter().map(|(_, value)| field(value)).collect::<Vec<_>>().join(","));
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

/// Each section as a titled table; `*_bytes` columns in human units, and a usage bar after a
/// row's `reserved` when it has a `limit`.
fn render_tables(sections: &[Section]) -> String {
    let mut text = String::new();
    for section in sections {
        text.push_str(&section.key.replace('_', " "));
        text.push('\n');
        let Some(first) = section.rows.first() else {
            text.push_str("  (none)\n\n");
            continue;
        };
        let with_bar = first.iter().any(|(name, _)| name == "limit_bytes") && first.iter().any(|(name, _)| name == "reserved_bytes");
        let mut header = vec![];
        for (name, _) in first {
            header.push(name.trim_end_matches("_bytes").to_string());
            if with_bar && name == "reserved_bytes" {
                header.push("usage".to_string());
            }
        }
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(header);
        let bytes = |row: &Row, column: &str| row.iter().find(|(name, _)| name == column).and_then(|(_, value)| value.as_u64()).unwrap_or(0) as usize;
        for row in &section.rows {
            let mut cells = vec![];
            for (column, value) in row {
                cells.push(match value {
                    Value::Number(n) if column.ends_with("_bytes") => ByteSize(n.as_u64().unwrap_or(0)).to_string(),
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                });
                if with_bar && column == "reserved_bytes" {
                    cells.push(bar(bytes(row, "reserved_bytes"), bytes(row, "limit_bytes")));
                }
            }
            table.add_row(cells);
        }
        text.push_str(&table.to_string());
        text.push_str("\n\n");
    }
    text
}
