"""Codistillation through the command line: two peers submitted as a job group to two
``carls trainer`` processes, against the same model trained alone on the same labels.

For each seed: peers ``a`` (``train.seed`` = seed) and ``b`` (seed + ``PEER_OFFSET``) on
one split (``dataset.split_seed`` = seed) each distil the other's stale predictions, which
a ``carls worker`` computes from the other's checkpoints; the model alone has the split and
the initial weights of peer ``a``. Every job goes through ``carls submit``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from carls.demo import drop_earlier_runs, knowledge_of, summary
from carls.settings import Settings
from carls.wiring import bring_up

Say = Callable[[str], None]
SEEDS = (0, 1, 2)
PEER_OFFSET = 100
"""Peer b of seed s starts from the weights of seed s + PEER_OFFSET."""
PREFIX = "demo_codistill_"
JOB_TIMEOUT_S = 1800.0


class DemoError(RuntimeError):
    """The demo could not finish (a command or a job failed); says which and why."""


def _spec(which: str) -> dict[str, Any]:
    import yaml

    path = resources.files("carls.trainers") / "examples" / f"digits_peer_{which}.yaml"
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    return raw


def specs(seed: int, run_id: str) -> dict[str, dict[str, Any]]:
    """The three jobs of one seed: peers ``a`` and ``b`` and ``alone``, by role."""
    ns = {r: f"{PREFIX}{r}_s{seed}_{run_id}" for r in ("a", "b", "alone")}
    out: dict[str, dict[str, Any]] = {}
    for role, other, init in (("a", "b", seed), ("b", "a", seed + PEER_OFFSET)):
        raw = _spec(role)
        raw["namespace"] = ns[role]
        raw["paradigm"]["params"]["peer"] = ns[other]
        raw["dataset"]["split_seed"] = seed
        raw["train"]["seed"] = init
        out[role] = raw
    alone = _spec("a")
    alone["namespace"] = ns["alone"]
    alone["paradigm"] = {"name": "supervised"}
    alone["dataset"]["split_seed"] = seed
    alone["train"]["seed"] = seed
    out["alone"] = alone
    return out


def _used(staleness: dict[str, Any] | None) -> int:
    """Reads of the peer's predictions that were there and fresh on the peer's own clock
    (those of a peer that stood still for too long, left out too, show in
    ``peer_usable_at_end``)."""
    if not staleness:
        return 0
    return int(staleness["reads"] - staleness["missing"] - staleness["too_stale"])


class _Procs:
    """The worker and trainer processes the demo starts, each logging to a file."""

    def __init__(self, settings: Settings, say: Say) -> None:
        self.logs = settings.state_dir.resolve() / "demo-codistill"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = self.logs / f"{name}.log"
        self.say(f"starting {name}: carls {' '.join(args)} (log: {log})")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "carls", *args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )

    def size(self, name: str) -> int:
        return (self.logs / f"{name}.log").stat().st_size

    def warnings_since(self, name: str, offset: int, most: int = 12) -> list[str]:
        """The process's warning and error lines logged after ``offset`` (the newest)."""
        with (self.logs / f"{name}.log").open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        lines = [
            line.strip()
            for line in text.splitlines()
            if ("WARNING" in line or "ERROR" in line) and "is overlapping" not in line
        ]
        return lines[-most:]

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-1500:]
                raise DemoError(f"{name} exited ({proc.returncode}):\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _submit(*paths: Path) -> list[str]:
    """``carls submit --json PATH...``: the job ids, in order."""
    cmd = [sys.executable, "-m", "carls", "submit", "--json", *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise DemoError(f"carls submit failed ({proc.returncode}): {proc.stderr[-1500:]}")
    out = json.loads(proc.stdout)
    return [j["job_id"] for j in out["jobs"]] if "jobs" in out else [out["job_id"]]


def _wait(jobs: CassandraJobStore, procs: _Procs, ids: list[str], say: Say) -> list[dict[str, Any]]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    said: dict[str, str] = {}
    while True:
        states = [jobs.get(j) or {"state": "queued"} for j in ids]
        for job_id, state in zip(ids, states, strict=True):
            if said.get(job_id) != state["state"]:
                said[job_id] = state["state"]
                say(f"  {job_id}: {state['state']}")
        done = [s for s in states if s["state"] in ("succeeded", "failed", "cancelled")]
        if len(done) == len(ids):
            bad = [
                f"{j}: {s.get('reason')}"
                for j, s in zip(ids, states, strict=True)
                if s["state"] != "succeeded"
            ]
            if bad:
                raise DemoError("jobs did not succeed: " + "; ".join(bad))
            return states
        procs.check()
        if time.monotonic() > deadline:
            raise DemoError(f"jobs not done after {JOB_TIMEOUT_S:.0f} s: {said}")
        time.sleep(1.0)


def run(settings: Settings, say: Say, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    import yaml

    t0 = time.monotonic()
    say("bringing up the local stack (the first start resolves jars from Maven Central)")
    bring_up(settings, say=say)
    stack_s = time.monotonic() - t0
    cassandra = Connection(settings.cassandra).start()
    bank = CassandraBank(cassandra).start()
    jobs = CassandraJobStore(cassandra).start()
    blobs = CassandraBlobs(cassandra).start()
    procs = _Procs(settings, say)
    result: dict[str, Any] = {"seeds": list(seeds), "stack_ready_s": round(stack_s, 1)}
    try:
        drop_earlier_runs(bank, blobs, settings, lambda name: name.startswith(PREFIX))
        procs.start("worker", "worker", "--makers", "prediction")
        procs.start("trainer-1", "trainer")
        procs.start("trainer-2", "trainer")
        run_id = uuid.uuid4().hex[:6]
        accs: dict[str, list[float]] = {"a": [], "b": [], "alone": []}
        runs: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="carls-codistill-") as tmp:
            for seed in seeds:
                files = {}
                for role, raw in specs(seed, run_id).items():
                    files[role] = Path(tmp) / f"{role}-{seed}.yaml"
                    files[role].write_text(yaml.safe_dump(raw, sort_keys=False))
                # The model alone runs after the peers, not beside them: on a small
                # machine a third job would slow one peer and let the other run ahead,
                # beyond the staleness its partner's predictions may have.
                say(f"seed {seed}: peers a and b, submitted as a group")
                worker_at = procs.size("worker")
                ids = _submit(files["a"], files["b"])
                states = _wait(jobs, procs, ids, say)
                say(f"seed {seed}: the same model alone")
                ids += _submit(files["alone"])
                states += _wait(jobs, procs, ids[2:], say)
                for role, state in zip(("a", "b", "alone"), states, strict=True):
                    accs[role].append(float(state["test_accuracy"]))
                a, b = states[:2]
                overlap = min(a["finished_at"], b["finished_at"]) - max(
                    a["started_at"], b["started_at"]
                )
                runs.append(
                    {
                        "seed": seed,
                        "job_ids": dict(zip(("a", "b", "alone"), ids, strict=True)),
                        "group": a.get("group"),
                        "trainers": [s.get("trainer") for s in states],
                        "peers_overlap_s": round(overlap, 1),
                        "peer_staleness_mean": [
                            (s.get("staleness") or {}).get("mean") for s in (a, b)
                        ],
                        "peer_reads_used": [_used(s.get("staleness")) for s in (a, b)],
                        # the share of a batch's peer predictions used, near the end (none
                        # while the peer stands still for too long)
                        "peer_usable_at_end": [
                            knowledge_of(s)["use_at_end"].get("peer_usable") for s in (a, b)
                        ],
                        # what the worker said meanwhile (why a peer may have read nothing)
                        "worker_warnings": procs.warnings_since("worker", worker_at),
                    }
                )
                say(
                    f"seed {seed}: peer a {accs['a'][-1]:.4f}, peer b {accs['b'][-1]:.4f}, "
                    f"alone {accs['alone'][-1]:.4f} (peers ran together for {overlap:.0f} s)"
                )
        result |= {
            "peer_a": summary(accs["a"]),
            "peer_b": summary(accs["b"]),
            "alone": summary(accs["alone"]),
            "runs": runs,
        }
    finally:
        procs.stop()
        cassandra.close()
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result
