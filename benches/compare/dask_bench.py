#!/usr/bin/env python3
"""Dask half of the Taskwire/Dask comparison.

Runs the workloads of `taskwire bench tasks` on a dask.distributed
LocalCluster(n_workers=2, threads_per_worker=1, processes=True), with the
client (and, as LocalCluster does, the scheduler) in this process, and prints
one JSON object per result in the schema of `taskwire bench tasks --json`,
with "system": "dask" added.

Workloads (same definitions as Taskwire's):
  noop       N independent no-op tasks in one client.map, all awaited
             -> tasks_per_s, us_per_task
  tree       L `inc` leaves, pairwise `add` to one root (2L-1 tasks) in one
             dict graph (client.get); root checked -> tasks_per_s
  roundtrip  submit(inc, i).result(), N times -> latency_median, latency_p99 (µs)
  transfer   make_bytes(SIZE) on worker A and len() of it on worker B
             (remote_pair_ms), the same pair with both on A (local_pair_ms);
             transfer_ms = remote - local, transfer_gb_per_s = SIZE/transfer_ms,
             end_to_end_gb_per_s = SIZE/remote_pair_ms (GB = 1e9 B)
  startup    LocalCluster(...) until both workers registered -> startup_ms
  commands   N tasks each running subprocess.run(["/bin/true"]) -> tasks_per_s

Every workload runs --warmup discarded runs and then --runs measured runs on
one cluster; after every run the script waits until the scheduler holds no
task.  `startup` is timed on fresh clusters after the main one is closed (the
main cluster's start is its warm-up).

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


# Seconds one run may take before it counts as failed (set by --run-timeout).
RUN_TIMEOUT = [600.0]


def wait_idle(client, timeout=120.0):
    """Wait until the scheduler has forgotten every task of the previous run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        if n == 0:
            return
        time.sleep(0.05)


def workers_now(client):
    return set(client.scheduler_info()["workers"])


def worker_names(client):
    """The two workers' names (LocalCluster names them 0 and 1), sorted."""
    def names():
        return sorted((w["name"] for w in client.scheduler_info()["workers"].values()), key=str)

    if len(names()) < 2:
        client.wait_for_workers(2, timeout=60)
    n = names()
    return n[0], n[1]


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


# ---- one timed run of each workload; each returns [(metric, unit, value)] ----
# Timings start before the graph is built (building it is part of what a user
# pays) and stop when the client has seen the last awaited key finish, as in
# Taskwire's crates/taskwire/src/bench/tasks.rs.

def run_noop(client, n):
    t0 = time.perf_counter()
    futs = client.map(noop, range(n), pure=False)
    wait(futs, timeout=RUN_TIMEOUT[0])
    dt = time.perf_counter() - t0
    bad = sum(f.status != "finished" for f in futs)
    if bad:
        raise RuntimeError(f"noop: {bad} tasks did not finish")
    del futs
    rate = n / dt
    return [("tasks_per_s", "tasks/s", rate), ("us_per_task", "us", 1e6 / rate)]


_seq = [0]


def next_tag():
    _seq[0] += 1
    return f"{_seq[0]}-{os.getpid()}"


def run_tree(client, leaves):
    t0 = time.perf_counter()
    dsk, root = tree_graph(leaves, next_tag())
    fut = client.get(dsk, root, sync=False)
    result = fut.result(timeout=RUN_TIMEOUT[0])
    dt = time.perf_counter() - t0
    expect = leaves * (leaves + 1) // 2  # sum of inc(i) for i in 0..L
    if result != expect:
        raise RuntimeError(f"tree: root {result} != {expect}")
    return [("tasks_per_s", "tasks/s", (2 * leaves - 1) / dt)]


def run_roundtrip(client, n):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        r = client.submit(inc, i, pure=False).result(timeout=RUN_TIMEOUT[0])
        lat.append((time.perf_counter() - t0) * 1e6)
        if r != i + 1:
            raise RuntimeError(f"inc({i}) returned {r}")
    lat.sort()
    return [("latency_median", "us", statistics.median(lat)),
            ("latency_p99", "us", percentile(lat, 99))]


