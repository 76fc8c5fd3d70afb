#!/usr/bin/env bash
# The node-fault tests: a three-node stack (`carls infra up --nodes 3`) of its own, in its
# own state folder and on its own ports (so a single-node stack may keep running), the tests
# of tests/cluster against it, then the stack stopped and wiped. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export CARLS_STATE_DIR="${CARLS_CLUSTER_STATE_DIR:-$PWD/.carls-cluster}"
export CARLS_KAFKA_PORT=19092 CARLS_KAFKA_CONTROLLER_PORT=19093
export CARLS_CASSANDRA_PORT=19042 CARLS_CASSANDRA_STORAGE_PORT=17000
unset CARLS_NODES CARLS_KAFKA_BOOTSTRAP_SERVERS CARLS_CASSANDRA_HOSTS
# The seed starts first, the other two Cassandra nodes once it answers; on two busy cores
# (scripts/test.sh runs the other tests meanwhile) that can take several minutes.
export CARLS_INFRA_READY_TIMEOUT_S="${CARLS_INFRA_READY_TIMEOUT_S:-400}"

# On failure, each node's warnings and errors are shown before the stack is wiped.
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    for log in "$CARLS_STATE_DIR"/*/logs/system.log "$CARLS_STATE_DIR"/kafka*/*.log; do
      [ -f "$log" ] || continue
      echo "---- warnings and errors of $log"
      grep -E "^(WARN|ERROR)|Exception" "$log" | tail -n 25 || true
    done
  fi
  .venv/bin/carls infra down --wipe >/dev/null || true
}
trap cleanup EXIT
.venv/bin/carls infra up --nodes 3
.venv/bin/python -m pytest tests/cluster "$@"
