"""The trainer's Keras model, and the artifact view of it that makers load."""

from __future__ import annotations

from typing import Any

from carls.trainers.spec import ModelSpec


def build(input_shape: int | tuple[int, ...], classes: int, spec: ModelSpec) -> tuple[Any, Any]:
    """``(train_model, artifact_model)`` sharing weights, for examples of ``input_shape``
    (a feature width, or any shape: it is flattened first).

    ``train_model`` maps features to ``(embedding, logits)``; ``artifact_model`` to
    ``(embedding, probabilities)``, the contract of ``schemas.artifacts``. Only standard
    layers, so a maker loads the artifact without this code.
    """
    import keras

    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    inp = keras.Input(shape, name="features")
    h = keras.layers.Flatten(name="flatten")(inp) if len(shape) > 1 else inp
    for i, units in enumerate(spec.hidden):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(h)
        if spec.dropout:
            h = keras.layers.Dropout(spec.dropout, name=f"dropout_{i}")(h)
    emb = keras.layers.Dense(spec.embedding_dim, activation="relu", name="embedding")(h)
    head = keras.layers.Dropout(spec.dropout, name="dropout_head")(emb) if spec.dropout else emb
    logits = keras.layers.Dense(classes, name="logits")(head)
    probs = keras.layers.Activation("softmax", name="probabilities")(logits)
    return (
        keras.Model(inp, [emb, logits], name="trainer"),
        keras.Model(inp, [emb, probs], name="artifact"),
    )
