"""Cassandra 5.0 on Java 17: one node, or one of several on consecutive loopback
addresses (the first is the seed)."""

from __future__ import annotations

from pathlib import Path

from carls.infra import runtime
from carls.infra.server import Server, render

# Java 17 module access Cassandra 5.0 needs (as its jvm17-server.options documents).
_JPMS = [
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
        )
    ),
]


class CassandraServer(Server):
    name = "cassandra"
    port_env = {
        "cassandra": "CARLS_CASSANDRA_PORT",
        "cassandra storage": "CARLS_CASSANDRA_STORAGE_PORT",
    }

    @property
    def directory(self) -> Path:
        return self.config.node_dir("cassandra", self.index)

    @property
    def token(self) -> int:
        """This node's token (one per node, evenly spread over Murmur3's range)."""
        return -(2**63) + self.index * (2**64 // self.config.nodes) if self.config.nodes > 1 else 0

    @property
    def version(self) -> str:
        return self.config.cassandra_version

    @property
    def port(self) -> int:
        return self.config.cassandra_port

    def ports(self) -> dict[str, int]:
        return {
            "cassandra": self.config.cassandra_port,
            "cassandra storage": self.config.cassandra_storage_port,
        }

    def server_log(self) -> Path:
        return self.directory / "logs" / "system.log"

    def prepare(self, lib: Path) -> list[str]:
        d = self.directory
        yaml, logback = d / "cassandra.yaml", d / "logback.xml"
        render(
            "cassandra.yaml.tmpl",
            yaml,
            host=self.host,
            seeds=f"{self.config.node_host(0)}:{self.config.cassandra_storage_port}",
            token=self.token,
            port=self.config.cassandra_port,
            storage_port=self.config.cassandra_storage_port,
            data_dir=d / "data",
        )
        render("cassandra-logback.xml.tmpl", logback, log_dir=d / "logs")
        jamm = next(lib.glob("jamm-*.jar"))
        heap = self.config.cassandra_heap_mb
        return [
            self.config.java,
            f"-Xms{heap}m",
            f"-Xmx{heap}m",
            "-Xss512k",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=300",
            "-XX:ParallelGCThreads=2",
            "-XX:ConcGCThreads=1",
            "-XX:+HeapDumpOnOutOfMemoryError",
            "-XX:HeapDumpPath=" + str(d / "logs"),
            f"-javaagent:{jamm}",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            *_JPMS,
            f"-Dcassandra.config=file://{yaml}",
            f"-Dlogback.configurationFile={logback}",
            f"-Dcassandra.logdir={d / 'logs'}",
            f"-Dcassandra.storagedir={d / 'data'}",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.load_ring_state=false",
            f"-Dcassandra.initial_token={self.token}",
            # A new cluster's nodes join at once: there is no data to stream yet.
            "-Dcassandra.consistent.rangemovement=false",
            "-cp",
            runtime.classpath(lib),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def probe(self, timeout_s: float) -> str:
        # heavy imports, only when probing
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        # this node answers, not whichever of the ring the driver would pick
        only_this = ExecutionProfile(
            load_balancing_policy=WhiteListRoundRobinPolicy([self.host]), request_timeout=timeout_s
        )
        cluster = Cluster(
            [self.host],
            port=self.config.cassandra_port,
            protocol_version=5,
            connect_timeout=timeout_s,
            execution_profiles={EXEC_PROFILE_DEFAULT: only_this},
        )
        try:
            session = cluster.connect()
            row = session.execute(
                "SELECT release_version FROM system.local", timeout=timeout_s
            ).one()
            if self.config.nodes > 1:  # ready once it sees every node of the ring
                peers = list(session.execute("SELECT peer FROM system.peers", timeout=timeout_s))
                if len(peers) < self.config.nodes - 1:
                    raise RuntimeError(f"sees {len(peers) + 1} of {self.config.nodes} nodes")
            return str(row.release_version)
        finally:
            cluster.shutdown()
