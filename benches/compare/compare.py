#!/usr/bin/env python3
"""Run Dask and Taskwire (and optionally Ray) on the same workloads, alternating.

Called by run.sh, which makes the venv and builds Taskwire; see README.md.

Each round runs, for every worker-saturation setting, one Dask pass (a fresh
LocalCluster, one warm-up and one timed run of each workload) and one Taskwire
pass (`taskwire bench tasks <workload> --json ...` per workload), back to
back; the order flips every round (Dask first, then Taskwire first, ...), so
neither system always runs on the machine the other just warmed or loaded.
Every JSON line is written to the results file with "round" (and "system")
added; table.py then pools the rounds and prints the ratios.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ALL = ["noop", "tree", "roundtrip", "transfer", "startup", "commands"]

SIZES = {
    #          noop    leaves  roundtrip  commands  transfer   rounds
    "full": (20_000, 16_384, 1_000, 1_000, 64 << 20, 5),
    "quick": (5_000, 4_096, 300, 300, 64 << 20, 3),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        with open("/proc/loadavg") as f:
            return f.read().strip()


def json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


class Taskwire:
    """What this build's `taskwire bench tasks` accepts, read from its --help."""

    def __init__(self, binary):
        self.binary = binary
        self.available = False
        self.help = ""
        self.workloads = None  # None: not listed in --help, try them all
        self.why = ""
        if not os.path.exists(binary):
            self.why = f"{binary} not found"
            return
        p = subprocess.run([binary, "bench", "tasks", "--help"], capture_output=True, text=True)
        if p.returncode != 0:
            text = (p.stderr or p.stdout).strip()
            self.why = text.splitlines()[0] if text else f"exit {p.returncode}"
            return
        self.available = True
        self.help = p.stdout
        m = re.search(r"\[possible values: ([^\]]+)\]", self.help)
        if m:
            self.workloads = [w.strip() for w in m.group(1).split(",")]
        elif "Possible values:" in self.help:  # clap's long help
            block = self.help.split("Possible values:", 1)[1]
            self.workloads = re.findall(r"^\s*- ([a-z][a-z0-9-]*):", block, re.M)

    def has(self, flag):
        return re.search(re.escape(flag) + r"(?![\w-])", self.help) is not None

    def command(self, workload, sizes, ws, runs, warmup):
        """One `taskwire bench tasks WORKLOAD ... --json` invocation, or None if ws is not settable."""
        n_noop, leaves, n_rt, n_cmd, size = sizes
        cmd = [self.binary, "bench", "tasks", workload]
        size_flag = {
            "noop": ("--n", n_noop),
            "tree": ("--leaves", leaves),
            "roundtrip": ("--n", n_rt),
            "commands": ("--n", n_cmd),
            "transfer": ("--size", size),
        }.get(workload)
        if size_flag and self.has(size_flag[0]):
            cmd += [size_flag[0], str(size_flag[1])]
        elif size_flag:
            log(f"  taskwire: no {size_flag[0]} flag; {workload} runs at its default size")
        if self.has("--runs"):
            cmd += ["--runs", str(runs)]
        if self.has("--warmup"):
            cmd += ["--warmup", str(warmup)]
        cmd.append("--json")
        if ws != "default":
            if not self.has("--worker-saturation"):
                return None
            cmd += ["--worker-saturation", ws]
        return cmd


