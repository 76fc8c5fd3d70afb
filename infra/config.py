"""What the local stack needs to know: where its state lives, its ports, versions and heaps.

``carls.settings`` builds an :class:`InfraConfig` from the ``CARLS_`` environment; this
package reads nothing from the environment itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
KAFKA_LOG4J_VERSION = "2.24.3"
CASSANDRA_VERSION = "5.0.6"


@dataclass(frozen=True, slots=True)
class InfraConfig:
    """Settings of the single-node Kafka (KRaft) and Cassandra this machine runs.

    ``state_dir`` holds everything: resolved jars (``lib/``, kept by ``down --wipe``), and
    each server's config, data and logs (``kafka/``, ``cassandra/``, removed by ``--wipe``).
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

    @property
    def lib_dir(self) -> Path:
        return self.state_dir / "lib"

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def cassandra_dir(self) -> Path:
        return self.state_dir / "cassandra"
