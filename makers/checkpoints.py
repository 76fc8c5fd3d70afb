"""Checkpoint artifacts: verify, load and cache the models makers run.

Two formats (``carls.schemas.artifacts``): ``tf_saved_model``, a tar of a SavedModel with
``embed``/``predict``/``serving_default`` signatures over flat float32 features, which any
Keras model exports (custom layers included, since the signatures are traced graphs); and
the built-in model's ``keras`` file, whose convention is:

* a Keras 3 ``.keras`` file of a **functional** model built from standard Keras layers;
* **one input**: the features, float32 ``(n, d)``;
* **two outputs, in this order**: ``embedding`` ``(n, e)`` and ``probabilities``
  ``(n, classes)`` (softmax outputs: each row in ``[0, 1]`` summing to 1);
* saved as ``<root>/<namespace>/step-<step:012d>.keras`` and announced by a
  ``CheckpointManifest`` (``format="keras"``, the ``uri`` of the checkpoint store it was
  copied to, sha256, size, and ``model_fingerprint``: the first 16 hex digits of the
  sha256 of the model's JSON config, so knowledge can name the architecture that made it).

Trainers write it (``trainers.checkpoints``). Here ``fetch_artifact`` gets a verified local
file of it (``bank.artifacts.ArtifactStore``: from the bank's blob store, an object store,
or the worker's own checkpoint root), ``load_model`` loads that file and wraps the model
in a traced ``tf.function`` (one trace for any batch size; ``model.predict`` costs tens of
milliseconds per call);
``ModelCache`` loads each checkpoint once and keeps the newest few per namespace, and a
checkpoint that fails to load never displaces the model already serving.

TensorFlow is imported lazily, inside the functions that need it, so ``import makers``
stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.bank.artifacts import FILE, ArtifactStore
from carls.bank.errors import (
    BlobCorruptError,
    BlobMissingError,
    BlobTooLargeError,
    UnreadableUriError,
)
from carls.bank.types import F32
from carls.makers.compute import check_finite
from carls.makers.errors import (
    ArtifactCorruptError,
    ArtifactMissingError,
    BadModelOutputError,
    InvalidInputError,
    NotAModelError,
)
from carls.schemas.artifacts import (
    ARTIFACT_META,
    FORMAT,
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAMES,
    SAVED_MODEL,
    SAVED_MODEL_DIR,
    SUFFIXES,
    artifact_relpath,
    fingerprint_of_config,
)
from carls.schemas.errors import SchemaError
from carls.schemas.records import CheckpointManifest
from carls.streams import metrics

logger = logging.getLogger(__name__)

INFER_CHUNK = 1024
"""Rows per model call in ``LoadedModel.infer``."""

PROBABILITY_TOLERANCE = 1e-3
"""How far a row of probabilities may stray from [0, 1] and from summing to 1."""

_HASH_CHUNK = 1 << 20


def artifact_path(directory: Path, namespace: str, step: int, format: str = FORMAT) -> Path:
    """Where the artifact of ``namespace`` at ``step`` lives in a checkpoint store."""
    try:
        return Path(directory) / artifact_relpath(namespace, step, format)
    except SchemaError as exc:
        raise InvalidInputError(str(exc)) from exc


def model_fingerprint(model: Any) -> str:
    """The first 16 hex digits of the sha256 of the model's JSON config (keys sorted)."""
    return fingerprint_of_config(model.to_json())


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


StoreLike = ArtifactStore | Path
"""Where a worker finds artifacts: an ``ArtifactStore``, or a folder (local files only)."""


def as_store(store: StoreLike) -> ArtifactStore:
    return store if isinstance(store, ArtifactStore) else ArtifactStore(Path(store), FILE)


@contextlib.contextmanager
def fetch_artifact(manifest: CheckpointManifest, store: StoreLike) -> Iterator[Path]:
    """A local file of the manifest's artifact whose size and sha256 match the manifest:
    in place inside the store's root for a ``file://`` URI, a temporary copy of a
    ``bank://`` or object-store one. A store that does not answer raises the bank's
    retriable ``BankUnavailableError``; anything else about the artifact is the
    checkpoint's fault: ``ArtifactMissingError`` (not there, not readable by this worker,
    outside the root) or ``ArtifactCorruptError`` (other bytes than the manifest's, a
    missing or truncated chunk, over the size limit)."""
    what = f"checkpoint {manifest.namespace} step {manifest.step}"
    suffix = SUFFIXES.get(manifest.format, "")
    try:
        with as_store(store).fetch(manifest.uri, manifest.sha256, manifest.size, suffix) as path:
            yield path
    except (BlobMissingError, UnreadableUriError) as exc:
        raise ArtifactMissingError(f"{what}: {exc}") from exc
    except (BlobCorruptError, BlobTooLargeError) as exc:
        raise ArtifactCorruptError(f"{what}: {exc}") from exc


