"""``carls trainer`` and ``carls job status|list|cancel``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from carls.output import emit_json, progress, table
from carls.progress import interval_option


@click.command()
@click.option(
    "--group",
    default=None,
    envvar="CARLS_TRAINER_GROUP",
    show_envvar=True,
    help="Consumer group of trainers sharing the jobs (default <prefix>-trainers).",
)
@click.option("--once", is_flag=True, help="Run the jobs waiting on the topic, then exit.")
@click.option(
    "--slots",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs run at once (the members of a job group do not count against it).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(-1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port at /metrics (default: the setting "
    "CARLS_TRAINER_METRICS_PORT, 9480; taken: the next free of 16 ports; 0: any free "
    "port; -1: none).",
)
@click.pass_context
def trainer(
    ctx: click.Context, group: str | None, once: bool, slots: int, metrics_port: int | None
) -> None:
    """Consume training jobs from the jobs topic and run them, up to --slots at a time.

    Any number of trainers, on any machines, share the topic's partitions; each job runs
    once, and again on another trainer if its trainer dies (`carls job status` lists the
    retries). Job groups start together. Each job's state, test accuracy and knowledge
    staleness are kept for `carls job status`; a failed job is marked failed with its
    reason and the trainer goes on. Every job writes a TensorBoard run under the log root
    (CARLS_LOG_ROOT, default <state dir>/runs: `tensorboard --logdir` it).
    """
    from carls.bank.blobs import CassandraBlobs
    from carls.bank.cassandra import CassandraBank
    from carls.bank.jobs import CassandraJobStore
    from carls.bank.session import Connection
    from carls.cli import settings_of
    from carls.trainers.service import serve

    settings = settings_of(ctx)
    _serve_metrics(settings, metrics_port)
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
            slots=slots,
            lease_s=settings.job_lease_s,
            log_dir=settings.log_dir,
        )
    finally:
        cassandra.close()
    if once:
        click.echo(f"ran {ran} job(s)")


def _serve_metrics(settings: Any, port: int | None) -> None:
    from carls.streams import metrics

    served = metrics.serve(
        settings.trainer_metrics_port if port is None else port, settings.metrics_host, "trainer"
    )
    if served is not None:
        progress(f"trainer metrics at {served.url}")


@click.group()
def job() -> None:
    """Training jobs: their state and results."""


@job.command()
@click.argument("job_id")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (with the full history; with --follow: a line per look).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG of test accuracy and knowledge staleness over steps.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Follow the job until it ends: a progress bar with steps/s and time left on a "
    "terminal, a line per change otherwise; the exit status is then 0 only if it succeeded.",
)
@interval_option("--follow")
@click.pass_context
def status(
    ctx: click.Context,
    job_id: str,
    as_json: bool,
    plot: Path | None,
    follow: bool,
    interval: float,
) -> None:
    """State, test accuracy and knowledge staleness of JOB_ID (and where its TensorBoard
    run is)."""
    from carls.bank.jobs import CassandraJobStore
    from carls.cli import settings_of

    store = CassandraJobStore(settings_of(ctx).cassandra).start()
    try:
        state = follow_job(store.get, job_id, as_json, interval) if follow else store.get(job_id)
    finally:
        store.close()
    if state is None:
        raise click.UsageError(f"no job {job_id} (submit one with `carls submit JOB`)")
    if plot is not None:
        from carls.trainers.plot import plot_history

        plot_history(state, plot)
        progress(f"wrote {plot}")
    if follow:
        if not as_json:
            click.echo(table(list(status_rows(job_id, state).items()), ["", ""]))
        if state.get("state") != "succeeded":
            ctx.exit(1)
        return
    if as_json:
        emit_json(state)
        return
    rows = status_rows(job_id, state)
    click.echo(table(list(rows.items()), ["", ""]))


ENDED = ("succeeded", "failed", "cancelled")


def follow_job(
    get: Any, job_id: str, as_json: bool, interval: float, display: Any = None
) -> dict[str, Any] | None:
    """Look at the job every ``interval`` s until it ends; its last state (None: no such
    job; `carls submit` writes a job's state before it is queued)."""
    from carls.progress import Display, Rate, bar, duration

    shown = display or Display(as_json=as_json)
    rate = Rate()
    last_step = 0
    while True:
        state = get(job_id)
        if state is None:
            return None
        step, steps = int(state.get("step") or 0), int(state.get("steps") or 0)
        if step < last_step:  # another attempt starts over: so does its rate
            rate.reset()
        last_step = step
        rate.add(step)
        ended = state.get("state") in ENDED
        acc = state.get("test_accuracy")
        per_s = rate.per_s
        line = (
            f"{job_id}: {state.get('state')} {bar(step / max(steps, 1))} "
            f"step {step:,}/{steps:,}"
            + (f", {per_s:.1f} steps/s" if per_s and per_s > 0 else "")
            + (f", {duration(rate.eta_s(steps))} left" if not ended and per_s else "")
            + (f", test accuracy {acc:.4f}" if acc is not None else "")
        )
        quiet = quiet_for(state)
        if quiet is not None:
            line += f" - not heard from for {duration(quiet)}: its process may have stopped"
        record = {
            "job_id": job_id,
            "state": state.get("state"),
            "step": step,
            "steps": steps,
            "steps_per_s": per_s,
            "eta_s": None if ended else rate.eta_s(steps),
            "test_accuracy": acc,
            "quiet_s": quiet,
            "at": time.time(),
        }
        shown.update([line], record, final=ended)
        if ended:
            return dict(state)
        time.sleep(interval)


def status_rows(job_id: str, state: dict[str, Any]) -> dict[str, Any]:
    """The rows ``carls job status`` prints for a job's ``state``, the empty ones left out."""
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
        ("tensorboard", f"tensorboard --logdir {state['logdir']}" if state.get("logdir") else None),
    ]
    use = last.get("knowledge_use") or {}
    if "pseudo_used" in use:
        rows.append(("pseudo labels used (share of rows)", f"{use['pseudo_used']:.2f}"))
    if "pseudo_accuracy" in use:
        used = use.get("pseudo_used_accuracy")
        rows.append(
            (
                f"pseudo-label accuracy ({int(use.get('pseudo_held_out', 0))} held out)",
                f"{use['pseudo_accuracy']:.3f}"
                + ("" if used is None else f" (of those used: {used:.3f})"),
            )
        )
    rows += [
        ("attempt", state.get("attempts")),
        ("trainer", state.get("trainer")),
        ("group", state.get("group")),
        ("started", _when(state.get("started_at"))),
        ("finished", _when(state.get("finished_at"))),
    ]
    for retry in state.get("retries") or []:
        rows.append(
            (f"attempt {retry.get('attempt')}", f"{retry.get('trainer')}: {retry.get('reason')}")
        )
    if state.get("reason"):
        rows.append(("reason", state["reason"]))
    quiet = quiet_for(state)
    if quiet is not None:
        rows.append(("last heard", f"{quiet / 60:.0f} min ago: {QUIET_HINT}"))
    return {k: v for k, v in rows if v is not None}


