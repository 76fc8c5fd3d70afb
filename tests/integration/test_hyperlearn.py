"""HyperLearn on the real stack: two quadrant learners train, each in its own `carls job
run` process; a third modality's learner starts while they train and a hypergraph that
names it is registered; the two running learners take its embeddings in without a
restart (the same job attempt), and the third takes theirs. Then the same with the
hypergraph made by a `carls worker` (the learners ask for it, ``knn``): made when the
first two learners' examples are in, made again when the third joins, and the task's
embeddings fused into ``<task>_fused`` by the worker."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.errors import NamespaceError
from carls.bank.hypergraphs import Hypergraph, HypergraphStore, load
from carls.bank.jobs import CassandraJobStore
from carls.bank.session import Connection
from carls.settings import Settings
from carls.trainers import hyperlearn as hl

pytestmark = pytest.mark.integration

DEADLINE_S = 300.0


class Task:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.tmp, self.settings = tmp, settings
        self.name = "h" + uuid.uuid4().hex[:10]
        self.conn = Connection(settings.cassandra).start()
        self.bank = CassandraBank(self.conn).start()
        self.jobs = CassandraJobStore(self.conn).start()
        self.store = HypergraphStore(CassandraBlobs(self.conn).start())
        self.info = hl.quadrant_digits(tmp / "data", labels=100, seed=0)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self) -> None:
        """A ``carls worker`` of its own group (the hypergraph maker looks every second)."""
        args = ["worker", "--hypergraphs", "1", "--app-id", f"{self.name}-makers"]
        self.procs["worker"] = subprocess.Popen(
            [sys.executable, "-m", "carls", *args],
            stdout=(self.tmp / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ},
            cwd=self.tmp,
        )

    def start(self, modality: str, **params: Any) -> None:
        from carls.demo_hyper import learner_spec

        raw = learner_spec(
            modality,
            self.info["modalities"][modality],
            f"{self.name}_{modality}",
            steps=1_000_000,  # until cancelled
            seed=0,
        )
        raw["paradigm"]["params"] |= {"poll_s": 0.5, **params}
        raw["train"]["eval_every"] = 50
        spec = self.tmp / f"{modality}.yaml"
        spec.write_text(yaml.safe_dump(raw))
        self.procs[modality] = subprocess.Popen(
            [sys.executable, "-m", "carls", "job", "run", str(spec)],
            stdout=(self.tmp / f"{modality}.log").open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )

    def register(self, modalities: tuple[str, ...]) -> None:
        """The hypergraph's hyperedges among ``modalities``, once their examples are in."""
        hg = load(Path(self.info["hypergraph"]))
        cut = [[(m, i) for m, i in e if m in modalities] for e in hg.members]
        sub = Hypergraph.of([e for e in cut if len(e) >= 2])
        check = hl.bank_check(self.bank, self.name)
        self.until(
            lambda: all(check(m, sub.ids_of(m)) is None for m in modalities),
            f"the examples of {modalities}",
        )
        self.store.register(self.name, sub, check)

    def state(self, modality: str) -> dict[str, Any] | None:
        ns = f"{self.name}_{modality}"
        return next((s for s in self.jobs.all() if s.get("namespace") == ns), None)

    def took_in(self, modality: str, other: str) -> dict[str, Any] | None:
        """The first history entry of ``modality``'s job that used ``other``."""
        s = self.state(modality) or {}
        return next(
            (h for h in s.get("history", []) if h["knowledge_use"].get(f"hyper_{other}_mass")),
            None,
        )

    def until(self, ok: Any, what: str) -> Any:
        deadline = time.monotonic() + DEADLINE_S
        while not (got := ok()):
            for m, p in self.procs.items():
                if p.poll() is not None:
                    if m == "worker":
                        log = (self.tmp / "worker.log").read_text(errors="replace")[-3000:]
                        raise AssertionError(f"the worker exited ({p.returncode}):\n{log}")
                    log = (self.tmp / f"{m}.log").read_text(errors="replace")[-2000:]
                    raise AssertionError(f"learner {m} exited ({p.returncode}):\n{log}")
            assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S:.0f} s"
            time.sleep(0.5)
        return got

    def close(self) -> None:
        learners = [m for m in self.procs if m != "worker"]
        for m in learners:
            s = self.state(m)
            if s is not None and s.get("state") == "running":
                self.jobs.request_cancel(s["job_id"])
        if "worker" in self.procs:
            self.procs["worker"].terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for m in [*learners, "fused"]:  # the namespaces only: the stack's own topics stay
            with contextlib.suppress(NamespaceError):
                self.bank.drop_namespace(f"{self.name}_{m}")
        self.store.drop(self.name)
        self.conn.close()


