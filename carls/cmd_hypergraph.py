"""``carls hypergraph``: a multimodal task's hypergraph (HyperLearn), built from modality
files, registered in the bank, shown, and the fused representation written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from carls.output import emit_json, table

if TYPE_CHECKING:
    from carls.bank.blobs import CassandraBlobs
    from carls.bank.cassandra import CassandraBank


@contextmanager
def _stores(ctx: click.Context) -> Iterator[tuple[CassandraBank, CassandraBlobs]]:
    from carls.bank.blobs import CassandraBlobs
    from carls.bank.cassandra import CassandraBank
    from carls.bank.session import Connection
    from carls.cli import settings_of

    conn = Connection(settings_of(ctx).cassandra).start()
    try:
        yield CassandraBank(conn).start(), CassandraBlobs(conn).start()
    finally:
        conn.close()


def _orders(hg: Any) -> str:
    """``'12 of order 2, 3 of order 4'``: a hypergraph's hyperedges by order."""
    return ", ".join(f"{n} of order {k}" for k, n in hg.orders().items())


@click.group()
def hypergraph() -> None:
    """A multimodal task's hypergraph: hyperedges of order 2 to 4 joining items of its
    modalities, which the task's learners (paradigm `hypergraph`) convolve over.

    \b
    A task's modalities train in namespaces <task>_<modality>, one `carls trainer` job
    each. Register the hypergraph once their learners have started (it is checked
    against their examples); register a new one to add a modality: the running learners
    pick it up within seconds, without a restart.

    \b
      carls hypergraph build --modality q0=q0.npz --modality q1=q1.npz edges.npz
      carls hypergraph register digitsq edges.npz
      carls hypergraph show digitsq
      carls hypergraph fuse digitsq
    """


def _modality_arg(values: tuple[str, ...]) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{v!r}: expected NAME=FILE", param_hint="--modality")
        if not Path(path).is_file():
            raise click.BadParameter(f"{path}: no such file", param_hint="--modality")
        out.append((name, Path(path)))
    return out


@hypergraph.command()
@click.option(
    "--modality",
    "modalities",
    multiple=True,
    required=True,
    metavar="NAME=FILE",
    help="A modality and its .npz file (X, ids; the dataset form). Repeat per modality.",
)
@click.option(
    "--knn",
    default=3,
    show_default=True,
    type=click.IntRange(1, 3),
    help="Within each modality, one hyperedge per item: it and its K nearest (order K+1).",
)
@click.option(
    "--cross-weight",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Weight of the hyperedges joining the modalities of one item.",
)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def build(modalities: tuple[str, ...], knn: int, cross_weight: float, out: Path) -> None:
    """Build a hypergraph from modality files and write it to OUT (.npz).

    Items with the same id in several files are joined by one hyperedge (their
    modalities); within each modality, kNN hyperedges join similar items.
    """
    from carls.trainers.hyperlearn import build_hypergraph, read_modality

    files = [read_modality(name, path) for name, path in _modality_arg(modalities)]
    hg = build_hypergraph(files, knn, cross_weight)
    out.write_bytes(hg.to_bytes())
    orders = _orders(hg)
    click.echo(f"{out}: {len(hg.members)} hyperedges ({orders}) over {', '.join(hg.modalities)}")


@hypergraph.command()
@click.argument("task")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--wait",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for the learners to register their examples (just started).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def register(ctx: click.Context, task: str, file: Path, wait: float, as_json: bool) -> None:
    """Check FILE and make it TASK's hypergraph.

    Every modality it names must have a learner that has started (namespace
    <task>_<modality>) and every id must be one of its examples; orders 2 to 4. Nothing
    is written unless all of it holds.
    """
    import time

    from carls.bank.hypergraphs import HypergraphError, HypergraphStore, load
    from carls.trainers.hyperlearn import bank_check

    hg = load(file)  # its structure is checked here: no waiting on a malformed file
    deadline = time.monotonic() + wait
    with _stores(ctx) as (bank, blobs):
        while True:
            try:
                info = HypergraphStore(blobs).register(task, hg, bank_check(bank, task))
                break
            except HypergraphError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
    out = {
        "task": task,
        "name": info.name,
        "hyperedges": len(hg.members),
        "orders": hg.orders(),
        "modalities": hg.modalities,
    }
    if as_json:
        emit_json(out)
    else:
        orders = _orders(hg)
        click.echo(
            f"{task}: hypergraph {info.name} registered: {len(hg.members)} hyperedges "
            f"({orders}) over {', '.join(hg.modalities)}"
        )


