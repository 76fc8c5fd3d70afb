#!/usr/bin/env bash
# Create .venv and install carls with its development tools (skipped when up to date).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 not found. $2" >&2; exit 1; }; }
need python3 "Install Python 3.11+."
python3 - <<'PY' || { echo "error: carls needs Python 3.11+ (python3 is $(python3 -V))" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 11))
PY
need java "Install a Java 17+ JDK (Debian/Ubuntu: apt-get install openjdk-17-jdk-headless)."
need mvn "Install Apache Maven (Debian/Ubuntu: apt-get install maven)."

stamp=.venv/.carls-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "installing carls and its dependencies into .venv (first run: a few minutes)" >&2
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "$want" > "$stamp"
