"""A user's module with a custom Keras layer, importable only by the process that wrote it
(the makers that serve a model built with it must do without it)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

SOURCE = """
import keras


@keras.saving.register_keras_serializable(package="{name}")
class Gate(keras.layers.Layer):
    def build(self, shape):
        self.g = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * keras.ops.sigmoid(self.g)
"""


def user_module(folder: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Write module ``name`` (a ``Gate`` layer) into ``folder``, put ``folder`` on this
    process's path only, and import it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(SOURCE.format(name=name))
    monkeypatch.syspath_prepend(str(folder))
    return importlib.import_module(name)
