"""The library on the real stack: a user's own Keras model trained with ``model.fit``,
its knowledge made by a ``carls worker`` from the exported artifact and read back from
the bank while it trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

import carls
from carls.settings import Settings
from carls.streams.manifests import latest_manifest
from carls.trainers import KnowledgeModel, PublishCheckpoints, example_batches
from carls.trainers.examples import digits_cnn
from carls.trainers.paradigms import PseudoLabel
from tests.custom_layer_support import user_module
from tests.stack_support import StackEnv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[StackEnv]:
    e = StackEnv(tmp_path, "l")
    try:
        e.start_worker()
        e.wait_members(1, timeout=120.0)
        yield e
    finally:
        e.close()


def connection(env: StackEnv) -> carls.Connection:
    """The test's bank and publisher as a training script gets them from carls.connect()."""
    return carls.Connection(env.bank, env.publisher, env.checkpoints, env.settings)


@pytest.mark.learning
@pytest.mark.timeout(1800)  # three seeds of CNN training: 425-533 s alone, 880 s+ in a loaded CI
def test_a_cnn_learns_from_pseudo_labels_and_neighbours_made_by_the_worker(
    env: StackEnv,
) -> None:
    """The README's example: digits' 8x8 images, 50 labels, seeds 0, 1, 2; the worker
    serves the exported SavedModel and the trainer reads what it makes."""
    conn = connection(env)
    results = []
    for seed in (0, 1, 2):
        ns = f"{env.prefix}_cnn_s{seed}"
        env.namespaces.append(ns)
        results.append(digits_cnn.train(conn, ns, seed))
        manifest = latest_manifest(env.settings.kafka, env.settings.topics.checkpoints, ns)
        assert manifest is not None and manifest.format == "tf_saved_model"
    summary = [(r["seed"], r["test_accuracy"], r["knowledge_use"]) for r in results]
    for r in results:  # the knowledge came from the worker, and the trainer used it
        assert min(r["knowledge_coverage"].values()) > 0.9, summary
        assert r["knowledge_use"]["pseudo_used"] > 0.3, summary
    # Two runs of the three seeds measured means of 0.943 and 0.943 (seeds between 0.932
    # and 0.954).
    assert np.mean([r["test_accuracy"] for r in results]) >= 0.93, summary


def test_the_cnn_as_a_job_names_its_builder_and_runs_through_submit_and_trainer(
    env: StackEnv,
) -> None:
    """``trainers/examples/digits_cnn.yaml``: the same CNN, named by its builder, on an
    .npz of 8x8x1 images, submitted with ``carls submit`` and run by ``carls trainer``
    (shortened to 1,000 steps) with knowledge the worker makes from its SavedModels."""
    images = env.tmp / "digits_images.npz"
    digits_cnn.write_images(images)
    spec = yaml.safe_load((ROOT / "trainers/examples/digits_cnn.yaml").read_text())
    ns = f"{env.prefix}_cnn_job"
    env.namespaces.append(ns)
    spec["namespace"] = ns
    spec["dataset"]["path"] = str(images)
    spec["train"].update(steps=1000, eval_every=500)
    job = env.tmp / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    run_env = {
        **os.environ,
        "CARLS_TOPIC_PREFIX": env.prefix,
        "CARLS_CHECKPOINT_ROOT": str(env.tmp / "ckpt"),
    }

    def carls_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "carls", *args],
            env=run_env,
            cwd=env.tmp,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    submitted = carls_cli("submit", str(job))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    trainer = carls_cli("trainer", "--once")
    assert trainer.returncode == 0 and f"job {job_id} succeeded" in trainer.stderr, trainer.stderr[
        -3000:
    ]
    state = json.loads(carls_cli("job", "status", job_id, "--json").stdout)
    last = state["history"][-1]
    why = f"{last}\n{env.worker_logs()}"
    assert state["state"] == "succeeded" and state["step"] == 1000, why
    manifest = latest_manifest(env.settings.kafka, env.settings.topics.checkpoints, ns)
    assert manifest is not None and manifest.format == "tf_saved_model", manifest
    assert state["checkpoints"] >= 5, why  # steps 500 (after warm-up), 600, ..., 1000
    assert last["knowledge_coverage"] > 0.5 and last["knowledge_use"]["pseudo_used"] > 0.1, why
    assert state["test_accuracy"] > 0.85, why


def test_a_model_with_a_custom_layer_is_served_by_a_worker_without_its_code(
    env: StackEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The layer's module lives in a folder only this process has on its path; the worker
    # runs in env.tmp, where ``import carls_test_gates`` finds nothing.
    carls_test_gates = user_module(env.tmp / "user_code", "carls_test_gates", monkeypatch)

    rng = np.random.default_rng(0)
    n, classes = 300, 3
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (rng.normal(size=(n, 4, 4, 1)) + y[:, None, None, None]).astype(np.float32)
    labels = np.where(np.arange(n) < 30, y, -1).astype(np.int32)
    ids = [f"g{i}" for i in range(n)]

    inp = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 2, padding="same", activation="relu")(inp))
    h = carls_test_gates.Gate()(h)
    model = keras.Model(inp, {"embedding": h, "logits": keras.layers.Dense(classes)(h)})
    ns = f"{env.prefix}_gate"
    env.namespaces.append(ns)
    km = KnowledgeModel(
        model,
        [PseudoLabel(source="pseudo_label", thresholds="fixed", threshold=0.5)],
        bank=env.bank,
        namespace=ns,
        ids=ids,
        labels=labels,
        features=x,
    )
    km.register_examples()
    km.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    publish = PublishCheckpoints(env.publisher, env.checkpoints, every_steps=20)
    with km:
        km.fit(
            example_batches(ids, x, labels, batch_size=32, labeled_batch_size=16),
            steps_per_epoch=20,
            epochs=3,
            callbacks=[publish],
            verbose=0,
        )
    assert publish.checkpoints is not None
    steps = [m.step for m in publish.checkpoints.published]
    assert steps == [20, 40, 60]
    deadline = time.monotonic() + 120
    while True:  # every example gets the final checkpoint's pseudo label
        got = env.bank.read(ns, "pseudo_label", ids)
        if not got.missing.any() and (got.steps == 60).all():
            break
        assert time.monotonic() < deadline, (
            f"{int((got.steps == 60).sum())}/{n} at step 60\n{env.worker_logs()}"
        )
        env.assert_workers_alive()
        time.sleep(0.5)
    assert env.dead_letters(1, timeout=2.0) == []
