"""``carls settings``: the effective settings and the environment variable of each."""

from __future__ import annotations

import click

from carls.output import emit_json, table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def settings(ctx: click.Context, as_json: bool) -> None:
    """Show the effective settings (secrets hidden) and their CARLS_* variables."""
    from carls.cli import settings_of

    current = settings_of(ctx).model_dump(mode="json")
    if as_json:
        emit_json(current)
        return
    rows = [
        (f"CARLS_{k.upper()}", "**********" if "password" in k and v else v)
        for k, v in current.items()
    ]
    click.echo(table(rows, ["variable", "value"]))
