"""``carls bench teacher``: how much a finished teacher accelerates a student.

On the local stack with one ``carls worker``: the teacher (``digits_teacher.yaml``: the
MLP on every label of digits' training split, ``train.teach``) trains once; the makers
make its predictions, difficulty and instructions from its final checkpoint. Then, per
seed, the student (``digits_student.yaml``: the same MLP from random weights, 50 labels)
trains twice from the same initial weights: alone (``supervised``) and guided by the
teacher. Both evaluate every 25 steps; the figure is the number of steps each needs to
reach 95 % of the final accuracy of the student alone, and each one's final accuracy.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from carls.bank.protocol import coverage
from carls.demo import drop_earlier_runs, example_spec, on_stack, summary
from carls.settings import Settings
from carls.trainers.runner import JobRun, new_job_id
from carls.trainers.spec import JobSpec, load_spec
from carls.wiring import bring_up

Say = Callable[[str], None]
SEEDS = (0, 1, 2)
MARK = 0.95
"""The acceleration is measured to this fraction of the student alone's final accuracy."""
NAMESPACE = re.compile(r"bench_(teacher|alone|guided)(_s[0-9]+)?_[0-9a-f]{6}")
KNOWLEDGE_S = 300.0
"""How long the bench waits for the teacher's knowledge after its job."""


def student(namespace: str, seed: int, paradigm: dict[str, Any]) -> JobSpec:
    """``digits_student.yaml`` in ``namespace`` with ``train.seed`` and ``paradigm``."""
    raw = example_spec("digits_student", namespace, seed).to_dict()
    raw["paradigm"] = paradigm
    return load_spec(raw)


def steps_to(history: list[dict[str, Any]], accuracy: float) -> int | None:
    """The first evaluated step at or above ``accuracy`` (None: never)."""
    return next((h["step"] for h in history if h["test_accuracy"] >= accuracy), None)


def run(
    settings: Settings,
    say: Say,
    seeds: tuple[int, ...] = SEEDS,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The bench (see the module docstring); ``params`` override the student's
    ``teacher`` paradigm parameters."""
    t0 = time.monotonic()
    bring_up(settings, say=say)
    run_id = uuid.uuid4().hex[:6]
    with on_stack(settings, say, "bench-teacher-worker") as stack:
        drop_earlier_runs(stack.bank, stack.blobs, settings, NAMESPACE.fullmatch)
        teacher_ns = f"bench_teacher_{run_id}"
        spec = example_spec("digits_teacher", teacher_ns, 0)
        say(f"teacher: {spec.train.steps} steps on every label ({teacher_ns})")
        teacher = JobRun(new_job_id(teacher_ns), spec, stack.context(), say).run()
        waited = _teacher_knowledge(stack.bank, teacher_ns, spec.train.steps)
        say(f"teacher: test accuracy {teacher['test_accuracy']:.4f}; knowledge in {waited:.0f} s")
        guided_params = {
            **example_spec("digits_student", "x", 0).paradigm.params.model_dump(),
            **(params or {}),
            "teacher": teacher_ns,
        }
        rows = []
        for seed in seeds:
            got = {}
            for name, paradigm in (
                ("alone", {"name": "supervised"}),
                ("guided", {"name": "teacher", "params": guided_params}),
            ):
                ns = f"bench_{name}_s{seed}_{run_id}"
                s = student(ns, seed, paradigm)
                got[name] = JobRun(new_job_id(ns), s, stack.context(), lambda _: None).run()
            final = got["alone"]["test_accuracy"]
            mark = MARK * final
            row = {
                "seed": seed,
                "mark": round(mark, 4),
                "alone_final": final,
                "guided_final": got["guided"]["test_accuracy"],
                "alone_steps": steps_to(got["alone"]["history"], mark),
                "guided_steps": steps_to(got["guided"]["history"], mark),
            }
            a, g = row["alone_steps"], row["guided_steps"]
            row["speedup"] = round(a / g, 2) if a and g else None
            rows.append(row)
            say(
                f"seed {seed}: {MARK:.0%} of {final:.4f} reached at step {a} alone, "
                f"{g} with the teacher; final {final:.4f} alone, "
                f"{row['guided_final']:.4f} with the teacher"
            )
    return {
        "teacher": {"namespace": teacher_ns, "test_accuracy": teacher["test_accuracy"]},
        "params": guided_params,
        "seeds": rows,
        "alone": summary([r["alone_final"] for r in rows]),
        "guided": summary([r["guided_final"] for r in rows]),
        "steps_alone": [r["alone_steps"] for r in rows],
        "steps_guided": [r["guided_steps"] for r in rows],
        "wall_s": round(time.monotonic() - t0, 1),
    }


def _teacher_knowledge(bank: Any, ns: str, step: int) -> float:
    """Wait for the makers' knowledge of the teacher's final checkpoint, every example."""
    t0 = time.monotonic()
    while True:
        got = [coverage(bank, ns, k) for k in ("prediction", "instruction")]
        if all(c.newest_step == step and c.at_newest == c.total for c in got):
            return time.monotonic() - t0
        if time.monotonic() - t0 > KNOWLEDGE_S:
            raise RuntimeError(f"{ns}: the teacher's knowledge is incomplete: {got}")
        time.sleep(0.5)
