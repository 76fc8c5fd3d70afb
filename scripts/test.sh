#!/usr/bin/env bash
# The test suite: install if needed, lint and type-check, start the local stack if it is not
# running (and stop it again afterwards), then run unit, contract, integration and acceptance
# tests against the real Kafka and Cassandra. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

started_here=0
if ! .venv/bin/carls infra status >/dev/null 2>&1; then
  started_here=1
  trap '.venv/bin/carls infra down || true' EXIT
fi
.venv/bin/carls infra up
.venv/bin/python -m pytest tests/unit tests/contract tests/integration tests/acceptance "$@"
if [ "$started_here" = 1 ]; then echo "stopping the stack this run started" >&2; fi
