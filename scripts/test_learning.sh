#!/usr/bin/env bash
# The learning tests (marker `learning`: minutes of training each, to check a learning
# claim) on a single-node stack of their own, in its own state folder and on its own ports,
# so they can run while the other tests stop, freeze and restart the main stack; the stack is
# stopped and wiped afterwards. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export CARLS_STATE_DIR="${CARLS_LEARNING_STATE_DIR:-$PWD/.carls-learning}"
export CARLS_KAFKA_PORT=29092 CARLS_KAFKA_CONTROLLER_PORT=29093
export CARLS_CASSANDRA_PORT=29042 CARLS_CASSANDRA_STORAGE_PORT=27000
unset CARLS_NODES CARLS_KAFKA_BOOTSTRAP_SERVERS CARLS_CASSANDRA_HOSTS

trap '.venv/bin/carls infra down --wipe >/dev/null || true' EXIT
.venv/bin/carls infra up
.venv/bin/python -m pytest tests/integration tests/acceptance -m learning --durations=5 "$@"
