"""The checkpoint artifact contract between trainers (who save) and makers (who load).

Two formats; a maker loads either without the trainer's Python code.

``tf_saved_model`` (``SAVED_MODEL``), for any Keras model, custom layers included:

* a TensorFlow SavedModel whose functions are traced graphs (no Python classes needed to
  load it), packed as one uncompressed tar file so it has one sha256 and one size;
* signatures ``embed`` (``features`` -> ``embedding``), ``predict`` (``features`` ->
  ``probabilities``, a softmax) and ``serving_default`` (``features`` -> both, one forward
  pass); ``features`` is float32 ``(None, d)``, the flat feature rows the bank stores, and
  the artifact reshapes them to the model's own input shape;
* next to the SavedModel inside the tar, ``carls.json`` (``ARTIFACT_META``): the format
  version, the flat feature width, the model's input shape, the embedding width, the
  number of classes and the model fingerprint;
* stored at ``<store>/<namespace>/step-<step:012d>.tar``.

``keras`` (``FORMAT``), the built-in model's:

* a Keras 3 ``.keras`` file of a functional model of standard layers, loadable without the
  trainer's code; one input (features, float32 ``(n, d)``); two outputs in this order:
  ``embedding`` ``(n, e)`` and ``probabilities`` ``(n, classes)`` (softmax);
* stored at ``<store>/<namespace>/step-<step:012d>.keras``.

Either is announced by a ``CheckpointManifest`` with its ``format``, the URI where every
worker reads it (``bank://``, an object store's, or ``file://`` on one machine), the
sha256 and size of the file, and ``model_fingerprint``: the first 16 hex digits of the
sha256 of a JSON description of the model with keys sorted (its Keras config for
``keras``; its class, input shape and dtype, output widths and variables' shapes for
``tf_saved_model``).

Pure functions only; saving is the trainers' job, loading the makers'.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath

from carls.schemas.errors import InvalidValueError
from carls.schemas.names import validate_name

FORMAT = "keras"
SAVED_MODEL = "tf_saved_model"
FORMATS = (FORMAT, SAVED_MODEL)
SUFFIXES = {FORMAT: ".keras", SAVED_MODEL: ".tar"}
ARTIFACT_META = "carls.json"
"""The metadata file inside a ``tf_saved_model`` tar, beside the SavedModel folder."""
SAVED_MODEL_DIR = "saved_model"
"""The SavedModel's folder inside the tar."""
SIGNATURES = ("embed", "predict", "serving_default")
INPUT_NAME = "features"
OUTPUT_NAMES = ("embedding", "probabilities")


def artifact_relpath(namespace: str, step: int, format: str = FORMAT) -> PurePosixPath:
    """The artifact's path inside a checkpoint store."""
    if format not in SUFFIXES:
        raise InvalidValueError(
            f"unknown artifact format {format!r}; expected one of {', '.join(FORMATS)}",
            field="format",
        )
    validate_name(namespace, "namespace")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidValueError(f"must be an int >= 0, got {step!r}", field="step")
    return PurePosixPath(namespace) / f"step-{step:012d}{SUFFIXES[format]}"


def fingerprint_of_config(config_json: str) -> str:
    """The model fingerprint: sha256 of the JSON config with keys sorted, 16 hex digits."""
    canonical = json.dumps(json.loads(config_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
