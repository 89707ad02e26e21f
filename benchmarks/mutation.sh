#!/usr/bin/env bash
# Mutation testing of klip's core modules with mutmut 3 (slow: not part of CI).
#
#   benchmarks/mutation.sh [SET...]      SET: shapes loss envs rollout (default: all four)
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
# torch is not fork-safe once its thread pools exist: fork workers from a clean server.
process_isolation = "forkserver"

[tool.pytest.ini_options]
addopts = "-q"
filterwarnings = ["ignore::DeprecationWarning"]
markers = ["slow: slow tests"]
TOML
  echo "== $set: mutating $mutate with $tests"
  start=$(date +%s)
  (cd "$stage" && nice -n 19 "$root/.venv/bin/mutmut" run --max-children "${KLIP_MUTATION_JOBS:-1}") \
    > "$stage/run.log" 2>&1 || echo "mutmut run exited with $? (see $stage/run.log)"
  (cd "$stage" && "$root/.venv/bin/mutmut" results --all true) > "$stage/all.txt" 2>&1 || true
  (cd "$stage" && "$root/.venv/bin/mutmut" results) > "$stage/results.txt" 2>&1 || true
  total=$(grep -c ': ' "$stage/all.txt" || true)
  survived=$(grep -c ': survived' "$stage/all.txt" || true)
  killed=$(grep -c ': killed' "$stage/all.txt" || true)
  echo "$set: $killed killed, $survived survived, $total mutants, $(( $(date +%s) - start )) s"
  grep ': survived' "$stage/all.txt" | sed 's/:.*//' | while read -r name; do
    (cd "$stage" && "$root/.venv/bin/mutmut" show "$name") >> "$stage/survivors.diff" 2>&1 || true
  done
done
