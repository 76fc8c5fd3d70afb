"""Errors of the streaming layer.

CarlsError (schemas.errors)
└── StreamsError
    ├── TopicSetupError     topics could not be created or disagree with the settings
    └── PublishError        a record could not be produced (retriable)
"""

from __future__ import annotations

from carls.schemas.errors import CarlsError


class StreamsError(CarlsError):
    """Something went wrong talking to Kafka."""


class TopicSetupError(StreamsError):
    """Topics could not be created, or exist with settings other than declared."""


class PublishError(StreamsError):
    """A record could not be produced; trying again may succeed."""

    retriable = True
