"""Running the infrastructure: single-node Kafka (KRaft) and Cassandra 5 on Java 17.

Jars come from Maven Central through Maven; configs, data and logs live under one state
folder. ``carls infra up|down|status`` drives this package; topic and keyspace creation
belong to ``streams`` and ``bank`` and are wired by the ``carls`` shell.
"""

from carls.infra.config import InfraConfig
from carls.infra.errors import InfraError, PortTakenError, StartFailedError, ToolMissingError
from carls.infra.server import ServerStatus
from carls.infra.stack import UpReport, down, status, up

__all__ = [
    "InfraConfig",
    "InfraError",
    "PortTakenError",
    "ServerStatus",
    "StartFailedError",
    "ToolMissingError",
    "UpReport",
    "down",
    "status",
    "up",
]
