"""``carls infra up|down|status``: the local Kafka and Cassandra (one node, or several)."""

from __future__ import annotations

import dataclasses

import click

from carls.output import emit_json, progress, table


@click.group()
def infra() -> None:
    """Run the local stack: Kafka 4 (KRaft) and Cassandra 5 on Java 17, one node of each by
    default, or a cluster of each on consecutive loopback addresses (--nodes 3: 127.0.0.1,
    .2 and .3, every record and row kept three times).

    Jars are resolved from Maven Central on the first start and cached under the state
    folder (CARLS_STATE_DIR, default ./.carls), which also holds data and logs.
    """


@infra.command()
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=None,
    help="Kafka brokers and Cassandra nodes to run, each on its own loopback address "
    "(default: as many as the stack in the state folder has, else 1). With 3, topics and "
    "the keyspace keep 3 copies, Kafka writes need 2 in sync, reads and writes use "
    "LOCAL_QUORUM: the stack serves on while any one node is down. Later commands find "
    "the count in the state folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_context
def up(ctx: click.Context, nodes: int | None, as_json: bool) -> None:
    """Start the servers (no-op if running), then create topics and the CQL schema."""
    from carls.cli import settings_of
    from carls.settings import Settings
    from carls.wiring import bring_up

    settings = settings_of(ctx) if nodes is None else Settings(nodes=nodes)
    report = bring_up(settings, say=progress)
    if as_json:
        emit_json(dataclasses.asdict(report))
    elif all(report.up.already_running.values()):
        click.echo("the stack is already running; topics and schema checked")
    else:
        click.echo(
            f"the stack is up ({report.wall_s:.1f} s): kafka "
            f"{','.join(settings.kafka.bootstrap_servers)}, cassandra "
            f"{','.join(settings.cassandra.hosts)} port {settings.cassandra.port}"
        )


@infra.command()
@click.option(
    "--wipe", is_flag=True, help="Also delete the servers' data and logs (resolved jars are kept)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def down(ctx: click.Context, wipe: bool, as_json: bool) -> None:
    """Stop every server node; data is kept unless --wipe."""
    from carls.cli import settings_of
    from carls.infra import down as stop

    stopped = stop(settings_of(ctx).infra, wipe=wipe)
    if as_json:
        emit_json({"stopped": stopped, "wiped": wipe})
        return
    for name, was in stopped.items():
        click.echo(f"{name}: {'stopped' if was else 'was not running'}")
    if wipe:
        click.echo("data and logs removed")


@infra.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Health, versions, addresses and memory of every server node. Exits 1 unless all are
    healthy."""
    from carls.cli import settings_of
    from carls.infra import status as check

    report = check(settings_of(ctx).infra)
    healthy = all(s.healthy for s in report)
    if as_json:
        emit_json({"healthy": healthy, "servers": {s.name: s.as_dict() for s in report}})
    else:
        click.echo(
            table(
                [
                    (
                        s.name,
                        s.version,
                        f"{s.host}:{s.port}",
                        s.pid,
                        s.rss_mb,
                        "healthy" if s.healthy else s.detail,
                    )
                    for s in report
                ],
                ["server", "version", "address", "pid", "rss MiB", "state"],
            )
        )
    ctx.exit(0 if healthy else 1)
