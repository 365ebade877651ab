#!/usr/bin/env bash
# The command of issue 16 B, `ucpcl train --dataset acdc --labeled 3 --preset small`, on a phantom:
# sup and ucpcl, at the given iterations and seeds, each run skipped when its metrics.json exists.
# usage: cli_runs.sh DATA_ROOT OUT "300 700" "0 1 2" [extra --set KEY=VALUE for ucpcl ...]
set -euo pipefail
root=$1 out=$2 iters=$3 seeds=$4
shift 4
export OMP_WAIT_POLICY=PASSIVE
for it in $iters; do
  for seed in $seeds; do
    for method in sup ucpcl; do
      run=$out/$method-i$it-s$seed
      [ -f "$run/metrics.json" ] && continue
      extra=()
      [ "$method" = ucpcl ] && [ $# -gt 0 ] && extra=(--set "$@")
      ucpcl train --dataset acdc --data-root "$root" --labeled 3 --preset small --iterations "$it" \
        --seed "$seed" --method "$method" --device cpu --out "$run" --quiet "${extra[@]}" | tail -2
    done
  done
done
