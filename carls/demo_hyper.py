"""``carls bench hyperlearn``: one learner per modality, fused through a hypergraph.

The quadrant digits (``carls.trainers.hyperlearn.quadrant_digits``): four 4x4 quadrant
modalities of scikit-learn's 8x8 digits, 100 labeled training items, a hypergraph of
kNN hyperedges within each quadrant (order 4) and the four quadrants of one image
across (order 4, or less where an item lacks a quadrant). Per seed and per fraction of
items lacking one quadrant (0 and 0.2):

* the four learners, each its own ``carls job run`` process, meeting only in the bank;
  the hypergraph is registered once their examples are in;
* **fused**: a logistic regression on the fused representation (every quadrant's
  embedding side by side and one hypergraph convolution over the items) of the labeled
  items, tested on the test items;
* **alone**: one MLP on each modality alone (same labels); the best of them;
* **learner**: each learner's own test accuracy, and the same logistic regression on its
  embedding alone (its items); the best of them;
* **concatenated**: one MLP on the four quadrants' features side by side, same labels.

Then the cost of a modality: learner q0's time per step and CPU time per step with 2, 3
and 4 learners running (seed 0, no missing quadrant).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.hypergraphs import Hypergraph, HypergraphStore, load
from carls.bank.session import Connection
from carls.demo import drop_earlier_runs, summary
from carls.demo_codistill import DemoError
from carls.settings import Settings
from carls.trainers import hyperlearn as hl
from carls.wiring import bring_up

Say = Callable[[str], None]
SEEDS = (0, 1, 2)
PREFIX = "bhl"
DIM = 32
JOB_TIMEOUT_S = 900.0


def learner_spec(modality: str, path: str, namespace: str, steps: int, seed: int) -> dict[str, Any]:
    """The example learner spec (``digitsq_q0.yaml``) for ``modality``."""
    import yaml

    src = resources.files("carls.trainers") / "examples" / "digitsq_q0.yaml"
    raw: dict[str, Any] = yaml.safe_load(src.read_text())
    raw["namespace"] = namespace
    raw["dataset"]["path"] = path
    raw["paradigm"]["params"]["modality"] = modality
    raw["train"] |= {"steps": steps, "seed": seed}
    return raw


def write_example(
    out: Path, *, seed: int = 0, missing: float = 0.0, task: str = "digitsq"
) -> dict[str, Any]:
    """The quadrant-digits task in ``out``: the data, the hypergraph, a learner spec per
    quadrant and the concatenated-features baseline's spec."""
    import yaml

    out = out.resolve()  # the specs name their data by absolute paths
    info = hl.quadrant_digits(out, seed=seed, missing=missing)
    specs = []
    for m, path in info["modalities"].items():
        raw = learner_spec(m, path, f"{task}_{m}", 600, seed)
        specs.append(out / f"{task}_{m}.yaml")
        specs[-1].write_text(yaml.safe_dump(raw, sort_keys=False))
    base = learner_spec("q0", info["full"], f"{task}full", 600, seed)
    base["paradigm"] = {"name": "supervised"}
    specs.append(out / f"{task}full.yaml")
    specs[-1].write_text(yaml.safe_dump(base, sort_keys=False))
    return {**info, "specs": [str(s) for s in specs]}


class _Runs:
    """``carls job run`` processes, one per job."""

    def __init__(self, logs: Path, say: Say) -> None:
        self.logs, self.say = logs, say
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self, name: str, spec: Path) -> None:
        log = self.logs / f"{name}.log"
        self.procs[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "carls", "job", "run", "--json", str(spec)],
                stdout=(self.logs / f"{name}.json").open("wb"),
                stderr=log.open("wb"),
                env={**os.environ},
            ),
            log,
        )

    def wait(self) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        out = {}
        for name, (proc, log) in self.procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stop()
                raise DemoError(
                    f"{name} not done after {JOB_TIMEOUT_S:.0f} s (log: {log})"
                ) from None
            raw = (self.logs / f"{name}.json").read_text()
            if proc.returncode != 0 or not raw.strip():
                tail = log.read_text(errors="replace")[-1500:]
                raise DemoError(f"{name} failed ({proc.returncode}):\n{tail}")
            out[name] = json.loads(raw)
        self.procs.clear()
        return out

    def stop(self) -> None:
        """Stop what still runs: SIGTERM (the job is marked cancelled), then kill."""
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def _register_when_ready(
    bank: CassandraBank, store: HypergraphStore, task: str, path: Path, runs: _Runs, say: Say
) -> float:
    """Register the hypergraph once every learner's examples are in the bank."""
    hg = load(path)
    check = hl.bank_check(bank, task)
    t0 = time.monotonic()
    while True:
        why = [w for m in hg.modalities if (w := check(m, hg.ids_of(m))) is not None]
        if not why:
            store.register(task, hg, check)
            return time.monotonic() - t0
        for name, (proc, log) in runs.procs.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited early:\n{log.read_text(errors='replace')[-1500:]}")
        if time.monotonic() - t0 > 300:
            raise DemoError(f"{task}: the learners' examples not in after 300 s: {why[0]}")
        time.sleep(0.5)


