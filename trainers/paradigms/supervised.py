"""Supervised: the labeled examples only, no knowledge from the bank.

A job spec entry with no parameters and no plug-in: the baseline a semi-supervised
paradigm is compared with.
"""

from __future__ import annotations

from typing import ClassVar

from carls.trainers.paradigms.base import Paradigm, ParadigmParams


class Supervised(ParadigmParams):
    """Train on the labels alone (no plug-in)."""

    name: ClassVar[str] = "supervised"

    def plugins(self) -> list[Paradigm]:
        return []
