#!/usr/bin/env bash
# The GPU suite: one run (≤ 9 minutes, bounded by a time budget) on an NVIDIA machine with jax[cuda], torch and cupy
# but no internet. Installs missing wheels from a folder, runs bench/gpu_suite.py, prints one
# markdown table (also written to results/bench/gpu_suite.md with provenance).
#
#   bench/gpu_suite.sh --wheels /path/to/wheels      # full sizes
#   bench/gpu_suite.sh --wheels DIR --data_root cifar10=/data/cifar,...   # + gpu_short md_snn
#   bench/gpu_suite.sh --dry-run [--wheels DIR]      # toy sizes on CPU (CI)
#
# Wheels (installed only when their module does not import): grain, ml_collections,
# spikingjelly (--no-deps), spyx, dm-haiku, loguru, plus any other *.whl in the folder that
# pip needs for them; pip runs with --no-index --find-links DIR, so nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=""; WHEELS=""; OUT=""; ROOTS=""; LIMIT=540
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run"; shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUT="--out=$2"; shift 2 ;;
    --data_root) ROOTS="--data_root=$2"; shift 2 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (allowed: --dry-run, --wheels DIR, --out DIR, --data_root NAME=PATH,...)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python}"
if [ -n "$WHEELS" ]; then
  [ -d "$WHEELS" ] || { echo "--wheels $WHEELS is not a folder" >&2; exit 2; }
  for pair in grain:grain ml_collections:ml_collections spikingjelly:spikingjelly \
              spyx:spyx haiku:dm-haiku loguru:loguru; do
    mod="${pair%%:*}"; pkg="${pair##*:}"
    if ! "$PY" -c "import $mod" 2>/dev/null; then
      deps=""; [ "$pkg" = spikingjelly ] && deps="--no-deps"
      "$PY" -m pip install -q --no-index --find-links "$WHEELS" $deps "$pkg" \
        || echo "note: $pkg not installed from $WHEELS; its rows will say skipped" >&2
    fi
  done
fi
[ -n "$DRY" ] && export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec timeout "$LIMIT" "$PY" bench/gpu_suite.py $DRY $OUT $ROOTS
