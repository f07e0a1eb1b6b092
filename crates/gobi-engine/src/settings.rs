//! gobi's own settings (`memory.*`, `maintenance.*`), declared once: `SET`, `SHOW`, "did you mean" and the
//! settings reference (`docs/settings.md`, checked by a test) all read [`SETTINGS`].
//!
//! ```text
//!   SET memory.query_limit = '64MiB'
//!        │  find(name) ─► unknown? "did you mean memory.query_pool?" (from SETTINGS)
//!        │  parse(text) by the setting's Kind ─► SettingValue
//!        └► Owner::Engine  ─► Engine::apply   (shared by every session of the engine)
//!           Owner::Session ─► Session::apply  (limits this session's statements only)
//! ```
//!
//! A setting that sizes a shared resource (a pool, the spill disk budget, how long admission
//! waits) belongs to the engine: one session's `SET` changes it for all, and says so. A
//! setting that limits one statement belongs to the session that sets it.

use std::time::Duration;

use gobi_memory::{ByteSize, Margin, StatementLimits};

use crate::error::{GobiError, Result};

/// Whose setting it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Sizes something every session shares: changed for all of them.
    Engine,
    /// Limits the statements of the session that sets it.
    Session,
}

impl Owner {
    pub fn name(self) -> &'static str {
        match self {
            Owner::Engine => "engine",
            Owner::Session => "session",
        }
    }
}

/// What values a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `'64MiB'`, `'1GB'`, `'0B'`.
    Size,
    /// A size, or a percentage of the statement's limit: `'64MiB'`, `'50%'`.
    SizeOrPercent,
    /// `'10s'`, `'500ms'`, `'5min'`, `'1h'`.
    Duration,
    /// A number from 0 to 1.
    Probability,
    /// `on` / `off` (or true / false).
    Switch,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Size => "a size such as '64MiB'",
            Kind::SizeOrPercent => "a size such as '64MiB' or a percentage such as '50%'",
            Kind::Duration => "a duration such as '10s', '500ms' or '5min'",
            Kind::Probability => "a number from 0 to 1",
            Kind::Switch => "on or off",
        }
    }
}

/// One setting: its section and name, whose it is, what it takes, and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// `memory` or `maintenance`: the part of the name before the dot.
    pub section: &'static str,
    pub name: &'static str,
    pub owner: Owner,
    pub kind: Kind,
    /// The default, as a user would write it.
    pub default: &'static str,
    pub doc: &'static str,
}

