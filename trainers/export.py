"""Any Keras model as a ``tf_saved_model`` artifact that makers load without its code.

``SavedModelExporter`` traces the model's forward pass once into three signatures
(``embed``, ``predict``, ``serving_default``; see ``carls.schemas.artifacts``) over flat
float32 features, reshaped inside the graph to the model's input shape; each ``write``
after that saves with the current weights, reusing those traces. The SavedModel and a ``carls.json``
description are packed into one deterministic, uncompressed tar, so a checkpoint has one
sha256 and one size like any other artifact.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from carls.schemas.artifacts import (
    ARTIFACT_META,
    INPUT_NAME,
    OUTPUT_NAMES,
    SAVED_MODEL,
    SAVED_MODEL_DIR,
    fingerprint_of_config,
)
from carls.trainers.outputs import ModelHeads

META_VERSION = 1


class SavedModelExporter:
    """Writes the current weights of ``heads.model`` as a ``tf_saved_model`` tar."""

    def __init__(self, heads: ModelHeads) -> None:
        import keras
        import tensorflow as tf

        self.heads = heads
        s = heads.shapes
        dtype = tf.as_dtype(s.input_dtype)
        spec = tf.TensorSpec((None, s.feature_dim), tf.float32, name=INPUT_NAME)

        def forward(features: Any) -> tuple[Any, Any]:
            x = tf.reshape(tf.cast(features, dtype), (-1, *s.input_shape))
            emb, logits = heads(x, training=False)
            return tf.cast(emb, tf.float32), tf.nn.softmax(tf.cast(logits, tf.float32))

        def both(features: Any) -> dict[str, Any]:
            return dict(zip(OUTPUT_NAMES, forward(features), strict=True))

        self.archive = keras.export.ExportArchive()
        self.archive.track(heads.model)
        self.archive.add_endpoint("embed", lambda f: {"embedding": forward(f)[0]}, [spec])
        self.archive.add_endpoint("predict", lambda f: {"probabilities": forward(f)[1]}, [spec])
        self.archive.add_endpoint("serving_default", both, [spec])
        self.fingerprint = fingerprint_of_config(json.dumps(self.description()))

    def description(self) -> dict[str, Any]:
        """What identifies the architecture: class, shapes and variables (not values)."""
        model, s = self.heads.model, self.heads.shapes
        return {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "input_shape": list(s.input_shape),
            "input_dtype": s.input_dtype,
            "embedding_dim": s.embedding_dim,
            "classes": s.classes,
            "variables": [[v.path, list(v.shape)] for v in model.weights],
        }

    def meta(self) -> dict[str, Any]:
        s = self.heads.shapes
        return {
            "format": SAVED_MODEL,
            "version": META_VERSION,
            "feature_dim": s.feature_dim,
            "input_shape": list(s.input_shape),
            "embedding_dim": s.embedding_dim,
            "classes": s.classes,
            "model_fingerprint": self.fingerprint,
        }

    def write(self, out: io.BufferedWriter) -> None:
        """Write the artifact tar to the open binary file ``out``."""
        with tempfile.TemporaryDirectory(prefix="carls-export-") as tmp:
            folder = Path(tmp) / SAVED_MODEL_DIR
            self.archive.write_out(str(folder), verbose=False)
            (Path(tmp) / ARTIFACT_META).write_text(json.dumps(self.meta(), sort_keys=True))
            pack(Path(tmp), [ARTIFACT_META, SAVED_MODEL_DIR], out)


def pack(root: Path, names: list[str], out: io.BufferedWriter) -> None:
    """A tar of ``names`` under ``root`` with sorted entries and zeroed owners and times,
    so the same files always give the same bytes."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            path = root / name
            paths = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
            for p in paths:
                tar.add(p, arcname=str(p.relative_to(root)), recursive=False, filter=clean)
