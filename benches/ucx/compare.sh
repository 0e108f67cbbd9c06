#!/usr/bin/env bash
# Taskwire's UCX transport next to ucx_perftest and Taskwire's TCP transport, alternating in
# every round so that the machine's load hits all three alike. Loopback, two processes each.
#
#   bash benches/ucx/compare.sh [ROUNDS]      (default 5; UCX_TLS defaults to sm,tcp)
#
# Needs a `--features ucx` release build (TASKWIRE_BIN, default target/release/taskwire) and
# ucx-utils. Prints one line per measurement (tab-separated: round, test, who, value, unit) and
# the medians at the end. `perftest` is ucx_perftest as it comes (no error handling: sysv and
# cma on one host), `perftest-e` with peer error handling (`-e`, what Taskwire uses),
# `ucx-nosamehost` Taskwire without its same-host single-copy path (TASKWIRE_UCX_SAME_HOST=0,
# i.e. UCX's TCP rendezvous), `ucx-nospin` Taskwire with TASKWIRE_UCX_SPIN_US=0. Bandwidth is GB/s (1e9 B/s; ucx_perftest's MB/s are MiB/s and are
# converted); latency is a round trip in µs (ucx_perftest's one-way figure doubled).
set -euo pipefail
ROUNDS=${1:-5}
B=${TASKWIRE_BIN:-target/release/taskwire}
export UCX_TLS=${UCX_TLS:-sm,tcp}
PORT=13500
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

perftest() { # test size iters [extra flags] -> the final line's fields (iterations, typical
             # latency, average and overall latency, average and overall MB/s, message rates)
    local test=$1 size=$2 iters=$3; shift 3
    PORT=$((PORT + 1))
    ucx_perftest -t "$test" -s "$size" -n "$iters" -p $PORT -f "$@" >/dev/null 2>&1 &
    local srv=$!
    sleep 0.3
    ucx_perftest 127.0.0.1 -p $PORT -t "$test" -s "$size" -n "$iters" -f "$@" 2>/dev/null |
        awk 'NF >= 8 && $1 ~ /^[0-9]+$/ {last = $0} END {print last}'
    wait $srv || true
}

ours() { # transport pattern size iters -> median of the one run
    "$B" bench transport --transport "$1" --two-process --pattern "$2" --size "$3" \
        --iters "$4" --runs 1 --json 2>/dev/null |
        python3 -c 'import json,sys; r=[json.loads(l) for l in sys.stdin]; print("%.3f" % r[0]["median"])'
}

row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" | tee -a "$OUT"; }

echo "UCX_TLS=$UCX_TLS, $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for size in 1048576 67108864; do
        n=$((2 * 1024 * 1048576 / size)); [ $n -lt 30 ] && n=30
        f=$(perftest tag_bw $size $n)
        row "$r" "bw_$size" perftest "$(echo "$f" | awk '{printf "%.3f", $6 * 1048576 / 1e9}')" GB/s
        f=$(perftest tag_bw $size $n -e)
        row "$r" "bw_$size" perftest-e "$(echo "$f" | awk '{printf "%.3f", $6 * 1048576 / 1e9}')" GB/s
        row "$r" "bw_$size" ucx "$(ours ucx bandwidth $size $n)" GB/s
        row "$r" "bw_$size" ucx-nosamehost "$(TASKWIRE_UCX_SAME_HOST=0 ours ucx bandwidth $size $n)" GB/s
        row "$r" "bw_$size" tcp "$(ours tcp bandwidth $size $n)" GB/s
    done
    f=$(perftest tag_lat 8 100000)
    row "$r" pingpong_8 perftest "$(echo "$f" | awk '{printf "%.2f", 2 * $2}')" us
    f=$(perftest tag_lat 8 100000 -e)
    row "$r" pingpong_8 perftest-e "$(echo "$f" | awk '{printf "%.2f", 2 * $2}')" us
    f=$(perftest tag_lat 8 100000 -E sleep -I)
    row "$r" pingpong_8 perftest-sleep "$(echo "$f" | awk '{printf "%.2f", 2 * $2}')" us
    row "$r" pingpong_8 ucx "$(ours ucx pingpong 8 20000)" us
    row "$r" pingpong_8 ucx-nospin "$(TASKWIRE_UCX_SPIN_US=0 ours ucx pingpong 8 20000)" us
    row "$r" pingpong_8 tcp "$(ours tcp pingpong 8 20000)" us
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "medians [min..max] over $ROUNDS rounds:"
python3 - "$OUT" <<'PY'
import sys, collections, statistics
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, test, who, value, unit = line.rstrip("\n").split("\t")
    try:
        rows[(test, who, unit)].append(float(value))
    except ValueError:
        pass
for (test, who, unit), v in rows.items():
    print(f"{test:14} {who:15} {statistics.median(v):9.3f} [{min(v):.3f}..{max(v):.3f}] {unit}")
PY