@pytest.fixture
def task(stack: Settings, tmp_path: Path) -> Iterator[Task]:
    t = Task(stack, tmp_path)
    try:
        yield t
    finally:
        t.close()


def test_a_third_modality_is_taken_in_by_the_running_learners_without_a_restart(
    task: Task,
) -> None:
    task.start("q0")
    task.start("q1")
    task.register(("q0", "q1"))
    first = {
        m: task.until(lambda m=m, o=o: task.took_in(m, o), f"{o} in {m}'s inputs")
        for m, o in (("q0", "q1"), ("q1", "q0"))
    }
    jobs = {m: (task.state(m) or {})["job_id"] for m in ("q0", "q1")}
    task.start("q2")
    task.register(("q0", "q1", "q2"))
    for m in ("q0", "q1"):
        joined = task.until(lambda m=m: task.took_in(m, "q2"), f"q2 in {m}'s inputs")
        assert joined["step"] > first[m]["step"]  # during the same run, later
        state = task.state(m)
        assert state is not None and state["state"] == "running"
        assert state["job_id"] == jobs[m] and state["attempts"] == 1  # no restart
    for other in ("q0", "q1"):
        task.until(lambda o=other: task.took_in("q2", o), f"{other} in q2's inputs")
    # a learner publishes its embeddings of all its nodes, its test items' too
    ids = np.load(task.info["modalities"]["q2"])["ids"].tolist()
    task.until(
        lambda: not task.bank.read(f"{task.name}_q2", "embedding/q2", ids).missing.any(),
        "q2's embeddings of all its items",
    )


def test_a_worker_makes_the_hypergraph_again_when_a_modality_joins_and_fuses_the_task(
    task: Task,
) -> None:
    task.start_worker()
    task.start("q0", knn=3)
    task.start("q1", knn=3)

    def made(modalities: list[str]) -> Any:
        info = task.store.newest(task.name)
        if info is None or "made_from" not in info.meta:
            return None
        hg = task.store.read(task.name, info)
        return hg if hg is not None and hg.modalities == modalities else None

    first = task.until(lambda: made(["q0", "q1"]), "a hypergraph of q0 and q1 made by the worker")
    orders = first.orders()
    assert orders[4] > 0 and orders[2] > 0  # kNN of order 4 within, the two quadrants across
    assert len(first.ids_of("q0")) == len(task.info["ids"])  # every item, test items too
    for m, o in (("q0", "q1"), ("q1", "q0")):
        task.until(lambda m=m, o=o: task.took_in(m, o), f"{o} in {m}'s inputs")
    jobs = {m: (task.state(m) or {})["job_id"] for m in ("q0", "q1")}
    task.start("q2", knn=3)
    task.until(lambda: made(["q0", "q1", "q2"]), "a hypergraph with q2 made by the worker")
    for m in ("q0", "q1"):
        task.until(lambda m=m: task.took_in(m, "q2"), f"q2 in {m}'s inputs")
        state = task.state(m)
        assert state is not None and state["job_id"] == jobs[m] and state["attempts"] == 1

    def fused() -> bool:
        try:
            width = task.bank.namespace(f"{task.name}_fused").kinds.get("fused")
        except NamespaceError:
            return False
        if width != 3 * 32:
            return False
        got = task.bank.read(f"{task.name}_fused", "fused", task.info["ids"])
        return not got.missing.any() and bool(np.abs(got.values[:, 64:]).sum() > 0)

    task.until(fused, "the three modalities fused by the worker")