@hypergraph.command()
@click.argument("task")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, task: str, as_json: bool) -> None:
    """TASK's hypergraph and how far each modality's embeddings are."""
    from carls.bank.errors import NamespaceError
    from carls.bank.hypergraphs import HypergraphStore
    from carls.bank.protocol import coverage

    with _stores(ctx) as (bank, blobs):
        store = HypergraphStore(blobs)
        info = store.newest(task)
        if info is None:
            asked = store.learners().get(task, {})
            how = (
                "a carls worker makes it once the learners' examples are in (is one running?)"
                if any(one.knn is not None for one in asked.values())
                else "register one (carls hypergraph register), or let the workers make it "
                "(paradigm param knn)"
            )
            raise click.ClickException(f"{task} has no hypergraph; {how}")
        hg = store.read(task, info)
        assert hg is not None
        rows: list[dict[str, Any]] = []
        for m in hg.modalities:
            ns = f"{task}_{m}"
            try:
                c = coverage(bank, ns, f"embedding/{m}")
                rows.append(
                    {"modality": m, "namespace": ns, "ids": c.total, "embedded": c.total - c.none}
                )
            except NamespaceError:
                rows.append({"modality": m, "namespace": ns, "ids": None, "embedded": None})
    out = {
        "task": task,
        "name": info.name,
        "registered_at": datetime.fromtimestamp(info.created_at, UTC).isoformat(timespec="seconds"),
        "made_by_workers": "made_from" in info.meta,
        "hyperedges": len(hg.members),
        "orders": hg.orders(),
        "modalities": rows,
    }
    if as_json:
        emit_json(out)
        return
    orders = _orders(hg)
    by = "made by the workers" if out["made_by_workers"] else "registered"
    click.echo(f"{task}: {info.name} ({by}), {len(hg.members)} hyperedges ({orders})")
    click.echo(
        table(
            [[r["modality"], r["namespace"], r["ids"], r["embedded"]] for r in rows],
            ["modality", "namespace", "ids", "embedded"],
        )
    )


@hypergraph.command()
@click.argument("task")
@click.option(
    "--dim",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="The learners' embedding width.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def fuse(ctx: click.Context, task: str, dim: int, as_json: bool) -> None:
    """Write TASK's fused representation: every modality's latest embedding side by side,
    convolved once over the items through the hypergraph, as the kind `fused` of
    namespace <task>_fused."""
    from carls.bank.hypergraphs import HypergraphStore
    from carls.trainers.hyperlearn import write_fused

    with _stores(ctx) as (bank, blobs):
        hg = HypergraphStore(blobs).read(task)
        if hg is None:
            raise click.ClickException(
                f"{task} has no hypergraph; register one (carls hypergraph register)"
            )
        fused = write_fused(bank, task, hg, dim)
    present = dict(zip(fused.modalities, fused.present.mean(0).round(3).tolist(), strict=True))
    out: dict[str, Any] = {
        "namespace": fused.namespace,
        "items": len(fused.ids),
        "width": int(fused.values.shape[1]),
        "modalities": present,
        "step": fused.step,
    }
    if as_json:
        emit_json(out)
    else:
        there = ", ".join(f"{m} {p:.0%}" for m, p in present.items())
        click.echo(
            f"{fused.namespace}: fused of {len(fused.ids)} items written (width "
            f"{out['width']}; embeddings there: {there})"
        )


@hypergraph.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", default="digitsq", show_default=True, help="The task's name.")
@click.option("--seed", default=0, show_default=True, help="Split, labels and missing quadrants.")
@click.option(
    "--missing",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction of items lacking one (random) quadrant.",
)
def example(out: Path, task: str, seed: int, missing: float) -> None:
    """Write the quadrant-digits task into OUT: four modality files (the 4x4 quadrants of
    scikit-learn's digits), the hypergraph, a learner spec per quadrant and the spec of
    one MLP on the concatenated features, and print how to run it."""
    from carls.demo_hyper import write_example

    info = write_example(out, seed=seed, missing=missing, task=task)
    specs = info["specs"]
    click.echo(f"{out}: {info['items']} items, {info['lacking_a_modality']} lacking a quadrant")
    click.echo("run each learner in its own process, then register the hypergraph:")
    for s in specs[:-1]:
        click.echo(f"  carls job run {s} &")
    click.echo(f"  carls hypergraph register {task} {out / 'hypergraph.npz'}")
    click.echo(f"  carls hypergraph fuse {task}")
    click.echo(f"the concatenated-features baseline: carls job run {specs[-1]}")
