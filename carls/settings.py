"""The one settings object of a carls process, read from ``CARLS_*`` environment variables.

Every field is ``CARLS_<FIELD>`` in the environment (``CARLS_KAFKA_PORT=19092``); complex
fields take JSON (``CARLS_CASSANDRA_REPLICATION='{"class": "NetworkTopologyStrategy",
"dc1": 3}'``). This is the only place that reads the environment; the packages below get
plain config objects built from it.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from carls.bank.ann import HnswParams
from carls.bank.artifacts import DESTINATIONS, ArtifactStore
from carls.bank.blobs import BlobStore
from carls.bank.session import CassandraConfig, check_consistency
from carls.infra.config import InfraConfig, recorded_nodes
from carls.schemas.errors import SchemaError
from carls.schemas.names import validate_name
from carls.streams.config import KafkaConnection
from carls.streams.topics import Topics


def _defaults(config: type) -> dict[str, Any]:
    """The defaults a config dataclass declares: the one place each default is written."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


_INFRA = _defaults(InfraConfig)
_CASSANDRA = _defaults(CassandraConfig)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARLS_", frozen=True, extra="ignore")

    # Local stack (carls infra)
    state_dir: Path = Field(Path(".carls"), description="data, logs and jars of the local stack")
    host: str = Field(_INFRA["host"], description="address the local servers bind to")
    kafka_port: int = _INFRA["kafka_port"]
    kafka_controller_port: int = _INFRA["kafka_controller_port"]
    cassandra_port: int = _CASSANDRA["port"]
    cassandra_storage_port: int = _INFRA["cassandra_storage_port"]
    kafka_version: str = _INFRA["kafka_version"]
    cassandra_version: str = _INFRA["cassandra_version"]
    kafka_heap_mb: int = _INFRA["kafka_heap_mb"]
    cassandra_heap_mb: int = _INFRA["cassandra_heap_mb"]
    infra_ready_timeout_s: float = _INFRA["ready_timeout_s"]
    nodes: int | None = Field(
        None,
        ge=1,
        le=9,
        description="nodes of the local stack (each Kafka broker and Cassandra node on its "
        "own loopback address); default: what `carls infra up --nodes` last made in the "
        "state folder, else 1. Also sets the default hosts, brokers and replication below",
    )

    # Kafka connection (defaults to the local stack)
    kafka_bootstrap_servers: str | None = Field(
        None, description="comma-separated host:port list; default: the local stack"
    )
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    topic_prefix: str = Field("carls", description="topics are <prefix>.jobs, ...")
    replication_factor: int | None = Field(
        None, ge=1, description="copies of each topic's records; default min(3, nodes)"
    )
    partitions_jobs: int = Field(
        4, ge=1, description="partitions of the jobs topic: at most this many trainers share it"
    )
    partitions_checkpoints: int = 1
    partitions_examples: int = 4
    partitions_demand: int = 2
    partitions_progress: int = 1
    partitions_deadletter: int = 1

    # Cassandra connection (defaults to the local stack)
    cassandra_hosts: str | None = Field(
        None, description="comma-separated contact points; default: the local stack"
    )
    keyspace: str = _CASSANDRA["keyspace"]
    cassandra_replication: dict[str, Any] | None = Field(
        None,
        description="the keyspace's replication map; default SimpleStrategy with "
        "min(3, nodes) copies",
    )
    cassandra_consistency: str = Field(
        _CASSANDRA["consistency"],
        description="consistency level of reads and writes (LOCAL_QUORUM: a majority of the "
        "copies, so a read sees every acknowledged write while one node of three is down)",
    )
    cassandra_username: str | None = None
    cassandra_password: SecretStr | None = None
    cassandra_local_dc: str | None = None
    cassandra_request_timeout_s: float = _CASSANDRA["request_timeout_s"]
    cassandra_connect_timeout_s: float = _CASSANDRA["connect_timeout_s"]
    cassandra_fetch_size: int = Field(
        _CASSANDRA["fetch_size"], ge=1, description="rows per scan page"
    )
    cassandra_ids_per_query: int = Field(
        _CASSANDRA["ids_per_query"], ge=1, description="ids one lookup query asks for"
    )
    cassandra_batch_rows: int = Field(
        _CASSANDRA["batch_rows"], ge=1, description="rows of one partition per write batch"
    )
    cassandra_writes_in_flight: int = Field(
        _CASSANDRA["writes_in_flight"], ge=2, description="write batches in flight at once"
    )
    cassandra_namespace_cache_s: float = Field(
        _CASSANDRA["namespace_cache_s"], ge=0, description="how long a namespace spec is reused"
    )

    # Observability
    log_root: Path | None = Field(
        None,
        description="where trainers write TensorBoard event files, a run folder per job "
        "(`tensorboard --logdir` it); default <state_dir>/runs",
    )
    metrics_host: str = Field(
        "0.0.0.0", description="address workers and trainers serve Prometheus /metrics on"
    )
    worker_metrics_port: int = Field(
        9464,
        ge=-1,
        le=65535,
        description="port of a worker's /metrics (taken: the next free one of 16); -1: none",
    )
    trainer_metrics_port: int = Field(
        9480,
        ge=-1,
        le=65535,
        description="port of a trainer's /metrics (taken: the next free one of 16); -1: none",
    )

    # Knowledge
    checkpoint_root: Path | None = Field(
        None,
        description="this machine's checkpoint folder: trainers save there first, workers "
        "read file:// checkpoints only inside it; default <state_dir>/checkpoints",
    )
    checkpoint_store: str = Field(
        "bank",
        description="where trainers publish checkpoints: 'bank' (chunked in Cassandra, every "
        "machine reads them), 'file' (the checkpoint root: one machine) or an object-store "
        "URI prefix such as s3://bucket/carls (with its fsspec backend installed)",
    )
    neighbours_exact_below: int = Field(
        20_000,
        ge=0,
        description="namespaces with fewer ids get exact neighbours; larger ones an "
        "approximate (HNSW) index, built once per checkpoint step",
    )
    neighbours_ef_construction: int = Field(
        HnswParams.expansion_add,
        ge=8,
        description="candidates the HNSW index considers when it links a new id "
        "(efConstruction): higher is better recall for a slower build",
    )
    neighbours_ef_search: int = Field(
        HnswParams.expansion_search,
        ge=10,
        description="the fewest candidates the HNSW index considers per query (efSearch), "
        "raised after each build until the measured recall meets "
        "CARLS_NEIGHBOURS_RECALL_TARGET",
    )
    neighbours_recall_target: float = Field(
        HnswParams.recall_target,
        ge=0,
        le=1,
        description="recall@10 against exact search, measured on a sample after each HNSW "
        "build, that the search must reach (0: no calibration)",
    )
    job_lease_s: float = Field(
        30.0,
        gt=1,
        description="a job whose trainer has not renewed its lease for this long is run "
        "again by another trainer",
    )
    checkpoint_keep: int = Field(
        3, ge=1, description="checkpoints kept per namespace in the store; older are deleted"
    )
    artifact_max_mb: int = Field(
        1024, ge=1, description="the largest checkpoint or data file carls stores or loads (MiB)"
    )

    @field_validator("cassandra_consistency")
    @classmethod
    def _consistency_is_known(cls, value: str) -> str:
        return check_consistency(value)

    @field_validator("checkpoint_store")
    @classmethod
    def _store_is_known(cls, value: str) -> str:
        if value not in ("bank", "file") and "://" not in value:
            raise ValueError(f"expected {DESTINATIONS}, got {value!r}")
        return value

    @field_validator("keyspace")
    @classmethod
    def _keyspace_is_a_name(cls, value: str) -> str:
        try:
            return validate_name(value, "keyspace")
        except SchemaError as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(str(exc)) from exc

    @cached_property
    def node_count(self) -> int:
        """``nodes``, else the node count of the stack in the state folder, else 1."""
        return self.nodes or recorded_nodes(self.state_dir.resolve()) or _INFRA["nodes"]

    @cached_property
    def infra(self) -> InfraConfig:
        return InfraConfig(
            state_dir=self.state_dir.resolve(),
            host=self.host,
            nodes=self.node_count,
            kafka_port=self.kafka_port,
            kafka_controller_port=self.kafka_controller_port,
            cassandra_port=self.cassandra_port,
            cassandra_storage_port=self.cassandra_storage_port,
            kafka_version=self.kafka_version,
            cassandra_version=self.cassandra_version,
            kafka_heap_mb=self.kafka_heap_mb,
            cassandra_heap_mb=self.cassandra_heap_mb,
            ready_timeout_s=self.infra_ready_timeout_s,
        )

    @cached_property
    def kafka(self) -> KafkaConnection:
        local = ",".join(f"{h}:{self.kafka_port}" for h in self._node_hosts)
        servers = (self.kafka_bootstrap_servers or local).split(",")
        return KafkaConnection(
            bootstrap_servers=tuple(s.strip() for s in servers if s.strip()),
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=(
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            ),
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
        )

    @cached_property
    def cassandra(self) -> CassandraConfig:
        hosts = (self.cassandra_hosts or ",".join(self._node_hosts)).split(",")
        replication = self.cassandra_replication or {
            "class": "SimpleStrategy",
            "replication_factor": self.infra.replication,
        }
        return CassandraConfig(
            hosts=tuple(h.strip() for h in hosts if h.strip()),
            port=self.cassandra_port,
            keyspace=self.keyspace,
            replication=dict(replication),
            consistency=self.cassandra_consistency,
            username=self.cassandra_username,
            password=(
                self.cassandra_password.get_secret_value() if self.cassandra_password else None
            ),
            local_dc=self.cassandra_local_dc,
            request_timeout_s=self.cassandra_request_timeout_s,
            connect_timeout_s=self.cassandra_connect_timeout_s,
            fetch_size=self.cassandra_fetch_size,
            ids_per_query=self.cassandra_ids_per_query,
            batch_rows=self.cassandra_batch_rows,
            writes_in_flight=self.cassandra_writes_in_flight,
            namespace_cache_s=self.cassandra_namespace_cache_s,
        )

    @property
    def _node_hosts(self) -> list[str]:
        return [self.infra.node_host(i) for i in range(self.node_count)]

    @property
    def topic_replication(self) -> int:
        """Copies of each topic's records (``replication_factor``, else one per node, at
        most three)."""
        return self.replication_factor or self.infra.replication

    @cached_property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def partitions(self) -> dict[str, int]:
        return {
            "jobs": self.partitions_jobs,
            "checkpoints": self.partitions_checkpoints,
            "examples": self.partitions_examples,
            "demand": self.partitions_demand,
            "progress": self.partitions_progress,
            "deadletter": self.partitions_deadletter,
        }

    @property
    def log_dir(self) -> Path:
        """Where trainers write TensorBoard runs (``log_root``, or under the state folder)."""
        return (self.log_root or self.state_dir / "runs").resolve()

    @property
    def checkpoint_dir(self) -> Path:
        return (self.checkpoint_root or self.state_dir / "checkpoints").resolve()

    def artifact_store(self, blobs: BlobStore | None) -> ArtifactStore:
        """Where this process publishes and finds checkpoints; ``blobs`` is the bank's blob
        store (needed for the ``bank`` destination, and to read ``bank://`` URIs)."""
        return ArtifactStore(
            self.checkpoint_dir,
            self.checkpoint_store,
            blobs,
            keep=self.checkpoint_keep,
            max_bytes=self.artifact_max_mb << 20,
        )
