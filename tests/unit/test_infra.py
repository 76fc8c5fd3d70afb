"""The local stack's pure parts: configs rendered, pids recognised, tools checked."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from carls.infra import process, runtime
from carls.infra.cassandra import CassandraServer
from carls.infra.config import InfraConfig
from carls.infra.errors import PortTakenError, ToolMissingError
from carls.infra.kafka import KafkaServer, _cluster_id
from carls.infra.server import render


def test_kafka_config_is_single_node_kraft_on_the_configured_ports(tmp_path: Path) -> None:
    cfg = InfraConfig(state_dir=tmp_path, kafka_port=19092, kafka_controller_port=19093)
    render(
        "kafka-server.properties.tmpl",
        tmp_path / "p",
        host="127.0.0.1",
        node_id=1,
        voters="1@127.0.0.1:19093",
        replication=cfg.replication,
        min_isr=cfg.min_insync,
        port=19092,
        controller_port=19093,
        data_dir=tmp_path / "d",
    )
    props = dict(
        line.split("=", 1)
        for line in (tmp_path / "p").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert KafkaServer(cfg).ports() == {"kafka": 19092, "kafka controller": 19093}


def test_cassandra_config_keeps_everything_under_the_state_dir(tmp_path: Path) -> None:
    render(
        "cassandra.yaml.tmpl",
        tmp_path / "c.yaml",
        host="127.0.0.1",
        seeds="127.0.0.1:17000",
        token=0,
        port=19042,
        storage_port=17000,
        data_dir=tmp_path / "data",
    )
    text = (tmp_path / "c.yaml").read_text()
    assert "native_transport_port: 19042" in text
    assert "storage_port: 17000" in text
    assert f"commitlog_directory: {tmp_path}/data/commitlog" in text
    assert "${" not in text
    cmd_jvm = CassandraServer(InfraConfig(state_dir=tmp_path, cassandra_heap_mb=768))
    assert cmd_jvm.ports()["cassandra"] == 9042


def test_cluster_ids_have_kafkas_format() -> None:
    ids = {_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_a_recorded_pid_counts_only_while_its_command_line_names_the_folder(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(ours)])
    try:
        (ours / "server.pid").write_text(str(proc.pid))
        assert process.running_pid(ours) == proc.pid
        other = tmp_path / "other"
        other.mkdir()
        (other / "server.pid").write_text(str(proc.pid))  # a recycled pid: not ours
        assert process.running_pid(other) is None
        assert process.stop(ours, timeout_s=10) is True
        assert process.running_pid(ours) is None
        assert not (ours / "server.pid").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_port_in_use_is_reported_with_the_setting_to_change() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortTakenError, match=f"port {port} \\(kafka\\)") as err:
            process.check_ports_free("127.0.0.1", {"kafka": port}, {"kafka": "CARLS_KAFKA_PORT"})
    assert "CARLS_KAFKA_PORT" in err.value.hint


def test_missing_java_names_the_package_to_install() -> None:
    with pytest.raises(ToolMissingError, match="Java was not found") as err:
        runtime.java_major_version("no-such-java-binary")
    assert "openjdk-17" in err.value.hint


def test_missing_maven_is_reported_only_when_jars_must_be_resolved(tmp_path: Path) -> None:
    done = tmp_path / "kafka-9.9.9"
    done.mkdir()
    (done / ".complete").write_text("9.9.9")
    assert runtime.resolve_jars("kafka", "9.9.9", tmp_path, maven="no-such-mvn") == done
    with pytest.raises(ToolMissingError, match="Maven was not found"):
        runtime.resolve_jars("kafka", "9.9.8", tmp_path, maven="no-such-mvn")


def test_log_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert process.tail(log, 3) == "line 97\nline 98\nline 99"
    assert "no log" in process.tail(tmp_path / "absent.log")


def test_three_nodes_get_their_own_addresses_folders_tokens_and_three_copies(
    tmp_path: Path,
) -> None:
    one, three = InfraConfig(state_dir=tmp_path), InfraConfig(state_dir=tmp_path, nodes=3)
    assert (one.replication, one.min_insync, one.node_dir("kafka", 0)) == (1, 1, tmp_path / "kafka")
    assert (three.replication, three.min_insync) == (3, 2)
    assert [three.node_host(i) for i in range(3)] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    nodes = [CassandraServer(three, i) for i in range(3)]
    assert [n.name for n in nodes] == ["cassandra-1", "cassandra-2", "cassandra-3"]
    assert [n.directory for n in nodes] == [tmp_path / f"cassandra-{i}" for i in (1, 2, 3)]
    assert len({n.token for n in nodes}) == 3
    assert KafkaServer(three, 2).host == "127.0.0.3"
