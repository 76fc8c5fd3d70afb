"""The checkpoint artifact contract between trainers (who save) and makers (who load).

* a Keras 3 ``.keras`` file of a functional model of standard layers, loadable without the
  trainer's code; one input (features, float32 ``(n, d)``); two outputs in this order:
  ``embedding`` ``(n, e)`` and ``probabilities`` ``(n, classes)`` (softmax);
* stored at ``<store>/<namespace>/step-<step:012d>.keras``;
* announced by a ``CheckpointManifest`` with ``format="keras"``, a ``file://`` URI, the
  sha256 and size of the file, and ``model_fingerprint``: the first 16 hex digits of the
  sha256 of the model's JSON config with keys sorted.

Pure functions only; saving is the trainers' job, loading the makers'.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath

from carls.schemas.errors import InvalidValueError
from carls.schemas.names import validate_name

FORMAT = "keras"


def artifact_relpath(namespace: str, step: int) -> PurePosixPath:
    """The artifact's path inside a checkpoint store."""
    validate_name(namespace, "namespace")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidValueError(f"must be an int >= 0, got {step!r}", field="step")
    return PurePosixPath(namespace) / f"step-{step:012d}.keras"


def fingerprint_of_config(config_json: str) -> str:
    """The model fingerprint: sha256 of the JSON config with keys sorted, 16 hex digits."""
    canonical = json.dumps(json.loads(config_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
