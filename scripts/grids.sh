#!/usr/bin/env bash
# The long result jobs (comparison grids and the discovery study), run in the background in
# "lanes": each lane takes the next job in JOBS order that is neither done nor held by another
# lane, so at most KLIP_GRID_LANES jobs run at once and the next starts when one ends. Every job
# resumes where it stopped: run this again in each later session until --status says all done.
# The zoo and the discovery's grids train two populations at a time (--workers 2), so that the
# two cores stay busy when the other jobs are done; meanwhile the lanes share the cores.
#
#   bash scripts/grids.sh            # start the lanes; logs in ${KLIP_GRID_LOGS:-/tmp}
#   bash scripts/grids.sh --status   # one line per job
#   bash scripts/grids.sh --stop     # stop every lane (each job continues on the next start) and
#                                    # pack its unfinished populations into results/unfinished.tar
#   bash scripts/grids.sh --pause    # freeze every lane (SIGSTOP), e.g. for a benchmark; --unpause
#   bash scripts/grids.sh --reports  # rewrite the reports and the findings page from the data
#                                    # (lanes paused or stopped: a report is a snapshot)
#
# Checkpoints are not committed (results/**/checkpoints/ is ignored), so a fresh clone would
# start every interrupted population again from step 0. --stop therefore packs the populations
# still training (checkpoints included) into results/unfinished.tar, committed with the results,
# and a start on a checkout with no checkpoints unpacks it: the jobs continue bit for bit.
#
# The lanes run at nice 10 (KLIP_GRID_NICE), so tests and other work take the CPU first and
# the lanes keep what is left: no need to pause them for the test suite (only for timings).
set -euo pipefail
cd "$(dirname "$0")/.."
KLIP=.venv/bin/klip
LOGS=${KLIP_GRID_LOGS:-/tmp}
mkdir -p "$LOGS"
LANES=${KLIP_GRID_LANES:-3}
NICENESS=${KLIP_GRID_NICE:-10}
JOBS=(paper-table zoo discovery epochs heldout-step)

ZOO_ENTRIES="step,sigmoid,linear_ramp,annealed_clip,clip_higher,rollback,spo,dpo,truncate,tr_ppo,tr_ppo_rb,\
trgppo_gaussian,none,study:sigmoid-2task@sqlite:///results/studies/sigmoid-2task/study.db,\
study:learned-3task@sqlite:///results/discovery/learned-3task/study.db"
DISCOVERY=results/discovery/increments-3task
CARRIED=results/unfinished.tar

job_paper_table() {  # the paper's table, grown by its two extra checks
  $KLIP compare --losses clip,step,kl_fixed,kl_adaptive --tasks \
    Hopper-v4,HalfCheetah-v4,Walker2d-v4,Ant-v4,Humanoid-v4,CartPole-v1,LunarLander-v3 \
    --seeds 0-4 --steps 1000000 --extend --out results/paper-table --progress-every 300
}

job_zoo() {  # every built-in and published shape against step; step's cells are the paper table's
  $KLIP compare --losses "$ZOO_ENTRIES" --tasks Hopper-v4,Walker2d-v4,HalfCheetah-v4,Ant-v4,Humanoid-v4 \
    --seeds 0-4 --steps 1000000 --seeds-together --reuse results/paper-table --out results/zoo \
    --workers 2 --progress-every 300
}

