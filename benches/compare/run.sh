#!/usr/bin/env bash
# Taskwire vs Dask (and optionally Ray) on the same workloads, alternating.
#
#   bash benches/compare/run.sh [--quick] [--ray] [--build] [compare.py options...]
#
#   --quick   smaller sizes, 3 rounds (about 5 minutes instead of about 25)
#   --ray     also install Ray in the venv and add a Ray column
#   --build   run `cargo build --release -p taskwire` even if the binary exists
#             (it is built anyway when missing or without `bench tasks`)
#   TASKWIRE_BIN=/path/to/taskwire  use another binary
#
# Everything else is passed to compare.py (see `compare.py --help`).
# Makes benches/compare/.venv, prints a table, writes JSON lines to
# benches/compare/results/compare-DATE.jsonl (or --out FILE).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"

ray=0
build=0
args=()
for a in "$@"; do
  case "$a" in
    --ray) ray=1; args+=("$a") ;;
    --build) build=1 ;;
    -h|--help)
      sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *) args+=("$a") ;;
  esac
done

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import sys, dask, distributed; sys.exit(dask.__version__ != "2026.8.0")' 2>/dev/null; then
  echo "== pip install -r requirements.txt"
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi
if [ "$ray" = 1 ] && ! "$venv/bin/python" -c 'import ray' 2>/dev/null; then
  echo "== pip install -r requirements-ray.txt"
  "$venv/bin/pip" install -q -r "$here/requirements-ray.txt"
fi

bin="${TASKWIRE_BIN:-$root/target/release/taskwire}"
# Build when asked, when the binary is missing, or when it predates `bench tasks`.
if [ -z "${TASKWIRE_BIN:-}" ] && { [ "$build" = 1 ] || [ ! -x "$bin" ] \
     || ! "$bin" bench tasks --help >/dev/null 2>&1; }; then
  echo "== cargo build --release -p taskwire"
  (cd "$root" && cargo build --release -p taskwire) \
    || echo "== cargo build failed: Taskwire columns will be empty"
fi

echo "== versions: dask $("$venv/bin/python" -c 'import dask; print(dask.__version__)'), python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), taskwire $("$bin" --version 2>/dev/null || echo missing)"
exec "$venv/bin/python" "$here/compare.py" --taskwire "$bin" "${args[@]}"
