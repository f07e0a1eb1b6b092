//! The REPL driven through a pseudo-terminal, as a person at a keyboard drives it: tab
//! completion, multi-line input, `.vars`, the progress line of a long query and Ctrl-C
//! during it, the dot commands.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{files_under, Lakehouse, GOBI};

/// A `gobi repl` on the slave side of a pty; everything it prints is collected from the master.
struct Terminal {
    child: Child,
    master: std::fs::File,
    screen: Arc<Mutex<String>>,
    /// How much of the screen earlier expectations consumed.
    seen: usize,
}

impl Terminal {
    fn spawn(lh: &Lakehouse) -> Self {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize { ws_row: 40, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty writes two fresh descriptors into master and slave.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: both descriptors were just opened and are owned here.
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut command = Command::new(GOBI);
        command
            .args(["--lakehouse", lh.path().to_str().unwrap(), "repl"])
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
        // controlling terminal is the pty, so Ctrl-C reaches gobi as SIGINT.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("gobi repl starts");
        let screen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self { child, master, screen, seen: 0 }
    }

    fn send(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits until `text` appears (colors stripped) after what earlier calls consumed.
    #[track_caller]
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let plain = strip_ansi(&self.screen.lock().unwrap());
            if let Some(at) = plain[self.seen.min(plain.len())..].find(text) {
                self.seen += at + text.len();
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {text:?}; the terminal shows:\n{}", &plain[self.seen.min(plain.len())..]);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for gobi to leave, successfully, within 30 s.
    #[track_caller]
    fn expect_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            assert!(Instant::now() < deadline, "gobi repl did not quit; the terminal shows:\n{}", strip_ansi(&self.raw()));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The raw output (with colors) since the start.
    fn raw(&self) -> String {
        self.screen.lock().unwrap().clone()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes ANSI escape sequences (colors, cursor movement) so the text can be matched.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            if c != '\r' {
                out.push(c);
            }
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() || c == '~' {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[test]
fn repl_completes_reads_multiple_lines_lists_variables_and_cancels_with_ctrl_c() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE sales (id BIGINT, total DOUBLE); INSERT INTO sales VALUES (1, 12.5), (2, 30)").ok();
    let mut term = Terminal::spawn(&lh);
    term.expect("gobi> ");

    // Tab completes a column, a keyword and a table; the statement then runs.
    term.send("SELECT sum(tot\t) fr\t sal\t;\r");
    term.expect("SELECT sum(total) from sales;");
    term.expect("42.5");
    assert!(term.raw().contains("\x1b[1;34mSELECT\x1b[0m"), "keywords are highlighted");

    // A statement over several lines, ended by an empty line.
    term.send("FROM sales\r");
    term.expect("... ");
    // (Each line waits for its prompt: the line editor drops keys typed before it is ready.)
    term.send("|> AGGREGATE count(*) AS n\r");
    term.expect("... ");
    term.send("\r");
    term.expect("│ 2 │");

    // Variables: completion of `$name` and `.vars`.
    term.send("let threshold = 20;\r");
    term.expect("let threshold = 20 (Int64)");
    term.send("let big = FROM sales WHERE total > $thr\t;\r");
    term.expect("let big = 1 rows");
    term.send(".vars\r");
    term.expect("$threshold");
    term.expect("Int64");

    // Ctrl-C stops a long query, and the session goes on. The query groups more keys than a
    // 4 MiB pool holds, so it spills: its first spill file says it is running (and that the
    // terminal is back in the mode where Ctrl-C is a signal).
    term.send("SET memory.query_pool = '4MiB';\r");
    term.expect("memory.query_pool = 4MiB");
    term.send("SELECT count(*) FROM (SELECT value % 1000000000 AS k, count(*) FROM generate_series(1, 100000000000) GROUP BY 1) t;\r");
    // After a second, a progress line says what the scans have read.
    term.expect(" rows scanned (Ctrl-C cancels)");
    let spill = lh.path().join("_gobi/spill");
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_under(&spill).is_empty() {
        assert!(Instant::now() < deadline, "the long query never spilled");
        std::thread::sleep(Duration::from_millis(20));
    }
    term.send("\x03");
    term.expect("query cancelled");
    term.expect("gobi> ");
    term.send("SELECT $threshold * 2 AS doubled;\r");
    term.expect("40");

    term.send(".quit\r");
    term.expect_exit();
}

/// Ctrl-C stops a cross join whose operators never wait for input (so never yield to the
/// runtime): gobi's threads stop using CPU, and the REPL answers the next statement.
#[test]
fn ctrl_c_stops_a_cross_join_and_its_threads() {
    let lh = Lakehouse::new();
    let mut term = Terminal::spawn(&lh);
    term.expect("gobi> ");
    term.send("SELECT count(*) FROM range(0, 100000000) a, range(0, 100000000) b;\r");
    let busy = cpu_time(term.child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while cpu_time(term.child.id()) < busy + Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "the cross join never used the CPU");
        std::thread::sleep(Duration::from_millis(20));
    }
    term.send("\x03");
    term.expect("query cancelled");
    term.expect("gobi> ");
    // Idle: over a quarter of a second the process uses (almost) no CPU. Before the stop
    // reached every operator, both cores stayed busy until the process was killed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = cpu_time(term.child.id());
        std::thread::sleep(Duration::from_millis(250));
        let used = cpu_time(term.child.id()) - before;
        if used < Duration::from_millis(50) {
            break;
        }
        assert!(Instant::now() < deadline, "10 s after Ctrl-C gobi still uses {used:?} of CPU per 250 ms");
    }
    term.send("SELECT 20 * 2 AS doubled;\r");
    term.expect("40");
    term.send(".quit\r");
    term.expect_exit();
}

/// User plus system CPU time of process `pid`, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process runs");
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 14th and 15th fields of the line, the 12th and 13th after it.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// DuckDB's dot commands: `.mode`, `.maxrows`, `.timer`, `.read`, `.output`, `.import`; a
/// psql backslash command is named as such; `.quit` leaves even after unfinished input.
#[test]
fn repl_dot_commands_change_output_read_files_and_import() {
    let lh = Lakehouse::new();
    std::fs::write(lh.path().join("people.csv"), "id,name\n1,Ann\n2,Bo\n").unwrap();
    std::fs::write(lh.path().join("more.sql"), "SELECT 'from the file' AS said;").unwrap();
    let mut term = Terminal::spawn(&lh);
    term.expect("gobi> ");
    let in_lakehouse = |name: &str| lh.path().join(name).to_str().unwrap().to_string();
    // Each line waits for the next prompt on a line of its own (the editor redraws its line,
    // prompt included, at every key).
    let line = |term: &mut Terminal, text: &str, shows: &[&str]| {
        term.send(&format!("{text}\r"));
        for part in shows {
            term.expect(part);
        }
        term.expect("\ngobi> ");
    };
    line(&mut term, &format!(".import {} people", in_lakehouse("people.csv")), &["created table people with 2 rows"]);
    line(&mut term, ".mode csv", &[]);
    line(&mut term, "SELECT name FROM people ORDER BY id;", &["name\nAnn\nBo"]);
    line(&mut term, ".mode line", &[]);
    line(&mut term, "SELECT id, name FROM people WHERE id = 2;", &["  id = 2\nname = Bo"]);
    line(&mut term, ".mode table", &[]);
    line(&mut term, ".maxrows 4", &[]);
    line(&mut term, "SELECT value FROM generate_series(1, 10);", &["10 rows, 4 shown (--max-rows 0 for all)"]);
    // A write running over a second shows the progress line too.
    let counting = "CREATE TABLE counted AS SELECT count(*) AS n FROM generate_series(1, 600000000);";
    line(&mut term, counting, &[" rows scanned (Ctrl-C cancels)", "created table counted with 1 rows"]);
    line(&mut term, ".timer on", &[]);
    line(&mut term, &format!(".read {}", in_lakehouse("more.sql")), &["from the file", "Run Time: "]);
    line(&mut term, ".timer off", &[]);
    line(&mut term, &format!(".output {}", in_lakehouse("out.txt")), &[]);
    line(&mut term, ".mode csv", &[]);
    line(&mut term, "SELECT count(*) AS n FROM people;", &[]);
    line(&mut term, ".output", &[]);
    assert_eq!(std::fs::read_to_string(lh.path().join("out.txt")).unwrap(), "n\n2\n");
    line(&mut term, "\\e", &["\\e is a psql command; gobi's commands start with `.`"]);
    term.send("SELECT 1\r");
    term.expect("... ");
    term.send(".quit\r");
    term.expect_exit();
}
