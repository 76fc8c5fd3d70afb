"""Seeing what carls does, as its users do: Prometheus scraping a running worker and a
running trainer during a campaign, the job's TensorBoard run and `carls job status`
saying where it is, `carls bank coverage --watch` on a terminal and through a pipe, and
the admin tool from a core install that has no TensorFlow."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorboard.backend.event_processing import event_accumulator as ea

from carls.bank.cassandra import CassandraBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec
from carls.settings import Settings
from tests.acceptance.conftest import CarlsRun, json_of
from tests.stack_support import prefixed_settings, remove

pytestmark = pytest.mark.acceptance

REPO = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Env:
    tmp: Path
    settings: Settings
    vars: dict[str, str]
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def namespace(self) -> str:
        name = "o" + uuid.uuid4().hex[:12]
        self.namespaces.append(name)
        return name

    def start(self, name: str, *args: str) -> Path:
        log = self.tmp / f"{name}.log"
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "carls", *args],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.vars},
                start_new_session=True,
            )
        )
        return log


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[Env]:
    settings = prefixed_settings("o")
    e = Env(
        tmp_path,
        settings,
        {
            "CARLS_TOPIC_PREFIX": settings.topic_prefix,
            "CARLS_CHECKPOINT_ROOT": str(tmp_path / "ckpt"),
            "CARLS_LOG_ROOT": str(tmp_path / "runs"),
        },
    )
    try:
        yield e
    finally:
        for proc in e.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        with CassandraBank(settings.cassandra).start() as bank:
            remove(settings, bank, e.namespaces)


def _url(log: Path, deadline: float) -> str:
    """The /metrics address a process said it serves on."""
    while time.monotonic() < deadline:
        found = re.search(r"metrics at (http://\S+/metrics)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no metrics address in {log.name}:\n{log.read_text()[-2000:]}")


def _scrape(url: str) -> Samples:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _poll(what: str, check: Callable[[], bool], timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in logs)
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tails}")
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_prometheus_sees_a_worker_and_a_trainer_move_during_a_campaign_and_tensorboard_the_job(
    env: Env, carls: CarlsRun
) -> None:
    ns = env.namespace()
    job = env.tmp / "job.yaml"
    job.write_text(
        f"""
namespace: {ns}
dataset: {{name: digits, labeled: 100}}
model: {{hidden: [32], embedding_dim: 16}}
paradigm: {{name: pseudo_label, params: {{source: pseudo_label}}}}
train: {{steps: 3000, eval_every: 500, checkpoint_every: 100}}
"""
    )
    worker_log = env.start("worker", "worker", "--metrics-port", "0")
    worker = _url(worker_log, time.monotonic() + 180)
    trainer_log = env.start("trainer", "job", "run", str(job), "--json", "--metrics-port", "0")
    trainer = _url(trainer_log, time.monotonic() + 180)
    logs = [worker_log, trainer_log]
    examples = env.settings.topics.examples
    group = f"{env.settings.topic_prefix}-makers-ids"

    # the worker: a campaign's id batches consumed and made into knowledge, stage by stage
    seen: list[Samples] = []

    def worker_made_some() -> bool:
        seen.append(_scrape(worker))
        return _value(seen[-1], "carls_knowledge_written_total", kind="embedding") > 0

    _poll("the worker's first knowledge", worker_made_some, 300, logs)
    first = seen[-1]
    assert _value(first, "carls_model_loads_total") >= 1
    demand = env.settings.topics.demand  # the trainer's demand may come before a campaign
    assert (
        _value(first, "carls_ids_consumed_total", topic=examples)
        + _value(first, "carls_ids_consumed_total", topic=demand)
    ) > 0
    assert _value(first, "carls_records_consumed_total", topic=env.settings.topics.checkpoints)
    assert _value(first, "carls_stage_seconds_total", stage="infer") > 0
    assert ("carls_consumer_lag", (("group", group), ("topic", examples))) in first
    assert ("carls_campaigns_in_flight", ()) in first

    def worker_moved() -> bool:
        now = _scrape(worker)
        return _value(now, "carls_ids_consumed_total", topic=examples) > _value(
            first, "carls_ids_consumed_total", topic=examples
        ) and _value(now, "carls_stage_seconds_total", stage="write") > _value(
            first, "carls_stage_seconds_total", stage="write"
        )

    _poll("the worker's counters moving on", worker_moved, 300, logs)

    # the trainer: steps timed, the makers' pseudo labels read from its cache
    steps: list[float] = []

    def trainer_moved() -> bool:
        now = _scrape(trainer)
        steps.append(_value(now, "carls_trainer_step_seconds_count"))
        hits = _value(now, "carls_reader_cache_hits_total", kind="pseudo_label")
        return len({s for s in steps if s > 0}) >= 2 and steps[-1] > steps[0] and hits > 0

    _poll("the trainer's steps and reader hits moving", trainer_moved, 300, logs)
    now = _scrape(trainer)
    assert _value(now, "carls_knowledge_staleness_steps_count", kind="pseudo_label") > 0

    # the job's TensorBoard run, found where `carls job status` says
    proc = env.procs[1]
    proc.wait(timeout=400)
    out = (env.tmp / "trainer.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    job_id = re.search(rf"running job ({ns}-[0-9a-f]{{8}})", out)
    assert job_id, out[-2000:]
    status = carls("job", "status", job_id.group(1), env=env.vars)
    assert status.returncode == 0, status.stderr
    run = env.tmp / "runs" / job_id.group(1)
    assert f"tensorboard --logdir {run}" in status.stdout
    acc = ea.EventAccumulator(str(run), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for tag in (
        "loss/total",
        "loss/pseudo",
        "test/accuracy",
        "checkpoints/published",
        "knowledge/staleness_mean/pseudo_label",
        "knowledge/staleness/pseudo_label",
        f"knowledge/coverage/{ns}/pseudo_label",
    ):
        assert tag in tags, (tag, sorted(tags))
    assert len(acc.Tensors("test/accuracy")) == 6  # an evaluation every 500 of 3000 steps


def _watch_rows(env: Env, n: int = 60) -> tuple[CassandraBank, str, list[str]]:
    ns = env.namespace()
    bank = CassandraBank(env.settings.cassandra).start()
    bank.create_namespace(NamespaceSpec(ns, {"embedding": 4}, buckets=2))
    ids = [f"w{i:04d}" for i in range(n)]
    bank.register_examples(ns, ids, np.zeros((n, 3), np.float32))
    _write(bank, ns, ids[: n // 2], 7)
    return bank, ns, ids


def _write(bank: CassandraBank, ns: str, ids: list[str], step: int) -> None:
    values = np.ones((len(ids), 4), np.float32)
    bank.write(ns, "embedding", KnowledgeBatch(ids, values), Lineage(step, "test", "f"))


def _terminal_until(leader: int, proc: subprocess.Popen[bytes], seen: str, timeout: float) -> str:
    """What the process wrote to its terminal until ``seen`` appears in it or it exits."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process exited and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
            if seen and seen in b"".join(chunks).decode(errors="replace"):
                break
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


