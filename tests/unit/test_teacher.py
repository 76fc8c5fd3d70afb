"""Knowledge from any source, and the teacher paradigm: staleness on the source's own step
clock, a peer that stopped moving left out, a frozen teacher never stale, the teacher's
instructions and schedule, the makers' instructions, and the checks of a teacher's
namespace a job is submitted with."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from carls.bank.memory import MemoryBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec, default_kinds
from carls.makers.compute import instructions, knowledge_batch
from carls.trainers import KnowledgeModel, SpecError, example_batches
from carls.trainers.knowledge import Knowledge
from carls.trainers.paradigms import Codistillation, Setup, Teacher
from carls.trainers.runner import publishes
from carls.trainers.sources import check_sources
from carls.trainers.spec import load_spec

N, C = 12, 3
IDS = [f"e{i:02d}" for i in range(N)]


def bank_with(ns: str, step: int, *, kinds: dict[str, int] | None = None) -> MemoryBank:
    """A bank whose namespace ``ns`` has predictions and instructions of every id at
    ``step``: the teacher is sure of class ``i % C``; row 0's label it disputes."""
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec(ns, kinds or (default_kinds(4, C, 2) | {"instruction": 2})))
    probs = np.full((N, C), 0.05, np.float32)
    probs[np.arange(N), np.arange(N) % C] = 0.9
    labels = np.full(N, -1)
    labels[0] = 1  # the teacher says 0
    bank.write(ns, "prediction", KnowledgeBatch(IDS, probs), Lineage(step, "t"))
    if "instruction" in bank.namespace(ns).kinds:
        batch = knowledge_batch("instruction", IDS, np.zeros((N, 4)), probs, labels)
        bank.write(ns, "instruction", batch, Lineage(step, "t"))
    return bank


def knowledge(paradigm: Any, bank: MemoryBank, max_staleness: int = 100) -> Knowledge:
    k = Knowledge(
        [paradigm],
        Setup("student", C, 4, tuple(IDS)),
        bank,
        np.full(N, -1),
        max_staleness=max_staleness,
    )
    assert k.reader is not None
    k.reader.refresh(np.arange(N))
    return k


def test_a_finished_teacher_is_never_stale_however_far_the_student_goes() -> None:
    k = knowledge(Teacher(teacher="teacher"), bank_with("teacher", 200))
    rows = np.arange(N)
    for step in (0, 150, 10_000):  # the student's steps say nothing of the teacher's
        got = k.batch(rows, step)
        assert (got["teacher_w"] > 0).all()
        np.testing.assert_allclose(got["teacher_p"].argmax(1), rows % C)
    assert k.reader is not None and k.reader.staleness.too_stale == 0


