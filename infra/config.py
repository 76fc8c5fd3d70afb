"""What the local stack needs to know: where its state lives, its ports, versions and heaps.

``carls.settings`` builds an :class:`InfraConfig` from the ``CARLS_`` environment; this
package reads nothing from the environment itself.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
KAFKA_LOG4J_VERSION = "2.24.3"
CASSANDRA_VERSION = "5.0.6"
STACK_FILE = "stack.json"
"""Written by ``up`` in the state folder: how many nodes the stack there was made with."""


def recorded_nodes(state_dir: Path) -> int | None:
    """The node count the stack in ``state_dir`` was made with (None: never started)."""
    try:
        return int(json.loads((state_dir / STACK_FILE).read_text())["nodes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_nodes(state_dir: Path, nodes: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STACK_FILE).write_text(json.dumps({"nodes": nodes}) + "\n")


@dataclass(frozen=True, slots=True)
class InfraConfig:
    """Settings of the Kafka (KRaft) and Cassandra this machine runs: one node of each, or
    ``nodes`` of each on consecutive loopback addresses (``host``, ``host + 1``, ...: every
    node keeps the same ports on its own address, as on separate machines).

    ``state_dir`` holds everything: resolved jars (``lib/``, kept by ``down --wipe``), and
    each server's config, data and logs (``kafka/``, ``cassandra/``; with several nodes
    ``kafka-1/``, ``cassandra-1/``, ...; removed by ``--wipe``).
    """

    state_dir: Path
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    cassandra_port: int = 9042
    cassandra_storage_port: int = 7000
    kafka_version: str = KAFKA_VERSION
    cassandra_version: str = CASSANDRA_VERSION
    kafka_heap_mb: int = 512
    cassandra_heap_mb: int = 1024
    ready_timeout_s: float = 180.0
    java: str = "java"
    maven: str = "mvn"
    nodes: int = 1

    def node_host(self, index: int) -> str:
        """The address of node ``index`` (0-based)."""
        return str(ipaddress.ip_address(self.host) + index)

    @property
    def replication(self) -> int:
        """Copies of every record and row: one per node, at most three."""
        return min(3, self.nodes)

    @property
    def min_insync(self) -> int:
        """Replicas a Kafka write needs (a majority of the copies)."""
        return self.replication // 2 + 1

    @property
    def lib_dir(self) -> Path:
        return self.state_dir / "lib"

    def node_dir(self, server: str, index: int) -> Path:
        """``<state_dir>/<server>`` for one node, ``<state_dir>/<server>-<index + 1>`` for
        each of several."""
        return self.state_dir / (server if self.nodes == 1 else f"{server}-{index + 1}")

    @property
    def kafka_dir(self) -> Path:
        return self.node_dir("kafka", 0)

    @property
    def cassandra_dir(self) -> Path:
        return self.node_dir("cassandra", 0)
