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
//!
//! Names become file and folder names in exactly one place, [`Lakehouse::name_path`], after
//! [`checked_name`]: a table, view or function name (and any kind of name added later) is
//! one plain file name or it is refused, so nothing a statement names is read or written
//! outside this folder.

use std::fs;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gobi_lang::VersionedName;
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
    pub maintenance: MaintenanceConfig,
}

/// `[maintenance]` of `gobi.toml`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// The size OPTIMIZE makes files (Spark's OPTIMIZE writes 128 MiB). Memory does not depend
    /// on it: the writer holds one row group at a time.
    pub target_file_size: gobi_memory::ByteSize,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self { target_file_size: gobi_memory::ByteSize::mib(128) }
    }
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

[maintenance]
target_file_size = "128MiB"   # the size OPTIMIZE compacts small files into
"#;

/// An opened lakehouse folder.
#[derive(Debug, Clone)]
pub struct Lakehouse {
    root: PathBuf,
    config: Config,
    /// The user may read the folder but not write to it (its permissions, a read-only mount):
    /// found when it is opened. Writes are refused by [`Lakehouse::writable`]; reads work.
    read_only: bool,
}

impl Lakehouse {
    /// Creates a lakehouse in `dir` (created if missing); an existing lakehouse is an error.
    pub fn init(dir: &Path) -> Result<Self> {
        if dir.join(CONFIG_FILE).exists() {
            return Err(GobiError::new(ErrorKind::Lakehouse, format!("{} is already a gobi lakehouse", dir.display())));
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
            return Err(GobiError::new(ErrorKind::Lakehouse, format!("{} is not a gobi lakehouse (no {CONFIG_FILE})", dir.display()))
                .with_hint(format!("run `gobi init {}` to create one, or pass --lakehouse DIR", dir.display())));
        }
        let text = fs::read_to_string(&config_path)?;
        let config: Config = toml::from_str(&text).map_err(|e| GobiError::new(ErrorKind::Lakehouse, format!("{}: {}", config_path.display(), e.message())))?;
        let root = dir.canonicalize()?;
        // An unnamed file (O_TMPFILE) asks the folder for write permission and leaves nothing.
        let read_only =
            matches!(tempfile::tempfile_in(&root), Err(e) if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem));
        Ok(Self { root, config, read_only })
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Refuses a change to a lakehouse the user may only read, before anything is written.
    /// Every write checks it where it enters: the governed write path, ALTER TABLE, and
    /// the folder's own writes (removing a table, saving or removing a definition).
    pub fn writable(&self) -> Result<()> {
        if !self.read_only {
            return Ok(());
        }
        Err(GobiError::new(ErrorKind::Lakehouse, format!("the lakehouse {} is read-only: gobi can read it but not write to it", self.root.display()))
            .with_hint("ask for write permission on the folder, or copy it somewhere you can write"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where queries spill: `_gobi/spill/<pid>-<n>/`, one folder per engine (see
    /// [`Lakehouse::create_spill_dir`]).
    pub fn spill_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("spill")
    }

    /// Removes the spill folders of processes that are gone (a crash or `kill -9` leaves their
    /// spill files behind): how many, with how many bytes.
    pub fn sweep_spill_dirs(&self) -> Result<(usize, u64)> {
        let root = self.spill_dir();
        fs::create_dir_all(&root)?;
        let mut swept = (0, 0);
        for entry in fs::read_dir(&root)?.flatten() {
            let pid = entry.file_name().to_str().and_then(|name| name.split('-').next()?.parse::<u32>().ok());
            if pid.is_some_and(|pid| pid != std::process::id() && !process_is_running(pid)) {
                let bytes = folder_bytes(&entry.path());
                if fs::remove_dir_all(entry.path()).is_ok() {
                    swept.0 += 1;
                    swept.1 += bytes;
                }
            }
        }
        Ok(swept)
    }

    /// A new spill folder for one engine of this process, `_gobi/spill/<pid>-<n>`: removed with
    /// what is in it when the returned [`SpillDir`] is dropped, so a process leaves none behind.
    pub fn create_spill_dir(&self) -> Result<SpillDir> {
        static ENGINES: AtomicUsize = AtomicUsize::new(0);
        let path = self.spill_dir().join(format!("{}-{}", std::process::id(), ENGINES.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&path)?;
        Ok(SpillDir(path))
    }

    /// Where a name of `kind` lives: the only way a name becomes a path, so every name is
    /// checked by [`checked_name`] before it is joined to this folder.
    fn name_path(&self, kind: NameKind, name: &str) -> Result<PathBuf> {
        let name = checked_name(kind, name)?;
        Ok(match kind {
            NameKind::Table => self.root.join(TABLES_DIR).join(name),
            NameKind::View | NameKind::Function => self.root.join(STATE_DIR).join(kind.folder()).join(format!("{name}.sql")),
            NameKind::Log => self.root.join(STATE_DIR).join(name),
            NameKind::Lock => self.root.join(STATE_DIR).join(kind.folder()).join(format!("{name}.lock")),
        })
    }

    /// Takes table `name`'s rewrite lock, in every gobi process on this lakehouse, until the
    /// guard drops: `exclusive` for OPTIMIZE, shared for DELETE and UPDATE. Delta's conflict
    /// check does not see OPTIMIZE's removes (they change no data), so two OPTIMIZEs at once
    /// would both commit and duplicate rows, and a DELETE committed under an OPTIMIZE would
    /// come back; appends need no lock (they never conflict). Waits while another holds it.
    /// A table that does not exist needs no lock (the statement fails on its name).
    pub async fn lock_table(&self, name: &str, exclusive: bool) -> Result<TableLock> {
        let path = self.name_path(NameKind::Lock, name)?;
        if !self.table_exists(name) {
            return Ok(TableLock { _file: None });
        }
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(path.parent().expect("under _gobi/locks"))?;
            let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            if exclusive {
                file.lock()?;
            } else {
                file.lock_shared()?;
            }
            Ok(TableLock { _file: Some(file) })
        })
        .await
        .map_err(|e| GobiError::internal(format!("the table lock's task failed: {e}")))?
    }

    /// One of gobi's own Delta tables (`query_log`, `memory_events`): `_gobi/<name>/`.
    pub fn log_url(&self, name: &str) -> Result<Url> {
        let path = self.name_path(NameKind::Log, name)?;
        fs::create_dir_all(&path)?;
        directory_url(&path)
    }

    /// The folder of table `name`: `tables/<name>/`; an error if `name` is not one file name.
    pub fn table_path(&self, name: &str) -> Result<PathBuf> {
        self.name_path(NameKind::Table, name)
    }

    pub fn table_url(&self, name: &str) -> Result<Url> {
        directory_url(&self.table_path(name)?)
    }

    /// Names of the tables on disk: every folder under `tables/` with a Delta log whose name
    /// gobi can use (see [`checked_name`]).
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join(TABLES_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().join("_delta_log").is_dir())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| checked_name(NameKind::Table, name).is_ok())
            .collect();
        names.sort();
        names
    }