job_discovery() {  # CMA-ES over learned_increments on three tasks, tuning seeds 100-101; then tested
  mkdir -p "$DISCOVERY"
  $KLIP study run --shape learned_increments --fix eps=0.2 --sampler cmaes --sampler-seed 0 \
    --tasks Hopper-v4,HalfCheetah-v4,Walker2d-v4 --steps-per-task 300000 --seeds 100,101 \
    --trials 143 --batch 13 --pruner none --no-progress --study-name increments-3task \
    --storage "sqlite:///$DISCOVERY/study.db" --study-dir "$DISCOVERY" || return
  $KLIP study report --study-name increments-3task --storage "sqlite:///$DISCOVERY/study.db" \
    --out "$DISCOVERY/report" || return
  # The five best trials again on three tuning seeds the search never used; the leader there is
  # the discovered gate (the best of 143 noisy values is biased upwards).
  $KLIP compare --losses "step,study:increments-3task#top5@sqlite:///$DISCOVERY/study.db" \
    --tasks Hopper-v4,HalfCheetah-v4,Walker2d-v4 --seeds 102-104 --steps 300000 --seeds-together \
    --out "$DISCOVERY/recheck" --workers 2 --progress-every 300 || return
  local discovered
  discovered="step,$(.venv/bin/python "$DISCOVERY/pick.py")" || return
  # The discovery tasks on fresh seeds.
  $KLIP compare --losses "$discovered" --tasks Hopper-v4,HalfCheetah-v4,Walker2d-v4 --seeds 0-4 \
    --steps 1000000 --seeds-together --reuse results/paper-table --reuse results/zoo \
    --out "$DISCOVERY/fresh" --workers 2 --progress-every 300 || return
  # Held out: Ant-v4 and Humanoid-v4, 10 seeds never tuned on (step's seeds 0-4 are the paper
  # table's, 5-9 job_heldout_step's): the grid grows by the discovered entry. Last, and after
  # job_heldout_step lets go of the grid if it is training there (one klip compare per grid).
  flock "$LOGS/grid-heldout-grid.lock" $KLIP compare --losses "$discovered" --tasks Ant-v4,Humanoid-v4 \
    --seeds 0-9 --steps 1000000 --seeds-together --reuse results/paper-table --extend \
    --out "$DISCOVERY/heldout" --workers 2 --progress-every 300
}

job_heldout_step() {  # step's held-out runs need no discovered gate: trained while the study runs
  local status=0
  flock -n -E 75 "$LOGS/grid-heldout-grid.lock" $KLIP compare --losses step --tasks Ant-v4,Humanoid-v4 \
    --seeds 0-9 --steps 1000000 --seeds-together --reuse results/paper-table --extend \
    --out "$DISCOVERY/heldout" --progress-every 300 || status=$?
  if [[ $status == 75 ]]; then  # the discovery's held-out grid is training, step's seeds 5-9 with it
    echo "the discovery job holds the held-out grid and trains step's runs there; nothing left here"
    return 0
  fi
  return "$status"
}

job_epochs() {  # the epochs axis: 20 and 40 inner epochs (10 epochs: the zoo's cells)
  for epochs in 20 40; do
    $KLIP compare --losses step,sigmoid,rollback,spo --tasks Hopper-v4,Walker2d-v4,HalfCheetah-v4 \
      --seeds 0-4 --steps 1000000 --set "epochs=$epochs" --seeds-together \
      --out "results/epochs/e$epochs" --progress-every 300 || return
  done
  # The 10-epoch column is the zoo's (its runs so far, if it is still running).
  $KLIP compare axis results/zoo results/epochs/e20 results/epochs/e40 --out results/epochs/axis
}

# The populations training now: a grid's runs/<task>/<entry>/population or a study batch's
# population-<trial>-<task>; each is dissolved into its cells or trials when it finishes.
unfinished_populations() {
  find results -type f -path '*/checkpoints/last.ckpt' \( -path '*/population/checkpoints/*' \
    -o -path '*/population-[0-9]*/checkpoints/*' \) | sed 's|/checkpoints/last.ckpt$||' | sort
}

