#!/usr/bin/env python3
"""Geomean query times and the ratios the issues set goals for, from a peers.py JSON file.

Usage: bench/ratios.py bench/results/tpch-sf1.json
Only queries every run finished are counted, so each geomean is over the same queries.
"""
import json
import math
import sys


def main() -> None:
    doc = json.load(open(sys.argv[1]))
    runs = {run["engine"]: {r["query"]: r for r in run["results"]} for run in doc["runs"]}
    queries = sorted(set.intersection(*(set(q for q, r in results.items() if r["status"] == "ok")
                                        for results in runs.values())), key=lambda q: int(q[1:]))
    geomean = {engine: math.exp(sum(math.log(results[q]["wall_s"]) for q in queries) / len(queries))
               for engine, results in runs.items()}
    print(f"Geomean of warm query time over the {len(queries)} queries every engine finished:\n")
    print("| engine | geomean s |\n|---|---:|")
    for engine, seconds in geomean.items():
        print(f"| {engine} | {seconds:.3f} |")
    pairs = [("gobi", "datafusion", "≤ 1.05"), ("gobi-delta", "gobi", "≤ 1.10"), ("gobi", "duckdb", "")]
    print("\n| ratio | value | goal |\n|---|---:|---|")
    for a, b, goal in pairs:
        if a in geomean and b in geomean:
            print(f"| {a} ÷ {b} | {geomean[a] / geomean[b]:.3f} | {goal} |")
    print("\nPer query, gobi ÷ datafusion and gobi-delta ÷ gobi:\n")
    print("| query | gobi ÷ datafusion | gobi-delta ÷ gobi |\n|---|---:|---:|")
    for q in queries:
        g, d, gd = (runs[e][q]["wall_s"] for e in ("gobi", "datafusion", "gobi-delta"))
        print(f"| {q} | {g / d:.2f} | {gd / g:.2f} |")


if __name__ == "__main__":
    main()
