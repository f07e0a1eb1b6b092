//! Two processes writing at once, and a process killed in the middle of a write.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::rows;
use crate::support::{Lakehouse, GOBI};

#[test]
fn concurrent_writers_lose_no_write() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (writer INT, n INT)").ok();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let script = (0..3).map(|n| format!("INSERT INTO t VALUES ({writer}, {n}), ({writer}, {})", n + 100)).collect::<Vec<_>>().join(";\n");
            Command::new(GOBI).args(["query", &script]).current_dir(lh.path()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for writer in writers {
        let output = writer.wait_with_output().unwrap();
        assert!(output.status.success(), "a writer failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(lh.values("SELECT count(*), count(DISTINCT writer), sum(n) FROM t"), rows![[24, 4, 4 * (3 + 300 + 3)]]);
    assert_eq!(lh.commits("t"), 1 + 12);
}

#[test]
fn a_kill_during_insert_leaves_the_table_at_its_previous_version() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a BIGINT, b STRING); INSERT INTO t VALUES (1, 'kept'), (2, 'kept')").ok();
    let mut writer = Command::new(GOBI)
        .args(["query", "INSERT INTO t SELECT value, repeat('x', 50) FROM generate_series(1, 400000000)"])
        .current_dir(lh.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let data_files =
        || std::fs::read_dir(lh.path().join("tables/t")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".parquet")).count();
    let files_before = data_files();
    let started = Instant::now();
    while data_files() == files_before && started.elapsed() < Duration::from_secs(60) {
        assert!(writer.try_wait().unwrap().is_none(), "the insert finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(data_files() > files_before, "the insert wrote no data file within 60 s");
    unsafe { libc::kill(writer.id() as i32, libc::SIGKILL) };
    let status = writer.wait().unwrap();
    assert!(!status.success());
    assert_eq!(lh.commits("t"), 2);
    assert_eq!(lh.values("SELECT a, b FROM t ORDER BY a"), rows![[1, "kept"], [2, "kept"]]);
    lh.run("INSERT INTO t VALUES (3, 'after')").ok();
    assert_eq!(lh.values("SELECT count(*) FROM t"), rows![[3]]);
}