impl Setting {
    /// `memory.query_pool`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

/// Every setting gobi knows. The order is the order `SHOW SETTINGS` and the docs list them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        section: "memory",
        name: "query_pool",
        owner: Owner::Engine,
        kind: Kind::Size,
        default: "50MiB",
        doc: "The query pool's limit: execution memory of running statements (hash tables, sort buffers, aggregation state).",
    },
    Setting {
        section: "memory",
        name: "cache_pool",
        owner: Owner::Engine,
        kind: Kind::Size,
        default: "100MiB",
        doc: "The cache pool's limit: cached results, open tables' metadata, Parquet footers, function memos.",
    },
    Setting {
        section: "memory",
        name: "temp_pool",
        owner: Owner::Engine,
        kind: Kind::Size,
        default: "25MiB",
        doc: "The temp pool's limit: `let` tables and tables created without a lakehouse.",
    },
    Setting {
        section: "memory",
        name: "spill_limit",
        owner: Owner::Engine,
        kind: Kind::Size,
        default: "4GiB",
        doc: "The disk budget of spill files; a statement spilling past it fails.",
    },
    Setting {
        section: "memory",
        name: "admission_wait",
        owner: Owner::Engine,
        kind: Kind::Duration,
        default: "10s",
        doc: "How long a new statement waits while the query pool is under critical pressure, and a scan for room other statements hold, before it is refused.",
    },
    Setting {
        section: "memory",
        name: "leak_threshold",
        owner: Owner::Engine,
        kind: Kind::Duration,
        default: "300s",
        doc: "Memory held longer than this by a running statement is reported as a leak.",
    },
    Setting {
        section: "memory",
        name: "result_cache",
        owner: Owner::Engine,
        kind: Kind::Switch,
        default: "on",
        doc: "Whether repeated queries over unchanged tables are answered from the result cache.",
    },
    Setting {
        section: "memory",
        name: "spilling_join",
        owner: Owner::Engine,
        kind: Kind::Switch,
        default: "on",
        doc: "Whether a join whose build side may not fit runs as gobi's spilling hash join; off keeps DataFusion's in-memory hash join everywhere (a build bigger than the pool then fails the query).",
    },
    Setting {
        section: "memory",
        name: "fault_probability",
        owner: Owner::Engine,
        kind: Kind::Probability,
        default: "0",
        doc: "For tests: the fraction of reservation requests refused on purpose.",
    },
    Setting {
        section: "memory",
        name: "fault_leak",
        owner: Owner::Engine,
        kind: Kind::Size,
        default: "0B",
        doc: "For tests: the next statement keeps this many bytes reserved past its end.",
    },
    Setting {
        section: "memory",
        name: "query_limit",
        owner: Owner::Session,
        kind: Kind::Size,
        default: "none (the query pool's limit)",
        doc: "The most one statement of this session may reserve.",
    },
    Setting {
        section: "memory",
        name: "actual_margin",
        owner: Owner::Session,
        kind: Kind::SizeOrPercent,
        default: "128MiB",
        doc: "How far past its limit a statement's allocator bytes may go before it is stopped (never past all pools together).",
    },
    Setting {
        section: "maintenance",
        name: "allow_short_retention",
        owner: Owner::Session,
        kind: Kind::Switch,
        default: "off",
        doc: "Whether VACUUM may keep less than the table's retention (7 days by default); versions older than what it keeps can then no longer be read.",
    },
];

/// A parsed value of a setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SettingValue {
    Size(u64),
    Margin(Margin),
    Duration(Duration),
    Probability(f64),
    Switch(bool),
}

impl SettingValue {
    /// The bytes of a `Size` value, as `usize`.
    pub fn bytes(self) -> usize {
        match self {
            SettingValue::Size(bytes) => usize::try_from(bytes).unwrap_or(usize::MAX),
            _ => 0,
        }
    }
}

impl std::fmt::Display for SettingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingValue::Size(bytes) => write!(f, "{}", ByteSize(*bytes)),
            SettingValue::Margin(margin) => write!(f, "{margin}"),
            SettingValue::Duration(duration) => write!(f, "{}", format_duration(*duration)),
            SettingValue::Probability(p) => write!(f, "{p}"),
            SettingValue::Switch(on) => f.write_str(if *on { "on" } else { "off" }),
        }
    }
}

/// Whether `word` is the section of some setting (`memory`, `maintenance`).
pub fn is_section(word: &str) -> bool {
    SETTINGS.iter().any(|s| s.section.eq_ignore_ascii_case(word))
}

/// The setting called `name` (`section.name`, or the name alone), or an error that names the
/// closest.
pub fn find(name: &str) -> Result<&'static Setting> {
    let name = name.to_lowercase();
    let (section, short) = match name.split_once('.') {
        Some((section, short)) => (Some(section), short),
        None => (None, name.as_str()),
    };
    if let Some(setting) = SETTINGS.iter().find(|s| s.name == short && section.is_none_or(|section| section == s.section)) {
        return Ok(setting);
    }
    let names: Vec<String> = SETTINGS.iter().map(Setting::full_name).collect();
    let wanted = if section.is_some() { name.clone() } else { format!("memory.{name}") };
    let error = GobiError::plan(format!("unknown setting {wanted}"));
    Err(match gobi_lang::closest_name(&wanted, &names) {
        Some(close) => error.with_hint(format!("did you mean {close}?")),
        None => error.with_hint(format!("settings: {} (SHOW SETTINGS lists them)", names.join(", "))),
    })
}

