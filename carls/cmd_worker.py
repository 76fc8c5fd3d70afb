"""``carls worker``: a knowledge-maker worker (Faust)."""

from __future__ import annotations

from pathlib import Path

import click

from carls.makers.pipeline import MAKERS


@click.command()
@click.option(
    "--makers",
    "makers",
    default=",".join(MAKERS),
    show_default=True,
    help="Comma-separated kinds this worker makes.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Fetches of id batches processed at once in this process.",
)
@click.option(
    "--app-id",
    envvar="CARLS_WORKER_APP_ID",
    show_envvar=True,
    default=None,
    help="Faust app id of the workers (default <topic prefix>-makers): checkpoints are "
    "read in this consumer group, id batches in <app id>-ids; workers with the same id "
    "share the work.",
)
@click.option(
    "--session-timeout",
    type=click.FloatRange(3, 300),
    default=10.0,
    show_default=True,
    help="Seconds before a dead worker's partitions move to the others.",
)
@click.option(
    "--park",
    "park_s",
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="Seconds an id batch may wait, parked (other batches go on), for the checkpoint "
    "step it asks for; then the newest model serves it, or, with none, it is dead-lettered.",
)
@click.option(
    "--max-step-ahead",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="A checkpoint manifest this many steps beyond its namespace's newest is "
    "dead-lettered rather than served.",
)
@click.option(
    "--hypergraphs",
    "hypergraph_every",
    type=click.FloatRange(0, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between looks at the multimodal (HyperLearn) tasks whose learners "
    "announced themselves: make a task's hypergraph when its learners ask (paradigm "
    "param knn) and write its fused embeddings when newer ones come; 0: never.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(-1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port at /metrics (default: the setting "
    "CARLS_WORKER_METRICS_PORT, 9464; taken: the next free of 16 ports; 0: any free "
    "port; -1: none).",
)
@click.option(
    "--stats",
    type=click.Path(dir_okay=False),
    envvar="CARLS_WORKER_STATS",
    show_envvar=True,
    help="Write per-stage timings as JSON to this file each second.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    makers: str,
    concurrency: int,
    app_id: str | None,
    session_timeout: float,
    park_s: float,
    max_step_ahead: int,
    hypergraph_every: float,
    metrics_port: int | None,
    stats: str | None,
) -> None:
    """Run knowledge makers until stopped (Ctrl-C or SIGTERM).

    Follows the checkpoints topic (every worker knows every namespace's newest manifest),
    starts a refresh campaign for each new checkpoint, and turns id batches from the
    demand and examples topics into knowledge in the bank. Start more workers with the
    same --app-id to share partitions; kill one and the others take over its work. On a
    timer it also makes the hypergraphs of multimodal tasks that ask for one and fuses
    their modalities' embeddings (--hypergraphs).
    """
    from carls.bank.ann import HnswParams
    from carls.bank.blobs import CassandraBlobs
    from carls.bank.cassandra import CassandraBank
    from carls.bank.hypergraphs import HypergraphStore
    from carls.bank.indexes import CassandraLeases, SharedIndexes
    from carls.bank.session import Connection
    from carls.bank.verdicts import CassandraCrashes, CassandraVerdicts
    from carls.cli import settings_of
    from carls.makers.hypergraphs import HypergraphMaker
    from carls.makers.worker import WorkerConfig, run_worker
    from carls.streams import metrics

    chosen = tuple(m.strip() for m in makers.split(",") if m.strip())
    unknown = sorted(set(chosen) - set(MAKERS))
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown makers {unknown}; choose from {', '.join(MAKERS)}", param_hint="--makers"
        )
    settings = settings_of(ctx)
    cfg = WorkerConfig(
        kafka=settings.kafka,
        topics=settings.topics,
        app_id=app_id or f"{settings.topic_prefix}-makers",
        topic_replication=settings.topic_replication,
        neighbours_exact_below=settings.neighbours_exact_below,
        hnsw=HnswParams(
            expansion_add=settings.neighbours_ef_construction,
            expansion_search=settings.neighbours_ef_search,
            recall_target=settings.neighbours_recall_target,
        ),
        stats_path=Path(stats) if stats else None,
        data_dir=settings.state_dir.resolve() / "faust",
        makers=chosen,
        concurrency=concurrency,
        session_timeout_s=session_timeout,
        park_s=park_s,
        max_step_ahead=max_step_ahead,
    )
    click.echo(
        f"carls worker {cfg.worker}: makers {', '.join(chosen)}; "
        f"groups {cfg.app_id} (checkpoints), {cfg.app_id}-ids (id batches); "
        f"kafka {','.join(settings.kafka.bootstrap_servers)}",
        err=True,
    )
    served = metrics.serve(
        settings.worker_metrics_port if metrics_port is None else metrics_port,
        settings.metrics_host,
        "worker",
    )
    if served is not None:
        click.echo(f"carls worker {cfg.worker}: metrics at {served.url}", err=True)
    level = ctx.find_root().params.get("log_level", "WARNING").lower()
    with Connection(settings.cassandra) as cassandra:
        blobs = CassandraBlobs(cassandra).start()
        spool = settings.state_dir.resolve() / "indexes"
        spool.mkdir(parents=True, exist_ok=True)
        leases = CassandraLeases(cassandra).start()
        holder = f"carls-maker@{cfg.worker}"
        indexes = SharedIndexes(blobs, leases, holder, spool=spool)
        bank = CassandraBank(cassandra).start()
        hypergraphs = (
            HypergraphMaker(bank, HypergraphStore(blobs), leases, holder, hypergraph_every)
            if hypergraph_every > 0
            else None
        )
        run_worker(
            cfg,
            bank,
            CassandraVerdicts(cassandra).start(),
            CassandraCrashes(cassandra).start(),
            settings.artifact_store(blobs),
            loglevel={"warning": "warn"}.get(level, level),
            indexes=indexes,
            hypergraphs=hypergraphs,
        )
