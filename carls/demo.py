"""The main job, end to end on the local stack: makers, trainer and bank together.

Semi-supervised digits with 50 labels: for each of three seeds, a supervised-only baseline
and a carls job (pseudo labels + graph regularization read from the bank while one
``carls worker`` makes them from the trainer's checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.errors import NamespaceError
from carls.bank.jobs import CassandraJobStore
from carls.bank.protocol import coverage
from carls.bank.session import Connection
from carls.settings import Settings
from carls.streams.groups import wait_stable
from carls.streams.producer import Publisher
from carls.trainers.runner import Context, JobRun, new_job_id, publishes
from carls.trainers.spec import JobSpec, load_spec
from carls.wiring import bring_up

Say = Callable[[str], None]
SEEDS = (0, 1, 2)
DEMO_NAMESPACE = re.compile(r"demo_(base|carls)_s[0-9]+(_[0-9a-f]{6})?")
REFERENCES = {
    "supervised MLP, 50 labels": 0.81,
    "LabelSpreading (kNN)": 0.884,
    "SelfTraining (LogisticRegression)": 0.868,
    "supervised MLP, all labels": 0.977,
}


def example_spec(name: str, namespace: str, seed: int) -> JobSpec:
    text = (resources.files("carls.trainers") / "examples" / f"{name}.yaml").read_text()
    import yaml

    raw = yaml.safe_load(text)
    raw["namespace"] = namespace
    raw["train"]["seed"] = seed
    return load_spec(raw)


def drop_earlier_runs(
    bank: CassandraBank, blobs: CassandraBlobs, settings: Settings, ours: Callable[[str], Any]
) -> None:
    """Drop the namespaces (and their checkpoints) that ``ours`` recognises as an earlier
    demo run's: every run names fresh ones."""
    for old in bank.namespaces():
        if ours(old.name):
            with contextlib.suppress(NamespaceError):
                bank.drop_namespace(old.name)
            blobs.delete_scope(f"checkpoints/{old.name}")
            shutil.rmtree(settings.checkpoint_dir / old.name, ignore_errors=True)


def summary(accs: list[float]) -> dict[str, Any]:
    return {
        "accuracies": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
    }


