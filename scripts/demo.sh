#!/usr/bin/env bash
# Set everything up, then run the main job: a short real training run of the step shape
# (exactly PPO-Clip) on Hopper-v4, ending with an evaluation, metrics and a learning curve.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=${1:-runs/demo-hopper-step}
if [ -e "$out/config.yaml" ]; then
  out="$out-$(date +%Y%m%d-%H%M%S)"
fi
.venv/bin/klip train --task Hopper-v4 --shape step --steps 102400 --seed 0 --eval-episodes 5 \
  --out "$out"
