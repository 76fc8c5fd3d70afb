"""Fixtures shared by every test folder.

Integration and acceptance tests need the real Kafka and Cassandra that `carls infra up`
starts. When they are absent a test skips locally, but under CI=true it fails: CI must
never count a skipped integration test as passing.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from carls.settings import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def require_stack(settings: Settings) -> None:
    """Fail (under CI) or skip (locally) unless both servers accept connections."""
    down = [
        f"{name} at {host}:{port}"
        for name, host, port in (
            ("kafka", *settings.kafka.bootstrap_servers[0].rsplit(":", 1)),
            ("cassandra", settings.cassandra.hosts[0], settings.cassandra.port),
        )
        if not _reachable(str(host), int(port))
    ]
    if down:
        absent(f"{' and '.join(down)} not reachable: start the stack with `carls infra up`")


def absent(message: str) -> None:
    """A server a test needs is away: fail under CI, skip locally."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture
def stack(settings: Settings) -> Settings:
    """The settings of a running local stack."""
    require_stack(settings)
    return settings


@pytest.fixture
def unique() -> str:
    """A short unique token for topic, group and namespace names."""
    return "t" + uuid.uuid4().hex[:12]
