"""``carls bench message``: a learned message channel against no message and a fixed one.

Digits split in two: A sees the top half of each image, B the bottom half. Per seed,
through ``carls submit`` and two ``carls trainer`` processes that meet only in the bank:

* **learned**: A and B as a job group (``digits_message_a.yaml``/``_b.yaml``): A sends
  ``size`` floats per example, trained on B's feedback;
* **fixed**: the same group with ``learned: false``: A's embedding through a fixed random
  projection to the same size;
* **alone**: B by itself (its message inputs stay zero).

The figure is B's final test accuracy in each, and the bandwidth: ``4 * size`` bytes per
example per publication each way (the messages A publishes, the feedback B returns).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.jobs import CassandraJobStore
from carls.bank.session import Connection
from carls.demo import drop_earlier_runs, summary
from carls.demo_codistill import _Procs, _submit, _wait
from carls.settings import Settings
from carls.wiring import bring_up

Say = Callable[[str], None]
SEEDS = (0, 1, 2)
PREFIX = "bench_message_"
WAYS = ("learned", "fixed", "alone")


def _spec(side: str) -> dict[str, Any]:
    import yaml

    path = resources.files("carls.trainers") / "examples" / f"digits_message_{side}.yaml"
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    return raw


def specs(way: str, seed: int, size: int, run_id: str) -> list[dict[str, Any]]:
    """The jobs of one way of one seed: sides a and b (or b alone)."""
    ns = {side: f"{PREFIX}{way}_{side}_s{seed}_{run_id}" for side in ("a", "b")}
    out = []
    for side, other in (("a", "b"), ("b", "a")):
        raw = _spec(side)
        raw["namespace"] = ns[side]
        params = raw["paradigm"]["params"]
        params |= {"peer": ns[other], "size": size}
        if side == "a":
            params["learned"] = way == "learned"
        raw["train"]["seed"] = seed
        out.append(raw)
    return out[1:] if way == "alone" else out  # alone: b's peer is never there


def run(
    settings: Settings, say: Say, seeds: tuple[int, ...] = SEEDS, size: int = 4
) -> dict[str, Any]:
    import yaml

    t0 = time.monotonic()
    bring_up(settings, say=say)
    cassandra = Connection(settings.cassandra).start()
    bank = CassandraBank(cassandra).start()
    jobs = CassandraJobStore(cassandra).start()
    blobs = CassandraBlobs(cassandra).start()
    procs = _Procs(settings, say)
    rows: list[dict[str, Any]] = []
    try:
        drop_earlier_runs(bank, blobs, settings, lambda name: name.startswith(PREFIX))
        procs.start("trainer-1", "trainer")
        procs.start("trainer-2", "trainer")
        run_id = uuid.uuid4().hex[:6]
        with tempfile.TemporaryDirectory(prefix="carls-message-") as tmp:
            for seed in seeds:
                row: dict[str, Any] = {"seed": seed}
                for way in WAYS:
                    files = []
                    for raw in specs(way, seed, size, run_id):
                        files.append(Path(tmp) / f"{raw['namespace']}.yaml")
                        files[-1].write_text(yaml.safe_dump(raw, sort_keys=False))
                    say(f"seed {seed}: {way}")
                    states = _wait(jobs, procs, _submit(*files), say)
                    row[way] = float(states[-1]["test_accuracy"])  # B's
                    if way != "alone":
                        row[f"a_{way}"] = float(states[0]["test_accuracy"])
                rows.append(row)
                say(
                    f"seed {seed}: B {row['learned']:.4f} with the learned message, "
                    f"{row['fixed']:.4f} with the fixed one, {row['alone']:.4f} alone"
                )
    finally:
        procs.stop()
        cassandra.close()
    return {
        "size": size,
        "bytes_per_example_each_way": 4 * size,
        "seeds": rows,
        **{way: summary([r[way] for r in rows]) for way in WAYS},
        "learned_beats_fixed_on": sum(r["learned"] > r["fixed"] for r in rows),
        "learned_beats_alone_on": sum(r["learned"] > r["alone"] for r in rows),
        "wall_s": round(time.monotonic() - t0, 1),
    }