def run(settings: Settings, say: Say, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    t0 = time.monotonic()
    say("bringing up the local stack (the first start resolves jars from Maven Central)")
    bring_up(settings, say=say)
    stack_s = time.monotonic() - t0
    result: dict[str, Any] = {"seeds": list(seeds), "stack_ready_s": round(stack_s, 1)}
    with on_stack(settings, say, "demo-worker") as stack:
        bank = stack.bank
        base, ours, cov, stale, job_ids = [], [], [], [], []
        # Fresh namespaces every run: the makers follow the newest checkpoint of each
        # namespace name, so a reused name would be served by the previous run's final
        # model (its step is ahead of every checkpoint of the new run). Earlier runs'
        # namespaces and checkpoints are dropped; this run's stay for `carls bank`.
        drop_earlier_runs(bank, stack.blobs, settings, DEMO_NAMESPACE.fullmatch)
        run_id = uuid.uuid4().hex[:6]
        for seed in seeds:
            ns_base, ns_carls = f"demo_base_s{seed}_{run_id}", f"demo_carls_s{seed}_{run_id}"
            say(f"seed {seed}: supervised-only baseline (50 labels)")
            spec = example_spec("digits_supervised", ns_base, seed)
            ctx = stack.context(publish=False)
            base.append(JobRun(new_job_id(ns_base), spec, ctx, say).run()["test_accuracy"])
            say(f"seed {seed}: carls (pseudo labels + graph regularization from the bank)")
            spec = example_spec("digits_ssl", ns_carls, seed)
            job_id = new_job_id(ns_carls)
            state = JobRun(job_id, spec, stack.context(), say).run()
            job_ids.append(job_id)
            ours.append(state["test_accuracy"])
            stale.append((state.get("staleness") or {}).get("mean"))
            cov.append(_settled_coverage(bank, ns_carls, spec.train.steps))
            say(f"seed {seed}: baseline {base[-1]:.4f}, carls {ours[-1]:.4f}")
        result |= {
            "baseline": summary(base),
            "carls": summary(ours),
            "coverage": cov,
            "staleness_mean_steps": stale,
            "job_ids": job_ids,
            "references": REFERENCES,
        }
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


@dataclasses.dataclass(slots=True)
class Stack:
    """Connections to the local stack's bank, job store, checkpoint store and Kafka."""

    bank: CassandraBank
    jobs: CassandraJobStore
    blobs: CassandraBlobs
    store: Any
    publisher: Publisher
    log_dir: Path | None = None

    def context(self, publish: bool = True) -> Context:
        """A job context on this stack (``publish``: checkpoints and demand go to Kafka;
        each job's TensorBoard run under ``log_dir``)."""
        publisher = self.publisher if publish else None
        return Context(
            bank=self.bank,
            publisher=publisher,
            store=self.store,
            jobs=self.jobs,
            log_dir=self.log_dir,
        )


@contextlib.contextmanager
def on_stack(settings: Settings, say: Say, worker_log: str) -> Iterator[Stack]:
    """The stack's connections and one ``carls worker`` (logging to ``worker_log``), all
    closed and stopped on the way out."""
    cassandra = Connection(settings.cassandra).start()
    blobs = CassandraBlobs(cassandra).start()
    publisher = Publisher(settings.kafka, settings.topics)
    worker = _start_worker(settings, say, worker_log)
    try:
        _wait_worker(settings, say, worker)
        yield Stack(
            CassandraBank(cassandra).start(),
            CassandraJobStore(cassandra).start(),
            blobs,
            settings.artifact_store(blobs),
            publisher,
            settings.log_dir,
        )
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        publisher.close()
        cassandra.close()


def knowledge_of(state: dict[str, Any]) -> dict[str, Any]:
    """How a finished job's knowledge came, from its state: the first evaluation at which
    its cache held any (``None``: never), the cache's coverage and what the paradigm used
    at the last evaluation (``knowledge_use``), and the mean staleness of its reads."""
    history = state.get("history") or []
    came = next((h["step"] for h in history if (h.get("knowledge_coverage") or 0) > 0), None)
    last = history[-1] if history else {}
    staleness = (state.get("staleness") or {}).get("mean")
    return {
        "knowledge_from_step": came,
        "coverage_at_end": last.get("knowledge_coverage"),
        "use_at_end": {k: round(v, 4) for k, v in (last.get("knowledge_use") or {}).items()},
        "staleness_mean": None if staleness is None else round(staleness, 1),
    }


def _settled_coverage(
    bank: CassandraBank, ns: str, final_step: int, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Coverage once the makers have caught up with the final checkpoint (or at timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = {k: coverage(bank, ns, k) for k in ("pseudo_label", "neighbours")}
        done = all(c.newest_step == final_step and c.at_newest == c.total for c in got.values())
        if done or time.monotonic() > deadline:
            return {k: dataclasses.asdict(c) for k, c in got.items()}
        time.sleep(0.5)


def _start_worker(settings: Settings, say: Say, name: str) -> subprocess.Popen[bytes]:
    """A ``carls worker`` process on ``settings``' stack, logging to the state folder."""
    log = settings.state_dir.resolve() / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"starting a knowledge-maker worker (log: {log})")
    return subprocess.Popen(
        [sys.executable, "-m", "carls", "worker"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ},
        cwd=Path.cwd(),
    )


def _wait_worker(settings: Settings, say: Say, worker: subprocess.Popen[bytes]) -> None:
    """Wait until the worker reads checkpoints and id batches: a job started before then
    trains its first hundreds of steps with no knowledge at all."""
    group = f"{settings.topic_prefix}-makers"

    def alive() -> None:
        if worker.poll() is not None:
            raise RuntimeError(f"the knowledge-maker worker exited ({worker.returncode})")

    t0 = time.monotonic()
    wait_stable(settings.kafka, {group: 1, f"{group}-ids": 1}, timeout=WORKER_READY_S, check=alive)
    say(f"the worker is ready ({time.monotonic() - t0:.1f} s)")


WORKER_READY_S = 120.0
"""How long ``on_stack`` waits for its worker to join the makers' consumer groups."""

LEARNING_NAMESPACE = re.compile(r"bench_[a-z]+_s[0-9]+_[0-9a-f]{6}")


def learning_bench(
    settings: Settings,
    say: Say,
    datasets: list[str] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    paradigm: str | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``carls bench learning`` on the local stack: each carls job runs as ``carls
    trainer`` runs it, with one ``carls worker`` making its knowledge."""
    import tempfile

    from carls.benches import learning

    bring_up(settings, say=say)
    run_id = uuid.uuid4().hex[:6]

    def run_carls(
        npz: Path, dataset: str, seed: int, paradigm_name: str
    ) -> tuple[float, dict[str, Any]]:
        ns = f"bench_{dataset}_s{seed}_{run_id}"
        spec = load_spec(
            {
                "namespace": ns,
                "dataset": {"path": str(npz)},
                "paradigm": {"name": paradigm_name, "params": params or {}},
                "train": {"seed": seed},
            }
        )
        job = JobRun(new_job_id(ns), spec, stack.context(), lambda _: None)
        state = job.run()
        if publishes(spec):  # the next job starts on an idle worker, as on its own
            _settled_coverage(stack.bank, ns, spec.train.steps)
        return float(state["test_accuracy"]), knowledge_of(state)

    with on_stack(settings, say, "bench-learning-worker") as stack:
        drop_earlier_runs(stack.bank, stack.blobs, settings, LEARNING_NAMESPACE.fullmatch)
        with tempfile.TemporaryDirectory() as folder:
            return learning.run(
                run_carls,
                Path(folder),
                datasets=datasets,
                seeds=seeds,
                paradigm=paradigm or learning.PARADIGM,
                say=say,
            ) | {"params": params or {}}
