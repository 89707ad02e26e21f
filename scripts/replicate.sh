#!/usr/bin/env bash
# The paper-table replication: clip, step, kl_fixed (beta 1) and kl_adaptive (KL target 0.02) on
# the five MuJoCo -v4 tasks and the paper's two discrete checks (CartPole-v1, LunarLander-v3),
# 5 seeds, 1M steps each, the default (paper) protocol. Hours of CPU:
# run it in the background; it resumes where it stopped (finished cells are skipped, a killed
# cell continues from its checkpoint bit for bit). Extra arguments go to `klip compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec nice -n 19 .venv/bin/klip compare --losses clip,step,kl_fixed,kl_adaptive \
  --tasks Hopper-v4,HalfCheetah-v4,Walker2d-v4,Ant-v4,Humanoid-v4,CartPole-v1,LunarLander-v3 \
  --seeds 0-4 --steps 1000000 \
  --out results/paper-table "$@"