QUIET_S = 300.0
"""A running job not heard from for this long (its step is saved every few seconds while
it trains) is said to have gone quiet."""
QUIET_HINT = (
    "its process may have stopped (a job `carls trainer` ran is run again once its lease "
    "runs out; one `carls job run` ran is not: run it again)"
)


def quiet_for(state: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds a running job has not been heard from, when that is over QUIET_S."""
    heard = state.get("heard_at")
    if state.get("state") != "running" or not isinstance(heard, int | float):
        return None
    quiet = (time.time() if now is None else now) - float(heard)
    return quiet if quiet > QUIET_S else None


def _when(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(sep=" ", timespec="seconds")


@job.command(name="list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
    help="Only jobs in this state (repeat for several).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_(ctx: click.Context, states: tuple[str, ...], as_json: bool) -> None:
    """The jobs the bank knows, newest first."""
    from carls.bank.jobs import CassandraJobStore
    from carls.cli import settings_of

    with CassandraJobStore(settings_of(ctx).cassandra) as store:
        jobs = store.all()
    jobs = [j for j in jobs if not states or j.get("state") in states]
    jobs.sort(key=lambda j: j.get("submitted_at") or j.get("created_at") or 0.0, reverse=True)
    rows = [
        {
            "job_id": j.get("job_id"),
            "state": j.get("state"),
            "namespace": j.get("namespace"),
            "paradigm": j.get("paradigm"),
            "group": j.get("group"),
            "attempts": j.get("attempts"),
            "trainer": j.get("trainer"),
            "step": j.get("step"),
            "steps": j.get("steps"),
            "test_accuracy": j.get("test_accuracy"),
            "started_at": j.get("started_at"),
            "finished_at": j.get("finished_at"),
        }
        for j in jobs
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no jobs" + (f" {' or '.join(states)}" if states else ""))
        return
    click.echo(
        table(
            [
                (
                    r["job_id"],
                    r["state"],
                    r["namespace"],
                    r["paradigm"],
                    f"{r['step'] or 0}/{r['steps'] or '?'}",
                    r["test_accuracy"],
                    r["group"] or "",
                )
                for r in rows
            ],
            ["job", "state", "namespace", "paradigm", "step", "test accuracy", "group"],
        )
    )


@job.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel JOB_ID: a queued job never starts; a running one stops at its next step
    (its trainer looks every 10 s) and is marked cancelled."""
    from carls.bank.jobs import CassandraJobStore
    from carls.cli import settings_of

    with CassandraJobStore(settings_of(ctx).cassandra) as store:
        state = store.get(job_id)
        if state is None:
            raise click.UsageError(f"no job {job_id} (see `carls job list`)")
        if state.get("state") in ("succeeded", "failed", "cancelled"):
            raise click.UsageError(f"job {job_id} already {state['state']}: nothing to cancel")
        store.request_cancel(job_id)
        lease = store.lease(job_id)
        if lease is None and state.get("state") == "queued":
            state.update(state="cancelled", reason="cancelled before it started")
            store.put(job_id, state)
            click.echo(f"cancelled job {job_id} (it had not started)")
            return
    click.echo(f"asked the trainer running job {job_id} to stop; it is marked cancelled then")


@job.command(name="run")
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the final state as JSON.")
@click.option(
    "--metrics-port",
    type=click.IntRange(-1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (default CARLS_TRAINER_METRICS_PORT; -1: none).",
)
@click.pass_context
def run_(ctx: click.Context, spec_file: Path, as_json: bool, metrics_port: int | None) -> None:
    """Run the job in SPEC_FILE in this process, without the jobs topic.

    One process per job, on purpose: e.g. each modality of a hypergraph task in its own
    process (`carls trainer` may run a job group's members side by side in one). Its state
    is kept for `carls job status`, as a queued job's is; `carls job cancel`, Ctrl-C or
    SIGTERM stop it at its next step (marked cancelled). The exit status is 0 only when the
    job succeeds.
    """
    import signal
    import threading

    from carls.bank.blobs import CassandraBlobs
    from carls.bank.cassandra import CassandraBank
    from carls.bank.jobs import CassandraJobStore
    from carls.bank.session import Connection
    from carls.cli import settings_of
    from carls.schemas.errors import CarlsError
    from carls.streams.producer import Publisher
    from carls.trainers.runner import Context, JobRun, StopSignal, new_job_id, publishes
    from carls.trainers.spec import load_spec

    settings = settings_of(ctx)
    spec = load_spec(spec_file)
    _serve_metrics(settings, metrics_port)
    cassandra = Connection(settings.cassandra).start()
    publisher = Publisher(settings.kafka, settings.topics) if publishes(spec) else None
    stop, done = StopSignal(), threading.Event()
    try:
        jobs = CassandraJobStore(cassandra).start()
        context = Context(
            bank=CassandraBank(cassandra).start(),
            publisher=publisher,
            store=settings.artifact_store(CassandraBlobs(cassandra).start()),
            jobs=jobs,
            log_dir=settings.log_dir,
        )
        job_id = new_job_id(spec.namespace)

        def watch() -> None:  # `carls job cancel`, as a trainer's lease loop looks for it
            while not done.wait(2.0):
                try:
                    if jobs.cancel_requested(job_id):
                        stop.set(StopSignal.CANCELLED)
                except CarlsError:
                    pass

        threading.Thread(target=watch, name="cancel-watch", daemon=True).start()
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop at the next step, state written
            signal.signal(sig, lambda *_: stop.set("stopped by a signal (Ctrl-C or SIGTERM)"))
        progress(f"running job {job_id} ({spec.paradigm.name} on {spec.namespace})")
        state = JobRun(job_id, spec, context, say=progress, stop=stop).run()
    finally:
        done.set()
        if publisher is not None:
            publisher.close()
        cassandra.close()
    if as_json:
        emit_json(state)
    else:
        acc = state.get("test_accuracy")
        shown = "none" if acc is None else f"{acc:.4f}"
        click.echo(f"{job_id}: {state['state']}, test accuracy {shown}")
    if state["state"] != "succeeded":
        ctx.exit(1)
