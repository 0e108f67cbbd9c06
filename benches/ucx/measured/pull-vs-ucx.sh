#!/usr/bin/env bash
# Same-host pull path (TASKWIRE_UCX_SAME_HOST=always) against UCX's own path (=1, the default:
# cma where UCX has it), by size, alternating; bandwidth in GB/s, two processes, loopback.
#   bash benches/ucx/measured/pull-vs-ucx.sh [ROUNDS]   (UCX_TLS defaults to sm,tcp)
B=${TASKWIRE_BIN:-target/release/taskwire}
export UCX_TLS=${UCX_TLS:-sm,tcp}
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) ERR_MODE=${TASKWIRE_UCX_ERR_MODE:-auto}"
for r in $(seq ${1:-3}); do
  for size in 65536 262144 1048576 4194304 16777216 67108864; do
    n=$((1024 * 1048576 / size)); [ $n -lt 30 ] && n=30; [ $n -gt 8192 ] && n=8192
    for sh in always 1; do
      v=$(TASKWIRE_UCX_SAME_HOST=$sh "$B" bench transport --transport ucx --two-process --pattern bandwidth --size $size --iters $n --runs 1 --json 2>/dev/null | grep "^{" | python3 -c 'import json,sys; r=[json.loads(l) for l in sys.stdin]; print("%.3f" % r[0]["median"])')
      printf '%s\t%s\tsamehost=%s\t%s\n' $r $size $sh "$v"
    done
  done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
