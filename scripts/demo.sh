#!/usr/bin/env bash
# The main job: install if needed, then `carls demo` (it brings up the local stack itself).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/carls demo "$@"