def test_a_peers_staleness_is_counted_on_its_own_step_clock() -> None:
    bank = bank_with("peer", 900)
    newer = IDS[: N // 2]  # the peer's makers have reached step 1000 on half the ids
    probs = np.full((len(newer), C), 1 / C, np.float32)
    bank.write("peer", "prediction", KnowledgeBatch(newer, probs), Lineage(1000, "t"))
    k = knowledge(Codistillation(peer="peer", burn_in=0), bank, max_staleness=50)
    assert k.reader is not None and k.reader.clock("peer", "prediction") == 1000
    # at the student's step 10 (far behind the peer), only the peer's own clock counts:
    # rows of step 1000 are fresh, rows of step 900 are 100 steps behind it, too stale
    w = k.batch(np.arange(N), 10)["peer_w"]
    assert (w[: N // 2] > 0).all() and (w[N // 2 :] == 0).all()


def test_a_peer_that_stopped_moving_is_not_distilled_until_it_moves_again() -> None:
    # the peer's predictions stopped at its step 100 (it fell behind, or its worker
    # stalled): on its own clock they stay fresh, but a trainer would go on learning from a
    # checkpoint of the peer's first hundred steps
    bank = bank_with("peer", 100)
    k = knowledge(Codistillation(peer="peer", burn_in=0), bank, max_staleness=1000)
    rows = np.arange(N)
    # this trainer's namespace was trained before (its steps go on from 5,000): the two
    # namespaces' step numbers are not compared, only how long the peer stands still
    assert (k.batch(rows, 5000)["peer_w"] > 0).all()
    assert (k.batch(rows, 6000)["peer_w"] > 0).all()  # still for 1,000 steps: still used
    assert (k.batch(rows, 6001)["peer_w"] == 0).all()
    assert k.view.stats["peer_usable"] < 1.0
    # the peer moves on: its newer predictions are used again
    probs = np.full((N, C), 1 / C, np.float32)
    bank.write("peer", "prediction", KnowledgeBatch(IDS, probs), Lineage(150, "t"))
    assert k.reader is not None
    k.reader.refresh(rows)
    assert (k.batch(rows, 6500)["peer_w"] > 0).all()
    assert (k.batch(rows, 7501)["peer_w"] == 0).all()  # and stops again


def test_the_own_namespaces_knowledge_stays_on_the_trainers_step() -> None:
    bank = bank_with("student", 100, kinds=default_kinds(4, C, 2))
    values = np.ones((N, 1), np.float32)
    bank.write("student", "difficulty", KnowledgeBatch(IDS, values), Lineage(100, "t"))
    from carls.trainers.paradigms import Curriculum

    k = knowledge(Curriculum(), bank, max_staleness=50)
    src = k.sources[0]
    assert k.view.get(src, np.arange(N), 120).usable.all()
    # the trainer is the source: 100 steps past its own knowledge, it is too stale,
    # though it is the newest the reader has seen
    assert k.reader is not None and k.reader.clock("student", "difficulty") == 100
    assert not k.view.get(src, np.arange(N), 200).usable.any()


def test_the_teachers_weights_scale_its_terms_and_its_pace_admits_the_easy_first() -> None:
    k = knowledge(Teacher(teacher="teacher", schedule="pace", full_at=0.5), bank_with("teacher", 7))
    rows = np.arange(N)
    k.view.progress = 0.0
    start = k.batch(rows, 1)["teacher_w"]
    # admit_at = 1 - p(label) for row 0 (p = 0.05: late), 1 - margin for the others
    # (0.9 - 0.05: at 15 % of the schedule)
    assert (start == 0).all()
    k.view.progress = 0.1  # 20 % of the schedule: the unlabeled ones are in
    mid = k.batch(rows, 2)["teacher_w"]
    assert mid[0] == 0 and (mid[1:] > 0).all()
    k.view.progress = 0.5  # the whole schedule: all, row 0 weighted by its disputed label
    end = k.batch(rows, 3)["teacher_w"]
    np.testing.assert_allclose(end[1:], 0.9, rtol=1e-5)
    np.testing.assert_allclose(end[0], 0.05 / 0.9, rtol=1e-5)
    w = k.supervised_weights(rows, 3)
    assert w is not None and np.allclose(w, end)


def test_the_instruction_kind_weights_a_disputed_label_down_and_hard_examples_late() -> None:
    probs = np.array([[0.8, 0.15, 0.05], [0.8, 0.15, 0.05], [0.4, 0.35, 0.25]], np.float32)
    got = instructions(probs, np.array([0, 1, -1]))
    np.testing.assert_allclose(got[:, 0], [1.0, 0.15 / 0.8, 0.4], rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], [0.2, 0.85, 0.95], rtol=1e-6)
    assert got.dtype == np.float32 and ((got >= 0) & (got <= 1)).all()


def test_a_student_of_a_teacher_alone_publishes_nothing_and_a_teacher_declares_instructions() -> (
    None
):
    base = {"namespace": "s", "dataset": {"name": "iris"}}
    student = load_spec(base | {"paradigm": {"name": "teacher", "params": {"teacher": "t"}}})
    assert not publishes(student)
    teacher = load_spec(
        {
            "namespace": "t",
            "dataset": {"name": "iris"},
            "paradigm": {"name": "supervised"},
            "train": {"teach": True},
        }
    )
    assert publishes(teacher) and teacher.kinds(3)["instruction"] == 2
    with pytest.raises(SpecError, match=r"train\.publish: a teacher"):
        load_spec(
            base | {"paradigm": {"name": "supervised"}, "train": {"teach": True, "publish": False}}
        )
    with pytest.raises(SpecError, match=r"paradigm\.params\.teacher: the teacher is another"):
        load_spec(base | {"paradigm": {"name": "teacher", "params": {"teacher": "s"}}})


@pytest.mark.parametrize(
    ("made", "checkpoint", "problem"),
    [
        (None, True, "namespace t does not exist in the bank"),
        (default_kinds(4, C, 2), True, "namespace t does not declare instruction"),
        (default_kinds(4, C, 2) | {"instruction": 2}, False, "namespace t has no checkpoint"),
    ],
)
def test_a_teacher_that_is_missing_is_named_at_submit_time(
    made: dict[str, int] | None, checkpoint: bool, problem: str
) -> None:
    bank = MemoryBank()
    if made is not None:
        bank.create_namespace(NamespaceSpec("t", made))
    spec = load_spec(
        {
            "namespace": "s",
            "dataset": {"name": "iris"},
            "paradigm": {"name": "teacher", "params": {"teacher": "t"}},
        }
    )
    with pytest.raises(SpecError, match=f"paradigm.params.teacher: {problem}"):
        check_sources(spec, bank, lambda ns, since: checkpoint)
    ok = MemoryBank()
    ok.create_namespace(NamespaceSpec("t", default_kinds(4, C, 2) | {"instruction": 2}))
    check_sources(spec, ok, lambda ns, since: True)  # nothing to say


def test_a_student_learns_the_teachers_classes_for_unlabeled_examples() -> None:
    bank = bank_with("teacher", 5)
    rng = np.random.default_rng(0)
    x = (np.arange(N) % C)[:, None] + rng.normal(0, 0.1, (N, 4)).astype(np.float32)
    labels = np.full(N, -1)
    labels[[1, 2, 3]] = [1, 2, 0]
    inputs = keras.Input((4,))
    emb = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, {"embedding": emb, "logits": keras.layers.Dense(C)(emb)})
    km = KnowledgeModel(
        model,
        [Teacher(teacher="teacher")],
        bank=bank,
        namespace="student",
        ids=IDS,
        labels=labels,
        features=x.astype(np.float32),
    )
    km.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert km.knowledge.reader is not None
    km.knowledge.reader.refresh(np.arange(N))
    with km:
        history = km.fit(
            example_batches(IDS, x.astype(np.float32), labels, batch_size=8, labeled_batch_size=3),
            steps_per_epoch=20,
            epochs=3,
            verbose=0,
        )
    assert history.history["distill"][-1] < history.history["distill"][0]
    predicted = km.predict(x.astype(np.float32), verbose=0).argmax(1)
    assert (predicted[1:] == (np.arange(N) % C)[1:]).mean() >= 0.9


def test_a_teacher_of_another_number_of_classes_is_refused() -> None:
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec("t", default_kinds(4, 10, 2) | {"instruction": 2}))
    spec = load_spec(
        {
            "namespace": "s",
            "dataset": {"name": "iris"},
            "paradigm": {"name": "teacher", "params": {"teacher": "t"}},
        }
    )
    with pytest.raises(SpecError, match="prediction of width 10; this side's is 3"):
        check_sources(spec, bank, None, {"prediction": 3})
