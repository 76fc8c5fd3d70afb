"""The learned message channel in one process on the in-memory bank: the sender's
messages and the receiver's feedback go through the bank as knowledge, the receiver's
inputs carry the message, the feedback is the gradient of the receiver's loss, and
training the sender on it lowers the receiver's loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from carls.bank.memory import MemoryBank
from carls.bank.types import NamespaceSpec, default_kinds
from carls.cli import main
from carls.trainers import KnowledgeModel, SpecError, example_batches
from carls.trainers.paradigms import Message
from carls.trainers.sources import check_sources
from carls.trainers.spec import load_spec

N, C, K, D = 48, 3, 4, 6
IDS = [f"e{i:02d}" for i in range(N)]
Y = np.arange(N) % C


def mlp(inputs: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,))
    emb = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(x, {"embedding": emb, "logits": keras.layers.Dense(C)(emb)})


def pair(bank: MemoryBank, learned: bool = True) -> tuple[KnowledgeModel, KnowledgeModel, Any]:
    """A sees the class in its features, B sees noise: only the message can tell B."""
    rng = np.random.default_rng(0)
    xa = (np.eye(C)[Y] * 3 + rng.normal(0, 0.3, (N, C))).astype(np.float32)
    xa = np.concatenate([xa, rng.normal(0, 1, (N, D - C))], 1).astype(np.float32)
    xb = np.concatenate([rng.normal(0, 1, (N, D)), np.zeros((N, K))], 1).astype(np.float32)
    a = KnowledgeModel(
        mlp(D, 1),
        [Message(role="send", peer="b", size=K, learned=learned, every=5)],
        bank=bank,
        namespace="a",
        ids=IDS,
        labels=Y,
        features=xa,
    )
    b = KnowledgeModel(
        mlp(D + K, 2),
        [Message(role="receive", peer="a", size=K, every=5)],
        bank=bank,
        namespace="b",
        ids=IDS,
        labels=Y,
        features=xb,
    )
    for km in (a, b):
        km.register_examples()
        km.compile(
            optimizer=keras.optimizers.Adam(0.02),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return a, b, (xa, xb)


def train(km: KnowledgeModel, x: Any, steps: int) -> Any:
    assert km.knowledge.reader is not None or not km.knowledge.sources
    if km.knowledge.reader is not None:
        km.knowledge.reader.refresh(np.arange(N))
    with km:
        return km.fit(
            example_batches(IDS, x, Y, batch_size=16),
            steps_per_epoch=steps,
            epochs=1,
            verbose=0,
        )


def b_loss(b: KnowledgeModel, xb: Any, messages: Any) -> float:
    _, logits = b.heads(tf.concat([xb[:, :-K], messages], 1))
    return float(
        tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=Y, logits=logits))
    )


def test_the_namespaces_declare_the_message_and_the_feedback() -> None:
    bank = MemoryBank()
    pair(bank)
    assert bank.namespace("a").kinds["message"] == K
    assert bank.namespace("b").kinds["feedback"] == K


def test_messages_feedback_and_learning_go_through_the_bank() -> None:
    bank = MemoryBank()
    a, b, (xa, xb) = pair(bank)
    train(a, xa, 5)  # no feedback yet: A publishes its first messages
    sent = bank.read("a", "message", IDS)
    assert not sent.missing.any() and sent.values.shape == (N, K)
    assert (np.abs(sent.values) <= 1).all()  # tanh
    assert a.writer is None  # closed with the model, everything written
    train(b, xb, 30)  # B learns with A's messages as inputs, publishes its feedback
    got = bank.read("b", "feedback", IDS)
    assert not got.missing.any()
    # the feedback is the gradient of B's loss on the example w.r.t. its message
    i = 7
    m = tf.Variable(sent.values[i : i + 1])
    with tf.GradientTape() as tape:
        _, logits = b.heads(tf.concat([xb[i : i + 1, :-K], m], 1))
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=Y[i : i + 1], logits=logits)
    np.testing.assert_allclose(got.values[i], tape.gradient(loss, m)[0], rtol=1e-3, atol=1e-5)
    # A trains on the feedback: its new messages lower B's loss (B as it is)
    before = b_loss(b, xb, sent.values)
    history = train(a, xa, 20)
    assert "feedback" in history.history
    after = b_loss(b, xb, bank.read("a", "message", IDS).values)
    assert after < before


def test_a_fixed_message_reads_no_feedback_and_never_changes_but_with_the_embedding() -> None:
    bank = MemoryBank()
    a, _, (xa, _) = pair(bank, learned=False)
    assert not a.knowledge.sources  # nothing to read
    (head,) = a.paradigm_layers
    assert not head.trainable_weights
    history = train(a, xa, 5)
    assert "feedback" not in history.history
    sent = bank.read("a", "message", IDS).values
    emb, _ = a.heads(xa)
    np.testing.assert_allclose(sent, np.tanh(emb.numpy() @ head.kernel.numpy()), atol=1e-5)


def test_sides_that_disagree_on_the_size_are_refused_naming_the_field() -> None:
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec("a", default_kinds(8, C, 2) | {"message": 8}))
    spec = load_spec(
        {
            "namespace": "b",
            "dataset": {"name": "iris"},
            "paradigm": {"name": "message", "params": {"role": "receive", "peer": "a", "size": 4}},
        }
    )
    with pytest.raises(SpecError, match="message of width 8; this side's is 4") as info:
        check_sources(spec, bank, None)
    assert info.value.field == "paradigm.params.peer"
    # a peer that has not started yet is checked when it does
    check_sources(spec, MemoryBank(), None)
    with pytest.raises(SpecError, match=r"paradigm\.params\.peer: the peer is the other"):
        load_spec(
            {
                "namespace": "a",
                "dataset": {"name": "iris"},
                "paradigm": {"name": "message", "params": {"role": "send", "peer": "a"}},
            }
        )


def test_a_group_whose_sides_disagree_on_the_size_is_refused_at_submit(tmp_path: Path) -> None:
    examples = Path(__file__).parents[2] / "trainers" / "examples"
    a = yaml.safe_load((examples / "digits_message_a.yaml").read_text())
    b = yaml.safe_load((examples / "digits_message_b.yaml").read_text())
    b["paradigm"]["params"]["size"] = 8
    paths = []
    for name, spec in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["submit", *map(str, paths), "--dry-run"])
    assert result.exit_code != 0
    assert "paradigm.params.peer" in result.output
    said = " ".join(result.output.split())
    assert "its peer digits_message_b" in said
    assert "has feedback of width 8; this side needs feedback of width 4: both sides" in said
    b["paradigm"]["params"]["size"] = 4  # as the examples have it
    paths[1].write_text(yaml.safe_dump(b))
    result = CliRunner().invoke(main, ["submit", *map(str, paths), "--dry-run"])
    assert result.exit_code == 0, result.output


def test_a_second_run_in_the_namespace_publishes_after_the_first() -> None:
    bank = MemoryBank()
    a, _, (xa, _) = pair(bank)
    train(a, xa, 12)
    first = int(bank.read("a", "message", IDS, lineage=True).steps.max())
    again, _, _ = pair(bank)  # a new run of side A, from fresh weights
    train(again, xa, 3)
    steps = bank.read("a", "message", IDS, lineage=True).steps
    assert first >= 12 and (steps > first).all()  # the new messages were kept