def transfer_pair(client, size, wa, wb):
    """make_bytes on worker wa, len of it on worker wb: seconds until len is done.

    wa and wb are worker *names*, so a worker that its nanny restarted still matches."""
    tag = next_tag()
    t0 = time.perf_counter()
    src = client.submit(make_bytes, size, tag, workers=[wa], pure=False)
    ln = client.submit(len, src, workers=[wb], pure=False)
    wait(ln, timeout=RUN_TIMEOUT[0])
    dt = time.perf_counter() - t0
    n = ln.result()
    if n != size:
        raise RuntimeError(f"transfer: len {n} != {size}")
    del src, ln
    wait_idle(client)
    return dt


def run_transfer(client, size, wa, wb):
    local = transfer_pair(client, size, wa, wa)
    remote = transfer_pair(client, size, wa, wb)
    moved = remote - local
    gbps = size / moved / 1e9 if moved > 0 else float("nan")
    return [("remote_pair_ms", "ms", remote * 1e3),
            ("local_pair_ms", "ms", local * 1e3),
            ("transfer_ms", "ms", moved * 1e3),
            ("transfer_gb_per_s", "GB/s", gbps),
            ("end_to_end_gb_per_s", "GB/s", size / remote / 1e9)]


def run_commands(client, n):
    t0 = time.perf_counter()
    futs = client.map(run_true, range(n), pure=False)
    wait(futs, timeout=RUN_TIMEOUT[0])
    dt = time.perf_counter() - t0
    bad = sum(f.status != "finished" for f in futs)
    if bad:
        raise RuntimeError(f"commands: {bad} tasks did not finish")
    del futs
    return [("tasks_per_s", "tasks/s", n / dt)]


def run_startup():
    t0 = time.perf_counter()
    cluster, client = start_cluster()
    dt = (time.perf_counter() - t0) * 1e3
    client.close()
    cluster.close()
    return [("startup_ms", "ms", dt)]


# ---- driver ----

def summarise(args, workload, per_run, **extra):
    """One row per metric, in the order the first run reported them."""
    rows = []
    for j, (metric, unit, _) in enumerate(per_run[0]):
        runs = [r[j][2] for r in per_run]
        finite = [v for v in runs if not math.isnan(v)]
        r = {
            "system": "dask",
            "bench": "tasks",
            "workload": workload,
            "n": extra.get("n"),
            "metric": metric,
            "unit": unit,
            "median": statistics.median(runs),
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
            "runs": runs,
            "workers": 2,
            "threads": 1,
            "worker_saturation": args.ws_label,
            "work_stealing": bool(dask.config.get("distributed.scheduler.work-stealing")),
            "zero_worker": False,
            "cluster": "local",
            "version": dask.__version__,
            "loadavg": loadavg(),
        }
        r.update({k: v for k, v in extra.items() if k != "n"})
        rows.append(r)
    return rows


