"""Knowledge makers: load trainers' checkpoints and turn model outputs into knowledge.

* ``makers.checkpoints``: the artifact convention, ``load_model``
  (sha256-verified) and ``ModelCache``; imports TensorFlow lazily.
* ``makers.compute``: pure numpy functions from embeddings and probabilities to the
  knowledge kinds (pseudo-labels, difficulty, neighbours) and their ``KnowledgeBatch``.
* ``makers.errors``: the ``MakerError`` family.

``makers`` depends on ``schemas``, ``bank`` and ``streams``, never on ``trainers``.
"""
