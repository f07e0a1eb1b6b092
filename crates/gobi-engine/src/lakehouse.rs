//! The lakehouse folder: where tables, views and settings live on disk.
//!
//! ```text
//! my-lakehouse/
//! ├── gobi.toml          settings (memory pool limits, …), commented
//! ├── tables/<name>/     one Delta table per folder: readable by Spark, DuckDB, Polars, …
//! └── _gobi/             gobi's own state
//!     ├── views/<name>.sql       one persisted view per file: its CREATE VIEW text
//!     ├── functions/<name>.sql   one user function per file: its FUNCTION text
//!     ├── spill/<pid>/           queries' spill files, one folder per process (swept when
//!     │                          its process is gone)
//!     └── trash/             dropped tables on their way out (a rename, then a delete)
//! ```

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use gobi_memory::PoolLimits;
use serde::Deserialize;
use url::Url;

use crate::error::{ErrorKind, GobiError, Result};

pub const CONFIG_FILE: &str = "gobi.toml";
const TABLES_DIR: &str = "tables";
const STATE_DIR: &str = "_gobi";

/// Settings read from `gobi.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub memory: PoolLimits,
}

const CONFIG_TEMPLATE: &str = r#"# gobi lakehouse settings.
#
# This folder is a gobi lakehouse: tables/ holds one Delta Lake table per folder (any Delta
# reader — Spark, Trino, DuckDB, Polars, Python deltalake — can read them), _gobi/ holds
# gobi's own state (views, functions). Sizes take B, KiB, MiB, GiB (powers of 1024) or KB, MB, GB.

[memory]
# The three memory pools. Queries reserve their hash tables, sorts and aggregations from the
# query pool (sorts and aggregations spill to _gobi/spill/ when it is full); `let` tables hold
# temp-pool memory. Override per run with --memory-query/--memory-cache/--memory-temp or
# GOBI_MEMORY_QUERY/CACHE/TEMP, and in a session with SET memory.query_pool = '256MiB'.
query = "50MiB"   # execution memory of running queries: hash tables, sorts, aggregations
cache = "100MiB"  # what is kept for reuse between queries
temp = "25MiB"    # session values, such as `let` tables
"#;

/// An opened lakehouse folder.
#[derive(Debug, Clone)]
pub struct Lakehouse {
    root: PathBuf,
    config: Config,
}

impl Lakehouse {
    /// Creates a lakehouse in `dir` (created if missing); an existing lakehouse is an error.
    pub fn init(dir: &Path) -> Result<Self> {
        if dir.join(CONFIG_FILE).exists() {
            return Err(GobiError::new(
                ErrorKind::Lakehouse,
                format!("{} is already a gobi lakehouse", dir.display()),
            ));
        }
        fs::create_dir_all(dir)?;
        fs::create_dir_all(dir.join(TABLES_DIR))?;
        fs::create_dir_all(dir.join(STATE_DIR).join("views"))?;
        write_atomically(&dir.join(CONFIG_FILE), CONFIG_TEMPLATE.as_bytes())?;
        Self::open(dir)
    }

