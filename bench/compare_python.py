#!/usr/bin/env python3
"""tandem beside Python's concurrent.futures and multiprocessing, in one run.

    python3 bench/compare_python.py [--quick] [--rounds N] [--json FILE]

Builds and runs crates/tandem/examples/pool_workloads.rs (release), then
bench/python_workloads.py (standard library only, fork start method), and
prints Markdown tables of the three workloads with ratios tandem vs each
Python peer. --json FILE keeps the raw JSON lines of both sides.

Ratios are always "how many times better tandem is": Python's time / tandem's
time for latencies, tandem's tasks/s / Python's for throughput. Above 1 means
tandem wins. Both sides run on the same machine one after the other; on a
busy machine use --rounds 3 (medians over rounds, the sides alternating) or
run it more than once and compare runs, not single numbers.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_lines(cmd):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, check=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def us(v):
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.1f} us"


def rate(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f} M/s"
    return f"{v / 1e3:.1f} k/s"


def ratio(x):
    return f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def name(r):
    return f"{r['impl']} {r['variant']}"


def report(records):
    def pick(workload, impl=None):
        return [r for r in records if r["workload"] == workload and (impl is None or r["impl"] == impl)]

    out = []
    info = pick("info")
    py = info[0] if info else {}
    out.append(f"Machine: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs; "
               f"Python {py.get('python', '?')} (start method {py.get('start_method', '?')}); "
               "all pools 2 workers except the replacement workload (1 worker).")

    # 1. Round trip.
    rt = pick("round_trip")
    out.append("\n### 1. Round trip of one trivial task (submit, then wait for the result), lower is better\n")
    out.append(table(["implementation", "median", "p10", "p90", "n"],
                     [[name(r), us(r["median_us"]), us(r["p10_us"]), us(r["p90_us"]), r["n"]] for r in rt]))
    tandem, python = pick("round_trip", "tandem"), pick("round_trip", "python")
    out.append("\nPython median / tandem median (above 1: tandem faster):\n")
    out.append(table(["tandem \\ Python"] + [r["variant"] for r in python],
                     [[r["variant"]] + [ratio(p["median_us"] / r["median_us"]) for p in python]
                      for r in tandem]))
    floor = pick("round_trip", "floor")
    if floor:
        f = floor[0]["median_us"]
        out.append("\nMultiples of the OS floor (" + floor[0]["variant"] + ", "
                   f"{us(f)} in this run): "
                   + ", ".join(f"{name(r)} {ratio(r['median_us'] / f)}" for r in tandem + python))

    # 2. Map.
    mp_ = pick("map")
    out.append("\n### 2. Map over trivial tasks, 2 workers, higher is better\n")
    out.append(table(["implementation", "tasks/s (median)", "best", "items x runs", "how"],
                     [[name(r), rate(r["tasks_per_s"]), rate(r["best_tasks_per_s"]),
                       f"{r['items']:,} x {r['runs']}",
                       r.get("note", "Pool::map, self-sizing batches")] for r in mp_]))
    tandem, python = pick("map", "tandem"), pick("map", "python")
    out.append("\ntandem tasks/s / Python tasks/s (above 1: tandem faster):\n")
    out.append(table(["tandem \\ Python"] + [r["variant"] for r in python],
                     [[r["variant"]] + [ratio(r["tasks_per_s"] / p["tasks_per_s"]) for p in python]
                      for r in tandem]))

    # 3. Replacing a dead worker.
    rp = pick("replace")
    out.append("\n### 3. Replacing a dead worker (a task aborts; 1 worker), lower is better\n")
    out.append("Times from the moment of death (stamped by the dying task) to the next task "
               "starting in a new worker, and to its result in the caller. Medians.\n")
    rows = []
    for r in sorted(rp, key=lambda r: r["impl"] != "floor"):
        if r["impl"] == "floor":
            rows.append([name(r), us(r["median_us"]), "-",
                         "reference: one bare process start, the floor under any replacement"])
        elif r["n"] == 0:
            rows.append([name(r), "-", "-", r.get("note", "")])
        else:
            note = r.get("note", "worker replaced; the aborted task fails with WorkerDied")
            if "to_broken_median_us" in r:
                note += f" (BrokenProcessPool seen after {us(r['to_broken_median_us'])})"
            rows.append([name(r), us(r["to_start_median_us"]), us(r["median_us"]), note])
    out.append(table(["implementation", "death -> next task starts", "death -> next result", "what happens"],
                     rows))
    tandem = [r for r in pick("replace", "tandem") if r["n"] > 0]
    python = pick("replace", "python")
    out.append("\nPython / tandem, death -> next result (above 1: tandem faster):\n")
    out.append(table(["tandem \\ Python"] + [r["variant"] for r in python],
                     [[r["variant"]] + [ratio(p["median_us"] / r["median_us"]) for p in python]
                      for r in tandem]))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not for numbers)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw JSON lines of both sides here")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="run both sides N times, alternating, and report medians over the rounds")
    args = ap.parse_args()
    extra = ["--quick"] if args.quick else []
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "tandem", "--example", "pool_workloads"],
                   cwd=ROOT, check=True)
    rounds = []
    for i in range(args.rounds):
        records = run_lines(["cargo", "run", "--release", "-q", "-p", "tandem", "--example",
                             "pool_workloads", "--"] + extra)
        records += run_lines([sys.executable, os.path.join("bench", "python_workloads.py")] + extra)
        for r in records:
            r["round"] = i
        rounds.append(records)
    if args.json:
        with open(args.json, "w") as f:
            for r in (r for records in rounds for r in records):
                f.write(json.dumps(r) + "\n")
    if args.rounds > 1:
        print(f"Each number is the median over {args.rounds} rounds (tandem, then Python, per round).\n")
    print(report(merge(rounds)))


def merge(rounds):
    """One record per measurement: each number the median over the rounds."""
    merged = {}
    for records in rounds:
        for r in records:
            merged.setdefault((r["impl"], r["variant"], r["workload"]), []).append(r)
    out = []
    for same in merged.values():
        r = dict(same[0])
        for k, v in r.items():
            if isinstance(v, float) or (isinstance(v, int) and k.endswith("_s")):
                r[k] = statistics.median(x[k] for x in same)
        out.append(r)
    return out


if __name__ == "__main__":
    main()
