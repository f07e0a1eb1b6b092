#!/usr/bin/env python3
"""Run gobi-slt on the public conformance corpus and write CONFORMANCE.md.

Usage: scripts/conformance.py [--gobi-slt PATH] [--shared DIR]

The SQLite files run from shared/conformance/public (as sqlite-run/*.slt), DataFusion's from
its sqllogictest folder (as test_files/*.slt), so their relative paths resolve. The committed
counts are the floor that the integration test `conformance` holds gobi to.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(gobi_slt: Path, cwd: Path, pattern: str) -> dict:
    files = sorted(str(p.relative_to(cwd)) for p in cwd.glob(pattern))
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([str(gobi_slt), *files, "--json", out.name], cwd=cwd, check=False,
                       stdout=subprocess.DEVNULL, env={**os.environ, "RUST_BACKTRACE": "0"})
        return json.load(open(out.name))


def rate(passed: int, failed: int) -> str:
    return f"{100 * passed / (passed + failed):.2f}%" if passed + failed else "-"


def table(title: str, ours: dict, baseline: dict) -> list:
    theirs = {f["file"]: f for f in baseline["files"]}
    lines = [f"### {title}", "",
             "| file | gobi passed | failed | skipped | PostgreSQL passed | failed | skipped |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    total = {"gobi": [0, 0, 0], "pg": [0, 0, 0]}
    for file, c in sorted(ours.items()):
        p = theirs.get(file, {"passed": 0, "failed": 0, "skipped": 0})
        lines.append(f"| `{file}` | {c['passed']} | {c['failed']} | {c['skipped']} "
                     f"| {p['passed']} | {p['failed']} | {p['skipped']} |")
        for i, k in enumerate(("passed", "failed", "skipped")):
            total["gobi"][i] += c[k]
            total["pg"][i] += p[k]
    g, p = total["gobi"], total["pg"]
    lines += [f"| **total** | **{g[0]}** | **{g[1]}** | **{g[2]}** | **{p[0]}** | **{p[1]}** | **{p[2]}** |",
              "", f"Pass rate (passed ÷ (passed + failed)): gobi **{rate(g[0], g[1])}**, "
                  f"PostgreSQL 15 **{rate(p[0], p[1])}**.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    parser.add_argument("--gobi-slt", type=Path, default=target / "debug" / "gobi-slt")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    public = args.shared / "conformance" / "public"
    baseline = json.load(open(public / "baseline-postgres15.json"))
    sqlite = run(args.gobi_slt, public, "sqlite-run/*.slt")
    datafusion = run(args.gobi_slt, public / "datafusion" / "datafusion" / "sqllogictest", "test_files/*.slt")
    lines = [
        "# Conformance",
        "",
        "gobi's counts on the public sqllogictest corpus in `../shared/conformance/public`, run by",
        "`gobi-slt` (each file in a fresh lakehouse, every record run), beside PostgreSQL 15's",
        "baseline from the same corpus. Regenerate with `scripts/conformance.py`. The integration test",
        "`conformance` fails if any file passes fewer records than listed here.",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"no labels (engine name `gobi`; PostgreSQL's no-label run).",
        "",
    ]
    lines += table("SQLite corpus (`sqlite-run/*.slt`, run from `conformance/public`)", sqlite, baseline["sqlite_no_label"])
    lines += table("DataFusion 55.2 corpus (`test_files/*.slt`, run from `datafusion/datafusion/sqllogictest`)",
                   datafusion, baseline["datafusion_cwd_datafusion_sqllogictest"])
    notes = ROOT / "scripts" / "conformance-notes.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    (ROOT / "CONFORMANCE.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