    /// Opens the lakehouse in `dir`; a folder without `gobi.toml` is refused with a hint.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(GobiError::new(
                ErrorKind::Lakehouse,
                format!("{} is not a gobi lakehouse (no {CONFIG_FILE})", dir.display()),
            )
            .with_hint(format!(
                "run `gobi init {}` to create one, or pass --lakehouse DIR",
                dir.display()
            )));
        }
        let text = fs::read_to_string(&config_path)?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            GobiError::new(ErrorKind::Lakehouse, format!("{}: {}", config_path.display(), e.message()))
        })?;
        let root = dir.canonicalize()?;
        Ok(Self { root, config })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where queries spill: `_gobi/spill/<pid>/`, one folder per process, holding one
    /// temporary folder per session that is removed when the session ends.
    pub fn spill_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("spill")
    }

    /// This process's spill folder, created after removing the folders of processes that are
    /// gone (a crash or `kill -9` leaves their spill files behind). Returns the folder, and
    /// how many stale folders were removed with how many bytes.
    pub fn prepare_spill_dir(&self) -> Result<(PathBuf, (usize, u64))> {
        let root = self.spill_dir();
        fs::create_dir_all(&root)?;
        let mut swept = (0, 0);
        for entry in fs::read_dir(&root)?.flatten() {
            let pid = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok());
            if pid.is_some_and(|pid| pid != std::process::id() && !process_is_running(pid)) {
                let bytes = folder_bytes(&entry.path());
                if fs::remove_dir_all(entry.path()).is_ok() {
                    swept.0 += 1;
                    swept.1 += bytes;
                }
            }
        }
        let mine = root.join(std::process::id().to_string());
        fs::create_dir_all(&mine)?;
        Ok((mine, swept))
    }

    /// One of gobi's own Delta tables (`query_log`, `memory_events`): `_gobi/<name>/`.
    pub fn log_url(&self, name: &str) -> Result<Url> {
        let path = self.root.join(STATE_DIR).join(name);
        fs::create_dir_all(&path)?;
        directory_url(&path)
    }

    pub fn table_path(&self, name: &str) -> PathBuf {
        self.root.join(TABLES_DIR).join(name)
    }

    pub fn table_url(&self, name: &str) -> Result<Url> {
        directory_url(&self.table_path(name))
    }

    /// Names of the tables on disk: every folder under `tables/` with a Delta log.
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join(TABLES_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().join("_delta_log").is_dir())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    pub fn table_exists(&self, name: &str) -> bool {
        stays_inside(name) && self.table_path(name).join("_delta_log").is_dir()
    }

    /// Removes a table's folder: first renamed into `_gobi/trash` (one atomic step, after
    /// which the table is gone for every reader), then deleted.
    pub fn remove_table(&self, name: &str) -> Result<()> {
        let trash = self.root.join(STATE_DIR).join("trash");
        fs::create_dir_all(&trash)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let target = trash.join(format!("{name}-{stamp}"));
        fs::rename(self.table_path(name), &target)?;
        fs::remove_dir_all(&target)?;
        Ok(())
    }

    pub fn view_names(&self) -> Vec<String> {
        self.definition_names(Definition::View)
    }

    pub fn view_sql(&self, name: &str) -> Option<String> {
        self.definition(Definition::View, name)
    }

    pub fn save_view(&self, name: &str, sql: &str) -> Result<()> {
        self.save_definition(Definition::View, name, sql)
    }

    pub fn remove_view(&self, name: &str) -> Result<bool> {
        self.remove_definition(Definition::View, name)
    }

    fn definition_path(&self, kind: Definition, name: &str) -> PathBuf {
        self.root.join(STATE_DIR).join(kind.folder()).join(format!("{name}.sql"))
    }

    /// The names of every stored definition of `kind`, sorted.
    pub fn definition_names(&self, kind: Definition) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join(STATE_DIR).join(kind.folder()))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter_map(|file| file.strip_suffix(".sql").map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// The statement that defines `name`, as it was written.
    pub fn definition(&self, kind: Definition, name: &str) -> Option<String> {
        stays_inside(name).then(|| fs::read_to_string(self.definition_path(kind, name)).ok()).flatten()
    }

    pub fn save_definition(&self, kind: Definition, name: &str, text: &str) -> Result<()> {
        let path = self.definition_path(kind, name);
        fs::create_dir_all(path.parent().expect("definitions live in folders"))?;
        write_atomically(&path, text.as_bytes())
    }

    /// Removes the definition; `false` when there was none.
    pub fn remove_definition(&self, kind: Definition, name: &str) -> Result<bool> {
        if !stays_inside(name) {
            return Ok(false);
        }
        match fs::remove_file(self.definition_path(kind, name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// What gobi stores as statement text under `_gobi/`: one file per view or function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Definition {
    View,
    Function,
}

impl Definition {
    fn folder(self) -> &'static str {
        match self {
            Definition::View => "views",
            Definition::Function => "functions",
        }
    }
}

/// Whether a process with this id exists. Without `/proc` there is no cheap way to tell, so
/// every process counts as running and nothing is swept.
fn process_is_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Names map to folders and files; one that could climb out of the lakehouse names nothing.
/// (Tables written by other tools may have names gobi would not create, such as `my-table`.)
fn stays_inside(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

/// A `file://` URL for a local folder, as delta-rs wants it.
fn folder_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn directory_url(path: &Path) -> Result<Url> {
    let absolute = std::path::absolute(path)?;
    Url::from_directory_path(&absolute)
        .map_err(|()| GobiError::internal(format!("cannot make a URL of {}", absolute.display())))
}

/// Writes a file so that readers see either the old content or the new, never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("files live in folders");
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| GobiError::from(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_default_limits_and_open_refuses_other_folders() {
        let dir = tempfile::tempdir().unwrap();
        let lakehouse = Lakehouse::init(dir.path()).unwrap();
        assert_eq!(lakehouse.config().memory, PoolLimits::default());
        assert!(Lakehouse::init(dir.path()).is_err());
        let other = tempfile::tempdir().unwrap();
        let error = Lakehouse::open(other.path()).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Lakehouse);
        assert!(error.hint.unwrap().contains("gobi init"));
        assert!(!other.path().join(CONFIG_FILE).exists());
    }
}