/// Reads `text` as a value of `setting`.
pub fn parse(setting: &Setting, text: &str) -> Result<SettingValue> {
    let text = text.trim();
    let value = match setting.kind {
        Kind::Size => text.parse::<ByteSize>().ok().map(|size| SettingValue::Size(size.0)),
        Kind::SizeOrPercent => match text.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().ok().filter(|p| *p >= 0.0).map(|p| SettingValue::Margin(Margin::Fraction(p / 100.0))),
            None => text.parse::<ByteSize>().ok().map(|size| SettingValue::Margin(Margin::Bytes(usize::try_from(size.0).unwrap_or(usize::MAX)))),
        },
        Kind::Duration => parse_duration(text).map(SettingValue::Duration),
        Kind::Probability => text.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p)).map(SettingValue::Probability),
        Kind::Switch => match text.to_lowercase().as_str() {
            "on" | "true" => Some(SettingValue::Switch(true)),
            "off" | "false" => Some(SettingValue::Switch(false)),
            _ => None,
        },
    };
    value.ok_or_else(|| GobiError::plan(format!("{} must be {}, not {text}", setting.full_name(), setting.kind.expected())))
}

/// What one session's settings are now.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionSettings {
    /// The limits its statements run with (`memory.query_limit`, `memory.actual_margin`).
    pub limits: StatementLimits,
    /// `maintenance.allow_short_retention`.
    pub allow_short_retention: bool,
}

impl SessionSettings {
    /// Applies a session setting.
    pub fn apply(&mut self, setting: &Setting, value: SettingValue) {
        match (setting.name, value) {
            ("query_limit", value) => self.limits.limit = Some(value.bytes()),
            ("actual_margin", SettingValue::Margin(margin)) => self.limits.actual_margin = margin,
            ("allow_short_retention", SettingValue::Switch(on)) => self.allow_short_retention = on,
            _ => unreachable!("{} is not a session setting of this kind", setting.name),
        }
    }

    /// A session setting's value now, as `SHOW` prints it.
    pub fn value(&self, setting: &Setting) -> String {
        match setting.name {
            "query_limit" => self.limits.limit.map_or_else(|| "none".to_string(), |bytes| ByteSize(bytes as u64).to_string()),
            "actual_margin" => self.limits.actual_margin.to_string(),
            "allow_short_retention" => SettingValue::Switch(self.allow_short_retention).to_string(),
            other => unreachable!("{other} is not a session setting"),
        }
    }
}

/// `300s`, `5min`, `1h`, `250ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "min" | "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// `10s`, `0.5s`, `300s`: seconds, as `SHOW` prints a duration.
pub fn format_duration(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5 s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5min"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "ten s", "10 days", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_setting_parses_its_default() {
        for setting in SETTINGS {
            if setting.name == "query_limit" {
                continue; // its default is the absence of a limit
            }
            parse(setting, setting.default).unwrap_or_else(|e| panic!("{}: {}", setting.name, e.message));
        }
    }

    #[test]
    fn names_are_unique_and_unknown_ones_get_the_closest() {
        let mut names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len());
        assert_eq!(find("MEMORY.Query_Pool").unwrap().name, "query_pool");
        let error = find("memory.querypool").unwrap_err();
        assert_eq!(error.hint.as_deref(), Some("did you mean memory.query_pool?"));
    }

    #[test]
    fn values_are_checked_by_kind() {
        let margin = find("actual_margin").unwrap();
        assert_eq!(parse(margin, "50%").unwrap(), SettingValue::Margin(Margin::Fraction(0.5)));
        assert_eq!(parse(margin, "1MiB").unwrap(), SettingValue::Margin(Margin::Bytes(1 << 20)));
        assert!(parse(find("fault_probability").unwrap(), "1.5").unwrap_err().message.contains("a number from 0 to 1"));
        assert_eq!(parse(find("result_cache").unwrap(), "OFF").unwrap(), SettingValue::Switch(false));
        assert!(parse(find("query_pool").unwrap(), "lots").unwrap_err().message.contains("memory.query_pool must be a size"));
    }
}