@dataclass(eq=False)
class LoadedModel:
    """A verified, loaded checkpoint ready for inference.

    ``function`` is the traced ``tf.function`` (float32 ``(None, feature_dim)`` in,
    ``(embeddings, probabilities)`` out); ``fingerprint`` is computed from the loaded
    model's config for a ``keras`` artifact (see ``model_fingerprint``) and read from the
    ``carls.json`` of a ``tf_saved_model`` one.
    """

    manifest: CheckpointManifest
    function: Any = field(repr=False)
    feature_dim: int
    embedding_dim: int
    classes: int
    fingerprint: str
    model: Any = field(default=None, repr=False)

    @property
    def namespace(self) -> str:
        return self.manifest.namespace

    @property
    def step(self) -> int:
        return self.manifest.step

    def infer(self, features: npt.ArrayLike) -> tuple[F32, F32]:
        """Embeddings ``(n, e)`` and probabilities ``(n, classes)``, float32, for ``(n, d)``
        features, run at most ``INFER_CHUNK`` rows per call; outputs are checked for shape,
        NaN/Inf and for being probabilities (``BadModelOutputError``)."""
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise InvalidInputError(
                f"features: expected shape (n, {self.feature_dim}) for {self.namespace} "
                f"step {self.step}, got {x.shape}"
            )
        if not np.issubdtype(x.dtype, np.number):
            raise InvalidInputError(f"features: expected numbers, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise InvalidInputError(f"features: NaN or Inf in row {int(np.argmax(bad))}")
        n = x.shape[0]
        embeddings = np.empty((n, self.embedding_dim), dtype=np.float32)
        probabilities = np.empty((n, self.classes), dtype=np.float32)
        for start in range(0, n, INFER_CHUNK):
            stop = min(start + INFER_CHUNK, n)
            emb, prob = self.function(x[start:stop])
            emb, prob = np.asarray(emb.numpy()), np.asarray(prob.numpy())
            for name, got, want in (
                ("embedding", emb, (stop - start, self.embedding_dim)),
                ("probabilities", prob, (stop - start, self.classes)),
            ):
                if got.shape != want:
                    raise BadModelOutputError(
                        f"{self.namespace} step {self.step}: {name} output has shape "
                        f"{got.shape}, expected {want}"
                    )
            embeddings[start:stop] = emb
            probabilities[start:stop] = prob
        check_finite("embedding", embeddings)
        check_finite("probabilities", probabilities)
        _check_probabilities(probabilities, f"{self.namespace} step {self.step}")
        return embeddings, probabilities


def _check_probabilities(probs: F32, what: str) -> None:
    if probs.size == 0:
        return
    tol = PROBABILITY_TOLERANCE
    sums = probs.sum(axis=1, dtype=np.float64)
    bad = (probs < -tol).any(axis=1) | (probs > 1 + tol).any(axis=1) | (np.abs(sums - 1) > tol)
    if bad.any():
        i = int(np.argmax(bad))
        raise BadModelOutputError(
            f"{what}: probabilities row {i} sums to {sums[i]:.4f} (min {probs[i].min():.4f}, "
            f"max {probs[i].max():.4f}); the second output must be a softmax"
        )


def _static_dims(tensors: Any, what: str) -> list[int]:
    dims = []
    for i, tensor in enumerate(tensors):
        shape = tuple(tensor.shape)
        if len(shape) != 2 or shape[1] is None:
            raise NotAModelError(
                f"{what} {i} has shape {shape}; the convention needs rank 2 with a known width"
            )
        dims.append(int(shape[1]))
    return dims


def warm_up() -> float:
    """Import TensorFlow and Keras and trace one tiny model, so the first checkpoint a
    worker serves costs a load (~0.1 s) rather than the libraries' start-up (~4 s).
    Returns the seconds it took."""
    started = time.perf_counter()
    import keras
    import tensorflow as tf

    inp = keras.Input((4,))
    emb = keras.layers.Dense(2)(inp)
    model = keras.Model(inp, [emb, keras.layers.Dense(2, activation="softmax")(emb)])
    run = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, 4), tf.float32)],
        reduce_retracing=True,
    )
    run(np.zeros((1, 4), np.float32))
    return time.perf_counter() - started


