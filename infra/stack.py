"""The local stack as a whole: both servers up, down and checked together."""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from carls.infra import process, runtime
from carls.infra.cassandra import CassandraServer
from carls.infra.config import InfraConfig
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
    return [KafkaServer(config), CassandraServer(config)]


def up(config: InfraConfig) -> UpReport:
    """Start whatever is not running and wait until both servers answer real requests."""
    report = UpReport()
    everything = servers(config)
    todo = [s for s in everything if s.pid() is None]
    for server in everything:
        report.already_running[server.name] = server not in todo
    for server in todo:  # fail fast, before any download
        process.check_ports_free(config.host, server.ports(), server.port_env)
    if todo:
        runtime.java_major_version(config.java)
    # Resolve jars in parallel (first start only), then launch; both JVMs boot concurrently.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for job in [pool.submit(s.resolve) for s in todo]:
            job.result()
    started = time.monotonic()
    for server in todo:
        server.launch()
    deadline = started + config.ready_timeout_s
    with ThreadPoolExecutor(max_workers=2) as pool:
        waiting = {s.name: pool.submit(s.wait_ready, deadline) for s in everything}
        for name, ready in waiting.items():
            ready_at = ready.result()
            if not report.already_running[name]:
                report.ready_s[name] = round(ready_at - started, 2)
    return report


def down(config: InfraConfig, wipe: bool = False) -> dict[str, bool]:
    """Stop both servers; with ``wipe``, remove their data and logs (resolved jars stay)."""
    stopped = {s.name: s.stop_server() for s in servers(config)}
    if wipe:
        for s in servers(config):
            shutil.rmtree(s.directory, ignore_errors=True)
    return stopped


def status(config: InfraConfig, probe: bool = True) -> list[ServerStatus]:
    return [s.status(probe=probe) for s in servers(config)]