lane() {
  echo $$ >> "$LOGS/grid-lanes.pgids"  # this lane's process group (setsid made it the leader)
  # With autogroup scheduling (Linux's default) a process's nice value only ranks it within
  # its own session; setsid made one per lane, so the session itself is niced too.
  echo "$NICENESS" 2>/dev/null > /proc/self/autogroup || true
  for job in "${JOBS[@]}"; do
    # --stop: a job it interrupted ends "with an error"; the lane must not start the next one.
    [[ -e "$LOGS/grid-stopping" ]] && break
    [[ -e "$LOGS/grid-$job.done" ]] && continue
    exec {lock}>"$LOGS/grid-$job.lock"
    if flock -n "$lock"; then
      echo "$(date -u +%FT%TZ) lane $1 starts" >> "$LOGS/grid-$job.log"
      if "job_${job//-/_}" >> "$LOGS/grid-$job.log" 2>&1; then
        touch "$LOGS/grid-$job.done"
      else
        if [[ -e "$LOGS/grid-stopping" ]]; then
          echo "$(date -u +%FT%TZ) lane $1: $job stopped by --stop; the next run continues it" >> "$LOGS/grid-$job.log"
        else
          echo "$(date -u +%FT%TZ) lane $1: $job stopped with an error; see above" >> "$LOGS/grid-$job.log"
        fi
      fi
    fi
    exec {lock}>&-
  done
}