def test_coverage_watch_redraws_on_a_terminal_and_writes_lines_through_a_pipe(
    env: Env,
) -> None:
    bank, ns, ids = _watch_rows(env)
    args = [sys.executable, "-m", "carls", "bank", "coverage", ns, "--watch", "--interval", "0.5"]
    with bank:
        # on a (pseudo-)terminal: the block is redrawn in place until the campaign is done;
        # the rest of the campaign is made once the watch has shown the half made first
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            args, stdout=follower, stderr=subprocess.PIPE, env={**os.environ, **env.vars}
        )
        os.close(follower)
        first = _terminal_until(leader, proc, "30/60", 120)
        assert "30/60" in first, first
        _write(bank, ns, ids[30:], 7)
        screen = first + _terminal_until(leader, proc, "", 120)
        os.close(leader)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "\x1b[2F" in screen and "\x1b[2K" in screen, screen  # redrawn in place
        assert "60/60" in screen and "done" in screen, screen

        # through a pipe: plain lines, no cursor codes; a newer step for half of the ids
        # (a new checkpoint's campaign), the rest of it made once the watch has said so
        _write(bank, ns, ids[30:], 8)
        piped = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env.vars},
        )
        assert piped.stdout is not None
        lines = [piped.stdout.readline(), piped.stdout.readline()]
        _write(bank, ns, ids[:30], 8)
        rest, err = piped.communicate(timeout=120)
    assert piped.returncode == 0, err
    lines = [line.rstrip("\n") for line in lines] + rest.strip().splitlines()
    text = "\n".join(lines)
    assert "\x1b" not in text
    assert "30/60" in lines[0] and "step 8" in lines[1], text
    assert lines[-2].endswith("- done") and "60/60" in lines[-2], text
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), lines


def test_the_admin_tool_runs_from_a_core_install_without_tensorflow(
    env: Env, tmp_path: Path
) -> None:
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    missing = subprocess.run(
        [str(py), "-c", "import tensorflow"], capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0 and "No module named 'tensorflow'" in missing.stderr
    ns = env.namespace()
    with CassandraBank(env.settings.cassandra).start() as bank:
        bank.create_namespace(NamespaceSpec(ns, {"embedding": 4}, buckets=2))
    carls_bin = str(venv / "bin" / "carls")
    listed = subprocess.run(
        [carls_bin, "bank", "namespaces", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env.vars},
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert ns in listed.stdout
    # a command that needs an extra says which one to install
    worker = subprocess.run(
        [carls_bin, "worker"],
        capture_output=True,
        text=True,
        env={**os.environ, **env.vars},
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert worker.returncode == 1, worker.stderr
    assert "pip install 'carls[worker" in worker.stderr, worker.stderr


def test_job_status_follow_ends_with_the_jobs_state(env: Env, carls: CarlsRun) -> None:
    ns = env.namespace()
    job = env.tmp / "job.yaml"
    job.write_text(
        f"""
namespace: {ns}
dataset: {{name: digits, labeled: 100}}
model: {{hidden: [32], embedding_dim: 16}}
paradigm: {{name: supervised}}
train: {{steps: 400, eval_every: 200}}
"""
    )
    job_id = carls("submit", str(job), env=env.vars).stdout.strip()
    env.start("trainer", "trainer", "--metrics-port", "-1")
    followed = carls(
        "job",
        "status",
        job_id,
        "--follow",
        "--json",
        "--interval",
        "0.5",
        env=env.vars,
        timeout=400,
    )
    assert followed.returncode == 0, followed.stderr
    records = [json.loads(line) for line in followed.stdout.splitlines()]
    assert records[-1]["state"] == "succeeded" and records[-1]["step"] == 400
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    assert json_of(carls("job", "status", job_id, "--json", env=env.vars))["state"] == "succeeded"
