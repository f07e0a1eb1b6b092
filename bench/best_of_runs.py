#!/usr/bin/env python3
"""Two engines' query times over several peers.py runs of the same queries: per query the best
time of each engine over all runs, their ratio, and the ratio in each run. On a noisy machine
one run cannot show a per-query bar of 10 %; the best over interleaved runs gives each engine
the same chances.

Usage: bench/best_of_runs.py BEFORE AFTER RUN.json [RUN.json ...]
       bench/best_of_runs.py gobi-8c4d0b7 gobi bench/results/versus-8c4d0b7-175MiB-run*.json
"""
import json
import math
import sys


def main() -> None:
    before, after, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    runs = []
    for name in files:
        doc = json.load(open(name))
        runs.append({(run["engine"], r["query"]): r for run in doc["runs"] for r in run["results"]})
    queries = sorted({q for run in runs for (_, q) in run}, key=lambda q: int(q[1:]))
    best = lambda engine, q: min(run[(engine, q)]["wall_s"] for run in runs if run[(engine, q)]["status"] == "ok")
    print(f"| query | {before} best s | {after} best s | ratio | ratio per run | {before} peak anon MiB | {after} peak anon MiB |")
    print("|---|---:|---:|---:|---|---:|---:|")
    logs = []
    for q in queries:
        b, a = best(before, q), best(after, q)
        logs.append(math.log(a / b))
        per_run = " ".join(f"{run[(after, q)]['wall_s'] / run[(before, q)]['wall_s']:.2f}" for run in runs)
        anon = lambda engine: max(run[(engine, q)]["peak_anon"] for run in runs) / 2**20
        flag = " **above 1.10**" if a / b > 1.10 else ""
        print(f"| {q} | {b:.3f} | {a:.3f} | {a / b:.2f}{flag} | {per_run} | {anon(before):.0f} | {anon(after):.0f} |")
    print(f"\nGeomean of the best times, {after} ÷ {before}: {math.exp(sum(logs) / len(logs)):.3f}")


if __name__ == "__main__":
    main()