# All of the command in one function, called on the file's last line with `exit`: bash reads a
# running script as it goes, so a lane (which runs for hours) must never read past this line
# from a file that was edited meanwhile.
main() {
  case "${1:-}" in
    --status)
      for job in "${JOBS[@]}"; do
        if [[ -e "$LOGS/grid-$job.done" ]]; then state="done"
        elif ! flock -n "$LOGS/grid-$job.lock" true 2>/dev/null; then state="running"
        else state="waiting"; fi
        line=$(grep -a "cells done" "$LOGS/grid-$job.log" 2>/dev/null | tail -1 || true)
        if [[ "$job" == discovery && -e "$DISCOVERY/study.db" ]]; then
          # A trial stopped by --stop or a crash is FAIL to Optuna and queued again; one that
          # failed in klip carries klip_error.
          line="$(.venv/bin/python -c "
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
rows = connection.execute(
    \"select state, exists(select 1 from trial_user_attributes a where a.trial_id = t.trial_id and a.key = 'klip_error') from trials t\")
counts = {}
for state, errored in rows:
    name = state.lower() if state != 'FAIL' else ('failed' if errored else 'stopped and queued again')
    counts[name] = counts.get(name, 0) + 1
generation = connection.execute(
    \"select max(cast(value_json as integer)) from trial_system_attributes where key = 'cma:generation'\").fetchone()[0]
text = ', '.join(f'{n} {name}' for name, n in counts.items()) + f' trials; CMA-ES generation {generation}'
# The batch training now: its population directory (one per task) and how far its agents are.
import csv, pathlib
for population in sorted(pathlib.Path(sys.argv[1]).parent.glob('population-*')):
    frames, budget = [], None
    for metrics in population.glob('*/metrics.csv'):
        rows = list(csv.DictReader(open(metrics)))
        frames.append(int(float(rows[-1]['frames'])) if rows else 0)
        budget = next((line.split()[1] for line in open(metrics.parent / 'config.yaml')
                       if line.startswith('steps:')), budget)
    if frames:
        text += (f'; batch on {population.name.split(\"-\", 2)[2]}: {min(frames):,} of '
                 f'{int(budget or 0):,} steps of each agent')
print(text)" "$DISCOVERY/study.db") (target: 143 complete)"
        fi
        echo "$job: $state${line:+; $line}"
      done ;;
    --stop)
      touch "$LOGS/grid-stopping"
      pgids=()
      [[ -e "$LOGS/grid-lanes.pgids" ]] && mapfile -t pgids < "$LOGS/grid-lanes.pgids"
      for pgid in "${pgids[@]}"; do kill -INT -- "-$pgid" 2>/dev/null || true; done
      # Each klip process writes its checkpoint before it exits: wait for them (10 min at most).
      for _ in $(seq 600); do
        alive=0
        for pgid in "${pgids[@]}"; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 1
      done
      if (( alive )); then echo "grids.sh: lanes still running after 10 min; $CARRIED not written" >&2; exit 1; fi
      rm -f "$LOGS/grid-lanes.pgids"
      touch "$LOGS/grid-carried"
      mapfile -t populations < <(unfinished_populations)
      if (( ${#populations[@]} )); then
        # Not TensorBoard's files nor figures: git ignores the former, a finished run redraws the latter.
        tar -cf "$CARRIED" --exclude='*/tensorboard' --exclude='*.png' "${populations[@]}"
        echo "stopped; $CARRIED holds ${#populations[@]} unfinished populations ($(du -h "$CARRIED" | cut -f1))"
      else
        rm -f "$CARRIED"; echo "stopped; no unfinished population"
      fi ;;
    --pause|--unpause)
      signal=STOP; [[ "$1" == --unpause ]] && signal=CONT
      [[ -e "$LOGS/grid-lanes.pgids" ]] && while read -r pgid; do
        kill "-$signal" -- "-$pgid" 2>/dev/null || true
      done < "$LOGS/grid-lanes.pgids" ;;
    --reports)
      # Every grid's report, (re)written from the runs on disk; then the findings page.
      for grid in results/paper-table results/zoo results/epochs/e20 results/epochs/e40 \
          "$DISCOVERY/recheck" "$DISCOVERY/heldout" "$DISCOVERY/fresh"; do
        if [[ -e "$grid/grid.json" ]]; then $KLIP compare report "$grid" > /dev/null; echo "report: $grid"; fi
      done
      # The axis as far as its grids go (the zoo's 10-epoch cells and each epochs grid started).
      axis=(results/zoo)
      for grid in results/epochs/e20 results/epochs/e40; do [[ -e "$grid/grid.json" ]] && axis+=("$grid"); done
      if [[ -e results/zoo/grid.json && ${#axis[@]} -gt 1 ]]; then
        $KLIP compare axis "${axis[@]}" --out results/epochs/axis > /dev/null
        echo "report: results/epochs/axis"
      fi
      if [[ -e "$DISCOVERY/study.db" ]]; then
        $KLIP study report --study-name increments-3task --storage "sqlite:///$DISCOVERY/study.db" \
          --out "$DISCOVERY/report" | grep -E "^study|^by generation|^training cost"
      fi
      .venv/bin/python scripts/findings.py
      .venv/bin/python scripts/results_prose.py --check && echo "results prose: current" ;;
    --lane)
      lane "$2" ;;
    "")
      if [[ -e "$LOGS/grid-lanes.pgids" ]]; then
        while read -r pgid; do
          if kill -0 -- "-$pgid" 2>/dev/null; then
            echo "lanes already running (bash scripts/grids.sh --status)"; exit 0
          fi
        done < "$LOGS/grid-lanes.pgids"
      fi
      [[ -x "$KLIP" ]] || bash scripts/setup.sh  # a fresh clone
      if [[ -e "$CARRIED" && ! -e "$LOGS/grid-carried" && -z "$(unfinished_populations)" ]]; then
        # Only on a fresh clone on a fresh machine: where the archive was written or unpacked
        # before, its populations may have finished since.
        tar -xf "$CARRIED" --skip-old-files
        touch "$LOGS/grid-carried"
        echo "continuing from $CARRIED: $(tar -tf "$CARRIED" | grep -c 'checkpoints/last.ckpt$') unfinished populations"
      fi
      : > "$LOGS/grid-lanes.pgids"
      rm -f "$LOGS/grid-stopping"
      for index in $(seq "$LANES"); do
        # Not `&`: a job started in the background ignores SIGINT, so Ctrl-C (--stop) could not
        # make klip checkpoint and stop. `setsid -f` forks into a new session instead.
        # Niced: the lanes run for days beside interactive work (tests, CI), which should
        # not wait for them; they take whatever CPU that work leaves.
        setsid -f nohup nice -n "$NICENESS" bash "$0" --lane "$index" > /dev/null 2>&1 < /dev/null
        sleep 2  # lanes take jobs in order
      done
      echo "$LANES lanes started; bash scripts/grids.sh --status" ;;
    *)
      echo "usage: bash scripts/grids.sh [--status | --stop | --pause | --unpause | --reports]" >&2; exit 2 ;;
  esac
}

main "$@"; exit $?
