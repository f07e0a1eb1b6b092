//! Time travel: `FROM t AS OF VERSION 3` and `FROM t AS OF TIMESTAMP '…'`.
//!
//! SQL has no such clause, so the parser front end rewrites the table reference into one
//! quoted name that carries the version (`"t@version=3" AS t`); the catalog reads it back
//! with [`VersionedName::parse`]. The encoding lives here, in one place, for both sides.

use std::fmt;

/// Which snapshot of a table a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableVersion {
    Version(i64),
    Timestamp(String),
}

/// A table name together with the snapshot to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedName {
    pub table: String,
    pub version: TableVersion,
}

const VERSION_TAG: &str = "@version=";
const TIMESTAMP_TAG: &str = "@timestamp=";

impl VersionedName {
    /// Reads a name written by [`fmt::Display`]; `None` for an ordinary table name.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some((table, version)) = name.split_once(VERSION_TAG) {
            let version = version.parse().ok()?;
            return Some(Self { table: table.to_string(), version: TableVersion::Version(version) });
        }
        let (table, timestamp) = name.split_once(TIMESTAMP_TAG)?;
        Some(Self { table: table.to_string(), version: TableVersion::Timestamp(timestamp.to_string()) })
    }
}

impl fmt::Display for VersionedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            TableVersion::Version(v) => write!(f, "{}{VERSION_TAG}{v}", self.table),
            TableVersion::Timestamp(t) => write!(f, "{}{TIMESTAMP_TAG}{t}", self.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_kinds() {
        for version in [TableVersion::Version(3), TableVersion::Timestamp("2026-01-02 03:04:05".into())] {
            let name = VersionedName { table: "users".into(), version };
            assert_eq!(VersionedName::parse(&name.to_string()), Some(name));
        }
        assert_eq!(VersionedName::parse("users"), None);
        assert_eq!(VersionedName::parse("users@version=x"), None);
    }
}