    /// Whether table `name` exists; a name that is not one file name names no table.
    pub fn table_exists(&self, name: &str) -> bool {
        self.table_path(name).is_ok_and(|path| path.join("_delta_log").is_dir())
    }

    /// Removes a table's folder: first renamed into `_gobi/trash` (one atomic step, after
    /// which the table is gone for every reader), then deleted.
    pub fn remove_table(&self, name: &str) -> Result<()> {
        self.writable()?;
        let folder = self.table_path(name)?;
        let trash = self.root.join(STATE_DIR).join("trash");
        fs::create_dir_all(&trash)?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let target = trash.join(format!("{name}-{stamp}"));
        fs::rename(folder, &target)?;
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

    /// The names of every stored definition of `kind`, sorted.
    pub fn definition_names(&self, kind: Definition) -> Vec<String> {
        let kind = NameKind::from(kind);
        let mut names: Vec<String> = fs::read_dir(self.root.join(STATE_DIR).join(kind.folder()))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter_map(|file| file.strip_suffix(".sql").map(str::to_string))
            .filter(|name| checked_name(kind, name).is_ok())
            .collect();
        names.sort();
        names
    }

    /// The statement that defines `name`, as it was written; a name that is not one file
    /// name names nothing.
    pub fn definition(&self, kind: Definition, name: &str) -> Option<String> {
        fs::read_to_string(self.name_path(kind.into(), name).ok()?).ok()
    }

    /// Stores the statement that defines `name`; an error if `name` is not one file name.
    pub fn save_definition(&self, kind: Definition, name: &str, text: &str) -> Result<()> {
        self.writable()?;
        let path = self.name_path(kind.into(), name)?;
        fs::create_dir_all(path.parent().expect("definitions live in folders"))?;
        write_atomically(&path, text.as_bytes())
    }

    /// Removes the definition; `false` when there was none, an error if `name` is not one
    /// file name.
    pub fn remove_definition(&self, kind: Definition, name: &str) -> Result<bool> {
        self.writable()?;
        match fs::remove_file(self.name_path(kind.into(), name)?) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A table's rewrite lock, held until dropped (the OS releases it with the file).
#[derive(Debug)]
pub struct TableLock {
    _file: Option<fs::File>,
}

/// What gobi stores as statement text under `_gobi/`: one file per view or function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Definition {
    View,
    Function,
}

/// What a name that becomes a file or folder name names; each kind has its place in the
/// lakehouse (see [`Lakehouse::name_path`]). A new kind (users, say) is added here, so its
/// names get the same check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// `tables/<name>/`
    Table,
    /// `_gobi/views/<name>.sql`
    View,
    /// `_gobi/functions/<name>.sql`
    Function,
    /// `_gobi/<name>/`: gobi's own Delta tables (`query_log`, `memory_events`).
    Log,
    /// `_gobi/locks/<name>.lock`: a table's rewrite lock.
    Lock,
}

impl NameKind {
    fn noun(self) -> &'static str {
        match self {
            NameKind::Table => "table",
            NameKind::View => "view",
            NameKind::Function => "function",
            NameKind::Log => "log",
            NameKind::Lock => "table",
        }
    }

