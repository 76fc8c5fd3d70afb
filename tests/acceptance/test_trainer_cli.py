"""`carls submit`, `carls trainer` and `carls job status` as users drive them, against the
real stack, on topics of their own (a unique ``CARLS_TOPIC_PREFIX``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.retry import past, retry_unavailable
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
            stop=past(deadline),
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
    assert state["checkpoints"] == 0  # a supervised job keeps the makers idle

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
train: {{steps: 60, eval_every: 30, checkpoint_every: 30, publish: true}}
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
        ("image augmentation on tabular data", "train.augment", "are not images"),
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
    elif case == "image augmentation on tabular data":  # iris: 4 features, not 2 x 2 pixels
        dataset = "{name: iris}\ntrain: {augment: affine}"
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


def _peer_spec(env: Env, ns: str, peer: str, steps: int) -> Path:
    return env.write(
        f"{ns}.yaml",
        f"""
namespace: {ns}
dataset: {{name: digits, labeled: 100}}
model: {{hidden: [32], embedding_dim: 16}}
paradigm: {{name: codistillation, params: {{peer: {peer}}}}}
train: {{steps: {steps}, eval_every: 50, checkpoint_every: 50}}
""",
    )


class _Trainers:
    """`carls trainer` processes, each in a session of its own, killed at the end."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.env.tmp / f"trainer-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "carls", "trainer"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env.vars},
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            (self.env.tmp / f"trainer-{i}.log").read_text(errors="replace")[-2000:]
            for i in range(len(self.procs))
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _wait_state(
    env: Env, carls: CarlsRun, job_id: str, ok: Any, trainers: _Trainers, timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = json_of(carls("job", "status", job_id, "--json", env=env.vars))
        if ok(state):
            return state
        assert time.monotonic() < deadline, f"{state}\n{trainers.logs()}"
        time.sleep(1.0)


def test_trainers_share_the_jobs_run_a_group_together_and_take_over_a_killed_ones_job(
    env: Env, carls: CarlsRun
) -> None:
    env.vars["CARLS_JOB_LEASE_S"] = "5"
    trainers = _Trainers(env)
    try:
        first, second = trainers.start(), trainers.start()
        a, b = env.namespace(), env.namespace()
        group = json_of(
            carls(
                "submit",
                str(_peer_spec(env, a, b, 300)),
                str(_peer_spec(env, b, a, 300)),
                "--json",
                env=env.vars,
            )
        )
        peers = [j["job_id"] for j in group["jobs"]]
        assert [j["namespace"] for j in group["jobs"]] == [a, b]
        states = [
            _wait_state(env, carls, j, lambda s: s["state"] == "succeeded", trainers) for j in peers
        ]
        assert max(s["started_at"] for s in states) < min(s["finished_at"] for s in states)
        assert {s["group"] for s in states} == {group["group"]}
        listed = json_of(carls("job", "list", "--json", env=env.vars))
        assert {r["job_id"]: r["state"] for r in listed if r["job_id"] in peers} == dict.fromkeys(
            peers, "succeeded"
        )

        # A long job; the trainer running it is killed: the other one takes it over.
        long = env.namespace()
        job = env.write(
            "long.yaml",
            f"""
namespace: {long}
dataset: {{name: digits, labeled: 100}}
model: {{hidden: [32], embedding_dim: 16}}
paradigm: {{name: supervised}}
train: {{steps: 100000, eval_every: 50, checkpoint_every: 1000}}
""",
        )
        submitted = carls("submit", str(job), env=env.vars)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        running = _wait_state(env, carls, job_id, lambda s: s.get("step", 0) >= 50, trainers)
        victim = next(p for p in (first, second) if running["trainer"].endswith(f"-{p.pid}"))
        os.killpg(victim.pid, signal.SIGKILL)
        again = _wait_state(
            env,
            carls,
            job_id,
            lambda s: s.get("attempts") == 2 and s["state"] == "running",
            trainers,
        )
        (retry,) = again["retries"]
        assert retry["trainer"] == running["trainer"] and "its trainer stopped" in retry["reason"]
        assert again["trainer"] != running["trainer"]
        shown = carls("job", "status", job_id, env=env.vars)
        assert "attempt 1" in shown.stdout and "its trainer stopped" in shown.stdout

        cancelled = carls("job", "cancel", job_id, env=env.vars)
        assert cancelled.returncode == 0, cancelled.stderr
        final = _wait_state(env, carls, job_id, lambda s: s["state"] == "cancelled", trainers)
        assert final["step"] < 100_000
        again = carls("job", "cancel", job_id, env=env.vars)
        assert again.returncode != 0 and "already cancelled" in again.stderr
    finally:
        trainers.close()
