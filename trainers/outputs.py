"""Which outputs of a user's Keras model are the embedding and the logits.

A model may return a dict (name the keys), a list or tuple (name the positions), or, for
a functional model, the embedding may be any inner layer (name the layer). ``ModelHeads``
resolves the names once, checks the outputs on a zero batch (rank 2, floating point, at
least two classes), and then maps features to ``(embedding, logits)`` inside the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from carls.trainers.errors import ModelError

OutputName = str | int
"""A dict key or layer name (``str``), or a position in a list of outputs (``int``)."""


@dataclass(frozen=True, slots=True)
class HeadShapes:
    """What the checked outputs look like: the model's input shape (without the batch)
    and dtype, the flat feature width, the embedding width and the number of classes."""

    input_shape: tuple[int, ...]
    input_dtype: str
    feature_dim: int
    embedding_dim: int
    classes: int


class ModelHeads:
    """Features -> ``(embedding, logits)`` for any Keras model, sharing its weights."""

    def __init__(
        self,
        model: Any,
        embedding: OutputName = "embedding",
        logits: OutputName = "logits",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        import keras

        if not isinstance(model, keras.Model):
            raise ModelError(f"expected a keras.Model, got {type(model).__name__}")
        self.model = model
        self.names = (embedding, logits)
        shape = tuple(input_shape) if input_shape is not None else _input_shape(model)
        inputs = getattr(model, "inputs", None)
        dtype = _dtype_name(inputs[0]) if inputs else "float32"
        self._inner = self._inner_model(model, embedding, logits)
        self.shapes = self._check(shape, dtype)

    def __call__(self, x: Any, training: bool = False) -> tuple[Any, Any]:
        if self._inner is not None:
            emb, logits = self._inner(x, training=training)
            return emb, logits
        out = self.model(x, training=training)
        return _pick(out, self.names[0], "embedding"), _pick(out, self.names[1], "logits")

    @staticmethod
    def _inner_model(model: Any, embedding: OutputName, logits: OutputName) -> Any:
        """For a functional (or sequential) model: a model over the same graph returning
        the two named tensors, each an output key, an output position or an inner layer.
        None for a subclassed model, whose outputs are picked from each call's result."""
        if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
            return None
        try:
            structured = model.output
        except (AttributeError, ValueError):
            structured = list(model.outputs)
        keys = sorted(structured) if isinstance(structured, Mapping) else []
        flat = list(model.outputs)
        layers = {layer.name: layer for layer in model.layers}
        picked = []
        for what, name in (("embedding", embedding), ("logits", logits)):
            if isinstance(name, int) and -len(flat) <= name < len(flat):
                picked.append(flat[name])
            elif isinstance(name, str) and name in keys:
                picked.append(structured[name])
            elif isinstance(name, str) and name in layers:
                picked.append(layers[name].output)
            else:
                raise ModelError(
                    f"{what}={name!r}: the model has no such output or layer; its outputs "
                    f"are {keys or list(range(len(flat)))} and its layers "
                    f"{', '.join(layers)}"
                )
        import keras

        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        return keras.Model(inputs, picked)

    def _check(self, shape: tuple[int, ...], dtype: str) -> HeadShapes:
        if not shape or any(d is None or d < 1 for d in shape):
            raise ModelError(
                f"the model's input shape {shape} is not fully known; pass input_shape=..."
            )
        x = np.zeros((2, *shape), dtype)
        try:
            emb, logits = self(x)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"the model does not run on a batch of shape {x.shape}: {exc}"
            ) from exc
        dims = []
        for what, t in (("embedding", emb), ("logits", logits)):
            tshape = tuple(t.shape)
            if len(tshape) != 2:
                raise ModelError(
                    f"the {what} output ({self.names[0 if what == 'embedding' else 1]!r}) "
                    f"has shape {tshape}; it must be rank 2: (batch, width)"
                )
            if not np.dtype(_dtype_name(t)).kind == "f":
                raise ModelError(f"the {what} output has dtype {_dtype_name(t)}; expected floats")
            dims.append(int(tshape[1]))
        if dims[1] < 2:
            raise ModelError(f"the logits output has {dims[1]} column(s); it needs one per class")
        return HeadShapes(shape, dtype, int(np.prod(shape)), dims[0], dims[1])


def _dtype_name(t: Any) -> str:
    dtype = getattr(t, "dtype", None)
    name = getattr(dtype, "name", dtype)
    return str(name)


def _input_shape(model: Any) -> tuple[int, ...]:
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            raise ModelError(
                f"the model has {len(inputs)} inputs; carls feeds one tensor of features"
            )
        return tuple(inputs[0].shape[1:])
    raise ModelError("the model has no declared input (a subclassed model): pass input_shape=...")


def _pick(out: Any, name: OutputName, what: str) -> Any:
    if isinstance(out, Mapping):
        if name not in out:
            raise ModelError(
                f"the model returns outputs {sorted(out)}; none is named {name!r} "
                f"(pass {what}=... with one of them)"
            )
        return out[name]
    if isinstance(out, list | tuple):
        if not isinstance(name, int) or not -len(out) <= name < len(out):
            raise ModelError(
                f"the model returns {len(out)} unnamed outputs; pass {what}= a position "
                f"0..{len(out) - 1}, or a layer name for a functional model (got {name!r})"
            )
        return out[name]
    raise ModelError(
        f"the model returns one tensor; carls needs an embedding and logits: return a dict "
        f"or a pair, or name an inner layer as {what}=..."
    )
