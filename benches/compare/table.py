#!/usr/bin/env python3
"""Side-by-side table of a comparison's JSON lines, with Taskwire/Dask ratios.

Usage: table.py RESULTS.jsonl [--markdown] [--all]

Reads the lines written by compare.py, or any mix of `taskwire bench tasks
--json` lines (no "system" field: they count as Taskwire) and dask_bench.py /
ray_bench.py lines.  The lines of one (system, workload, metric,
worker_saturation) are pooled over rounds: median, min and max are over every
run of every round.  Taskwire and Dask rows are joined on (workload, metric,
worker_saturation); Ray rows (worker_saturation "n/a") go beside Dask's
default configuration (1.1).

TW/Dask is Taskwire's median over Dask's median.  "TW faster" turns it into a
speed-up: the ratio itself for rates (tasks/s, GB/s), its inverse for times
(us, ms).  "per round" is the range of the TW/Dask ratios taken round by round
(each round ran Dask and Taskwire back to back): a wide range means the
machine's load moved the figures.  --all adds the metrics only one side has
(e.g. Taskwire's raw_spawns_per_s).
"""

import json
import math
import statistics
import sys
from collections import defaultdict

# Metric names that mean the same thing on both sides, mapped to one spelling.
METRIC_ALIASES = {
    "taskwire_tasks_per_s": "tasks_per_s",  # Taskwire's `commands`
}
ORDER = ["noop", "tree", "roundtrip", "transfer", "startup", "commands", "scale"]
DEFAULT_WS = "1.1"
# Metrics shown by default, in this order within a workload; others need --all.
MAIN_METRICS = ["tasks_per_s", "latency_median", "latency_p99", "transfer_gb_per_s",
                "end_to_end_gb_per_s", "transfer_ms", "startup_ms"]


def lower_is_better(metric, unit):
    return unit in ("us", "ms", "s") or metric.endswith(("_ms", "_us"))


def norm_ws(v):
    if v is None:
        return DEFAULT_WS
    s = str(v)
    try:
        f = float(s)
    except ValueError:
        return s
    return "inf" if math.isinf(f) else f"{f:g}"


def load(path):
    rows, meta = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "meta" in r:
                meta.append(r)
                continue
            if "workload" not in r or "metric" not in r:
                continue
            r.setdefault("system", "taskwire")
            r["metric"] = METRIC_ALIASES.get(r["metric"], r["metric"])
            r["worker_saturation"] = norm_ws(r.get("worker_saturation"))
            rows.append(r)
    return rows, meta


class Agg:
    def __init__(self):
        self.runs = []
        self.by_round = {}  # round -> that round's median
        self.unit = ""
        self.n = None

    def add(self, r):
        runs = [x for x in (r.get("runs") or [r.get("median")]) if isinstance(x, (int, float))]
        self.runs.extend(runs)
        if "round" in r and isinstance(r.get("median"), (int, float)):
            self.by_round[r["round"]] = r["median"]
        self.unit = r.get("unit", self.unit)
        self.n = r.get("n", self.n)

    @property
    def median(self):
        return statistics.median(self.runs) if self.runs else float("nan")


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def cell(a):
    if a is None or not a.runs:
        return "-"
    return f"{fmt(a.median)} [{fmt(min(a.runs))}..{fmt(max(a.runs))}]"


def build(rows, show_all=False):
    aggs = defaultdict(Agg)
    for r in rows:
        aggs[(r["system"], r["workload"], r["metric"], r["worker_saturation"])].add(r)
    keys = {(w, m, ws) for (s, w, m, ws) in aggs if s in ("dask", "taskwire")}

    def sort_key(k):
        w, m, ws = k
        return (ORDER.index(w) if w in ORDER else 99, w, ws != DEFAULT_WS, ws,
                MAIN_METRICS.index(m) if m in MAIN_METRICS else 99, m)

    joined = []
    for (w, m, ws) in sorted(keys, key=sort_key):
        d = aggs.get(("dask", w, m, ws))
        t = aggs.get(("taskwire", w, m, ws))
        # By default: the main metrics that Dask reports (Taskwire "-" where it has none).
        if not show_all and (d is None or m not in MAIN_METRICS):
            continue
        ray = aggs.get(("ray", w, m, "n/a")) if ws == DEFAULT_WS else None
        joined.append((w, m, ws, d, t, ray))
    return joined


def ratio_cols(m, d, t):
    if d is None or t is None or not d.runs or not t.runs or not d.median or math.isnan(d.median):
        return "-", "-", "-"
    r = t.median / d.median
    lib = lower_is_better(m, t.unit or d.unit)
    faster = (1 / r if r else float("inf")) if lib else r
    rounds = sorted(set(d.by_round) & set(t.by_round))
    pr = [t.by_round[k] / d.by_round[k] for k in rounds if d.by_round[k]]
    span = f"{min(pr):.3g}..{max(pr):.3g}" if len(pr) >= 2 else "-"
    return f"{r:.3g}", f"{faster:.3g}x", span


def render(joined, markdown=False):
    any_ray = any(j[5] is not None for j in joined)
    head = ["workload", "n", "metric", "unit", "ws", "Dask median [min..max]",
            "Taskwire median [min..max]", "TW/Dask", "TW faster", "per round"]
    if any_ray:
        head += ["Ray median [min..max]", "TW faster than Ray"]
    lines = []
    for (w, m, ws, d, t, ray) in joined:
        n = (d.n if d else None) or (t.n if t else None)
        unit = (t.unit if t else "") or (d.unit if d else "")
        r, faster, span = ratio_cols(m, d, t)
        row = [w, str(n) if n is not None else "", m, unit, ws, cell(d), cell(t), r, faster, span]
        if any_ray:
            row += [cell(ray), ratio_cols(m, ray, t)[1] if ray else "-"]
        lines.append(row)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in lines]
        return "\n".join(out)
    widths = [max([len(h)] + [len(r[i]) for r in lines]) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip()]
    out.append("  ".join("-" * widths[i] for i in range(len(head))))
    out += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in lines]
    return "\n".join(out)


LEGEND = ("median [min..max] over all measured runs of all rounds; ws = worker-saturation "
          "(1.1 is the default); TW faster > 1 means Taskwire is faster; per round = range of "
          "the round-by-round TW/Dask ratios")


def notes(rows):
    """Lines about failed runs and runs during which Dask removed a worker."""
    out = []
    for r in rows:
        where = f"{r['system']} {r['workload']} ws={r['worker_saturation']} round {r.get('round', '?')}"
        if r["metric"] == "error":
            out.append(f"FAILED: {where}: {r.get('error', '')}")
        elif r.get("workers_lost") and r["metric"] in MAIN_METRICS[:1] + ["latency_median", "transfer_gb_per_s", "startup_ms"]:
            out.append(f"worker lost during the run: {where} ({r['workers_lost']} removed)")
    return out


def main():
    files = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not files:
        print(__doc__)
        return 2
    rows, meta = load(files[0])
    if not rows:
        print(f"no results in {files[0]}")
        return 1
    for mline in meta:
        if "uptime" in mline:
            print(f"{mline['meta']}: {mline['uptime']}")
    print(render(build(rows, show_all="--all" in sys.argv), markdown="--markdown" in sys.argv))
    for line in notes(rows):
        print(line)
    print("\n" + LEGEND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
