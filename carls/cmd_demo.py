"""``carls demo``: the main job, end to end on the local stack."""

from __future__ import annotations

import click

from carls.output import emit_json, progress, table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_context
def demo(ctx: click.Context, as_json: bool) -> None:
    """Semi-supervised digits with 50 labels: a supervised baseline against carls.

    Brings up the stack, starts a knowledge-maker worker, and for seeds 0, 1, 2 trains a
    supervised-only baseline and a carls job that learns from pseudo labels and neighbours
    the makers compute from its checkpoints, read from the bank while it trains. Prints
    test accuracy (mean and std over the seeds), the bank's coverage and the staleness of
    the knowledge the trainer used. About two minutes on two cores once the stack is up.
    """
    from carls.cli import settings_of
    from carls.demo import run

    r = run(settings_of(ctx), say=progress)
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
