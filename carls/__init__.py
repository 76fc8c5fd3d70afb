"""carls: asynchronous knowledge for model training, on Kafka, Faust and Cassandra.

``carls.connect()`` gives a training script the bank, a Kafka publisher and the checkpoint
store; ``carls.trainers`` wraps a Keras model with knowledge terms (see its docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carls.client import Connection, connect

__all__ = ["Connection", "connect"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from carls import client

        return getattr(client, name)
    raise AttributeError(f"module 'carls' has no attribute {name!r}")
