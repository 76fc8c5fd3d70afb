"""HyperLearn's learning claim, in one process on the in-memory bank: on the quadrant
digits (four 4x4 quadrant modalities, 100 labels), the fused representation of the four
learners beats the best single modality and one MLP on the concatenated features (means
of seeds 0, 1, 2), and with a fifth of the items lacking a quadrant it degrades gracefully:
it still beats both there.

Each learner and the baseline run as jobs, side by side in threads, meeting only in the
bank, as `carls bench hyperlearn` runs them in processes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from carls.bank.artifacts import ArtifactStore
from carls.bank.blobs import MemoryBlobs
from carls.bank.hypergraphs import HypergraphStore, load
from carls.bank.jobs import MemoryJobStore
from carls.bank.memory import MemoryBank
from carls.demo_hyper import DIM, learner_spec
from carls.trainers import hyperlearn as hl
from carls.trainers.runner import Context, JobRun, new_job_id
from carls.trainers.spec import load_spec

SEEDS = (0, 1, 2)
STEPS = 600
OVER_SINGLE = 0.0
OVER_CONCATENATED = 0.0
"""The claim is "beats" (means over the seeds), with no margin: the learners co-train
asynchronously and vary from run to run (now and then all four of a seed end near 0.70,
which only lowers the single-modality side). Runs of this test's setting on the final
code: fused 0.913 / 0.894 (all quadrants / a fifth lacking one) against the best single
0.840 / 0.889 and the concatenated features 0.890 / 0.837; the same learners' embeddings
fused as P z in another run: 0.912 / 0.894 against 0.874 / 0.772 and 0.874 / 0.850."""


def run_task(tmp: Path, seed: int, missing: float) -> dict[str, float]:
    info = hl.quadrant_digits(tmp, labels=100, missing=missing, seed=seed)
    bank, blobs = MemoryBank(), MemoryBlobs()
    store = HypergraphStore(blobs)
    ctx = Context(
        bank=bank,
        publisher=None,
        store=ArtifactStore(tmp / "ck", blobs=blobs),
        jobs=MemoryJobStore(),
    )
    raws: dict[str, dict[str, Any]] = {
        m: learner_spec(m, path, f"t_{m}", STEPS, seed) for m, path in info["modalities"].items()
    }
    raws["full"] = learner_spec("q0", info["full"], "tfull", STEPS, seed) | {
        "paradigm": {"name": "supervised"}
    }
    states: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            spec = load_spec(raws[name])
            states[name] = JobRun(new_job_id(spec.namespace), spec, ctx).run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in raws]
    for t in threads:
        t.start()
    hg = load(Path(info["hypergraph"]))
    check = hl.bank_check(bank, "t")
    for _ in range(3000):  # the learners wait for it once their examples are in
        if errors or all(check(m, hg.ids_of(m)) is None for m in hg.modalities):
            break
        threading.Event().wait(0.05)
    if not errors:
        store.register("t", hg, check)
    for t in threads:
        t.join(timeout=600)
    if errors:
        raise errors[0]
    y, test, lab = (np.asarray(info[k]) for k in ("y", "test", "labeled"))
    z, present = hl.fuse(bank, "t", hg, info["ids"], DIM)
    single = 0.0
    for q, m in enumerate(hl.QUADRANTS):
        sel = present[:, q] > 0
        zq = z[:, q * DIM : (q + 1) * DIM]
        single = max(
            single,
            states[m]["test_accuracy"],
            hl.downstream_accuracy(zq[sel], y[sel], lab[sel], test[sel]),
        )
    return {
        "fused": hl.downstream_accuracy(z, y, lab, test),
        "single": single,
        "concatenated": states["full"]["test_accuracy"],
    }


@pytest.mark.parametrize("missing", [0.0, 0.2])
def test_the_fused_representation_beats_the_best_modality_and_the_concatenated_features(
    tmp_path: Path, missing: float
) -> None:
    runs = [run_task(tmp_path / f"s{s}", s, missing) for s in SEEDS]
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    shown = f"{missing:.0%} lacking a quadrant: {runs}"
    assert mean["fused"] > mean["single"] + OVER_SINGLE, shown
    assert mean["fused"] > mean["concatenated"] + OVER_CONCATENATED, shown