def load_model(manifest: CheckpointManifest, store: StoreLike) -> LoadedModel:
    """Fetch and verify the artifact (``fetch_artifact``), load it without trainer code and
    trace its inference function; ``NotAModelError`` says why a file is not a usable model."""
    what = f"checkpoint {manifest.namespace} step {manifest.step}"
    if manifest.format not in FORMATS:
        raise NotAModelError(
            f"{what}: format {manifest.format!r}; makers load {' or '.join(map(repr, FORMATS))}"
        )
    with fetch_artifact(manifest, store) as path:
        return _load_file(manifest, path, what)


def _load_file(manifest: CheckpointManifest, path: Path, what: str) -> LoadedModel:
    started = time.perf_counter()
    if manifest.format == SAVED_MODEL:
        loaded = _load_saved_model(manifest, path, what)
        logger.info(
            "loaded %s (SavedModel, %d -> %d, %d classes) in %.2fs",
            what,
            loaded.feature_dim,
            loaded.embedding_dim,
            loaded.classes,
            time.perf_counter() - started,
        )
        return loaded
    import keras
    import tensorflow as tf

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise NotAModelError(f"{what}: {manifest.uri} does not load as Keras: {exc}") from exc
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if not isinstance(model, keras.Model) or inputs is None or outputs is None:
        raise NotAModelError(
            f"{what}: loaded a {type(model).__name__}, not a functional Keras model"
        )
    if len(inputs) != 1 or len(outputs) != 2:
        raise NotAModelError(
            f"{what}: the model has {len(inputs)} input(s) and {len(outputs)} output(s); "
            "the convention is one input and two outputs (embedding, probabilities)"
        )
    (feature_dim,) = _static_dims(inputs, f"{what}: input")
    embedding_dim, classes = _static_dims(outputs, f"{what}: output")

    def call(x: Any) -> tuple[Any, Any]:
        out = model(x, training=False)
        return out[0], out[1]

    # One trace serves every batch size: the batch dimension is None in the signature.
    run = tf.function(
        call,
        input_signature=[tf.TensorSpec((None, feature_dim), tf.float32)],
        reduce_retracing=True,
    )

    try:
        run.get_concrete_function()
    except Exception as exc:
        raise NotAModelError(f"{what}: the model cannot run on features: {exc}") from exc
    fingerprint = model_fingerprint(model)
    if manifest.model_fingerprint and manifest.model_fingerprint != fingerprint:
        logger.warning(
            "%s: manifest fingerprint %s differs from the loaded model's %s",
            what,
            manifest.model_fingerprint,
            fingerprint,
        )
    logger.info(
        "loaded %s (%d -> %d, %d classes) in %.2fs",
        what,
        feature_dim,
        embedding_dim,
        classes,
        time.perf_counter() - started,
    )
    return LoadedModel(manifest, run, feature_dim, embedding_dim, classes, fingerprint, model)