def nan_to_null(v):
    """JSON has no NaN; Taskwire writes null for a NaN figure, and so do we."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [nan_to_null(x) for x in v]
    if isinstance(v, dict):
        return {k: nan_to_null(x) for k, x in v.items()}
    return v


def emit(rows, table):
    for r in rows:
        if table:
            print(
                f"{r['workload']:<10} {r['metric']:<20} ws={r['worker_saturation']:<4} "
                f"median {r['median']:12.2f}  min {r['min']:12.2f}  max {r['max']:12.2f} "
                f"{r['unit']}  (runs {len(r['runs'])})",
                flush=True,
            )
        else:
            print(json.dumps(nan_to_null(r)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--n-noop", type=int, default=20_000,
                    help="noop tasks (default 20000: Dask does ~1000 tasks/s here, 100k takes minutes)")
    ap.add_argument("--leaves", type=int, default=16_384)
    ap.add_argument("--n-roundtrip", type=int, default=1_000)
    ap.add_argument("--size", type=int, default=64 << 20, help="transfer bytes (default 64 MiB)")
    ap.add_argument("--n-commands", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per workload")
    ap.add_argument("--warmup", type=int, default=1, help="discarded runs before the timed ones")
    ap.add_argument("--worker-saturation", default="default",
                    help="'default' (Dask's 1.1) or a number or 'inf'")
    ap.add_argument("--run-timeout", type=float, default=600.0,
                    help="seconds one run may take before it is reported as an error")
    ap.add_argument("--table", action="store_true", help="human-readable lines instead of JSON")
    args = ap.parse_args()

    RUN_TIMEOUT[0] = args.run_timeout
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    if args.worker_saturation != "default":
        dask.config.set({"distributed.scheduler.worker-saturation": float(args.worker_saturation)})
    ws = float(dask.config.get("distributed.scheduler.worker-saturation"))
    args.ws_label = "inf" if math.isinf(ws) else f"{ws:g}"

    cluster_work = [w for w in workloads if w != "startup"]
    if cluster_work:
        cluster, client = start_cluster()
        try:
            for w in cluster_work:
                if w == "noop":
                    fn, extra = (lambda: run_noop(client, args.n_noop)), {"n": args.n_noop}
                elif w == "tree":
                    fn = lambda: run_tree(client, args.leaves)  # noqa: E731
                    extra = {"n": 2 * args.leaves - 1, "leaves": args.leaves}
                elif w == "roundtrip":
                    fn, extra = (lambda: run_roundtrip(client, args.n_roundtrip)), {"n": args.n_roundtrip}
                elif w == "transfer":
                    fn = lambda: run_transfer(client, args.size, *worker_names(client))  # noqa: E731
                    extra = {"n": 2, "size": args.size}
                elif w == "commands":
                    fn, extra = (lambda: run_commands(client, args.n_commands)), {"n": args.n_commands}
                per_run = []
                lost = 0
                try:
                    for i in range(args.warmup + args.runs):
                        before = workers_now(client)
                        m = fn()
                        wait_idle(client)
                        gone = before - workers_now(client)
                        if gone:
                            # Dask removed a worker mid-run (seen under heavy load as
                            # "send-all-comm-fail"): flag the figures, get two workers back.
                            lost += len(gone)
                            print(f"warning: {w}: worker(s) removed during the run: {sorted(gone)}",
                                  file=sys.stderr, flush=True)
                            client.wait_for_workers(2, timeout=60)
                        if i >= args.warmup:
                            per_run.append(m)
                except Exception as e:  # a failed or hung run: report it, go on with a fresh cluster
                    msg = f"{type(e).__name__}: {e}"[:500]
                    if isinstance(e, TimeoutError) and not str(e):
                        msg = f"TimeoutError: no result within --run-timeout {RUN_TIMEOUT[0]:g} s"
                    print(f"error: {w}: {msg}", file=sys.stderr, flush=True)
                    print(json.dumps({"system": "dask", "bench": "tasks", "workload": w, "metric": "error",
                                      "error": msg, "worker_saturation": args.ws_label,
                                      "workers_lost": lost, "loadavg": loadavg()}), flush=True)
                    try:
                        client.close(timeout=10)
                        cluster.close(timeout=10)
                    except Exception:
                        pass
                    cluster, client = start_cluster()
                    continue
                rows = summarise(args, w, per_run, **extra)
                if lost:
                    for r in rows:
                        r["workers_lost"] = lost
                emit(rows, args.table)
        finally:
            client.close()
            cluster.close()

    if "startup" in workloads:
        # With other workloads, the main cluster above was the warm-up.
        for _ in range(args.warmup if not cluster_work else 0):
            run_startup()
        per_run = [run_startup() for _ in range(args.runs)]
        emit(summarise(args, "startup", per_run, n=2), args.table)


if __name__ == "__main__":
    sys.exit(main())