def one(
    bank: CassandraBank,
    store: HypergraphStore,
    tmp: Path,
    task: str,
    seed: int,
    missing: float,
    steps: int,
    say: Say,
    modalities: Sequence[str] = hl.QUADRANTS,
    baseline: bool = True,
) -> dict[str, Any]:
    """One run of the task: the learners (and the baseline), fused and single figures."""
    import yaml

    out = tmp / task
    info = hl.quadrant_digits(out, seed=seed, missing=missing, modalities=hl.QUADRANTS)
    runs = _Runs(out, say)
    for m in modalities:
        spec = out / f"{m}.yaml"
        spec.write_text(
            yaml.safe_dump(learner_spec(m, info["modalities"][m], f"{task}_{m}", steps, seed))
        )
        runs.start(m, spec)
    if baseline:  # one MLP on the features side by side, and one on each modality alone
        files = {"full": info["full"], **{f"alone_{m}": info["modalities"][m] for m in modalities}}
        for name, data in files.items():
            raw = learner_spec("q0", data, f"{task}{name.replace('_', '')}", steps, seed)
            raw["paradigm"] = {"name": "supervised"}
            (out / f"{name}.yaml").write_text(yaml.safe_dump(raw))
            runs.start(name, out / f"{name}.yaml")
    path = out / "hypergraph.npz"
    if list(modalities) != list(hl.QUADRANTS):  # only the hyperedges of the running ones
        hg = load(path)
        cut = [[(m, i) for m, i in e if m in modalities] for e in hg.members]
        keep = [(e, w) for e, w in zip(cut, hg.weights, strict=True) if len(e) >= 2]
        path.write_bytes(Hypergraph.of([e for e, _ in keep], [w for _, w in keep]).to_bytes())
    try:
        waited = _register_when_ready(bank, store, task, path, runs, say)
        states = runs.wait()
    finally:
        runs.stop()  # nothing left training after a failure
    row: dict[str, Any] = {"seed": seed, "missing": missing, "registered_after_s": round(waited, 1)}
    for m in modalities:
        st = states[m]
        row[f"{m}_steps_s"] = round(st["train_seconds"] / st["step"], 4)
        row[f"{m}_cpu_per_step_s"] = round(st["train_cpu_seconds"] / st["step"], 4)
        row[f"{m}_learner"] = float(st["test_accuracy"])
    if baseline:
        row["concatenated"] = float(states["full"]["test_accuracy"])
        for m in modalities:
            row[f"{m}_alone"] = float(states[f"alone_{m}"]["test_accuracy"])
        row["best_alone"] = max(row[f"{m}_alone"] for m in modalities)
    graph = store.read(task)
    assert graph is not None
    ids = info["ids"]
    y, test, lab = np.asarray(info["y"]), np.asarray(info["test"]), np.asarray(info["labeled"])
    z, present = hl.fuse(bank, task, graph, ids, DIM, list(modalities))
    row["fused"] = hl.downstream_accuracy(z, y, lab, test)
    for q, m in enumerate(modalities):
        sel = present[:, q] > 0
        zq = z[:, q * DIM : (q + 1) * DIM]
        row[f"{m}_embedding"] = hl.downstream_accuracy(zq[sel], y[sel], lab[sel], test[sel])
    row["best_learner"] = max(max(row[f"{m}_learner"], row[f"{m}_embedding"]) for m in modalities)
    return row


def run(
    settings: Settings, say: Say, seeds: tuple[int, ...] = SEEDS, steps: int = 600
) -> dict[str, Any]:
    t0 = time.monotonic()
    bring_up(settings, say=say)
    cassandra = Connection(settings.cassandra).start()
    bank = CassandraBank(cassandra).start()
    blobs = CassandraBlobs(cassandra).start()
    store = HypergraphStore(blobs)
    run_id = uuid.uuid4().hex[:6]
    rows: list[dict[str, Any]] = []
    scale: list[dict[str, Any]] = []
    try:
        drop_earlier_runs(bank, blobs, settings, lambda name: name.startswith(PREFIX))
        with tempfile.TemporaryDirectory(prefix="carls-hyperlearn-") as tmp:
            for missing in (0.0, 0.2):
                for seed in seeds:
                    task = f"{PREFIX}{run_id}s{seed}m{round(missing * 100)}"
                    say(f"seed {seed}, {missing:.0%} of items lacking a quadrant: four learners")
                    row = one(bank, store, Path(tmp), task, seed, missing, steps, say)
                    rows.append(row)
                    say(
                        f"  fused {row['fused']:.4f}, best modality alone {row['best_alone']:.4f}, "
                        f"best learner {row['best_learner']:.4f}, "
                        f"concatenated {row['concatenated']:.4f}"
                    )
            for n in (2, 3, 4):
                task = f"{PREFIX}{run_id}n{n}"
                say(f"learner q0's time per step with {n} learners running")
                r = one(bank, store, Path(tmp), task, 0, 0.0, steps, say, hl.QUADRANTS[:n], False)
                scale.append(
                    {
                        "learners": n,
                        "q0_s_per_step": r["q0_steps_s"],
                        "q0_cpu_s_per_step": r["q0_cpu_per_step_s"],
                        "fused": r["fused"],
                    }
                )
                ms, cpu = r["q0_steps_s"] * 1000, r["q0_cpu_per_step_s"] * 1000
                say(f"  {ms:.1f} ms/step, {cpu:.1f} ms CPU/step")
    finally:
        cassandra.close()
    by = {m: [r for r in rows if r["missing"] == m] for m in (0.0, 0.2)}
    return {
        "steps": steps,
        "runs": rows,
        "summary": {
            f"missing_{round(m * 100)}%": {
                k: summary([r[k] for r in rs])
                for k in ("fused", "best_alone", "best_learner", "concatenated")
            }
            for m, rs in by.items()
        },
        "fused_beats_best_alone_on": sum(r["fused"] > r["best_alone"] for r in rows),
        "fused_beats_best_learner_on": sum(r["fused"] > r["best_learner"] for r in rows),
        "fused_beats_concatenated_on": sum(r["fused"] > r["concatenated"] for r in rows),
        "scaling": scale,
        "wall_s": round(time.monotonic() - t0, 1),
    }
