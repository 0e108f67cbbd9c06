"""Dask's side of the adaptive-scaling figure: LocalCluster.adapt(minimum, maximum) under a
burst of sleeping tasks, timed the same way as `examples/adaptive_burst.rs`.

    python benches/compare/adaptive_dask.py --tasks 24 --ms 1000 --min 1 --max 4

Prints one JSON line: seconds from submitting the burst until the cluster has `max` workers
(grow_s), until every task finished (burst_s), and from then until it is back to `min`
(shrink_s). Dask's adaptive defaults: interval 1 s, target duration 5 s, wait count 3.
"""

import argparse
import json
import time

from distributed import Client, LocalCluster


def nap(ms, i):
    time.sleep(ms / 1000)
    return i


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=24)
    p.add_argument("--ms", type=int, default=1000)
    p.add_argument("--min", type=int, default=1)
    p.add_argument("--max", type=int, default=4)
    a = p.parse_args()
    with LocalCluster(n_workers=a.min, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        cluster.adapt(minimum=a.min, maximum=a.max)
        client.wait_for_workers(a.min)
        t0 = time.perf_counter()
        futures = client.map(nap, [a.ms] * a.tasks, range(a.tasks))
        grown = done = None
        most = 0
        while True:
            n = len(client.scheduler_info()["workers"])
            most = max(most, n)
            now = time.perf_counter() - t0
            if grown is None and n == a.max:
                grown = now
            if done is None and all(f.status == "finished" for f in futures):
                done = now
            if done is not None and n == a.min:
                shrunk = now - done
                break
            time.sleep(0.02)
        assert client.gather(futures) == list(range(a.tasks))
        print(json.dumps({"system": "dask", "tasks": a.tasks, "ms": a.ms, "max_workers": most,
                          "grow_s": round(grown or float("nan"), 3), "burst_s": round(done, 3),
                          "shrink_s": round(shrunk, 3)}))


if __name__ == "__main__":
    main()
