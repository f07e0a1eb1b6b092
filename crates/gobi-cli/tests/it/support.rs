//! A temporary lakehouse and a way to run the real `gobi` binary in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const GOBI: &str = env!("CARGO_BIN_EXE_gobi");

pub struct Lakehouse {
    pub dir: tempfile::TempDir,
}

/// What one `gobi` run did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Every run in the suite also checks that no pool went past its limit: gobi warns at exit
    /// when one did.
    #[track_caller]
    fn from(output: Output) -> Self {
        let run = Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert!(!run.stderr.contains("went past its limit"), "a pool went past its limit:\n{}", run.stderr);
        let frame = run.stderr.lines().find(|line| line.trim_start().starts_with("0: "));
        assert!(frame.is_none(), "a backtrace reached the user (RUST_BACKTRACE=1):\n{}", run.stderr);
        run
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "gobi failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts a clean error of a failed statement: exit code 1, a message, no panic or
    /// backtrace.
    #[track_caller]
    pub fn user_error(self) -> Self {
        self.fails_with(exit::FAILED)
    }

    /// Asserts a clean error with exit code `code` (see [`exit`]): a message, no panic or
    /// backtrace.
    #[track_caller]
    pub fn fails_with(self, code: i32) -> Self {
        self.fails_with_one_of(&[code])
    }

    /// Like [`Self::fails_with`], for an error that may be of either of several kinds.
    #[track_caller]
    pub fn fails_with_one_of(self, codes: &[i32]) -> Self {
        assert!(codes.contains(&self.code), "expected exit code {codes:?}:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(self.stderr.starts_with("error: ") || self.stderr.contains("\nerror: "), "stderr: {}", self.stderr);
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!self.stderr.contains(bad), "stderr has {bad}: {}", self.stderr);
        }
        self
    }
}

/// gobi's exit codes, as `gobi --help` lists them.
pub mod exit {
    /// A statement failed: unknown name, wrong type, bad value or file.
    pub const FAILED: i32 = 1;
    /// Wrong arguments or options.
    pub const USAGE: i32 = 2;
    /// The script does not parse; none of it ran.
    pub const SYNTAX: i32 = 3;
    /// A memory limit refused a query.
    pub const MEMORY: i32 = 4;
    /// Not a lakehouse folder, or a wrong gobi.toml.
    pub const LAKEHOUSE: i32 = 6;
}

pub fn gobi(args: &[&str], cwd: &Path) -> Run {
    gobi_with_env(args, cwd, &[])
}

/// [`gobi`] with environment variables set (the test's own `GOBI_LAKEHOUSE` and `COLUMNS` are
/// never passed on: a test names what it depends on).
pub fn gobi_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(GOBI);
    // With backtraces on, as a developer's shell may have them: none may reach the output.
    command.args(args).current_dir(cwd).env_remove("GOBI_LAKEHOUSE").env_remove("COLUMNS").env("RUST_BACKTRACE", "1").envs(env.iter().copied());
    Run::from(command.output().expect("gobi runs"))
}

/// `gobi args` started in `cwd` and left running, its stdout and stderr piped (for a test that
/// acts while it runs: a concurrent writer, one to kill).
pub fn gobi_started(args: &[&str], cwd: &Path) -> std::process::Child {
    Command::new(GOBI).args(args).current_dir(cwd).env_remove("GOBI_LAKEHOUSE").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("gobi runs")
}

/// [`gobi`], failing the test if it has not finished within `limit` (a hang is then a failure,
/// not a stalled suite).
pub fn gobi_within(limit: std::time::Duration, args: &[&str], cwd: &Path) -> Run {
    let child = gobi_started(args, cwd);
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(limit) {
        Ok(output) => Run::from(output.unwrap()),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("gobi did not finish within {limit:?}: {args:?}");
        }
    }
}