    fn folder(self) -> &'static str {
        match self {
            NameKind::Table => TABLES_DIR,
            NameKind::View => "views",
            NameKind::Function => "functions",
            NameKind::Log => STATE_DIR,
            NameKind::Lock => "locks",
        }
    }
}

impl From<Definition> for NameKind {
    fn from(kind: Definition) -> Self {
        match kind {
            Definition::View => NameKind::View,
            Definition::Function => NameKind::Function,
        }
    }
}

/// The longest name, in bytes. File systems allow 255-byte file names; gobi adds at most 40
/// bytes to a name (`.sql`; `-<nanoseconds>` for a dropped table in the trash), so 200 leaves
/// room for both.
pub const MAX_NAME_BYTES: usize = 200;

/// `name` if it can be a file or folder name inside the lakehouse: one plain path component,
/// so it can neither climb out (`..`), reach into another folder (`/`, `\`), nor be cut
/// short or hidden by the OS (NUL and other control characters), and not longer than
/// [`MAX_NAME_BYTES`]; and a table name must not read as time travel (`t@version=3`).
/// Anything else is a `Plan` error that says what is wrong and what is allowed. Any name
/// that passes is usable, such as the `my-table` other tools write.
///
/// [`Lakehouse::name_path`] calls this for every name it turns into a path; callers may call
/// it earlier to refuse a name before doing anything else.
pub fn checked_name(kind: NameKind, name: &str) -> Result<&str> {
    let problem = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name == "." || name == ".." {
        Some(format!("{name} names a folder, not a {}", kind.noun()))
    } else if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\') || c.is_control()) {
        Some(format!("it contains {}", describe_char(c)))
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!("it is {} bytes long", name.len()))
    } else if !matches!(Path::new(name).components().collect::<Vec<_>>().as_slice(), [Component::Normal(part)] if *part == name) {
        Some("it is not a plain file name".to_string())
    } else if kind == NameKind::Table && VersionedName::parse(name).is_some() {
        Some("FROM would read it as time travel (`t@version=3` is how gobi writes `t AS OF VERSION 3`)".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(name),
        Some(problem) => Err(GobiError::plan(format!("{} cannot name a {}: {problem}", shown(name), kind.noun())).with_hint(format!(
            "a name becomes a file name in the lakehouse: at most {MAX_NAME_BYTES} bytes, not . or .., without /, \\, NUL or other control characters"
        ))),
    }
}

/// A name quoted for a message, cut short when it is long.
fn shown(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((end, _)) => format!("{:?}…", &name[..end]),
        None => format!("{name:?}"),
    }
}

fn describe_char(c: char) -> String {
    match c {
        '/' => "'/'".to_string(),
        '\\' => "'\\'".to_string(),
        '\0' => "NUL".to_string(),
        c => format!("the control character {c:?}"),
    }
}

/// Whether a process with this id exists. Without `/proc` there is no cheap way to tell, so
/// every process counts as running and nothing is swept.
/// One engine's spill folder; removed, with what is in it, when dropped.
#[derive(Debug)]
pub struct SpillDir(PathBuf);

