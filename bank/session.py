"""Connecting to Cassandra and applying the bank's CQL schema.

A process opens one :class:`Connection` and hands it to every Cassandra store it uses
(the bank, the job store, a worker's checkpoint verdicts and crash counts): one driver
session, one pool of connections per host. Stores connect in ``start``, never when built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cassandra import (
    ConsistencyLevel,
    DriverException,
    OperationTimedOut,
    RequestExecutionException,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionBusy
from cassandra.policies import (
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import PreparedStatement

from carls.bank.errors import BankUnavailableError
from carls.schemas.cql import schema_statements

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound="Store")


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
    consistency: str = "LOCAL_QUORUM"
    """Of every read and write: a majority of the copies (all of one when there is one),
    so a read sees every acknowledged write while a minority of the nodes is down.
    Lightweight transactions run at LOCAL_SERIAL."""
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    # Tuning of the bank's queries (measured on loopback; see ``carls bench bank``):
    fetch_size: int = 5000
    """Rows per page of a scan."""
    ids_per_query: int = 192
    """Ids one lookup query asks for. Responses much over ~100 KB cost ~40 ms more on
    loopback (1,024 ids of 128-d in one bucket: 20 ms at 128 or 192 ids a query, 60 ms at
    256 or more); 192 128-d rows are ~96 KB, and with 8 buckets a 1,024-id lookup is then
    one query a bucket (1 ms faster than 128)."""
    batch_rows: int = 128
    """Rows of one partition per unlogged write batch (64 wrote ~20 % slower here)."""
    writes_in_flight: int = 32
    """Write batches in flight at once."""
    namespace_cache_s: float = 5.0
    """How long a namespace's spec is used before it is looked up again."""
    speculative_after_s: float | None = 2.0
    """A read (or a write with its own timestamp) not answered within this many seconds is
    sent once more, to the next replica: a node that has just restarted, or is stalled,
    then slows a read by this much instead of failing it. ``None``: never."""
    reconnect_max_s: float = 10.0
    """Longest wait between tries to reach a node marked down (from 0.5 s, doubling, for
    as long as it takes). The driver's default grows to 10 minutes, so a node back from a
    long stall could go unused (a single-node bank: every request failing with "no host
    available") for as long."""