pub fn gobi_stdin(args: &[&str], cwd: &Path, stdin: &str) -> Run {
    use std::io::Write as _;
    let mut child = Command::new(GOBI)
        .args(args)
        .current_dir(cwd)
        .env_remove("GOBI_LAKEHOUSE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gobi runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    Run::from(child.wait_with_output().unwrap())
}

impl Lakehouse {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        gobi(&["init", dir.path().to_str().unwrap()], dir.path()).ok();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn table_log(&self, table: &str) -> PathBuf {
        self.path().join("tables").join(table).join("_delta_log")
    }

    /// Runs statements in the lakehouse (as its working directory).
    pub fn run(&self, sql: &str) -> Run {
        self.run_with(&[], sql)
    }

    /// Runs statements with `options` before the command (e.g. memory limits).
    pub fn run_with(&self, options: &[&str], sql: &str) -> Run {
        gobi(&[options, &["query", sql]].concat(), self.path())
    }

    /// Runs statements that must succeed; the rows of the last result, values in column order.
    #[track_caller]
    pub fn values(&self, sql: &str) -> Vec<Vec<Value>> {
        let run = gobi(&["query", sql, "--format", "json"], self.path()).ok();
        parse_json_rows(&run.stdout)
    }

    /// Number of commits in a table's Delta log.
    pub fn commits(&self, table: &str) -> usize {
        std::fs::read_dir(self.table_log(table)).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count()
    }
}

/// The rows of the last JSON array printed, each row's values in column order.
pub fn parse_json_rows(stdout: &str) -> Vec<Vec<Value>> {
    let line = stdout.lines().rev().find(|l| l.starts_with('[')).unwrap_or_else(|| panic!("no JSON result in {stdout}"));
    serde_json::from_str::<Vec<OrderedRow>>(line).unwrap().into_iter().map(|r| r.0).collect()
}

/// A JSON object read as its values in the order they were written (serde_json's own map
/// sorts keys).
struct OrderedRow(Vec<Value>);

impl<'de> serde::Deserialize<'de> for OrderedRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedRow;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedRow, A::Error> {
                let mut values = vec![];
                while let Some((_, value)) = map.next_entry::<String, Value>()? {
                    values.push(value);
                }
                Ok(OrderedRow(values))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Expected rows, each a list of JSON values; `null` stands for SQL NULL.
#[macro_export]
macro_rules! rows {
    ($([$($value:expr),* $(,)?]),* $(,)?) => {{
        #[allow(non_upper_case_globals, unused)]
        const null: serde_json::Value = serde_json::Value::Null;
        vec![$(vec![$(serde_json::json!($value)),*]),*] as Vec<Vec<serde_json::Value>>
    }};
}

/// A budget to write test tables under that are read under a few MiB: the writer cuts row
/// groups of a sixteenth of the statement's memory (384 KiB here), and a scan reserves the row
/// group it reads.
pub const WRITE_SMALL_ROW_GROUPS: [&str; 2] = ["--memory-query", "6MiB"];

/// The shared folder beside the project (data and corpora for tests), if present.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    dir.is_dir().then(|| dir.canonicalize().unwrap())
}

/// Tests that need something outside the Rust toolchain (Python packages, the shared corpus)
/// must run in CI; elsewhere they say why they did not run.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{what} is missing in CI: .ci/run must install it");
    eprintln!("not run: {what} is missing (bash .ci/run installs it)");
    false
}

/// The pools after a script, as `SHOW MEMORY` reports them in the same session:
/// (pool, limit, reserved, peak). Fails the test if a pool counted an overrun.
pub fn pools_after(lh: &Lakehouse, args: &[&str], script: &str) -> Vec<(String, u64, u64, u64)> {
    let mut all = args.to_vec();
    all.extend(["query", "--format", "json", script]);
    let run = gobi(&all, lh.path()).ok();
    let rows = parse_json_rows(&run.stdout);
    // Every test that reads the pools also checks the invariant: no pool ever went past its limit.
    for row in &rows {
        assert_eq!(row[7].as_u64(), Some(0), "the {} pool went past its limit (overruns): {row:?}", row[0]);
    }
    rows.into_iter().map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap(), r[2].as_u64().unwrap(), r[3].as_u64().unwrap())).collect()
}

/// Every file under `dir` (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries.flatten().flat_map(|e| if e.path().is_dir() { files_under(&e.path()) } else { vec![e.path()] }).collect()
}

/// A lakehouse made read-only for the runs of [`ReadOnly::gobi`] until dropped: every folder
/// and file loses its write bits, and when the tests run as root (as in CI, where permissions
/// do not bite) gobi runs as `nobody` through `setpriv`, from a copy of the binary that user
/// can read.
pub struct ReadOnly<'a> {
    lakehouse: &'a Path,
    binary: tempfile::TempDir,
}

impl<'a> ReadOnly<'a> {
    pub fn new(lakehouse: &'a Path) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let binary = tempfile::tempdir().unwrap();
        std::fs::copy(GOBI, binary.path().join("gobi")).unwrap();
        for dir in [binary.path(), lakehouse] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        set_modes(lakehouse, 0o555, 0o444);
        Self { lakehouse, binary }
    }

    /// Runs gobi in the lakehouse as a user who may read it and not write it.
    pub fn gobi(&self, args: &[&str]) -> Run {
        let binary = self.binary.path().join("gobi");
        let mut command = if is_root() {
            let mut command = Command::new("setpriv");
            command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command.args(args).current_dir(self.lakehouse).env_remove("GOBI_LAKEHOUSE").env("RUST_BACKTRACE", "1").env("HOME", self.binary.path());
        Run::from(command.output().expect("gobi runs"))
    }
}

impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        set_modes(self.lakehouse, 0o755, 0o644);
    }
}

fn set_modes(dir: &Path, dirs: u32, files: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            set_modes(&path, dirs, files);
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(files)).unwrap();
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dirs)).unwrap();
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|line| line.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)) == Some("0")
}

/// `gobi ARGS` in the lakehouse, its rows readable as they come.
pub fn gobi_piped(args: &[&str], lh: &Lakehouse) -> std::process::Child {
    Command::new(GOBI).args(args).env_remove("GOBI_LAKEHOUSE").current_dir(lh.path()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap()
}

/// Peak anonymous memory of a process so far, sampled from /proc while it runs.
fn anonymous_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Waits for `child`, sampling its anonymous memory from /proc while it runs: its exit status
/// and the peak seen.
pub fn wait_sampling_anonymous(child: &mut std::process::Child) -> (std::process::ExitStatus, u64) {
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        peak = peak.max(anonymous_bytes(child.id()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The rows of a one-column result as strings.
pub fn strings(output: &gobi_engine::Collected) -> Vec<String> {
    let gobi_engine::Collected::Rows { batches, .. } = output else { panic!("no rows: {output:?}") };
    batches.iter().flat_map(|b| (0..b.num_rows()).map(move |row| datafusion::arrow::util::display::array_value_to_string(b.column(0), row).unwrap())).collect()
}
