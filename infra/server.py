"""What both servers share: a folder, a JVM command, ports, a log, a health probe."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from carls.infra import process, runtime
from carls.infra.config import InfraConfig
from carls.infra.errors import StartFailedError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServerStatus:
    name: str
    running: bool
    healthy: bool
    version: str
    host: str
    port: int
    pid: int | None = None
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def render(template: str, target: Path, **values: object) -> None:
    text = (resources.files("carls.infra") / "templates" / template).read_text()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(Template(text).substitute({k: str(v) for k, v in values.items()}))


class Server(ABC):
    """One JVM server whose config, data and logs live under ``directory``."""

    name: str
    port_env: dict[str, str]

    def __init__(self, config: InfraConfig, index: int = 0) -> None:
        self.config = config
        self.index = index
        self.host = config.node_host(index)
        """This node's address."""
        if config.nodes > 1:
            self.name = f"{type(self).name}-{index + 1}"

    @property
    @abstractmethod
    def directory(self) -> Path: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def log_file(self) -> Path:
        return self.directory / "logs" / "stdout.log"

    @abstractmethod
    def ports(self) -> dict[str, int]: ...

    @abstractmethod
    def server_log(self) -> Path: ...

    @abstractmethod
    def prepare(self, lib: Path) -> list[str]:
        """Write configs, format storage if needed; return the JVM command line."""

    @abstractmethod
    def probe(self, timeout_s: float) -> str:
        """Talk to the server; return its reported version or raise."""

    @property
    def kind(self) -> str:
        """``kafka`` or ``cassandra``, whichever node this is."""
        return type(self).name

    def resolve(self) -> Path:
        return runtime.resolve_jars(
            self.kind, self.version, self.config.lib_dir, self.config.maven, self.maven_properties()
        )

    def maven_properties(self) -> dict[str, str]:
        return {}

    def pid(self) -> int | None:
        return process.running_pid(self.directory)

    def launch(self) -> int:
        """Start the server (already running: return its pid)."""
        pid = self.pid()
        if pid is not None:
            return pid
        process.check_ports_free(self.host, self.ports(), self.port_env)
        lib = self.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = self.prepare(lib)
        log.info("starting %s %s on %s:%d", self.name, self.version, self.host, self.port)
        return process.start(cmd, self.directory, self.log_file)

    def stop_server(self, timeout_s: float = 60.0) -> bool:
        """Stop the server if it runs; return whether it did."""
        return process.stop(self.directory, timeout_s)

    def wait_ready(self, deadline: float) -> float:
        """Poll until the server answers a real request; return the monotonic time it did."""
        last_error = "not reachable yet"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StartFailedError(
                    f"{self.name} exited during start-up",
                    hint=f"see {self.server_log()}",
                    log_tail=self._tail(),
                )
            if process.port_open(self.host, self.port):
                try:
                    self.probe(timeout_s=10.0)
                    return time.monotonic()
                except Exception as exc:  # any failure means "not ready yet"
                    last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise StartFailedError(
            f"{self.name} was not ready within the deadline ({last_error})",
            hint=f"see {self.server_log()}; a slow machine may need CARLS_INFRA_READY_TIMEOUT_S",
            log_tail=self._tail(),
        )

    def status(self, probe: bool = True) -> ServerStatus:
        pid = self.pid()
        st = ServerStatus(
            name=self.name,
            running=pid is not None,
            healthy=False,
            version=self.version,
            host=self.host,
            port=self.port,
            pid=pid,
        )
        if pid is None:
            st.detail = "not running"
            return st
        st.rss_mb = process.rss_mb(pid)
        st.peak_rss_mb = process.peak_rss_mb(pid)
        if probe:
            try:
                st.version = self.probe(timeout_s=10.0) or self.version
                st.healthy = True
                st.detail = "ok"
            except Exception as exc:  # reported, not raised: status must always answer
                st.detail = f"unhealthy: {type(exc).__name__}: {exc}"
        return st

    def _tail(self) -> str:
        own = process.tail(self.server_log())
        return own if not own.startswith("(no log") else process.tail(self.log_file)
