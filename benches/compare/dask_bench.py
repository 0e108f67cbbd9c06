#!/usr/bin/env python3
"""Dask half of the Taskwire/Dask comparison.

Runs the workloads of `taskwire bench tasks` on a dask.distributed
LocalCluster(n_workers=2, threads_per_worker=1, processes=True), with the
client (and, as LocalCluster does, the scheduler) in this process, and prints
one JSON object per result in the schema of `taskwire bench tasks --json`,
with "system": "dask" added.

Workloads (same definitions as Taskwire's):
  noop       N independent no-op tasks submitted at once, all awaited   tasks/s
  tree       L `inc` leaves, pairwise `add` to one root (2L-1 tasks)    tasks/s
  roundtrip  submit one trivial task and await it, N times              µs (median, p99)
  transfer   SIZE bytes made on worker A, `len` taken on worker B       GB/s (1e9 B/s)
  startup    create the LocalCluster and wait for both workers           ms
  commands   N tasks each running subprocess.run(["/bin/true"])         tasks/s

Every workload gets one untimed warm-up (smaller for the large ones) on the
same cluster, then --runs timed runs.  `startup` is timed on fresh clusters,
after the main cluster is closed.

Usage:
  dask_bench.py [--workloads noop,tree,...] [--n-noop N] [--leaves L]
                [--n-roundtrip N] [--size BYTES] [--n-commands N]
                [--runs R] [--worker-saturation default|inf] [--table]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import dask
from distributed import Client, LocalCluster, wait

WORKLOADS = ["noop", "tree", "roundtrip", "transfer", "startup", "commands"]


# ---- task functions (module level so that they pickle by reference) ----

def noop(i):
    return None


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def make_bytes(size, salt):
    return bytes(size)


def run_true(i):
    subprocess.run(["/bin/true"], check=True)
    return None


# ---- helpers ----

def percentile(sorted_vals, p):
    """Nearest-rank percentile, as Taskwire's report.rs computes it."""
    if not sorted_vals:
        return float("nan")
    rank = math.ceil(p / 100.0 * len(sorted_vals))
    rank = min(max(rank, 1), len(sorted_vals))
    return sorted_vals[rank - 1]


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def wait_idle(client, timeout=120.0):
    """Wait until the scheduler has forgotten every task of the previous run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        if n == 0:
            return
        time.sleep(0.05)


def start_cluster():
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    )
    client = Client(cluster)
    client.wait_for_workers(2)
    return cluster, client


def tree_graph(leaves, tag):
    """Dict graph: `inc` leaves, pairwise `add` up to one root. Returns (dsk, root)."""
    dsk = {}
    level = []
    for i in range(leaves):
        k = (f"leaf-{tag}", i)
        dsk[k] = (inc, i)
        level.append(k)
    depth = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            k = (f"add-{tag}-{depth}", j // 2)
            dsk[k] = (add, level[j], level[j + 1])
            nxt.append(k)
        if len(level) % 2 == 1:
            nxt.append(level[-1])
        level = nxt
        depth += 1
    return dsk, level[0]


# ---- one timed run of each workload; each returns the figure ----

def run_noop(client, n):
    t0 = time.perf_counter()
    futs = client.map(noop, range(n), pure=False)
    wait(futs)
    dt = time.perf_counter() - t0
    errs = [f for f in futs if f.status != "finished"]
    if errs:
        raise RuntimeError(f"noop: {len(errs)} tasks did not finish")
    del futs
    return n / dt


_tree_seq = [0]


def run_tree(client, leaves):
    _tree_seq[0] += 1
    dsk, root = tree_graph(leaves, _tree_seq[0])
    t0 = time.perf_counter()
    result = client.get(dsk, root, sync=True)
    dt = time.perf_counter() - t0
    expect = leaves * (leaves + 1) // 2  # sum of inc(i) for i in 0..L
    if result != expect:
        raise RuntimeError(f"tree: root {result} != {expect}")
    return (2 * leaves - 1) / dt


def run_roundtrip(client, n):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        r = client.submit(inc, i, pure=False).result()
        lat.append((time.perf_counter() - t0) * 1e6)
        assert r == i + 1
    lat.sort()
    return statistics.median(lat), percentile(lat, 99)


_xfer_seq = [0]


def run_transfer(client, size, wa, wb):
    _xfer_seq[0] += 1
    src = client.submit(make_bytes, size, _xfer_seq[0], workers=[wa], pure=False)
    wait(src)  # the bytes exist on worker A before the clock starts
    t0 = time.perf_counter()
    n = client.submit(len, src, workers=[wb], pure=False).result()
    dt = time.perf_counter() - t0
    if n != size:
        raise RuntimeError(f"transfer: len {n} != {size}")
    del src
    return size / dt / 1e9


def run_commands(client, n):
    t0 = time.perf_counter()
    futs = client.map(run_true, range(n), pure=False)
    wait(futs)
    dt = time.perf_counter() - t0
    errs = [f for f in futs if f.status != "finished"]
    if errs:
        raise RuntimeError(f"commands: {len(errs)} tasks did not finish")
    del futs
    return n / dt


def run_startup():
    t0 = time.perf_counter()
    cluster, client = start_cluster()
    dt = (time.perf_counter() - t0) * 1e3
    client.close()
    cluster.close()
    return dt


# ---- driver ----

def summary(runs):
    return statistics.median(runs), min(runs), max(runs)


def row(args, workload, metric, unit, runs, **extra):
    med, lo, hi = summary(runs)
    r = {
        "system": "dask",
        "bench": "tasks",
        "workload": workload,
        "metric": metric,
        "median": med,
        "min": lo,
        "max": hi,
        "runs": runs,
        "unit": unit,
        "workers": 2,
        "threads": 1,
        "worker_saturation": args.ws_label,
        "zero_worker": False,
        "version": dask.__version__,
        "loadavg": loadavg(),
    }
    r.update(extra)
    return r


def emit(r, table):
    if table:
        p99 = f"  p99 {r['p99']:.1f}" if "p99" in r else ""
        print(
            f"{r['workload']:<10} {r['metric']:<12} ws={r['worker_saturation']:<4} "
            f"median {r['median']:12.2f}  min {r['min']:12.2f}  max {r['max']:12.2f} "
            f"{r['unit']}{p99}  (runs {len(r['runs'])})",
            flush=True,
        )
    else:
        print(json.dumps(r), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--n-noop", type=int, default=20_000,
                    help="noop tasks (default 20000: Dask does ~1000 tasks/s here, 100k takes minutes)")
    ap.add_argument("--leaves", type=int, default=16_384)
    ap.add_argument("--n-roundtrip", type=int, default=1_000)
    ap.add_argument("--size", type=int, default=64 << 20, help="transfer bytes (default 64 MiB)")
    ap.add_argument("--n-commands", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per workload after one warm-up")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--worker-saturation", default="default",
                    help="'default' (Dask's 1.1) or a number or 'inf'")
    ap.add_argument("--table", action="store_true", help="human-readable lines instead of JSON")
    args = ap.parse_args()

    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")

    if args.worker_saturation != "default":
        dask.config.set({"distributed.scheduler.worker-saturation": float(args.worker_saturation)})
    ws = float(dask.config.get("distributed.scheduler.worker-saturation"))
    args.ws_label = "inf" if math.isinf(ws) else f"{ws:g}"
    # A quiet console: worker stderr warnings (e.g. event loop unresponsive) go to our stderr.
    warm = not args.no_warmup
    R = args.runs

    cluster_work = [w for w in workloads if w != "startup"]
    if cluster_work:
        cluster, client = start_cluster()
        try:
            workers = sorted(client.scheduler_info()["workers"])
            wa, wb = workers[0], workers[1]
            for w in cluster_work:
                if w == "noop":
                    if warm:
                        run_noop(client, min(args.n_noop, 2000))
                        wait_idle(client)
                    runs = []
                    for _ in range(R):
                        runs.append(run_noop(client, args.n_noop))
                        wait_idle(client)
                    emit(row(args, "noop", "tasks_per_s", "tasks/s", runs, n=args.n_noop), args.table)
                elif w == "tree":
                    if warm:
                        run_tree(client, min(args.leaves, 1024))
                        wait_idle(client)
                    runs = []
                    for _ in range(R):
                        runs.append(run_tree(client, args.leaves))
                        wait_idle(client)
                    emit(row(args, "tree", "tasks_per_s", "tasks/s", runs,
                             n=2 * args.leaves - 1, leaves=args.leaves), args.table)
                elif w == "roundtrip":
                    if warm:
                        run_roundtrip(client, min(args.n_roundtrip, 100))
                        wait_idle(client)
                    meds, p99s = [], []
                    for _ in range(R):
                        m, p = run_roundtrip(client, args.n_roundtrip)
                        meds.append(m)
                        p99s.append(p)
                        wait_idle(client)
                    emit(row(args, "roundtrip", "latency_us", "us", meds, n=args.n_roundtrip,
                             p99=statistics.median(p99s), runs_p99=p99s), args.table)
                elif w == "transfer":
                    if warm:
                        run_transfer(client, args.size, wa, wb)
                        wait_idle(client)
                    runs = []
                    for _ in range(R):
                        runs.append(run_transfer(client, args.size, wa, wb))
                        wait_idle(client)
                    emit(row(args, "transfer", "gb_per_s", "GB/s", runs, n=1, size=args.size),
                         args.table)
                elif w == "commands":
                    if warm:
                        run_commands(client, min(args.n_commands, 100))
                        wait_idle(client)
                    runs = []
                    for _ in range(R):
                        runs.append(run_commands(client, args.n_commands))
                        wait_idle(client)
                    emit(row(args, "commands", "tasks_per_s", "tasks/s", runs, n=args.n_commands),
                         args.table)
        finally:
            client.close()
            cluster.close()

    if "startup" in workloads:
        if warm and not cluster_work:
            run_startup()  # first cluster in a process pays lazy imports
        runs = [run_startup() for _ in range(R)]
        emit(row(args, "startup", "ms", "ms", runs, n=2), args.table)


if __name__ == "__main__":
    sys.exit(main())
