"""`carls submit`, `carls trainer` and `carls job status` as users drive them, against the
real stack, on topics of their own (a unique ``CARLS_TOPIC_PREFIX``)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.retry import retry_unavailable
from carls.settings import Settings
from tests.acceptance.conftest import CarlsRun, json_of
from tests.stack_support import prefixed_settings, remove

pytestmark = pytest.mark.acceptance

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Env:
    tmp: Path
    settings: Settings
    vars: dict[str, str]
    namespaces: list[str] = field(default_factory=list)

    def namespace(self) -> str:
        name = "t" + uuid.uuid4().hex[:12]
        self.namespaces.append(name)
        return name

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[Env]:
    settings = prefixed_settings("a")
    e = Env(
        tmp_path,
        settings,
        {
            "CARLS_TOPIC_PREFIX": settings.topic_prefix,
            "CARLS_CHECKPOINT_ROOT": str(tmp_path / "ckpt"),
        },
    )
    try:
        yield e
    finally:
        # test_infra_cli restarts the stack: a node that has just started may take more
        # than the 10 s connect timeout to answer, so the clean-up waits for it (60 s).
        deadline = time.monotonic() + 60
        bank = retry_unavailable(
            CassandraBank(settings.cassandra).start,
            "connecting for clean-up",
            stop=lambda pause: time.monotonic() + pause > deadline,
        )
        with bank:
            remove(settings, bank, e.namespaces)


def test_submit_then_trainer_once_runs_the_job_and_status_reports_it(
    env: Env, carls: CarlsRun
) -> None:
    ns = env.namespace()
    job = env.write(
        "tiny.yaml",
        f"""
namespace: {ns}
dataset: {{name: digits, labeled: 100}}
model: {{hidden: [32], embedding_dim: 16}}
paradigm: {{name: supervised}}
train: {{steps: 150, eval_every: 50, checkpoint_every: 100}}
""",
    )
    submitted = carls("submit", str(job), env=env.vars)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(rf"{ns}-[0-9a-f]{{8}}", job_id), submitted.stdout
    assert f"{env.settings.topics.jobs}" in submitted.stderr

    queued = json_of(carls("job", "status", job_id, "--json", env=env.vars))
    assert queued["state"] == "queued" and queued["job_id"] == job_id
    assert queued["namespace"] == ns and queued["paradigm"] == "supervised"

    trainer = carls("trainer", "--once", env=env.vars)
    assert trainer.returncode == 0, trainer.stderr
    assert trainer.stdout.strip().splitlines()[-1] == "ran 1 job(s)", trainer.stdout
    assert f"job {job_id} succeeded" in trainer.stderr

    status = carls("job", "status", job_id, env=env.vars)
    assert status.returncode == 0, status.stderr
    rows = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1)
        for line in status.stdout.splitlines()[2:]
        if re.search(r"\s{2,}", line.strip())
    )
    assert rows["state"] == "succeeded", status.stdout
    assert rows["step"] == "150/150", status.stdout
    assert 0.5 < float(rows["test accuracy"]) <= 1.0, status.stdout

    state = json_of(carls("job", "status", job_id, "--json", env=env.vars))
    assert state["state"] == "succeeded" and state["reason"] is None
    assert [h["step"] for h in state["history"]] == [50, 100, 150]
    assert state["test_accuracy"] == pytest.approx(float(rows["test accuracy"]), abs=1e-3)
    assert state["checkpoints"] >= 2

    png = env.tmp / "out.png"
    plotted = carls("job", "status", job_id, "--plot", str(png), env=env.vars)
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == PNG
    assert "succeeded" in plotted.stdout


def test_a_trainer_on_another_machine_runs_a_job_whose_files_only_the_submitter_had(
    env: Env, carls: CarlsRun, tmp_path: Path
) -> None:
    ns = env.namespace()
    x, y = load_digits(return_X_y=True)
    data = env.tmp / "mine.npz"
    np.savez(data, X=x[:600], y=y[:600])
    job = env.write(
        "mine.yaml",
        f"""
