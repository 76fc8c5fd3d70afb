"""One Kafka connection model, translated for kafka-python, aiokafka and Faust.

Security options (TLS files, SASL mechanism and credentials) are declared once here and
passed through to every client, so a cluster that needs them works the same for trainers,
the CLI and the Faust workers.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "carls"

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ValueError("bootstrap_servers: at least one host:port is needed")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol: {self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.uses_sasl and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"sasl_mechanism: {self.sasl_mechanism!r} is not one of "
                f"{', '.join(SASL_MECHANISMS)} (needed by {self.security_protocol})"
            )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_ssl:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return ctx

    def kafka_python(self) -> dict[str, Any]:
        """Options for kafka-python's ``KafkaProducer``/``KafkaConsumer``/``KafkaAdminClient``."""
        opts: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.uses_ssl:
            opts.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
            )
        if self.uses_sasl:
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return opts

    def aiokafka(self) -> dict[str, Any]:
        """Options for aiokafka's ``AIOKafkaConsumer``/``AIOKafkaProducer``."""
        opts: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.uses_ssl:
            opts["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return opts

    def faust(self) -> dict[str, Any]:
        """``broker`` and ``broker_credentials`` settings for a ``faust.App``."""
        import faust  # heavy import, only for workers

        scheme = "kafka"
        broker = ";".join(f"{scheme}://{hp}" for hp in self.bootstrap_servers)
        credentials: Any = None
        if self.uses_sasl:
            credentials = faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        elif self.uses_ssl:
            credentials = faust.SSLCredentials(self.ssl_context())
        return {"broker": broker, "broker_credentials": credentials}
