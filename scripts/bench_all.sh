#!/usr/bin/env bash
# Run every benchmark in scripts/ and collect their reports in one folder.
#
#   scripts/bench_all.sh [--quick] [--out DIR]
#
# --quick: smaller sizes and fewer rounds (the whole set in under 10 minutes on a 2-core CPU; much
# less on a GPU). Each script measures on JAX's default device (and PyTorch on CUDA when it sees
# one) and names the device in its report; the reports go to DIR (default
# scripts/results/all-<platform>[-quick]/), concatenated into DIR/all.md. PYTHON picks the
# interpreter (default: python3); this checkout's src/ comes first on the path.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
quick=()
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=(--quick); shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: scripts/bench_all.sh [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
done
platform=$("$PYTHON" -c "import jax; print(jax.default_backend())" 2>/dev/null)
dir=${out:-scripts/results/all-${platform}${quick:+-quick}}
mkdir -p "$dir"
start=$(date +%s)
scripts=(bench_grad bench_train bench_conv bench_scaling bench_epoch bench_permutation)
for name in "${scripts[@]}"; do
  echo "== $name (${quick[*]:-full}) ==" >&2
  "$PYTHON" "scripts/$name.py" "${quick[@]}" --out "$dir/$name.md" > /dev/null
done
{
  echo "# Benchmarks on $platform ($(date -u +%Y-%m-%dT%H:%MZ), ${quick[*]:-full} sizes)"
  for name in "${scripts[@]}"; do echo; cat "$dir/$name.md"; done
} > "$dir/all.md"
echo "all reports in $dir/all.md ($(( $(date +%s) - start )) s)" >&2
