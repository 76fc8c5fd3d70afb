"""Kafka 4 in KRaft mode: one node, or one of several on consecutive loopback addresses,
each a combined broker and controller (the controllers form the quorum)."""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from carls.infra import runtime
from carls.infra.config import KAFKA_LOG4J_VERSION
from carls.infra.errors import StartFailedError
from carls.infra.server import Server, render


class KafkaServer(Server):
    name = "kafka"
    port_env = {"kafka": "CARLS_KAFKA_PORT", "kafka controller": "CARLS_KAFKA_CONTROLLER_PORT"}

    @property
    def directory(self) -> Path:
        return self.config.node_dir("kafka", self.index)

    @property
    def version(self) -> str:
        return self.config.kafka_version

    @property
    def port(self) -> int:
        return self.config.kafka_port

    def ports(self) -> dict[str, int]:
        return {
            "kafka": self.config.kafka_port,
            "kafka controller": self.config.kafka_controller_port,
        }

    def server_log(self) -> Path:
        return self.directory / "logs" / "server.log"

    def maven_properties(self) -> dict[str, str]:
        return {"log4j.version": KAFKA_LOG4J_VERSION}

    def prepare(self, lib: Path) -> list[str]:
        d = self.directory
        props, log4j = d / "server.properties", d / "log4j2.properties"
        cfg = self.config
        voters = ",".join(
            f"{i + 1}@{cfg.node_host(i)}:{cfg.kafka_controller_port}" for i in range(cfg.nodes)
        )
        render(
            "kafka-server.properties.tmpl",
            props,
            host=self.host,
            node_id=self.index + 1,
            voters=voters,
            replication=cfg.replication,
            min_isr=cfg.min_insync,
            port=cfg.kafka_port,
            controller_port=cfg.kafka_controller_port,
            data_dir=d / "data",
        )
        render("kafka-log4j2.properties.tmpl", log4j, log_dir=d / "logs")
        java = [
            self.config.java,
            f"-Xms{min(256, self.config.kafka_heap_mb)}m",
            f"-Xmx{self.config.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:ParallelGCThreads=2",
            "-XX:ConcGCThreads=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={d / 'logs'}",
            "-cp",
            runtime.classpath(lib),
        ]
        self._format_storage(java, props)
        return [*java, "kafka.Kafka", str(props)]

    def _format_storage(self, java: list[str], props: Path) -> None:
        """Format the log dir once; the cluster id is kept so data survives restarts (every
        node of a cluster shares the first node's)."""
        first = self.config.node_dir("kafka", 0) / "cluster.id"
        first.parent.mkdir(parents=True, exist_ok=True)
        if not first.exists():
            first.write_text(_cluster_id())
        id_file = self.directory / "cluster.id"
        if not id_file.exists():
            id_file.write_text(first.read_text())
        proc = subprocess.run(
            [
                *java,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                id_file.read_text().strip(),
                "-c",
                str(props),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if proc.returncode != 0:
            raise StartFailedError(
                "formatting Kafka's log directory failed",
                log_tail=(proc.stdout + proc.stderr)[-4000:],
                hint=f"remove {self.directory} (carls infra down --wipe)",
            )

    def probe(self, timeout_s: float) -> str:
        from kafka import KafkaAdminClient  # heavy import, only when probing

        admin = KafkaAdminClient(
            bootstrap_servers=f"{self.host}:{self.config.kafka_port}",
            request_timeout_ms=int(timeout_s * 1000),
            client_id="carls-infra-probe",
        )
        try:
            cluster = admin.describe_cluster()
            brokers = len(cluster.get("brokers") or [])
            if brokers < self.config.nodes:
                raise StartFailedError(f"Kafka reports {brokers} of {self.config.nodes} brokers")
        finally:
            admin.close()
        return self.version


def _cluster_id() -> str:
    """A 22-character base64url UUID that does not start with '-' (Kafka's format)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
