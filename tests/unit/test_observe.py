"""Seeing what a job does: its TensorBoard run, read back with TensorBoard's own reader,
and the trainer's Prometheus metrics; on the in-memory bank, without Kafka."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util import tensor_util

from carls.bank.jobs import MemoryJobStore
from carls.bank.memory import MemoryBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec
from carls.cmd_jobs import status_rows
from carls.trainers.runner import Context, JobRun, new_job_id
from carls.trainers.spec import load_spec


def _tabular(tmp_path: Path) -> tuple[dict[str, Any], list[str], np.ndarray]:
    path = tmp_path / "tabular.npz"
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    labeled = np.zeros(120, bool)
    labeled[:20] = True
    np.savez(path, X=rng.normal(size=(120, 6)) + y[:, None], y=y, labeled=labeled)
    spec = {
        "namespace": "observed",
        "dataset": {"path": str(path), "standardize": False, "test_size": 0.25},
        "model": {"hidden": [8], "embedding_dim": 4},
        "paradigm": {"name": "pseudo_label", "params": {}},  # reads propagated labels
        "train": {"steps": 60, "eval_every": 30, "batch_size": 16, "labeled_batch_size": 8},
    }
    return spec, [f"tabular-{i:06d}" for i in range(120)], np.eye(2, dtype=np.float32)[y]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = ea.EventAccumulator(str(run), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["tensors"]:
        values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        out[tag] = [(s, float(v)) for s, v in values if v.ndim == 0]
        if not out[tag]:  # a histogram: (buckets, 3) per event
            out[tag] = [(s, float(v[:, 2].sum())) for s, v in values]
    return out


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_job_writes_its_losses_accuracy_and_knowledge_to_a_tensorboard_run(
    tmp_path: Path,
) -> None:
    spec, ids, truth = _tabular(tmp_path)
    s = load_spec(spec)
    bank = MemoryBank()
    bank.create_namespace(NamespaceSpec(s.namespace, s.kinds(2), buckets=8))
    bank.write(s.namespace, "propagated", KnowledgeBatch(ids, truth), Lineage(0, "t", "f"))
    steps_before = _sample("carls_trainer_step_seconds_count")
    hits_before = _sample("carls_reader_cache_hits_total", kind="propagated")
    runs = tmp_path / "runs"
    ctx = Context(
        bank=bank, publisher=None, store=Path("unused"), jobs=MemoryJobStore(), log_dir=runs
    )
    job_id = new_job_id(s.namespace)
    state = JobRun(job_id, s, ctx).run()
    assert state["state"] == "succeeded"

    run = runs / job_id
    assert state["logdir"] == str(run)
    stored = ctx.jobs.get(job_id) if ctx.jobs is not None else None
    assert stored is not None and stored["state"] == "succeeded"
    assert 0 <= time.time() - stored["heard_at"] < 60  # when the job last said something
    assert status_rows(job_id, state)["tensorboard"] == f"tensorboard --logdir {run}"
    scalars = _scalars(run)
    # every loss term of the paradigm, and the total
    for tag in ("loss/total", "loss/supervised", "loss/pseudo"):
        assert scalars.get(tag), (tag, sorted(scalars))
        assert all(np.isfinite(v) for _, v in scalars[tag])
    # the test accuracy at each evaluation, the same the job's history holds
    assert [round(v, 6) for _, v in scalars["test/accuracy"]] == [
        round(h["test_accuracy"], 6) for h in state["history"]
    ]
    # knowledge: staleness of the propagated labels read (made at step 0), their
    # histogram, and their coverage (every id has them)
    means = scalars["knowledge/staleness_mean/propagated"]
    assert means and all(v > 0 for _, v in means)
    assert scalars["knowledge/staleness/propagated"][-1][1] > 0  # rows in the histogram
    assert scalars[f"knowledge/coverage/{s.namespace}/propagated"][-1][1] == 1.0
    steps = [step for step, _ in scalars["loss/total"]]
    assert steps == sorted(steps) and steps[-1] == 60

    # the trainer's metrics moved with it: a step time per step, the reader's hits
    assert _sample("carls_trainer_step_seconds_count") - steps_before == 60
    assert _sample("carls_reader_cache_hits_total", kind="propagated") > hits_before


def test_without_a_log_root_a_job_writes_no_run(tmp_path: Path) -> None:
    spec, _, _ = _tabular(tmp_path)
    spec["paradigm"] = {"name": "supervised"}
    spec["train"]["steps"] = 10
    s = load_spec(spec)
    ctx = Context(bank=MemoryBank(), publisher=None, store=Path("unused"), jobs=None)
    state = JobRun(new_job_id(s.namespace), s, ctx).run()
    assert state["state"] == "succeeded" and state["logdir"] is None
    assert "tensorboard" not in status_rows(state["job_id"], state)


@pytest.mark.parametrize("every", [0, -1])
def test_a_board_refuses_a_write_interval_below_one(tmp_path: Path, every: int) -> None:
    from carls.trainers.observe import KnowledgeBoard

    with pytest.raises(ValueError, match="every_steps"):
        KnowledgeBoard(tmp_path, every_steps=every)


def test_the_library_serves_a_trainers_metrics_from_its_own_process() -> None:
    import urllib.request

    from carls.trainers import KnowledgeBoard, StepMetrics, serve_metrics

    assert KnowledgeBoard.__module__ == StepMetrics.__module__ == "carls.trainers.observe"
    served = serve_metrics(0, "127.0.0.1")
    assert served is not None
    try:
        text = urllib.request.urlopen(served.url, timeout=10).read().decode()
    finally:
        served.close()
    assert "carls_trainer_step_seconds_bucket" in text
