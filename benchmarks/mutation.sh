#!/usr/bin/env bash
# Mutation testing of klip's core modules with mutmut 3 (slow: not part of CI).
#
#   benchmarks/mutation.sh [SET...]      SET: shapes loss envs rollout (default: all four)
#   KLIP_MUTATION_RERUN=1 benchmarks/mutation.sh [SET...]
#       after adding tests: copy the current tests into the existing staging copy and rerun
#       only the mutants that survived (or had no tests) there; the others stay killed.
#
# Each set mutates a few modules and runs only the test files that exercise them; mutmut
# itself runs, for each mutant, only the tests that call the mutated function. Results:
# $KLIP_MUTATION_DIR/SET/results.txt (survivors with `mutmut show NAME` diffs) and a
# score line per set; tests/README.md records the latest run.
#
# The folders shapes/ algos/ envs/ install as klip.shapes, klip.algos, klip.envs
# (setuptools package-dir), but mutmut derives module names from file paths, so each set
# runs in a staging copy laid out as the installed package (klip/shapes/...). Nothing in
# the working tree is modified.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${KLIP_MUTATION_DIR:-/tmp/klip-mutation}
python=$root/.venv/bin/python
"$python" -c "import mutmut" 2>/dev/null || "$python" -m pip install --quiet -e "$root[mutation]"
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(shapes loss envs rollout)

config_of() {  # mutated files, then the test files, of one set
  case $1 in
    shapes)  echo '"klip/shapes/base.py", "klip/shapes/builtin.py", "klip/shapes/registry.py"|"tests/test_shapes.py", "tests/test_loss_exactness.py"' ;;
    loss)    echo '"klip/algos/loss.py", "klip/algos/update.py"|"tests/test_loss_exactness.py", "tests/test_update.py", "tests/test_scalar_kl.py"' ;;
    envs)    echo '"klip/envs/wrappers.py"|"tests/test_envs.py"' ;;
    rollout) echo '"klip/algos/rollout.py"|"tests/test_rollouts.py"' ;;
    *) echo "unknown set $1 (shapes, loss, envs, rollout)" >&2; exit 2 ;;
  esac
}

summarise() {  # score line and survivor diffs of one staging copy
  local set=$1 stage=$2 start=$3
  (cd "$stage" && "$root/.venv/bin/mutmut" results --all true) > "$stage/all.txt" 2>&1 || true
  (cd "$stage" && "$root/.venv/bin/mutmut" results) > "$stage/results.txt" 2>&1 || true
  local total survived killed
  total=$(grep -c ': ' "$stage/all.txt" || true)
  survived=$(grep -c -E ': (survived|no tests)' "$stage/all.txt" || true)
  killed=$(grep -c -E ': (killed|timeout)' "$stage/all.txt" || true)
  echo "$set: $killed killed, $survived survived or untested, $total mutants, $(( $(date +%s) - start )) s"
  : > "$stage/survivors.diff"
  grep -E ': (survived|no tests)' "$stage/all.txt" | sed 's/:.*//' | while read -r name; do
    (cd "$stage" && "$root/.venv/bin/mutmut" show "$name") >> "$stage/survivors.diff" 2>&1 || true
  done
}

if [ -n "${KLIP_MUTATION_RERUN:-}" ]; then
  for set in "${sets[@]}"; do
    stage=$work/$set
    start=$(date +%s)
    rm -rf "$stage/tests" "$stage/mutants/tests"
    cp -r "$root/tests" "$stage/tests"
    cp -r "$root/tests" "$stage/mutants/tests"
    rm -f "$stage/mutants/mutmut-stats.json"  # which tests call which function: collected anew
    find "$stage" -name __pycache__ -prune -exec rm -rf {} +
    mapfile -t names < <(cd "$stage" && "$root/.venv/bin/mutmut" results --all true 2>/dev/null \
                          | grep -E ': (survived|no tests|not checked)' | sed 's/:.*//; s/^ *//')
    echo "== $set: rerunning ${#names[@]} mutants"
    if [ ${#names[@]} -gt 0 ]; then
      (cd "$stage" && nice -n 19 "$root/.venv/bin/mutmut" run --max-children "${KLIP_MUTATION_JOBS:-1}" \
        "${names[@]}") > "$stage/rerun.log" 2>&1 || echo "mutmut run exited with $? (see $stage/rerun.log)"
    fi
    summarise "$set" "$stage" "$start"
  done
  exit 0
fi

for set in "${sets[@]}"; do
  spec=$(config_of "$set")
  mutate=${spec%%|*}
  tests=${spec##*|}
  stage=$work/$set
  rm -rf "$stage"
  mkdir -p "$stage/klip"
  cp "$root"/klip/*.py "$stage/klip/"
  for package in shapes algos envs studies; do
    cp -r "$root/$package" "$stage/klip/$package"
  done
  cp -r "$root/tests" "$stage/tests"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  cat > "$stage/pyproject.toml" <<TOML
[tool.mutmut]
source_paths = ["klip"]
only_mutate = [$mutate]
pytest_add_cli_args_test_selection = [$tests]
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-x", "-q"]
# "fork": workers fork from the process that ran the tests (the suite pins torch to 1
# thread); "forkserver" (KLIP_MUTATION_ISOLATION) is the safe, ~2x slower alternative.
process_isolation = "${KLIP_MUTATION_ISOLATION:-fork}"
# A mutant that makes the tests 3x slower (e.g. compiling by default) counts as killed.
timeout_multiplier = 3.0

[tool.pytest.ini_options]
addopts = "-q"
filterwarnings = ["ignore::DeprecationWarning"]
markers = ["slow: slow tests"]
TOML
  echo "== $set: mutating $mutate with $tests"
  start=$(date +%s)
  (cd "$stage" && nice -n 19 "$root/.venv/bin/mutmut" run --max-children "${KLIP_MUTATION_JOBS:-1}") \
    > "$stage/run.log" 2>&1 || echo "mutmut run exited with $? (see $stage/run.log)"
  summarise "$set" "$stage" "$start"
done