def run_pass(name, cmd, rnd, out, timeout):
    log(f"  [{name}] {' '.join(shlex.quote(c) for c in cmd)}")
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  [{name}] timed out after {timeout} s")
        return []
    rows = json_lines(p.stdout)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or "").strip().splitlines()[-5:])
        log(f"  [{name}] exit {p.returncode}:\n{tail}")
    for r in rows:
        r.setdefault("system", name)
        r["round"] = rnd
        out.write(json.dumps(r) + "\n")
        out.flush()
    log(f"  [{name}] {len(rows)} results in {time.monotonic() - t0:.1f} s")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and 3 rounds (~5 min)")
    ap.add_argument("--rounds", type=int, help="rounds (default 5, --quick 3)")
    ap.add_argument("--workloads", default=",".join(ALL))
    ap.add_argument("--n-noop", type=int)
    ap.add_argument("--leaves", type=int)
    ap.add_argument("--n-roundtrip", type=int)
    ap.add_argument("--n-commands", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--saturations", default="default,inf",
                    help="worker-saturation settings, comma-separated ('default' is Dask's 1.1)")
    ap.add_argument("--ray", action="store_true", help="add the Ray column (needs ray in the venv)")
    ap.add_argument("--taskwire", default=os.environ.get("TASKWIRE_BIN", os.path.join(ROOT, "target/release/taskwire")))
    ap.add_argument("--out", help="JSON lines file (default benches/compare/results/compare-DATE.jsonl)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per pass")
    args = ap.parse_args()

    d = SIZES["quick" if args.quick else "full"]
    n_noop = args.n_noop or d[0]
    leaves = args.leaves or d[1]
    n_rt = args.n_roundtrip or d[2]
    n_cmd = args.n_commands or d[3]
    size = args.size or d[4]
    rounds = args.rounds or d[5]
    sizes = (n_noop, leaves, n_rt, n_cmd, size)
    workloads = [w for w in args.workloads.split(",") if w]
    sats = [s for s in args.saturations.split(",") if s]

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or os.path.join(HERE, "results", f"compare-{stamp}.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)

    tw = Taskwire(args.taskwire)
    if not tw.available:
        print(f"taskwire bench tasks not available ({tw.why}); running Dask only", flush=True)
    elif tw.workloads is not None:
        missing = [w for w in workloads if w not in tw.workloads]
        if missing:
            print(f"taskwire bench tasks has no {', '.join(missing)} (has {', '.join(tw.workloads)})", flush=True)

    py = sys.executable
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with open(out_path, "w") as out:
        meta = {
            "meta": "start",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "uptime": uptime(),
            "nproc": os.cpu_count(),
            "git": git,
            "taskwire": args.taskwire if tw.available else None,
            "sizes": {"noop": n_noop, "leaves": leaves, "roundtrip": n_rt, "commands": n_cmd, "transfer": size},
            "rounds": rounds,
            "saturations": sats,
            "argv": sys.argv[1:],
        }
        out.write(json.dumps(meta) + "\n")
        print(f"uptime before: {meta['uptime']}", flush=True)
        print(f"sizes: noop {n_noop}, tree {leaves} leaves, roundtrip {n_rt}, commands {n_cmd}, "
              f"transfer {size} B; {rounds} rounds x {sats}; results -> {out_path}", flush=True)
        t_start = time.monotonic()
        for rnd in range(1, rounds + 1):
            log(f"round {rnd}/{rounds}  ({uptime()})")
            for ws in sats:
                passes = []
                dw = [w for w in workloads if w != "startup" or ws == sats[0]]
                dask_cmd = [py, os.path.join(HERE, "dask_bench.py"), "--runs", "1",
                            "--workloads", ",".join(dw), "--worker-saturation", ws,
                            "--n-noop", str(n_noop), "--leaves", str(leaves),
                            "--n-roundtrip", str(n_rt), "--n-commands", str(n_cmd), "--size", str(size)]
                passes.append(("dask", [dask_cmd]))
                if tw.available:
                    cmds = []
                    for w in dw:
                        if tw.workloads is not None and w not in tw.workloads:
                            continue
                        c = tw.command(w, sizes, ws, 1, 1)
                        if c is None:
                            log(f"  taskwire: no --worker-saturation flag; skipping ws={ws}")
                            continue
                        cmds.append(c)
                    passes.append(("taskwire", cmds))
                if rnd % 2 == 0:
                    passes.reverse()
                for name, cmds in passes:
                    for c in cmds:
                        run_pass(name, c, rnd, out, args.timeout)
            if args.ray:
                ray_cmd = [py, os.path.join(HERE, "ray_bench.py"), "--runs", "1",
                           "--workloads", ",".join(workloads),
                           "--n-noop", str(n_noop), "--leaves", str(leaves),
                           "--n-roundtrip", str(n_rt), "--n-commands", str(n_cmd)]
                run_pass("ray", ray_cmd, rnd, out, args.timeout)
        end = {"meta": "end", "uptime": uptime(), "seconds": round(time.monotonic() - t_start, 1)}
        out.write(json.dumps(end) + "\n")
        print(f"uptime after:  {end['uptime']}   ({end['seconds']} s)", flush=True)

    print(flush=True)
    sys.path.insert(0, HERE)
    import table
    rows, _ = table.load(out_path)
    print(table.render(table.build(rows)))
    for line in table.notes(rows):
        print(line)
    print("\n" + table.LEGEND)
    print(f"raw results (JSON lines): {out_path}   (all metrics: table.py --all {out_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
