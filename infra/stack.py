"""The local stack as a whole: both servers up, down and checked together."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from carls.infra import process, runtime
from carls.infra.cassandra import CassandraServer
from carls.infra.config import STACK_FILE, InfraConfig, record_nodes, recorded_nodes
from carls.infra.errors import InfraError
from carls.infra.kafka import KafkaServer
from carls.infra.server import Server, ServerStatus

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UpReport:
    """What ``up`` did: per server, whether it was already running, and the seconds from
    launching the servers (jars already resolved) until it answered a real request."""

    already_running: dict[str, bool] = field(default_factory=dict)
    ready_s: dict[str, float] = field(default_factory=dict)


def servers(config: InfraConfig) -> list[Server]:
    """Every node of both servers: Kafka's first, then Cassandra's."""
    return [
        *(KafkaServer(config, i) for i in range(config.nodes)),
        *(CassandraServer(config, i) for i in range(config.nodes)),
    ]


def made_with(config: InfraConfig) -> int | None:
    """The node count of the stack in the state folder (None: there is none)."""
    recorded = recorded_nodes(config.state_dir)
    if recorded is not None:
        return recorded
    # made before the count was recorded: its nodes' folders tell
    several = len(list(config.state_dir.glob("kafka-[0-9]*")))
    if several:
        return several
    return 1 if any((config.state_dir / s).exists() for s in ("kafka", "cassandra")) else None


def up(config: InfraConfig) -> UpReport:
    """Start whatever is not running and wait until both servers answer real requests."""
    made = made_with(config)
    if made is not None and made != config.nodes:
        raise InfraError(
            f"the stack in {config.state_dir} was made with {made} node(s), not {config.nodes}",
            hint="remove it first (`carls infra down --wipe`: its data goes), or give this "
            "one its own CARLS_STATE_DIR",
        )
    record_nodes(config.state_dir, config.nodes)
    report = UpReport()
    everything = servers(config)
    todo = [s for s in everything if s.pid() is None]
    for server in everything:
        report.already_running[server.name] = server not in todo
    for server in todo:  # fail fast, before any download
        process.check_ports_free(server.host, server.ports(), server.port_env)
    if todo:
        runtime.java_major_version(config.java)
    # Resolve jars in parallel (first start only, once per server kind), then launch; the
    # JVMs boot concurrently.
    kinds = {s.kind: s for s in todo}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for job in [pool.submit(s.resolve) for s in kinds.values()]:
            job.result()
    started = time.monotonic()
    deadline = started + config.ready_timeout_s * (1 + (config.nodes - 1) / 2)
    # Cassandra's other nodes join a ring whose seed already answers: launched at the same
    # moment on a busy machine, a node that found no seed yet was seen never joining.
    joining = [s for s in todo if isinstance(s, CassandraServer) and s.index > 0]
    for server in todo:
        if server not in joining:
            server.launch()
    if joining:
        seed = next(s for s in everything if isinstance(s, CassandraServer) and s.index == 0)
        _wait_answering(seed, deadline)
        for server in joining:
            server.launch()
    with ThreadPoolExecutor(max_workers=len(everything)) as pool:
        waiting = {s.name: pool.submit(s.wait_ready, deadline) for s in everything}
        for name, ready in waiting.items():
            ready_at = ready.result()
            if not report.already_running[name]:
                report.ready_s[name] = round(ready_at - started, 2)
    return report


def _wait_answering(server: Server, deadline: float) -> None:
    """Wait until ``server`` listens on its client port, it exits, or the deadline passes
    (``wait_ready`` then says which)."""
    while time.monotonic() < deadline and server.pid() is not None:
        if process.port_open(server.host, server.port):
            return
        time.sleep(0.5)


def down(config: InfraConfig, wipe: bool = False) -> dict[str, bool]:
    """Stop every node of both servers (as many as the stack was made with); with ``wipe``,
    remove their data and logs (resolved jars stay)."""
    config = dataclasses.replace(config, nodes=made_with(config) or config.nodes)
    stopped = {s.name: s.stop_server() for s in servers(config)}
    if wipe:
        for s in servers(config):
            shutil.rmtree(s.directory, ignore_errors=True)
        (config.state_dir / STACK_FILE).unlink(missing_ok=True)
    return stopped


def status(config: InfraConfig, probe: bool = True) -> list[ServerStatus]:
    return [s.status(probe=probe) for s in servers(config)]
