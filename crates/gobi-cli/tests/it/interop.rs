//! Delta tables both ways: gobi's read by Python deltalake and Polars, theirs read by gobi.

use std::process::Command;

use serde_json::{json, Value};

use crate::rows;
use crate::support::{require, Lakehouse};

fn python_has(modules: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success())
}

/// Runs a Python script that prints one JSON value. It leaves through `os._exit`: with both
/// deltalake and polars loaded, their Rust runtimes can abort at interpreter shutdown
/// ("terminate called without an active exception") after all the work is done.
fn python(script: &str) -> Value {
    let script = format!("{script}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n");
    let output = Command::new("python3").args(["-c", &script]).output().expect("python3 runs");
    assert!(output.status.success(), "python failed:\n{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn tables_written_by_gobi_read_identically_in_deltalake_and_polars() {
    if !require(python_has("deltalake, polars, pyarrow"), "Python deltalake, polars and pyarrow") {
        return;
    }
    let lh = Lakehouse::new();
    lh.run(
        "CREATE TABLE t (id BIGINT NOT NULL, name STRING, price DECIMAL(10,2), ratio DOUBLE, ok BOOLEAN, day DATE, small INT);
         INSERT INTO t VALUES (1, 'a', 1.50, 0.25, true, DATE '2026-01-02', 7), (2, NULL, NULL, NULL, NULL, NULL, NULL);
         UPDATE t SET name = 'b' WHERE id = 2;
         DELETE FROM t WHERE id = 99",
    )
    .ok();
    let path = lh.path().join("tables/t");
    let from_deltalake = python(&format!(
        r#"
import json, deltalake
t = deltalake.DeltaTable({path:?}).to_pyarrow_table().sort_by("id")
print(json.dumps({{"types": [str(f.type) for f in t.schema], "rows": [[None if v is None else str(v) for v in r.values()] for r in t.to_pylist()]}}))
"#
    ));
    assert_eq!(from_deltalake["types"], json!(["int64", "string", "decimal128(10, 2)", "double", "bool", "date32[day]", "int32"]));
    assert_eq!(from_deltalake["rows"], json!([["1", "a", "1.50", "0.25", "True", "2026-01-02", "7"], ["2", "b", null, null, null, null, null]]));
    let from_polars = python(&format!(
        r#"
import json, polars as pl
df = pl.read_delta({path:?}).sort("id")
print(json.dumps({{"types": [str(t) for t in df.dtypes], "rows": [[None if v is None else str(v) for v in r] for r in df.rows()]}}))
"#
    ));
    assert_eq!(from_polars["types"], json!(["Int64", "String", "Decimal(precision=10, scale=2)", "Float64", "Boolean", "Date", "Int32"]));
    assert_eq!(from_polars["rows"], json!([["1", "a", "1.50", "0.25", "True", "2026-01-02", "7"], ["2", "b", null, null, null, null, null]]));
}

/// What Delta cannot hold as declared is stored losslessly; other readers see the stored type.
#[test]
fn types_gobi_stores_as_others_are_read_as_stored_in_deltalake_and_polars() {
    if !require(python_has("deltalake, polars, pyarrow"), "Python deltalake, polars and pyarrow") {
        return;
    }
    let lh = Lakehouse::new();
    lh.run(
        "CREATE TABLE u AS SELECT arrow_cast(18446744073709551615, 'UInt64') AS big, arrow_cast(200, 'UInt8') AS small, CAST('10:00:00' AS TIME) AS at_time",
    )
    .ok();
    let path = lh.path().join("tables/u");
    let from_deltalake = python(&format!(
        r#"
import json, deltalake
t = deltalake.DeltaTable({path:?}).to_pyarrow_table()
print(json.dumps({{"types": [str(f.type) for f in t.schema], "rows": [[str(v) for v in r.values()] for r in t.to_pylist()]}}))
"#
    ));
    assert_eq!(from_deltalake["types"], json!(["decimal128(20, 0)", "int16", "int64"]));
    assert_eq!(from_deltalake["rows"], json!([["18446744073709551615", "200", "36000000000000"]]));
    let from_polars = python(&format!(
        r#"
import json, polars as pl
df = pl.read_delta({path:?})
print(json.dumps({{"types": [str(t) for t in df.dtypes], "rows": [[str(v) for v in r] for r in df.rows()]}}))
"#
    ));
    assert_eq!(from_polars["types"], json!(["Decimal(precision=20, scale=0)", "Int16", "Int64"]));
    assert_eq!(from_polars["rows"], json!([["18446744073709551615", "200", "36000000000000"]]));
}

#[test]
fn tables_written_by_deltalake_and_polars_are_queried_by_gobi() {
    if !require(python_has("deltalake, polars, pyarrow"), "Python deltalake, polars and pyarrow") {
        return;
    }
    let lh = Lakehouse::new();
    let tables = lh.path().join("tables");
    python(&format!(
        r#"
import json, datetime, pyarrow as pa, polars as pl
from deltalake import write_deltalake
t = pa.table({{"id": pa.array([1, 2, 3], pa.int64()), "name": ["x", None, "z"], "day": [datetime.date(2026, 1, 1), None, datetime.date(2026, 2, 3)]}})
write_deltalake({py:?}, t)
write_deltalake({py:?}, pa.table({{"id": pa.array([4], pa.int64()), "name": ["w"], "day": pa.array([None], pa.date32())}}), mode="append")
pl.DataFrame({{"k": ["a", "b"], "v": [1.5, 2.5]}}).write_delta({pl:?})
print(json.dumps(True))
"#,
        py = tables.join("from_py").to_str().unwrap(),
        pl = lh.path().join("outside").to_str().unwrap(),
    ));
    assert_eq!(
        lh.values("SELECT id, name, day FROM from_py ORDER BY id"),
        rows![[1, "x", "2026-01-01"], [2, null, null], [3, "z", "2026-02-03"], [4, "w", null]]
    );
    assert_eq!(lh.values("SELECT count(*) FROM from_py AS OF VERSION 0"), rows![[3]]);
    assert_eq!(lh.values("SELECT k, v FROM 'outside' ORDER BY k"), rows![["a", 1.5], ["b", 2.5]]);
    lh.run("INSERT INTO from_py VALUES (5, 'gobi', DATE '2026-05-05')").ok();
    let back = python(&format!(
        r#"
import json, deltalake
print(json.dumps(deltalake.DeltaTable({:?}).to_pyarrow_table().num_rows))
"#,
        tables.join("from_py").to_str().unwrap()
    ));
    assert_eq!(back, json!(5));
}

/// After each maintenance statement, and past a checkpoint, Python deltalake and Polars read
/// the table as gobi does.
#[test]
fn tables_after_optimize_vacuum_restore_and_checkpoints_read_the_same_in_deltalake_and_polars() {
    if !require(python_has("deltalake, polars, pyarrow"), "Python deltalake, polars and pyarrow") {
        return;
    }
    let lh = Lakehouse::new();
    let inserts: Vec<String> = (1..=12).map(|i| format!("INSERT INTO t VALUES ({i}, 'n{i}')")).collect();
    lh.run(&format!("CREATE TABLE t (id BIGINT, name STRING); {}", inserts.join("; "))).ok();
    let path = lh.path().join("tables/t");
    let read_elsewhere = || {
        python(&format!(
            r#"
import json, deltalake, polars as pl
t = deltalake.DeltaTable({path:?}).to_pyarrow_table().sort_by("id")
df = pl.read_delta({path:?}).sort("id")
print(json.dumps({{"deltalake": [[r["id"], r["name"]] for r in t.to_pylist()], "polars": [list(r) for r in df.rows()]}}))
"#
        ))
    };
    let steps = [
        "UPDATE t SET name = upper(name) WHERE id % 3 = 0",
        "OPTIMIZE t",
        "RESTORE TABLE t TO VERSION 5",
        "SET maintenance.allow_short_retention = on; VACUUM t RETAIN 0 HOURS",
    ];
    for step in steps {
        lh.run(step).ok();
        let ours = Value::from(lh.values("SELECT id, name FROM t ORDER BY id"));
        let theirs = read_elsewhere();
        assert_eq!((&theirs["deltalake"], &theirs["polars"]), (&ours, &ours), "after {step}");
    }
    assert!(lh.table_log("t").join("00000000000000000009.checkpoint.parquet").exists(), "the reads above went through a checkpoint");
}

/// Log cleanup follows the table's `delta.logRetentionDuration`, set here by Python deltalake
/// as another Delta writer would: when a checkpoint is written, older commits past the
/// retention are removed, and time travel to them says so and names the earliest version left.
#[test]
fn log_cleanup_follows_the_tables_log_retention_and_time_travel_says_what_is_gone() {
    if !require(python_has("deltalake"), "Python deltalake") {
        return;
    }
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (id BIGINT)").ok();
    let path = lh.path().join("tables/t");
    python(&format!(
        r#"
import json, deltalake
deltalake.DeltaTable({path:?}).alter.set_table_properties({{"delta.logRetentionDuration": "interval 0 seconds"}})
print(json.dumps(True))"#,
        path = path.to_str().unwrap()
    ));
    // Versions 2 to 13; the checkpoint at version 9 removes the commits before it.
    let inserts: Vec<String> = (1..=12).map(|i| format!("INSERT INTO t VALUES ({i})")).collect();
    lh.run(&inserts.join("; ")).ok();
    let logged = |suffix: &str| crate::support::files_under(&path.join("_delta_log")).iter().filter(|f| f.to_string_lossy().ends_with(suffix)).count();
    assert_eq!((logged(".json"), logged(".checkpoint.parquet")), (5, 1), "commits 9 to 13 and the checkpoint of 9");
    assert_eq!(lh.values("SELECT count(*) FROM t"), rows![[12]]);
    assert_eq!(lh.values("SELECT count(*) FROM t AS OF VERSION 10"), rows![[9]], "time travel inside what is kept");
    let run = lh.run("SELECT count(*) FROM t AS OF VERSION 2").user_error();
    for part in ["version 2 is no longer in its log", "delta.logRetentionDuration (0 seconds)", "the earliest version that can be read is 9"] {
        assert!(run.stderr.contains(part), "{part} in {}", run.stderr);
    }
}
