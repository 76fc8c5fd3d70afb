"""Run the ``carls`` command as a user would: a subprocess with the environment's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CarlsRun = Callable[..., subprocess.CompletedProcess[str]]


def run_carls(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    input_text: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carls", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input_text,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def carls() -> CarlsRun:
    return run_carls


def json_of(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)
