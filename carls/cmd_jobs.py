"""``carls trainer`` and ``carls job status``."""

from __future__ import annotations

from pathlib import Path

import click

from carls.output import emit_json, progress, table


@click.command()
@click.option(
    "--group",
    default=None,
    envvar="CARLS_TRAINER_GROUP",
    show_envvar=True,
    help="Consumer group of trainers sharing the jobs (default <prefix>-trainers).",
)
@click.option("--once", is_flag=True, help="Run the jobs waiting on the topic, then exit.")
@click.pass_context
def trainer(ctx: click.Context, group: str | None, once: bool) -> None:
    """Consume training jobs from the jobs topic and run them, one after another.

    Each job's state, test accuracy and knowledge staleness are kept for `carls job status`;
    a failed job is marked failed with its reason and the trainer goes on.
    """
    from carls.bank.blobs import CassandraBlobs
    from carls.bank.cassandra import CassandraBank
    from carls.bank.jobs import CassandraJobStore
    from carls.bank.session import Connection
    from carls.cli import settings_of
    from carls.trainers.service import serve

    settings = settings_of(ctx)
    cassandra = Connection(settings.cassandra).start()
    bank = CassandraBank(cassandra).start()
    jobs = CassandraJobStore(cassandra).start()
    try:
        ran = serve(
            settings.kafka,
            settings.topics,
            bank,
            jobs,
            settings.artifact_store(CassandraBlobs(cassandra).start()),
            group or f"{settings.topic_prefix}-trainers",
            say=progress,
            once=once,
        )
    finally:
        cassandra.close()
    if once:
        click.echo(f"ran {ran} job(s)")


@click.group()
def job() -> None:
    """Training jobs: their state and results."""


@job.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the full history).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG of test accuracy and knowledge staleness over steps.",
)
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool, plot: Path | None) -> None:
    """State, test accuracy and knowledge staleness of JOB_ID."""
    from carls.bank.jobs import CassandraJobStore
    from carls.cli import settings_of

    store = CassandraJobStore(settings_of(ctx).cassandra).start()
    try:
        state = store.get(job_id)
    finally:
        store.close()
    if state is None:
        raise click.UsageError(f"no job {job_id} (submit one with `carls submit JOB`)")
    if plot is not None:
        from carls.trainers.plot import plot_history

        plot_history(state, plot)
        progress(f"wrote {plot}")
    if as_json:
        emit_json(state)
        return
    stale = (state.get("staleness") or {}).get("mean")
    last = (state.get("history") or [{}])[-1]
    rows = [
        ("job", job_id),
        ("state", state.get("state")),
        ("namespace", state.get("namespace")),
        ("paradigm", state.get("paradigm")),
        ("step", f"{state.get('step', 0)}/{state.get('steps', '?')}"),
        ("test accuracy", state.get("test_accuracy")),
        (
            "knowledge staleness (mean steps)",
            stale if stale is not None else last.get("staleness_mean"),
        ),
        ("knowledge coverage", last.get("knowledge_coverage")),
    ]
    if state.get("reason"):
        rows.append(("reason", state["reason"]))
    click.echo(table(rows, ["", ""]))
