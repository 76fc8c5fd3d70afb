"""Connecting to Cassandra and applying the bank's CQL schema."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from carls.bank.errors import BankUnavailableError
from carls.schemas.cql import schema_statements

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CassandraConfig:
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "carls"
    replication: dict[str, Any] = field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": 1}
    )
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    local_dc: str | None = None
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0


class _QuietConnectFailure(logging.Filter):
    """Drop the driver's own traceback for a failed first connection: ``connect`` raises
    ``BankUnavailableError`` with the reason instead, so a command prints one clean line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Control connection failed to connect")


logging.getLogger("cassandra.cluster").addFilter(_QuietConnectFailure())


def connect(cfg: CassandraConfig, keyspace: bool = True) -> tuple[Cluster, Session]:
    """Open a cluster and session (rows come back as plain tuples: they decode fastest);
    raise :class:`BankUnavailableError` when unreachable."""
    auth = PlainTextAuthProvider(cfg.username, cfg.password) if cfg.username is not None else None
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc)),
        request_timeout=cfg.request_timeout_s,
    )
    cluster = Cluster(
        list(cfg.hosts),
        port=cfg.port,
        auth_provider=auth,
        protocol_version=5,
        connect_timeout=cfg.connect_timeout_s,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        session = cluster.connect(cfg.keyspace if keyspace else None)
    except Exception as exc:
        cluster.shutdown()
        raise BankUnavailableError(
            f"cannot connect to Cassandra at {','.join(cfg.hosts)}:{cfg.port}"
            f"{' keyspace ' + cfg.keyspace if keyspace else ''}: {_why(exc)}"
        ) from exc
    return cluster, session


def _why(exc: Exception) -> str:
    """A driver failure in one line: each host's error, without the driver's repr noise."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict) and errors:
        return "; ".join(
            f"{host}: {getattr(err, 'strerror', None) or type(err).__name__}"
            for host, err in errors.items()
        )
    return str(exc) or type(exc).__name__


def apply_schema(cfg: CassandraConfig) -> int:
    """Create the keyspace and tables if absent (idempotent); return statements run."""
    cluster, session = connect(cfg, keyspace=False)
    try:
        stmts = schema_statements(cfg.keyspace, cfg.replication)
        for stmt in stmts:
            session.execute(stmt, timeout=60)
        return len(stmts)
    finally:
        cluster.shutdown()
