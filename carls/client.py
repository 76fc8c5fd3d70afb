"""``carls.connect()``: the handles a training script needs, from the ``CARLS_*`` settings.

A ``Connection`` holds the knowledge bank (Cassandra), a Kafka publisher for checkpoints
and demand, and the checkpoint store (``CARLS_CHECKPOINT_STORE``: the bank's blob store
by default); use it as a context manager (or call ``close``) so the bank session and the
producer are closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from carls.bank.artifacts import ArtifactStore
from carls.bank.protocol import KnowledgeBank
from carls.bank.session import Connection as CassandraConnection
from carls.settings import Settings
from carls.streams.producer import Publisher


@dataclass(slots=True)
class Connection:
    """The bank, the publisher and the checkpoint store of one process."""

    bank: KnowledgeBank
    publisher: Publisher
    store: ArtifactStore
    settings: Settings
    cassandra: CassandraConnection | None = None

    def close(self) -> None:
        try:
            self.publisher.close()
        finally:
            self.bank.close()
            if self.cassandra is not None:
                self.cassandra.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(settings: Settings | None = None) -> Connection:
    """Connect to the bank and Kafka named by ``settings`` (default: the environment's
    ``CARLS_*`` variables; ``carls settings`` lists them)."""
    from carls.bank.blobs import CassandraBlobs
    from carls.bank.cassandra import CassandraBank

    s = settings if settings is not None else Settings()
    cassandra = CassandraConnection(s.cassandra).start()
    try:
        bank = CassandraBank(cassandra).start()
        store = s.artifact_store(CassandraBlobs(cassandra).start())
        publisher = Publisher(s.kafka, s.topics)
    except BaseException:
        cassandra.close()
        raise
    return Connection(bank, publisher, store, s, cassandra)