def _load_saved_model(manifest: CheckpointManifest, path: Path, what: str) -> LoadedModel:
    """Unpack a ``tf_saved_model`` tar into a temporary folder, load it with TensorFlow
    alone (no Keras classes, no user code) and check its ``serving_default`` signature."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="carls-artifact-") as tmp:
        # Unpacking: a broken tar is the checkpoint's fault; any other OSError (a full or
        # unwritable disk) is the worker's and propagates, so nothing is dead-lettered.
        try:
            with tarfile.open(path, mode="r:") as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.TarError as exc:
            raise NotAModelError(f"{what}: {manifest.uri} is not a tar: {exc}") from exc
        try:
            meta = json.loads((Path(tmp) / ARTIFACT_META).read_text())
            loaded = tf.saved_model.load(str(Path(tmp) / SAVED_MODEL_DIR))
        except Exception as exc:
            raise NotAModelError(
                f"{what}: {manifest.uri} is not a carls SavedModel tar: {exc}"
            ) from exc
    if not isinstance(meta, dict):
        raise NotAModelError(f"{what}: {ARTIFACT_META} is not a JSON object")
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is None:
        raise NotAModelError(f"{what}: the SavedModel has no serving_default signature")
    _, kwargs = signature.structured_input_signature
    spec = kwargs.get(INPUT_NAME)
    outputs = signature.structured_outputs
    if spec is None or len(kwargs) != 1 or spec.dtype != tf.float32 or spec.shape.rank != 2:
        raise NotAModelError(
            f"{what}: serving_default takes {kwargs}; the convention is one float32 "
            f"(None, d) input named {INPUT_NAME!r}"
        )
    if not isinstance(outputs, dict) or set(outputs) != set(OUTPUT_NAMES):
        got = sorted(outputs) if isinstance(outputs, dict) else outputs
        raise NotAModelError(
            f"{what}: serving_default returns {got}; the convention is {list(OUTPUT_NAMES)}"
        )
    dims = [spec.shape[1], *(outputs[name].shape[1] for name in OUTPUT_NAMES)]
    if any(d is None for d in dims):
        raise NotAModelError(f"{what}: the signature's widths {dims} are not all known")
    feature_dim, embedding_dim, classes = (int(d) for d in dims)

    def call(x: Any) -> tuple[Any, Any]:
        out = signature(**{INPUT_NAME: tf.constant(x)})
        return out[OUTPUT_NAMES[0]], out[OUTPUT_NAMES[1]]

    fingerprint = str(meta.get("model_fingerprint") or manifest.model_fingerprint or "")
    return LoadedModel(manifest, call, feature_dim, embedding_dim, classes, fingerprint, loaded)


class ModelCache:
    """Loaded checkpoints by namespace: each ``(namespace, step, sha256)`` is loaded once,
    the newest ``max_per_namespace`` steps are kept, and a failed load changes nothing (the
    model already serving keeps serving). Thread-safe; loads of different checkpoints run
    concurrently. ``loads`` counts successful loads."""

    def __init__(self, store: StoreLike, max_per_namespace: int = 2) -> None:
        if isinstance(max_per_namespace, bool) or max_per_namespace < 1:
            raise InvalidInputError(f"max_per_namespace: must be >= 1, got {max_per_namespace}")
        self.max_per_namespace = max_per_namespace
        self.store = as_store(store)
        self.loads = 0
        self._lock = threading.Lock()
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._loading: dict[tuple[str, int, str], threading.Lock] = {}

    def _cached(self, manifest: CheckpointManifest) -> LoadedModel | None:
        model = self._models.get(manifest.namespace, {}).get(manifest.step)
        if model is not None and model.manifest.sha256 == manifest.sha256:
            return model
        return None

    def get(self, manifest: CheckpointManifest) -> LoadedModel:
        """The loaded model of ``manifest``, loading it on first use.

        A step older than every kept step is loaded and returned but not kept when the
        namespace already holds ``max_per_namespace`` newer ones. A manifest that reuses a
        step with another sha256 replaces that step's model."""
        key = (manifest.namespace, manifest.step, manifest.sha256)
        with self._lock:
            cached = self._cached(manifest)
            if cached is not None:
                return cached
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                cached = self._cached(manifest)
            if cached is not None:
                return cached
            try:
                model = load_model(manifest, self.store)
            except BaseException:
                metrics.MODEL_LOAD_FAILURES.inc()
                with self._lock:
                    self._loading.pop(key, None)
                raise
            metrics.MODEL_LOADS.inc()
            with self._lock:
                self._loading.pop(key, None)
                self.loads += 1
                steps = self._models.setdefault(manifest.namespace, {})
                steps[manifest.step] = model
                for old in sorted(steps)[: -self.max_per_namespace]:
                    del steps[old]
                    logger.info("evicted %s step %d", manifest.namespace, old)
            return model

    def latest(self, namespace: str) -> LoadedModel | None:
        """The kept model with the newest step of ``namespace``, or None."""
        with self._lock:
            steps = self._models.get(namespace)
            return steps[max(steps)] if steps else None

    def steps(self, namespace: str) -> list[int]:
        """The kept steps of ``namespace``, ascending."""
        with self._lock:
            return sorted(self._models.get(namespace, {}))
