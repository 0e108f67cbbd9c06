#!/usr/bin/env python3
"""Optional Ray column of the Taskwire/Dask comparison.

Same workloads and JSON schema as dask_bench.py, with "system": "ray" and
"worker_saturation": "n/a" (Ray has no such setting; the table shows Ray next
to Dask's default configuration).  Ray runs as a single-node instance,
ray.init(num_cpus=2): two worker processes, with the driver (this process),
the GCS and the raylet beside them on the same cores.

`transfer` is not run: on one node Ray moves objects through its
shared-memory object store, so it would not measure a worker-to-worker
transfer.  `startup` is ray.init() plus the first two tasks done (so both
worker processes are up), then ray.shutdown().
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
import ray  # noqa: E402

WORKLOADS = ["noop", "tree", "roundtrip", "startup", "commands"]


@ray.remote
def noop(i):
    return None


@ray.remote
def inc(x):
    return x + 1


@ray.remote
def add(x, y):
    return x + y


@ray.remote
def run_true(i):
    subprocess.run(["/bin/true"], check=True)
    return None


def percentile(sorted_vals, p):
    import math
    if not sorted_vals:
        return float("nan")
    rank = min(max(math.ceil(p / 100.0 * len(sorted_vals)), 1), len(sorted_vals))
    return sorted_vals[rank - 1]


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def init():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)


def run_noop(n):
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    rate = n / (time.perf_counter() - t0)
    return [("tasks_per_s", "tasks/s", rate), ("us_per_task", "us", 1e6 / rate)]


def run_tree(leaves):
    t0 = time.perf_counter()
    level = [inc.remote(i) for i in range(leaves)]
    while len(level) > 1:
        nxt = [add.remote(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2 == 1:
            nxt.append(level[-1])
        level = nxt
    result = ray.get(level[0])
    dt = time.perf_counter() - t0
    expect = leaves * (leaves + 1) // 2
    if result != expect:
        raise RuntimeError(f"tree: root {result} != {expect}")
    return [("tasks_per_s", "tasks/s", (2 * leaves - 1) / dt)]


def run_roundtrip(n):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        r = ray.get(inc.remote(i))
        lat.append((time.perf_counter() - t0) * 1e6)
        assert r == i + 1
    lat.sort()
    return [("latency_median", "us", statistics.median(lat)),
            ("latency_p99", "us", percentile(lat, 99))]


def run_commands(n):
    t0 = time.perf_counter()
    ray.get([run_true.remote(i) for i in range(n)])
    return [("tasks_per_s", "tasks/s", n / (time.perf_counter() - t0))]


def run_startup():
    t0 = time.perf_counter()
    init()
    ray.get([noop.remote(0), noop.remote(1)])
    dt = (time.perf_counter() - t0) * 1e3
    ray.shutdown()
    return [("startup_ms", "ms", dt)]


def summarise(workload, per_run, **extra):
    rows = []
    for j, (metric, unit, _) in enumerate(per_run[0]):
        runs = [x[j][2] for x in per_run]
        r = {
            "system": "ray",
            "bench": "tasks",
            "workload": workload,
            "n": extra.get("n"),
            "metric": metric,
            "unit": unit,
            "median": statistics.median(runs),
            "min": min(runs),
            "max": max(runs),
            "runs": runs,
            "workers": 2,
            "threads": 1,
            "worker_saturation": "n/a",
            "zero_worker": False,
            "cluster": "local",
            "version": ray.__version__,
            "loadavg": loadavg(),
        }
        r.update({k: v for k, v in extra.items() if k != "n"})
        rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--n-noop", type=int, default=20_000)
    ap.add_argument("--leaves", type=int, default=16_384)
    ap.add_argument("--n-roundtrip", type=int, default=1_000)
    ap.add_argument("--n-commands", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    workloads = [w for w in args.workloads.split(",") if w in WORKLOADS]

    def emit(rows):
        for r in rows:
            print(json.dumps(r), flush=True)

    cluster_work = [w for w in workloads if w != "startup"]
    if cluster_work:
        init()
        try:
            for w in cluster_work:
                fn, extra = {
                    "noop": (lambda: run_noop(args.n_noop), {"n": args.n_noop}),
                    "tree": (lambda: run_tree(args.leaves),
                             {"n": 2 * args.leaves - 1, "leaves": args.leaves}),
                    "roundtrip": (lambda: run_roundtrip(args.n_roundtrip), {"n": args.n_roundtrip}),
                    "commands": (lambda: run_commands(args.n_commands), {"n": args.n_commands}),
                }[w]
                per_run = [fn() for _ in range(args.warmup + args.runs)][args.warmup:]
                emit(summarise(w, per_run, **extra))
        finally:
            ray.shutdown()
    if "startup" in workloads:
        for _ in range(args.warmup if not cluster_work else 0):
            run_startup()
        per_run = [run_startup() for _ in range(args.runs)]
        emit(summarise("startup", per_run, n=2))


if __name__ == "__main__":
    sys.exit(main())
