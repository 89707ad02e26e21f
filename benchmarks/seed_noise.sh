#!/usr/bin/env bash
# Learning curves of the exact defaults against a not-exact option, over seeds.
#   benchmarks/seed_noise.sh OUT_DIR NAME "FLAGS" SEED [SEED ...]
# e.g. benchmarks/seed_noise.sh runs/noise exact "" 0 1 2
#      benchmarks/seed_noise.sh runs/noise fused "--fused-adam" 0 1 2
#      benchmarks/seed_noise.sh runs/noise compile-fused "--compile --fused-adam" 0 1 2
#      .venv/bin/python benchmarks/compare_runs.py "exact=runs/noise/exact-s?" \
#          "fused-adam=runs/noise/fused-s?" "compile+fused-adam=runs/noise/compile-fused-s?" \
#          --out seed_noise.png --json seed_noise.json
# The committed runs (benchmarks/results/seed_noise/) keep config.yaml, episodes.csv and
# summary.json; checkpoints, TensorBoard logs and metrics were left out for size.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 name=$2 flags=$3
shift 3
for seed in "$@"; do
  # shellcheck disable=SC2086  # FLAGS is a list of flags
  .venv/bin/klip train --task Hopper-v4 --shape step --steps 300000 --seed "$seed" \
    --eval-episodes 0 --no-progress $flags --out "$out/$name-s$seed"
done
