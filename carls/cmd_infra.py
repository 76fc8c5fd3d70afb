"""``carls infra up|down|status``: the local single-node Kafka and Cassandra."""

from __future__ import annotations

import dataclasses

import click

from carls.output import emit_json, progress, table


@click.group()
def infra() -> None:
    """Run the local stack: single-node Kafka 4 (KRaft) and Cassandra 5 on Java 17.

    Jars are resolved from Maven Central on the first start and cached under the state
    folder (CARLS_STATE_DIR, default ./.carls), which also holds data and logs.
    """


@infra.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@click.pass_context
def up(ctx: click.Context, as_json: bool) -> None:
    """Start both servers (no-op if running), then create topics and the CQL schema."""
    from carls.cli import settings_of
    from carls.wiring import bring_up

    settings = settings_of(ctx)
    report = bring_up(settings, say=progress)
    if as_json:
        emit_json(dataclasses.asdict(report))
    elif all(report.up.already_running.values()):
        click.echo("the stack is already running; topics and schema checked")
    else:
        click.echo(
            f"the stack is up ({report.wall_s:.1f} s): kafka "
            f"{settings.kafka.bootstrap_servers[0]}, cassandra "
            f"{settings.cassandra.hosts[0]}:{settings.cassandra.port}"
        )


@infra.command()
@click.option(
    "--wipe", is_flag=True, help="Also delete the servers' data and logs (resolved jars are kept)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def down(ctx: click.Context, wipe: bool, as_json: bool) -> None:
    """Stop both servers; data is kept unless --wipe."""
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
    """Health, versions, ports and memory of both servers. Exits 1 unless both are healthy."""
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
