#!/usr/bin/env python3
"""gobi's answers beside DuckDB's (no memory limit) for TPC-H queries, value by value.

Usage: bench/answers.py GOBI DATA_DIR LIMIT q7 q8 ...
Each query runs as `GOBI query --file Q --data DATA_DIR --memory-limit LIMIT --format csv`;
DuckDB reads the same Parquet files. Numbers are compared to 1e-6 relative (floating-point sums
in another order), everything else exactly. Exit status 1 if any query differs.
"""
import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import duckdb

QUERIES = Path(__file__).resolve().parent.parent.parent / "shared/bench/tpch/queries"
TABLES = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]


def same(a, b) -> bool:
    if a is None or b is None or a == "" or b == "":
        return (a in (None, "")) and (b in (None, ""))
    try:
        x, y = float(a), float(b)
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)
    except (TypeError, ValueError):
        return str(a) == str(b)


def main() -> int:
    gobi, data, limit, queries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    con = duckdb.connect()
    for table in TABLES:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{data}/{table}.parquet')")
    failed = 0
    for name in queries:
        path = QUERIES / f"{name}.sql"
        statements = [s for s in path.read_text().split(";") if s.strip()]
        expected = None
        for statement in statements:
            result = con.execute(statement)
            if not statement.strip().lower().startswith(("create", "drop")):
                expected = result.fetchall()
        run = subprocess.run([gobi, "query", "--file", str(path), "--data", data, "--memory-limit", limit, "--format", "csv"],
                             capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{name}: gobi failed: {run.stderr.strip().splitlines()[0]}")
            failed += 1
            continue
        rows = list(csv.reader(io.StringIO(run.stdout)))[1:]
        ok = len(rows) == len(expected) and all(len(r) == len(e) and all(same(a, b) for a, b in zip(r, e)) for r, e in zip(rows, expected))
        print(f"{name}: {len(rows)} rows, {'same as DuckDB' if ok else 'DIFFERENT from DuckDB'}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
