"""`carls infra` as users drive it, against the real servers."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from carls.bank.session import connect
from carls.settings import Settings
from tests.acceptance.conftest import CarlsRun, json_of

pytestmark = pytest.mark.acceptance


def test_up_on_a_running_stack_is_a_no_op_and_status_reports_health(
    stack: Settings, carls: CarlsRun
) -> None:
    report = json_of(carls("infra", "up", "--json"))
    assert report["up"]["already_running"] == {"kafka": True, "cassandra": True}
    assert report["topics_created"] == []
    status = json_of(carls("infra", "status", "--json"))
    assert status["healthy"] is True
    kafka, cassandra = status["servers"]["kafka"], status["servers"]["cassandra"]
    assert kafka["healthy"] and cassandra["healthy"]
    assert kafka["version"].startswith("4.") and cassandra["version"].startswith("5.0")
    assert kafka["port"] == stack.kafka_port and cassandra["port"] == stack.cassandra_port


def json_of_any(proc: object) -> dict[str, object]:
    return dict(json.loads(proc.stdout))  # type: ignore[attr-defined]


def test_data_survives_down_then_up(stack: Settings, carls: CarlsRun) -> None:
    key = f"survivor-{uuid.uuid4().hex[:8]}"
    cluster, session = connect(stack.cassandra)
    try:
        session.execute("INSERT INTO roundtrip (id, payload) VALUES (%s, %s)", (key, b"kept"))
    finally:
        cluster.shutdown()
    down = json_of(carls("infra", "down", "--json"))
    assert down["stopped"] == {"kafka": True, "cassandra": True}
    again = json_of(carls("infra", "down", "--json"))
    assert again["stopped"] == {"kafka": False, "cassandra": False}
    status = carls("infra", "status", "--json")
    assert status.returncode == 1  # unhealthy while down
    assert json_of_any(status)["healthy"] is False
    up = json_of(carls("infra", "up", "--json"))
    assert up["up"]["already_running"] == {"kafka": False, "cassandra": False}
    assert set(up["up"]["ready_s"]) == {"kafka", "cassandra"}
    cluster, session = connect(stack.cassandra)
    try:
        row = session.execute("SELECT payload FROM roundtrip WHERE id = %s", (key,)).one()
        session.execute("DELETE FROM roundtrip WHERE id = %s", (key,))
    finally:
        cluster.shutdown()
    assert row is not None and bytes(row[0]) == b"kept"


def test_a_port_held_by_another_process_is_a_clear_error(carls: CarlsRun, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proc = carls(
            "infra",
            "up",
            env={
                "CARLS_STATE_DIR": str(tmp_path / "state"),
                "CARLS_KAFKA_PORT": str(port),
                "CARLS_KAFKA_CONTROLLER_PORT": "1",
                "CARLS_CASSANDRA_PORT": "2",
                "CARLS_CASSANDRA_STORAGE_PORT": "3",
            },
        )
    assert proc.returncode == 1
    assert f"port {port} (kafka)" in proc.stderr and "already in use" in proc.stderr
    assert "CARLS_KAFKA_PORT" in proc.stderr
    assert not (tmp_path / "state" / "lib").exists()  # failed before resolving anything


def test_missing_java_says_what_to_install(carls: CarlsRun, tmp_path: Path) -> None:
    bare_path = str(Path(os.__file__).parent.parent.parent / "bin")  # python only, no java
    proc = carls(
        "infra",
        "up",
        env={
            "CARLS_STATE_DIR": str(tmp_path / "state"),
            "PATH": f"{tmp_path}:{bare_path}",
            "CARLS_KAFKA_PORT": "1",
            "CARLS_CASSANDRA_PORT": "2",
            "CARLS_KAFKA_CONTROLLER_PORT": "4",
            "CARLS_CASSANDRA_STORAGE_PORT": "5",
        },
    )
    assert proc.returncode == 1, proc.stderr
    assert "Java was not found" in proc.stderr and "openjdk-17" in proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("bank", "namespaces"),
        ("bank", "coverage", "somens"),
        ("job", "status", "some-job"),
    ],
)
def test_commands_with_cassandra_down_print_one_clean_error(
    carls: CarlsRun, command: tuple[str, ...]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = carls(*command, env={"CARLS_CASSANDRA_PORT": str(port)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "NoHostAvailable" not in proc.stderr
    assert f"cannot connect to Cassandra at 127.0.0.1:{port}" in proc.stderr
    assert "carls infra status" in proc.stderr