impl SpillDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn process_is_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
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
    Url::from_directory_path(&absolute).map_err(|()| GobiError::internal(format!("cannot make a URL of {}", absolute.display())))
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

    /// Every file and folder under `dir`, relative to it, sorted.
    fn tree(dir: &Path) -> Vec<PathBuf> {
        let mut found = vec![];
        let mut pending = vec![dir.to_path_buf()];
        while let Some(folder) = pending.pop() {
            for entry in fs::read_dir(&folder).unwrap().flatten() {
                found.push(entry.path().strip_prefix(dir).unwrap().to_path_buf());
                if entry.file_type().unwrap().is_dir() {
                    pending.push(entry.path());
                }
            }
        }
        found.sort();
        found
    }

    const BAD_NAMES: [&str; 13] = ["", ".", "..", "../x", "../../../escaped", "a/b", "/tmp/abs", "a\\b", "..\\x", "a\0b", "a\nb", "tab\there", "del\u{7f}"];

    #[track_caller]
    fn assert_refused<T: std::fmt::Debug>(result: Result<T>, noun: &str, name: &str) {
        let error = result.expect_err(name);
        assert_eq!(error.kind, ErrorKind::Plan, "{name:?}: {error:?}");
        assert!(error.message.contains(&format!("cannot name a {noun}: ")), "{name:?}: {}", error.message);
        assert!(error.hint.as_deref().is_some_and(|h| h.contains("at most 200 bytes")), "{name:?}: {error:?}");
    }

    /// Each kind of name, with each kind of bad name: a clear error, and nothing is written
    /// anywhere, inside the lakehouse or beside it.
    #[test]
    fn names_that_are_not_one_file_name_are_refused_for_every_kind() {
        let parent = tempfile::tempdir().unwrap();
        let lakehouse = Lakehouse::init(&parent.path().join("lh")).unwrap();
        let before = tree(parent.path());
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for name in BAD_NAMES.into_iter().chain([long.as_str()]) {
            assert_refused(lakehouse.table_path(name), "table", name);
            assert_refused(lakehouse.table_url(name), "table", name);
            assert_refused(lakehouse.remove_table(name), "table", name);
            assert!(!lakehouse.table_exists(name), "{name:?}");
            assert_refused(lakehouse.save_view(name, "CREATE VIEW v AS SELECT 1"), "view", name);
            assert_refused(lakehouse.remove_view(name), "view", name);
            assert_eq!(lakehouse.view_sql(name), None, "{name:?}");
            assert_refused(lakehouse.save_definition(Definition::Function, name, "FUNCTION f(a) => a"), "function", name);
            assert_refused(lakehouse.remove_definition(Definition::Function, name), "function", name);
            assert_eq!(lakehouse.definition(Definition::Function, name), None, "{name:?}");
            assert_refused(lakehouse.log_url(name), "log", name);
        }
        assert_eq!(tree(parent.path()), before, "nothing was created, inside or outside the lakehouse");
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let message = |name: &str| checked_name(NameKind::Function, name).unwrap_err().message;
        assert_eq!(message("../../../escaped"), "\"../../../escaped\" cannot name a function: it contains '/'");
        assert_eq!(message(".."), "\"..\" cannot name a function: .. names a folder, not a function");
        assert_eq!(message(""), "\"\" cannot name a function: it is empty");
        assert_eq!(message("a\\b"), "\"a\\\\b\" cannot name a function: it contains '\\'");
        assert_eq!(message("a\0b"), "\"a\\0b\" cannot name a function: it contains NUL");
        assert_eq!(message("a\nb"), "\"a\\nb\" cannot name a function: it contains the control character '\\n'");
        let long = "x".repeat(300);
        assert_eq!(message(&long), format!("\"{}\"… cannot name a function: it is 300 bytes long", "x".repeat(40)));
    }

    /// Names other tools write, and anything else that is one file name, are usable.
    #[test]
    fn plain_file_names_are_accepted() {
        let parent = tempfile::tempdir().unwrap();
        let lakehouse = Lakehouse::init(&parent.path().join("lh")).unwrap();
        let longest = "x".repeat(MAX_NAME_BYTES);
        for name in ["users", "my-table", "a.b", "...", "Ünïcode name", "_x", longest.as_str()] {
            assert_eq!(checked_name(NameKind::Table, name).unwrap(), name);
            assert_eq!(lakehouse.table_path(name).unwrap(), lakehouse.root().join("tables").join(name));
            lakehouse.save_view(name, "CREATE VIEW v AS SELECT 1").unwrap();
            assert_eq!(lakehouse.view_sql(name).as_deref(), Some("CREATE VIEW v AS SELECT 1"));
            assert!(lakehouse.view_names().contains(&name.to_string()));
            assert!(lakehouse.remove_view(name).unwrap());
        }
        assert_eq!(tree(parent.path()).iter().filter(|p| !p.starts_with("lh")).count(), 0);
        assert!(checked_name(NameKind::Table, "t@version=3").unwrap_err().message.contains("time travel"));
        assert!(checked_name(NameKind::View, "t@version=3").is_ok());
    }
}
