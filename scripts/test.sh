#!/usr/bin/env bash
# The test suite: install if needed, start the local stack if it is not running (and stop it
# again afterwards), lint and type-check, run the unit, contract, integration and acceptance
# tests against the real Kafka and Cassandra, and beside them the node-fault tests on a
# three-node stack of their own (scripts/test_cluster.sh). Extra arguments go to every pytest.
#
# Two tracks run from the start alongside all of that, each on a stack of its own, and their
# reports follow the others': the learning tests (marker `learning`: minutes of training
# each, scripts/test_learning.sh) and the node-fault tests on a three-node stack
# (scripts/test_cluster.sh). The main tests mostly wait on Kafka and Cassandra, so the two
# cores are shared rather than taken turn by turn.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

started_here=0
if ! .venv/bin/carls infra status >/dev/null 2>&1; then
  started_here=1
  trap '.venv/bin/carls infra down || true' EXIT
fi
.venv/bin/carls infra up

learning_log="$(mktemp)"
bash scripts/test_learning.sh "$@" >"$learning_log" 2>&1 &
learning=$!
cluster_log="$(mktemp)"
bash scripts/test_cluster.sh -p no:cacheprovider >"$cluster_log" 2>&1 &
cluster=$!

status=0
.venv/bin/ruff check . || status=$?
.venv/bin/ruff format --check . || status=$?
.venv/bin/mypy || status=$?
.venv/bin/python -m pytest tests/unit tests/contract tests/integration tests/acceptance \
  -m "not learning" --durations=25 "$@" || status=$?

clustered=0
wait "$cluster" || clustered=$?
echo "================ the node-fault tests (run alongside the others) ================"
cat "$cluster_log"
rm -f "$cluster_log"
if [ "$clustered" != 0 ]; then
  status=$clustered
fi
learned=0
wait "$learning" || learned=$?
echo "================ the learning tests (run alongside the others) ================"
cat "$learning_log"
rm -f "$learning_log"
if [ "$learned" != 0 ] && [ "$learned" != 5 ]; then  # 5: none selected by the arguments
  status=$learned
fi

if [ "$started_here" = 1 ]; then
  echo "stopping the stack this run started" >&2
  .venv/bin/carls infra down
  trap - EXIT
fi
exit "$status"
