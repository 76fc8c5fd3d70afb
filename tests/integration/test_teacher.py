"""Teacher-guided training on the real stack: a finished teacher job (``train.teach``)
whose knowledge one ``carls worker`` makes from its final checkpoint, and students that
read it by example id while they train, on the teacher's frozen clock; and ``carls
submit`` refusing a student whose teacher is not there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from carls.settings import Settings
from carls.trainers.spec import JobSpec
from tests.integration.test_paradigms import Env, describe, digits_spec

pytestmark = pytest.mark.integration

TEACHER_STEPS = 300
STUDENT_STEPS = 600
MARK = 0.95
SEEDS = (0, 1)
SPEEDUP = 1.2
FINAL_GAIN = 0.05
"""Margins from five runs of this test (two seeds each, 64-unit MLP): steps to 95 % of
the student alone's final accuracy, alone against guided, 100/70, 125/55, 120/55, 120/75,
100/65, 135/65, 125/60, 135/70, 130/65, 140/75 (speed-up 1.43 to 2.27); final accuracy
0.83-0.86 alone, 0.967-0.980 guided (gain 0.109 to 0.148)."""


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def student(ns: str, paradigm: dict[str, Any], seed: int) -> JobSpec:
    """digits_student.yaml's student (50 labels, 16 a step), the test's small MLP."""
    return digits_spec(
        ns,
        paradigm,
        dataset={"labeled": 50, "split_seed": 0},
        # max_staleness far below the student's steps past the teacher's: on the
        # student's clock the teacher's knowledge would be masked from step 400 on
        train={
            "steps": STUDENT_STEPS,
            "eval_every": 5,
            "max_staleness": 100,
            "labeled_batch_size": 16,
            "batch_size": 128,
            "learning_rate": 0.001,
            "seed": seed,
        },
    )


def complete(env: Env, ns: str, kind: str, step: int, timeout: float = 180.0) -> None:
    """Wait until every example of ``ns`` has ``kind`` at ``step``."""
    deadline = time.monotonic() + timeout
    while (cov := env.coverage(ns, kind)).at_newest < cov.total or cov.newest_step != step:
        env.assert_workers_alive()
        assert time.monotonic() < deadline, f"{kind}: {cov}\n{env.worker_logs()}"
        time.sleep(0.5)


def steps_to(state: dict[str, Any], accuracy: float) -> int | None:
    return next((h["step"] for h in state["history"] if h["test_accuracy"] >= accuracy), None)


def test_a_student_guided_by_a_finished_teacher_learns_faster_than_alone(env: Env) -> None:
    teacher = env.namespace("_teacher")
    env.start_worker()
    spec = digits_spec(
        teacher,
        {"name": "supervised"},
        dataset={"split_seed": 0},
        train={"steps": TEACHER_STEPS, "checkpoint_every": TEACHER_STEPS, "teach": True},
    )
    (done,) = env.run_jobs([spec])
    assert done["state"] == "succeeded" and done["test_accuracy"] > 0.9, describe(done)
    for kind in ("prediction", "instruction"):
        complete(env, teacher, kind, TEACHER_STEPS)

    specs = []
    for seed in SEEDS:  # alone and guided, from the same initial weights
        specs.append(student(env.namespace(f"_alone{seed}"), {"name": "supervised"}, seed))
        guided = {"name": "teacher", "params": {"teacher": teacher}}
        specs.append(student(env.namespace(f"_guided{seed}"), guided, seed))
    states = env.run_jobs(specs)
    seen = []
    for alone, guided in zip(states[::2], states[1::2], strict=True):
        why = describe(alone) + "\n" + describe(guided)
        assert alone["state"] == guided["state"] == "succeeded", why
        # the teacher's knowledge is used to the end, far past its own step: it is frozen
        assert guided["history"][-1]["knowledge_use"]["teacher_usable"] > 0.99, why
        assert guided["checkpoints"] == 0, why  # a student of a teacher alone publishes none
        mark = MARK * alone["test_accuracy"]
        steps_alone, steps_guided = steps_to(alone, mark), steps_to(guided, mark)
        assert steps_alone is not None and steps_guided is not None, why
        seen.append((steps_alone, steps_guided, alone["test_accuracy"], guided["test_accuracy"]))
        assert steps_guided * SPEEDUP <= steps_alone, why
        assert guided["test_accuracy"] >= alone["test_accuracy"] + FINAL_GAIN, why
    print("steps to the mark alone/guided, final alone/guided:", seen)


def submit(env: Env, spec: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "student.yaml"
    path.write_text(yaml.safe_dump(spec))
    return subprocess.run(
        [sys.executable, "-m", "carls", "submit", str(path)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CARLS_TOPIC_PREFIX": env.prefix},
        check=False,
    )


def test_submit_names_a_teacher_that_does_not_exist_or_has_no_checkpoint(
    env: Env, tmp_path: Path
) -> None:
    absent = env.namespace("_absent")
    spec = {
        "namespace": env.namespace("_student"),
        "dataset": {"name": "digits", "labeled": 50},
        "paradigm": {"name": "teacher", "params": {"teacher": absent}},
    }
    got = submit(env, spec, tmp_path)
    assert got.returncode != 0
    assert f"paradigm.params.teacher: namespace {absent} does not exist" in got.stderr
    # a teacher's namespace that exists, with its kinds, but no checkpoint yet
    from carls.bank.types import NamespaceSpec, default_kinds

    env.bank.create_namespace(NamespaceSpec(absent, default_kinds(8, 10, 4) | {"instruction": 2}))
    got = submit(env, spec, tmp_path)
    assert got.returncode != 0
    assert f"paradigm.params.teacher: namespace {absent} has no checkpoint" in got.stderr


def test_a_pretrained_keras_model_published_as_a_teacher_guides_a_library_student(
    env: Env,
) -> None:
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    from carls.trainers import KnowledgeModel, Teacher, example_batches, publish_teacher

    env.start_worker()
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    ids = [f"d{i:04d}" for i in range(len(x))]
    inputs = keras.Input((64,))
    emb = keras.layers.Dense(32, activation="relu")(inputs)
    pretrained = keras.Model(inputs, {"embedding": emb, "logits": keras.layers.Dense(10)(emb)})
    pretrained.compile(
        optimizer="adam",
        loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    pretrained.fit(x, {"logits": y}, epochs=15, batch_size=64, verbose=0)

    class Conn:
        bank, publisher, store = env.bank, env.publisher, env.checkpoints

    teacher = env.namespace("_pretrained")
    manifest = publish_teacher(pretrained, Conn, namespace=teacher, ids=ids, features=x, labels=y)
    assert manifest.step == 1 and manifest.namespace == teacher
    for kind in ("prediction", "instruction", "difficulty"):
        complete(env, teacher, kind, 1)

    labels = np.full(len(ids), -1)
    labels[:50] = y[:50]
    inputs = keras.Input((64,))
    emb = keras.layers.Dense(32, activation="relu")(inputs)
    fresh = keras.Model(inputs, {"embedding": emb, "logits": keras.layers.Dense(10)(emb)})
    km = KnowledgeModel(
        fresh,
        [Teacher(teacher=teacher)],
        bank=env.bank,
        namespace=env.namespace("_student"),
        ids=ids,
        labels=labels,
        features=x,
    )
    km.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with km:
        history = km.fit(
            example_batches(ids, x, labels, batch_size=128, labeled_batch_size=50),
            steps_per_epoch=50,
            epochs=4,
            verbose=0,
        )
    assert km.knowledge.view.stats["teacher_usable"] > 0.9
    assert history.history["distill"][-1] < history.history["distill"][0]
    # the teacher's classes for the 1,747 examples the student has no label of
    guided = km.predict(x[50:], verbose=0).argmax(1)
    taught = pretrained.predict(x[50:], verbose=0)["logits"].argmax(1)
    assert (guided == taught).mean() > 0.85
