"""The Faust app factory: one place that turns a Kafka connection into a ``faust.App``.

Records travel as raw bytes and are decoded by ``schemas`` inside the agents, so a bad
record becomes a dead letter with its reason instead of a crash in Faust's serializer.
"""

from __future__ import annotations

from typing import Any

from carls.streams.config import KafkaConnection


def make_app(app_id: str, conn: KafkaConnection, **overrides: Any) -> Any:
    """A ``faust.App`` for ``conn`` with settings fit for carls workers.

    At-least-once processing (writes are idempotent and step-ordered, so replays are
    harmless); no web server unless asked; in-memory tables (a GlobalTable of manifests is
    rebuilt from the compacted checkpoints topic at start).
    """
    import faust

    settings: dict[str, Any] = {
        **conn.faust(),
        "value_serializer": "raw",
        "key_serializer": "raw",
        "store": "memory://",
        "web_enabled": False,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_every": 1000,
        "broker_commit_interval": 1.0,
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "stream_wait_empty": False,
    }
    settings.update(overrides)
    return faust.App(app_id, **settings)


def run_app(app: Any, loglevel: str = "warning") -> None:
    """Run ``app`` in the foreground (a ``faust.Worker``) until SIGINT/SIGTERM."""
    import faust

    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
