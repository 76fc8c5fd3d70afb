"""``JobRun``: a job spec through the library API, on the in-memory bank and without Kafka
(nothing is published): a user's model named by its builder, images from an .npz,
augmented views and cutout in the input pipeline, the averaged weights evaluated; and bad
models or options refused before anything is written."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.datasets import load_digits

from carls.bank.errors import BankUnavailableError, NamespaceError
from carls.bank.jobs import MemoryJobStore
from carls.bank.memory import MemoryBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec
from carls.cli import main
from carls.cmd_jobs import status_rows
from carls.trainers import runner
from carls.trainers.errors import ModelError, SpecError
from carls.trainers.runner import Context, JobRun, new_job_id
from carls.trainers.spec import load_spec

BUILDERS = """
import keras


def no_logits(input_shape, classes):
    inp = keras.Input(input_shape)
    h = keras.layers.Dense(8)(keras.layers.Flatten()(inp))
    return keras.Model(inp, {"embedding": h, "scores": keras.layers.Dense(classes)(h)})


def three_classes(input_shape, classes):
    inp = keras.Input(input_shape)
    h = keras.layers.Dense(8)(keras.layers.Flatten()(inp))
    return keras.Model(inp, {"embedding": h, "logits": keras.layers.Dense(3)(h)})
