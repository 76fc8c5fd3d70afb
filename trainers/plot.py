"""A PNG of a job's test accuracy and knowledge staleness over training steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(state: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = state.get("history") or []
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(
        steps, [h.get("test_accuracy") for h in history], color="tab:blue", label="test accuracy"
    )
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy", color="tab:blue")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(
        steps,
        [h.get("staleness_mean") for h in history],
        color="tab:orange",
        label="knowledge staleness (steps)",
    )
    right.plot(
        steps,
        [100 * (h.get("knowledge_coverage") or 0.0) for h in history],
        color="tab:green",
        linestyle="--",
        label="knowledge coverage (%)",
    )
    right.set_ylabel("staleness (steps) / coverage (%)", color="tab:orange")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="lower right")
    ax.set_title(
        f"{state.get('job_id', '')} ({state.get('paradigm', '')}): {state.get('state', '')}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
