"""``carls demo [TASK]``: the main jobs, end to end on the local stack."""

from __future__ import annotations

from typing import Any

import click

from carls.output import emit_json, fail, progress, table


@click.command()
@click.argument("task", type=click.Choice(["ssl", "codistillation"]), default="ssl", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_context
def demo(ctx: click.Context, task: str, as_json: bool) -> None:
    """Run a paradigm end to end on digits (seeds 0, 1, 2) and print test accuracies.

    \b
    ssl (default)   50 labels: a supervised-only baseline against carls, which learns
                    from pseudo labels and neighbours that a knowledge-maker worker
                    computes from its checkpoints, read from the bank while it trains;
                    with the bank's coverage and the staleness the trainer saw. About
                    three minutes on two cores once the stack is up.
    codistillation  50 labels: two peers, submitted as a job group with `carls submit`
                    to two `carls trainer` processes, each distilling the other's stale
                    predictions from the bank, against the same model trained alone.
                    About four minutes on two cores.

    Brings up the stack (a no-op when it is running) and starts the processes it needs.
    """
    from carls.cli import settings_of

    settings = settings_of(ctx)
    if task == "codistillation":
        from carls.demo_codistill import DemoError
        from carls.demo_codistill import run as run_codistill

        try:
            report = run_codistill(settings, say=progress)
        except DemoError as exc:
            fail(f"the codistillation demo stopped: {exc}")
        if as_json:
            emit_json(report)
        else:
            _show_codistill(report)
        return
    from carls.demo import run

    r = run(settings, say=progress)
    if as_json:
        emit_json(r)
        return
    b, c = r["baseline"], r["carls"]
    click.echo(
        table(
            [
                ("supervised only (50 labels)", *b["accuracies"], b["mean"], b["std"]),
                ("carls: pseudo labels + graph", *c["accuracies"], c["mean"], c["std"]),
            ],
            ["digits, 50 labels: test accuracy", *(f"seed {s}" for s in r["seeds"]), "mean", "std"],
        )
    )
    rows = []
    for seed, cov, stale in zip(r["seeds"], r["coverage"], r["staleness_mean_steps"], strict=True):
        for kind, cv in cov.items():
            rows.append((seed, kind, f"{cv['at_newest']}/{cv['total']}", cv["newest_step"], stale))
    click.echo(
        table(
            rows,
            ["seed", "kind", "ids at newest step", "newest step", "staleness seen (mean steps)"],
        )
    )
    click.echo(
        "references, same protocol: " + "; ".join(f"{k} {v}" for k, v in r["references"].items())
    )
    click.echo(f"wall time {r['wall_s']:.0f} s (stack ready in {r['stack_ready_s']:.0f} s)")


def _show_codistill(r: dict[str, Any]) -> None:
    rows = [
        (label, *r[key]["accuracies"], r[key]["mean"], r[key]["std"])
        for label, key in (
            ("peer a (codistillation)", "peer_a"),
            ("peer b (codistillation)", "peer_b"),
            ("the same model alone", "alone"),
        )
    ]
    seeds = [f"seed {s}" for s in r["seeds"]]
    click.echo(table(rows, ["digits, 50 labels: test accuracy", *seeds, "mean", "std"]))
    click.echo(
        table(
            [
                (x["seed"], x["group"], x["peers_overlap_s"], *x["peer_staleness_mean"])
                for x in r["runs"]
            ],
            [
                "seed",
                "job group",
                "peers ran together (s)",
                "staleness of b's predictions read by a (mean steps)",
                "of a's read by b",
            ],
        )
    )
    click.echo(f"wall time {r['wall_s']:.0f} s (stack ready in {r['stack_ready_s']:.0f} s)")