"""


@pytest.fixture
def images(tmp_path: Path) -> Path:
    data = load_digits()
    rows = np.arange(0, len(data.images), 3)  # a third of digits keeps the test short
    path = tmp_path / "images.npz"
    np.savez(path, X=(data.images[rows] / 16.0)[..., None], y=data.target[rows])
    return path


@pytest.fixture
def builders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "carls_test_builders.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(folder))
    return "carls_test_builders"


def job(images: Path, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "namespace": "images_job",
        "dataset": {"path": str(images), "standardize": False, "labeled": 30},
        "model": {
            "builder": "carls.trainers.examples.digits_cnn:build_cnn",
            "params": {"embedding_dim": 16},
        },
        "paradigm": {"name": "pseudo_label", "params": {"threshold": 0.5}},
        "train": {"steps": 40, "eval_every": 20, "batch_size": 32, "labeled_batch_size": 16},
    }
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values}
    return spec


def run(spec: dict[str, Any], bank: MemoryBank) -> dict[str, Any]:
    s = load_spec(spec)
    ctx = Context(bank=bank, publisher=None, store=Path("unused"), jobs=MemoryJobStore())
    return JobRun(new_job_id(s.namespace), s, ctx).run()


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "reader" in t.name.lower()]


def test_a_builder_model_trains_on_augmented_images_of_an_npz(
    images: Path,
) -> None:
    bank = MemoryBank()
    before = len(reader_threads())
    state = run(
        job(images, train={"augment": "shift", "cutout": 2, "ema": 0.9, "augment_views": 4}),
        bank,
    )
    assert state["state"] == "succeeded" and state["step"] == 40
    assert [h["step"] for h in state["history"]] == [20, 40]
    last = state["history"][-1]
    assert set(last["loss"]) == {"supervised", "pseudo"}
    assert state["test_accuracy"] == last["test_accuracy"]
    # the examples were registered with their images, flat, for the makers
    assert bank.namespace("images_job").kinds["embedding"] == 16
    assert len(reader_threads()) == before  # the knowledge reader is closed


def test_the_job_runs_its_steps_when_eval_every_does_not_divide_them(images: Path) -> None:
    bank = MemoryBank()
    spec = job(images, train={"steps": 30, "eval_every": 20})
    spec["paradigm"] = {"name": "supervised"}  # labeled batches only
    state = run(spec, bank)
    assert state["step"] == 30 and [h["step"] for h in state["history"]] == [20, 30]
    assert set(state["history"][-1]["loss"]) == {"supervised"}


@pytest.mark.parametrize(
    ("builder", "words"),
    [
        ("no_logits", "'logits'"),
        ("three_classes", "model.builder: the model has 3 logits; the dataset has 10 classes"),
    ],
)
def test_a_model_that_does_not_fit_fails_before_anything_is_written(
    images: Path, builders: str, builder: str, words: str
) -> None:
    bank = MemoryBank()
    spec = job(images, model={"builder": f"{builders}:{builder}", "params": {}})
    with pytest.raises(ModelError, match=words):
        run(spec, bank)
    with pytest.raises(NamespaceError):
        bank.namespace("images_job")


@pytest.mark.parametrize(
    ("train", "field"),
    [({"augment": "shift"}, "train.augment"), ({"cutout": 2}, "train.cutout")],
)
def test_image_augmentations_of_examples_that_are_not_images_are_refused_before_any_write(
    tmp_path: Path, train: dict[str, Any], field: str
) -> None:
    path = tmp_path / "tabular.npz"  # 16 features: a square number, and still no image
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.normal(size=(60, 16)), y=np.arange(60) % 2)
    bank = MemoryBank()
    spec = job(
        path,
        dataset={"labeled": 10},
        model={"builder": None, "params": {}, "hidden": [8], "embedding_dim": 4},
        train=train,
    )
    with pytest.raises(SpecError) as info:
        run(spec, bank)
    assert info.value.field == field and "(16,)" in info.value.problem
    assert "augment: corrupt" in info.value.problem and "image_shape" in info.value.problem
    with pytest.raises(NamespaceError):
        bank.namespace("images_job")


def test_tabular_examples_train_on_corrupted_views_and_declared_images_on_image_views(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tabular.npz"
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.normal(size=(60, 16)), y=np.arange(60) % 2)
    small = {"builder": None, "params": {}, "hidden": [8], "embedding_dim": 4}
    for dataset, train in (
        ({"labeled": 10}, {"augment": "corrupt", "corruption": 0.5, "augment_views": 3}),
        ({"labeled": 10, "image_shape": [4, 4]}, {"augment": "affine", "cutout": 2}),
    ):
        bank = MemoryBank()
        state = run(job(path, dataset=dataset, model=small, train=train), bank)
        assert state["state"] == "succeeded" and state["step"] == 40


def test_a_held_out_slice_measures_the_pseudo_labels_and_is_never_learnt_from(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tabular.npz"
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    labeled = np.zeros(80, bool)
    labeled[:20] = True  # ten per class
    np.savez(path, X=rng.normal(size=(80, 6)) + y[:, None], y=y, labeled=labeled)
    spec = job(
        path,
        dataset={"labeled": None, "test_size": 0.25},
        model={"builder": None, "params": {}, "hidden": [8], "embedding_dim": 4},
        paradigm={"name": "pseudo_label", "params": {}},  # the defaults: propagated, soft
        train={"holdout": 0.2},
    )
    s = load_spec(spec)
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec(s.namespace, s.kinds(2), buckets=8))
    ids = [f"tabular-{i:06d}" for i in range(80)]
    # propagated labels, right for every example
    truth = np.eye(2, dtype=np.float32)[y]
    bank.write(s.namespace, "propagated", KnowledgeBatch(ids, truth), Lineage(0, "t", "f"))
    state = run(spec, bank)
    assert state["state"] == "succeeded"
    use = state["history"][-1]["knowledge_use"]
    # two of each class's ten labels held out: unlabeled in the bank, measured instead
    assert use["pseudo_held_out"] == 4 and use["pseudo_accuracy"] == 1.0
    registered = bank.fetch_examples(s.namespace, ids)
    assert (registered.labels[~registered.missing] >= 0).sum() == 16
    rows = status_rows(state["job_id"], state)
    assert rows["pseudo-label accuracy (4 held out)"] == "1.000 (of those used: 1.000)"


def test_submit_builds_and_checks_a_user_model_before_queueing(
    images: Path, builders: str, tmp_path: Path
) -> None:
    path = tmp_path / "job.yaml"
    spec = job(images, model={"builder": f"{builders}:no_logits", "params": {}})
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(main, ["submit", str(path), "--dry-run"])
    assert result.exit_code == 1
    assert "'logits'" in result.stderr and "Traceback" not in result.stderr

    path.write_text(yaml.safe_dump(job(images)))
    result = CliRunner().invoke(main, ["submit", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "digits_cnn:build_cnn: embedding of 16, 10 logits" in result.stderr


class FlakyJobStore(MemoryJobStore):
    """A job store whose writes, after the first ``ok_first``, find the bank unavailable
    ``failures`` times."""

    def __init__(self, failures: int, ok_first: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.ok_first = ok_first

    def put(self, job_id: str, state: dict[str, Any]) -> None:
        if self.ok_first:
            self.ok_first -= 1
        elif self.failures:
            self.failures -= 1
            raise BankUnavailableError("cassandra save job failed: OperationTimedOut")
        super().put(job_id, state)


def test_state_writes_retry_while_the_bank_is_unavailable(
    images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "STATE_RETRY_S", 5.0)
    monkeypatch.setattr(runner.time, "sleep", lambda _: None)  # no waiting in a unit test
    spec = job(images, train={"steps": 20, "eval_every": 10})
    spec["paradigm"] = {"name": "supervised"}
    s = load_spec(spec)
    store = FlakyJobStore(failures=3)
    ctx = Context(bank=MemoryBank(), publisher=None, store=Path("unused"), jobs=store)
    state = JobRun("j-1", s, ctx).run()
    assert state["state"] == "succeeded" and store.failures == 0
    assert store.get("j-1")["state"] == "succeeded"

    # An outage longer than a progress record's retries, from just after the job started
    # until after it ended: training goes on, and its end is recorded once the bank is back.
    monkeypatch.setattr(runner, "STATE_RETRY_S", 0.0)
    store = FlakyJobStore(failures=12, ok_first=1)
    ctx = Context(bank=MemoryBank(), publisher=None, store=Path("unused"), jobs=store)
    state = JobRun("j-2", s, ctx).run()
    assert state["state"] == "succeeded" and store.failures == 0
    saved = store.get("j-2")
    assert saved is not None and saved["state"] == "succeeded" and saved["step"] == 20


def test_the_trainer_runs_a_job_once_and_sets_aside_one_that_keeps_stopping_trainers(
    images: Path,
) -> None:
    from types import SimpleNamespace

    from carls.schemas import TrainingJob, encode
    from carls.settings import Settings
    from carls.trainers.service import MAX_ATTEMPTS, TrainerService

    spec = job(images, train={"steps": 10, "eval_every": 10})
    spec["paradigm"] = {"name": "supervised"}
    offsets = iter(range(100))

    def record(job_id: str) -> Any:
        value = encode(
            TrainingJob(job_id=job_id, namespace="images_job", spec=spec, submitted_at=1.0)
        )
        return SimpleNamespace(topic="jobs", partition=0, offset=next(offsets), value=value)

    store, said = MemoryJobStore(), []
    settings = Settings()
    service = TrainerService(
        settings.kafka,
        settings.topics,
        MemoryBank(),
        store,
        Path("unused"),
        "trainers",
        say=said.append,
        name="me",
        lease_s=0.2,
    )

    def run(rec: Any) -> None:
        service._accept(rec)
        deadline = time.monotonic() + 600  # a hang guard: a loaded CI machine is slow
        while service.running or service.watched:
            assert time.monotonic() < deadline, said
            service._tend()
            time.sleep(0.05)

    # Trainers that took these jobs and stopped: their leases go stale.
    assert store.take("j-crash", "gone", MAX_ATTEMPTS, None) is not None
    assert store.take("j-again", "gone", 1, None) is not None
    time.sleep(0.3)
    # a job that was running when MAX_ATTEMPTS trainers stopped is not run again
    run(record("j-crash"))
    crashed = store.get("j-crash")
    assert crashed is not None and crashed["state"] == "failed"
    assert "suspected poison pill" in crashed["reason"]
    # one that stopped fewer trainers runs, counting the attempt and saying why
    run(record("j-again"))
    again = store.get("j-again")
    assert again is not None and again["state"] == "succeeded" and again["attempts"] == 2
    assert [(r["attempt"], r["trainer"]) for r in again["retries"]] == [(1, "gone")]
    # a replay of a job that already ended is skipped; a tombstone too
    run(record("j-again"))
    assert "already succeeded" in said[-1]
    run(SimpleNamespace(topic="jobs", partition=0, offset=next(offsets), value=None))
    assert service.ran == 2  # the one set aside and the one run


def test_a_teachers_namespace_declares_instructions_and_a_student_needs_its_teacher(
    images: Path,
) -> None:
    bank = MemoryBank()
    spec = job(images, train={"teach": True, "steps": 20})
    spec["paradigm"] = {"name": "supervised"}
    assert run(spec, bank)["state"] == "succeeded"
    assert bank.namespace("images_job").kinds["instruction"] == 2
    # a student whose teacher's namespace is not in the bank fails before training,
    # naming the field (carls submit says the same before queueing it)
    student = job(images)
    student["namespace"] = "student_job"
    student["paradigm"] = {"name": "teacher", "params": {"teacher": "no_such_teacher"}}
    with pytest.raises(SpecError, match="namespace no_such_teacher does not exist") as info:
        run(student, bank)
    assert info.value.field == "paradigm.params.teacher"
    assert "student_job" not in [n.name for n in bank.namespaces()]  # nothing written


class TimingOutBank(MemoryBank):
    """A bank whose first ``failures`` example registrations time out (a loaded server)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def register_examples(self, *args: Any, **kwargs: Any) -> int:
        if self.failures:
            self.failures -= 1
            raise BankUnavailableError("cassandra register examples failed: OperationTimedOut")
        return super().register_examples(*args, **kwargs)


def test_a_registration_that_times_out_is_sent_again_and_the_job_goes_on(
    images: Path,
) -> None:
    spec = job(images, train={"steps": 10, "eval_every": 10})
    bank = TimingOutBank(failures=2)
    state = run(spec, bank)
    assert state["state"] == "succeeded" and bank.failures == 0
    buckets = bank.namespace("images_job").buckets
    ids = [i for b in range(buckets) for i in bank.example_ids("images_job", b)]
    assert len(ids) == 419  # every training example (a third of digits, 70 % of it)
    assert not bank.fetch_examples("images_job", ids).missing.any()
