"""``carls dataset``: data files kept in the bank, so a trainer on any machine reads them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from carls.output import emit_json, table

if TYPE_CHECKING:
    from carls.bank.blobs import CassandraBlobs


@contextmanager
def _blobs(ctx: click.Context) -> Iterator[CassandraBlobs]:
    from carls.bank.blobs import CassandraBlobs
    from carls.cli import settings_of

    blobs = CassandraBlobs(settings_of(ctx).cassandra).start()
    try:
        yield blobs
    finally:
        blobs.close()


@click.group()
def dataset() -> None:
    """Data files kept in the bank (scope `datasets`), read by trainers on any machine.

    A job spec names one with `dataset: {uri: bank://datasets/NAME}`; `carls submit`
    registers a spec's local `dataset.path` by itself.
    """


@dataset.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--name",
    help="The name to keep it under (default <stem>-<sha256[:12]><suffix>: the same bytes "
    "always get the same name).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def register(ctx: click.Context, file: Path, name: str | None, as_json: bool) -> None:
    """Keep FILE (.npz, .csv or .json) in the bank and print its bank:// URI."""
    from carls.bank.artifacts import register_data
    from carls.cli import settings_of

    limit = settings_of(ctx).artifact_max_mb << 20
    with _blobs(ctx) as blobs:
        uri, info = register_data(blobs, file, name, max_bytes=limit)
    if as_json:
        emit_json({"uri": uri, "sha256": info.sha256, "size": info.size})
    else:
        click.echo(uri)


@dataset.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """The data files kept in the bank."""
    from carls.bank.artifacts import DATASETS, bank_uri

    with _blobs(ctx) as blobs:
        entries = blobs.entries(DATASETS)
    rows = [
        {
            "uri": bank_uri(DATASETS, e.name),
            "size": e.size,
            "sha256": e.sha256,
            "created_at": datetime.fromtimestamp(e.created_at, UTC).isoformat(timespec="seconds"),
            "source": e.meta.get("source"),
        }
        for e in entries
    ]
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("no data files in the bank (add one with `carls dataset register FILE`)")
    else:
        click.echo(
            table(
                [
                    (r["uri"], f"{r['size']:,}", str(r["sha256"])[:12], r["created_at"])
                    for r in rows
                ],
                ["uri", "bytes", "sha256", "registered"],
            )
        )


@dataset.command()
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Delete the data file NAME (or its bank:// URI) from the bank."""
    from carls.bank.artifacts import DATASETS, parse_bank_uri

    if name.startswith("bank://"):
        name = parse_bank_uri(name)[1]
    with _blobs(ctx) as blobs:
        if not blobs.delete(DATASETS, name):
            raise click.UsageError(f"no data file {name} in the bank (see `carls dataset list`)")
    click.echo(f"removed {name}")