class _QuietConnectFailure(logging.Filter):
    """Drop the driver's own traceback for a failed first connection: ``connect`` raises
    ``BankUnavailableError`` with the reason instead, so a command prints one clean line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Control connection failed to connect")


logging.getLogger("cassandra.cluster").addFilter(_QuietConnectFailure())


def connect(cfg: CassandraConfig, keyspace: bool = True) -> tuple[Cluster, Session]:
    """Open a cluster and session (the driver's default named-tuple rows; the bank reads them by
    position in its selected column order);
    raise :class:`BankUnavailableError` when unreachable."""
    auth = PlainTextAuthProvider(cfg.username, cfg.password) if cfg.username is not None else None
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc)),
        request_timeout=cfg.request_timeout_s,
        consistency_level=ConsistencyLevel.name_to_value[cfg.consistency.upper()],
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        speculative_execution_policy=(
            None
            if cfg.speculative_after_s is None
            else ConstantSpeculativeExecutionPolicy(cfg.speculative_after_s, max_attempts=1)
        ),
    )
    cluster = Cluster(
        list(cfg.hosts),
        port=cfg.port,
        auth_provider=auth,
        protocol_version=5,
        connect_timeout=cfg.connect_timeout_s,
        # no limit on the tries (the driver's default gives up after 64)
        reconnection_policy=ExponentialReconnectionPolicy(
            min(0.5, cfg.reconnect_max_s), cfg.reconnect_max_s, max_attempts=None
        ),
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


def prepare(session: Session, cql: str) -> PreparedStatement:
    """Prepare ``cql``, marked idempotent when running it twice cannot change the outcome
    (a SELECT, or a write ``USING TIMESTAMP`` without a condition): only those are sent to a
    second replica when the first is slow (``CassandraConfig.speculative_after_s``)."""
    stmt = session.prepare(cql)
    text = " ".join(cql.split()).upper()
    stmt.is_idempotent = text.startswith("SELECT ") or (
        "USING TIMESTAMP" in text and " IF " not in text
    )
    return stmt


def backend(what: str, fn: Callable[[], T]) -> T:
    """Run a driver call; any backend failure becomes a retriable BankUnavailableError."""
    try:
        return fn()
    except (NoHostAvailable, RequestExecutionException, DriverException, OSError) as exc:
        raise BankUnavailableError(f"cassandra {what} failed: {type(exc).__name__}: {exc}") from exc


BUSY_PATIENCE_S = 120.0
"""How long a statement is sent again while every connection it could go to is busy."""


class Call:
    """A statement sent asynchronously, sent again while the driver finds every connection
    busy (its backpressure: the socket's send buffer is full because the node reads slower
    than it is written to, as under a refresh campaign's writes). Such a statement never
    left the client, so sending it again is safe whatever it does."""

    def __init__(
        self, session: Session, statement: Any, params: Any = None, timeouts: int = 0
    ) -> None:
        """``timeouts``: how many times the statement is sent again after it timed out,
        only for one whose second run cannot change the outcome (a partition delete of a
        namespace nothing writes to any more)."""
        self._send: Callable[[], ResponseFuture] = lambda: session.execute_async(statement, params)
        self._timeouts = timeouts
        self.future = self._send()

    def result(self, what: str) -> Any:
        """The statement's result set; ``BankUnavailableError`` when it failed otherwise, or
        the connections stayed busy for ``BUSY_PATIENCE_S``, or it timed out once more than
        ``timeouts``."""
        pause, deadline = 0.01, time.monotonic() + BUSY_PATIENCE_S
        while True:
            try:
                return backend(what, self.future.result)
            except BankUnavailableError as exc:
                timed_out = isinstance(exc.__cause__, (OperationTimedOut, WriteTimeout))
                if timed_out and self._timeouts > 0:
                    self._timeouts -= 1
                    log.warning("%s timed out; sending it again", what)
                elif not _busy(exc.__cause__) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(1.0, pause * 2)
            self.future = self._send()


def _busy(exc: BaseException | None) -> bool:
    """Whether ``exc`` is only the driver's backpressure (no host tried: all busy)."""
    errors = getattr(exc, "errors", None)
    return (
        isinstance(exc, NoHostAvailable)
        and isinstance(errors, dict)
        and bool(errors)
        and all(isinstance(e, ConnectionBusy) for e in errors.values())
    )


class Connection:
    """One cluster and session, shared by every Cassandra store of a process.

    ``start`` connects (again after ``close``); ``close`` shuts the session down. A store
    given a ``CassandraConfig`` instead of a connection opens and owns its own."""

    def __init__(self, config: CassandraConfig) -> None:
        self.config = config
        self._cluster: Cluster | None = None
        self._session: Session | None = None

    def start(self) -> Connection:
        if self._session is None:
            self._cluster, self._session = connect(self.config)
        return self

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the Cassandra connection is not started: call start() first")
        return self._session

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
        self._cluster = self._session = None

    def __enter__(self) -> Connection:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store:
    """Base of a Cassandra-backed store: connects in ``start`` (preparing its statements
    in ``prepare``), shares a ``Connection`` or owns one made from a config."""

    def __init__(self, connection: Connection | CassandraConfig) -> None:
        self._owns = not isinstance(connection, Connection)
        self.connection = (
            connection if isinstance(connection, Connection) else Connection(connection)
        )
        self._started = False

    @property
    def config(self) -> CassandraConfig:
        return self.connection.config

    @property
    def session(self) -> Session:
        return self.connection.session

    def start(self: S) -> S:
        if not self._started:
            self.prepare(self.connection.start().session)
            self._started = True
        return self

    def prepare(self, session: Session) -> None:
        """Prepare the store's statements (called once by ``start``)."""

    def close(self) -> None:
        self._started = False
        if self._owns:
            self.connection.close()

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def echo(cfg: CassandraConfig, key: str, payload: bytes) -> bytes | None:
    """Write ``payload`` to the ``roundtrip`` table, read it back and delete it (the
    stack's smoke check); ``None`` when the row did not come back."""
    cluster, session = connect(cfg)
    try:
        session.execute(
            "INSERT INTO roundtrip (id, payload, written_at) VALUES (%s, %s, %s)",
            (key, payload, datetime.now(UTC)),
        )
        row = session.execute("SELECT payload FROM roundtrip WHERE id = %s", (key,)).one()
        session.execute("DELETE FROM roundtrip WHERE id = %s", (key,))
    finally:
        cluster.shutdown()
    return None if row is None else bytes(row[0])


def check_consistency(name: str) -> str:
    """``name`` as one of the driver's consistency levels (upper case), or ValueError."""
    from cassandra import ConsistencyLevel

    level = name.upper()
    if level not in ConsistencyLevel.name_to_value:
        known = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"expected one of {known}, got {name!r}")
    return level