namespace: {ns}
dataset: {{path: mine.npz, labeled: 100}}
model: {{hidden: [32], embedding_dim: 16}}
paradigm: {{name: supervised}}
train: {{steps: 60, eval_every: 30, checkpoint_every: 30}}
""",
    )
    submitted = carls("submit", str(job), env=env.vars)
    assert submitted.returncode == 0, submitted.stderr
    match = re.search(
        r"mine\.npz: in the bank as (bank://datasets/mine-[0-9a-f]{12}\.npz)", submitted.stderr
    )
    assert match, submitted.stderr
    job_id = submitted.stdout.strip()
    data.unlink()
    job.unlink()

    # Another machine: another working folder, an empty checkpoint root of its own.
    other = tmp_path / "other-machine"
    other.mkdir()
    there = {**env.vars, "CARLS_CHECKPOINT_ROOT": str(other / "ckpt")}
    trainer = carls("trainer", "--once", env=there, cwd=other)
    assert f"job {job_id} succeeded" in trainer.stderr, trainer.stderr
    state = json_of(carls("job", "status", job_id, "--json", env=env.vars))
    assert state["checkpoints"] >= 2
    assert not list((other / "ckpt").rglob("step-*"))  # checkpoints went to the bank
    with CassandraBlobs(env.settings.cassandra) as blobs:
        stored = [e.name for e in blobs.entries(f"checkpoints/{ns}")]
    assert stored and all(n.startswith("step-") for n in stored)

    listed = json_of(carls("dataset", "list", "--json", env=env.vars))
    assert match.group(1) in [r["uri"] for r in listed]
    removed = carls("dataset", "remove", match.group(1), env=env.vars)
    assert removed.returncode == 0, removed.stderr
    listed = json_of(carls("dataset", "list", "--json", env=env.vars))
    assert match.group(1) not in [r["uri"] for r in listed]


def _csv(env: Env, name: str, rows: list[str]) -> Path:
    return env.write(name, "\n".join(["a,b,label", *rows]) + "\n")


@pytest.mark.parametrize(
    ("case", "field", "problem"),
    [
        ("unknown paradigm", "paradigm.name", "unknown paradigm 'telepathy'"),
        ("missing dataset file", "dataset.path", "no such file"),
        ("absent csv label column", "dataset.label_column", "'target' is not a column"),
        ("non-numeric csv feature", "dataset.path", "'abc' is not a number"),
        ("codistillation without peer", "paradigm.params.peer", "required"),
    ],
)
def test_submit_rejects_an_invalid_spec_naming_the_field(
    env: Env, carls: CarlsRun, case: str, field: str, problem: str
) -> None:
    ns = env.namespace()
    good_rows = [f"{i % 7}.5,{i % 3},{i % 2}" for i in range(40)]
    dataset = "{name: digits}"
    paradigm = "{name: supervised}"
    if case == "unknown paradigm":
        paradigm = "{name: telepathy}"
    elif case == "missing dataset file":
        dataset = "{path: nowhere.csv, label_column: label}"
    elif case == "absent csv label column":
        _csv(env, "data.csv", good_rows)
        dataset = "{path: data.csv, label_column: target}"
    elif case == "non-numeric csv feature":
        _csv(env, "data.csv", [*good_rows[:5], "1.0,abc,1", *good_rows[5:]])
        dataset = "{path: data.csv, label_column: label}"
    else:
        paradigm = "{name: codistillation, params: {weight: 1.0}}"
    job = env.write("job.yaml", f"namespace: {ns}\ndataset: {dataset}\nparadigm: {paradigm}\n")
    proc = carls("submit", str(job), env=env.vars)
    assert proc.returncode == 1, f"{case}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout == ""
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {field}: "), proc.stderr
    assert problem in error, proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_of_an_unknown_job_fails_clearly(env: Env, carls: CarlsRun) -> None:
    proc = carls("job", "status", "no-such-job", env=env.vars)
    assert proc.returncode != 0
    assert "no job no-such-job" in proc.stderr
    assert "Traceback" not in proc.stderr
    as_json = carls("job", "status", "no-such-job", "--json", env=env.vars)
    assert as_json.returncode != 0 and as_json.stdout == ""
    assert "no job no-such-job" in as_json.stderr
