#!/usr/bin/env bash
# The long result grids, started (or continued: each resumes where it stopped) in the background.
# Each is a `klip compare` grid; run this again in a later session until every grid says done.
#
#   bash scripts/grids.sh            # start every grid not running yet; logs in ${KLIP_GRID_LOGS:-/tmp}
#   bash scripts/grids.sh --status   # one progress line per grid
set -euo pipefail
cd "$(dirname "$0")/.."
KLIP=.venv/bin/klip
LOGS=${KLIP_GRID_LOGS:-/tmp}

ZOO_ENTRIES="step,sigmoid,linear_ramp,annealed_clip,clip_higher,rollback,spo,dpo,truncate,tr_ppo,tr_ppo_rb,\
trgppo_gaussian,none,study:sigmoid-2task@sqlite:///results/studies/sigmoid-2task/study.db,\
study:learned-3task@sqlite:///results/discovery/learned-3task/study.db"

declare -A GRIDS=(
  # The paper's table, grown by its two extra checks (CartPole-v1, LunarLander-v3).
  [paper-table]="--losses clip,step,kl_fixed,kl_adaptive --tasks Hopper-v4,HalfCheetah-v4,Walker2d-v4,Ant-v4,Humanoid-v4,CartPole-v1,LunarLander-v3 --seeds 0-4 --steps 1000000 --extend --out results/paper-table"
  # Every built-in and published shape against step; step's cells are the paper table's.
  [zoo]="--losses $ZOO_ENTRIES --tasks Hopper-v4,Walker2d-v4,HalfCheetah-v4,Ant-v4,Humanoid-v4 --seeds 0-4 --steps 1000000 --seeds-together --reuse results/paper-table --out results/zoo"
)

for name in "${!GRIDS[@]}"; do
  out="results/$name"
  if [[ "${1:-}" == "--status" ]]; then
    line=$(grep -a "cells done" "$LOGS/grid-$name.log" 2>/dev/null | tail -1 || true)
    echo "$name: ${line:-no log in $LOGS}"
    continue
  fi
  if pgrep -f -- "--out $out( |$)" > /dev/null; then
    echo "$name: already running"
    continue
  fi
  # shellcheck disable=SC2086  # the arguments are split on purpose
  setsid nohup $KLIP compare ${GRIDS[$name]} --progress-every 300 > "$LOGS/grid-$name.log" 2>&1 < /dev/null &
  echo "$name: started (log $LOGS/grid-$name.log)"
done
