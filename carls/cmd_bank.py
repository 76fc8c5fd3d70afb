"""``carls bank …``: look into and manage the knowledge bank."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from carls.bank.types import DEFAULT_BUCKETS
from carls.output import emit_json, fail, progress, table
from carls.progress import interval_option

if TYPE_CHECKING:
    from carls.bank.cassandra import CassandraBank


@contextmanager
def _bank(ctx: click.Context) -> Iterator[CassandraBank]:
    from carls.bank.cassandra import CassandraBank
    from carls.cli import settings_of

    bank = CassandraBank(settings_of(ctx).cassandra).start()
    try:
        yield bank
    finally:
        bank.close()


class _Progress:
    """Progress of long admin work (export, import) on stderr: a bar redrawn in place on
    a terminal, a line every few seconds otherwise; each phase (``what``) on its own line."""

    def __init__(self, enabled: bool = True) -> None:
        from carls.progress import Display

        self.enabled = enabled
        self.display = Display(stream=sys.stderr, plain_every_s=2.0)
        self.what: str | None = None
        self.rate: Any = None
        self.last = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        from carls.progress import Rate, bar, duration

        if not self.enabled:
            return
        now = time.monotonic()
        if what != self.what:  # a new phase: a new line
            self.what, self.rate = what, Rate()
            self.display.new_block()
        elif now - self.last < 0.2 and done < total:
            return
        self.last = now
        self.rate.add(done, now)
        per_s = self.rate.per_s
        line = (
            f"  {what}: {bar(done / max(total, 1))} {done:,}/{total:,} "
            f"({100 * done / max(total, 1):.0f}%)"
            + (f", {per_s:,.0f}/s" if per_s else "")
            + (f", {duration(self.rate.eta_s(total))} left" if done < total else "")
        )
        self.display.update([line], {}, final=done >= total)


def _kv(values: tuple[str, ...], what: str) -> dict[str, int]:
    out = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not val.strip().isdigit():
            raise click.BadParameter(f"{item!r}: expected KIND=INT", param_hint=what)
        out[key.strip()] = int(val)
    return out


@click.group()
def bank() -> None:
    """Inspect and manage the knowledge bank (Cassandra keyspace CARLS_KEYSPACE)."""


@bank.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def namespaces(ctx: click.Context, as_json: bool) -> None:
    """List namespaces with their buckets and kinds."""
    from carls.bank.admin import spec_dict

    with _bank(ctx) as b:
        specs = [spec_dict(s) for s in b.namespaces()]
    if as_json:
        emit_json(specs)
        return
    if not specs:
        click.echo("no namespaces yet (create one: carls bank create NS --dim D)")
        return
    click.echo(
        table(
            [
                (
                    s["name"],
                    s["buckets"],
                    ", ".join(f"{k}={d}" for k, d in sorted(s["kinds"].items())),
                )
                for s in specs
            ],
            ["namespace", "buckets", "kinds (dimension)"],
        )
    )


@bank.command()
@click.argument("namespace")
@click.option(
    "--dim",
    type=click.IntRange(1, 65536),
    required=True,
    help="Embedding dimension (the 'embedding' kind).",
)
@click.option(
    "--buckets",
    type=click.IntRange(1, 4096),
    default=DEFAULT_BUCKETS,
    show_default=True,
    help="Partitions per kind: a batch lookup runs one query per bucket it touches.",
)
@click.option(
    "--classes",
    type=click.IntRange(1, 65536),
    default=16,
    show_default=True,
    help="Classes of pseudo_label and prediction.",
)
@click.option(
    "-k",
    "--neighbours",
    "k",
    type=click.IntRange(1, 4096),
    default=16,
    show_default=True,
    help="Neighbours kept per id.",
)
@click.option(
    "--kind",
    "extra_kinds",
    multiple=True,
    metavar="KIND=DIM",
    help="Another kind, e.g. embedding/text=64 (repeatable).",
)
@click.option(
    "--ttl",
    multiple=True,
    metavar="KIND=SECONDS",
    help="Expire a kind's knowledge after SECONDS (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def create(
    ctx: click.Context,
    namespace: str,
    dim: int,
    buckets: int,
    classes: int,
    k: int,
    extra_kinds: tuple[str, ...],
    ttl: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create NAMESPACE with the standard kinds (and any --kind)."""
    from carls.bank.admin import spec_dict
    from carls.bank.types import NamespaceSpec, default_kinds

    kinds = {**default_kinds(dim, classes, k), **_kv(extra_kinds, "--kind")}
    spec = NamespaceSpec(namespace, kinds, buckets, _kv(ttl, "--ttl"))
    with _bank(ctx) as b:
        created = b.create_namespace(spec)
    if as_json:
        emit_json(spec_dict(created))
    else:
        click.echo(
            f"created namespace {namespace}: {buckets} buckets, kinds "
            + ", ".join(f"{k}={d}" for k, d in sorted(kinds.items()))
        )


@bank.command()
@click.argument("namespace")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def stats(ctx: click.Context, namespace: str, as_json: bool) -> None:
    """Examples registered, and rows and step range per kind."""
    from carls.bank.admin import stats as compute

    with _bank(ctx) as b:
        st = compute(b, namespace)
    if as_json:
        emit_json(st)
        return
    click.echo(
        f"namespace {namespace}: {st['examples']:,} examples ({st['labeled']:,} "
        f"labeled), {st['namespace']['buckets']} buckets"
    )
    click.echo(
        table(
            [
                (k, v["dim"], v["rows"], v["min_step"], v["max_step"])
                for k, v in st["kinds"].items()
            ],
            ["kind", "dim", "rows", "oldest step", "newest step"],
        )
    )


@bank.command()
@click.argument("namespace")
@click.option("--kind", "kinds", multiple=True, help="Only this kind (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --watch: a line per look).")
@click.option(
    "--watch",
    is_flag=True,
    help="Look again every --interval seconds until every kind reaches --until: bars with "
    "rate and time left on a terminal, a plain line per change otherwise.",
)
@interval_option("--watch; each look scans the namespace")
@click.option(
    "--until",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="With --watch: stop once every kind has this fraction of ids at its newest step.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=None,
    help="With --watch: give up after this many seconds (exit status 2).",
)
@click.pass_context
def coverage(
    ctx: click.Context,
    namespace: str,
    kinds: tuple[str, ...],
    as_json: bool,
    watch: bool,
    interval: float,
    until: float,
    timeout: float | None,
) -> None:
    """How many registered ids have knowledge at the newest step, older steps, or none.

    With --watch it follows a refresh campaign until it is done (Ctrl-C stops it)."""
    from carls.bank.admin import coverage_dicts

    with _bank(ctx) as b:
        if watch:
            done = _watch_coverage(
                lambda: coverage_dicts(b, namespace, list(kinds) or None),
                namespace,
                as_json,
                interval,
                until,
                timeout,
            )
            if not done:
                ctx.exit(2)
            return
        rows = coverage_dicts(b, namespace, list(kinds) or None)
    if as_json:
        emit_json(rows)
        return
    click.echo(
        table(
            [
                (
                    r["kind"],
                    r["total"],
                    r["newest_step"],
                    r["at_newest"],
                    f"{100 * r['fraction_at_newest']:.1f}%",
                    r["older"],
                    r["none"],
                )
                for r in rows
            ],
            ["kind", "ids", "newest step", "at newest", "coverage", "older", "none"],
        )
    )


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _watch_coverage(
    look: Any,
    namespace: str,
    as_json: bool,
    interval: float,
    until: float,
    timeout: float | None,
    display: Any = None,
) -> bool:
    """Look at the coverage until every kind reaches ``until``; False on timeout."""
    from carls.progress import Display, Rate, bar, duration

    shown = display or Display(as_json=as_json)
    rate = Rate()
    steps: dict[str, int | None] = {}
    started = time.monotonic()
    while True:
        rows = look()
        now_steps = {r["kind"]: r["newest_step"] for r in rows}
        if now_steps != steps:  # a new checkpoint's campaign: counting starts over
            rate.reset()
            steps = now_steps
        made = sum(r["at_newest"] for r in rows)
        total = sum(r["total"] for r in rows)
        rate.add(made)
        eta = rate.eta_s(total)
        # a kind with no ids to make (nothing registered yet) has nothing left to wait for
        done = bool(rows) and all(r["total"] == 0 or r["fraction_at_newest"] >= until for r in rows)
        per_s = rate.per_s
        head = (
            f"{namespace}: {made:,}/{total:,} ids at their kind's newest step"
            + (f", {per_s:,.0f} ids/s" if per_s is not None else "")
            + ("" if done else f", {duration(eta)} left")
            + (" - done" if done else "")
        )
        lines = [head] + [
            f"  {r['kind']:<13} {bar(r['fraction_at_newest'])} "
            f"{100 * r['fraction_at_newest']:5.1f}%  step {_or_dash(r['newest_step'])}  "
            f"{r['at_newest']:,}/{r['total']:,} (older {r['older']:,}, none {r['none']:,})"
            for r in rows
        ]
        record = {
            "namespace": namespace,
            "at": time.time(),
            "kinds": rows,
            "ids_per_s": per_s,
            "eta_s": eta,
            "done": done,
        }
        shown.update(lines, record, final=done)
        if done:
            return True
        if timeout is not None and time.monotonic() - started >= timeout:
            progress(f"coverage of {namespace} below {until:.0%} after {timeout:g} s")
            return False
        time.sleep(interval)


@bank.command()
@click.argument("namespace")
@click.argument("kind")
@click.argument("ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def get(ctx: click.Context, namespace: str, kind: str, ids: tuple[str, ...], as_json: bool) -> None:
    """Knowledge of KIND for IDS, with its step and lineage."""
    from carls.bank.admin import get_rows

    with _bank(ctx) as b:
        rows = get_rows(b, namespace, kind, list(ids))
    if as_json:
        emit_json(rows)
        return
    out = []
    for r in rows:
        if r["missing"]:
            out.append((r["id"], "-", "-", "missing"))
            continue
        head = ", ".join(f"{v:.4g}" for v in r["value"][:6])
        more = f", … ({len(r['value'])} values)" if len(r["value"]) > 6 else ""
        extra = f"class {r['class']} ({r['confidence']:.3f}) " if "class" in r else ""
        extra += f"neighbours {' '.join(r['neighbours'][:5])} " if "neighbours" in r else ""
        out.append((r["id"], r["step"], r["maker"], f"{extra}[{head}{more}]"))
    click.echo(table(out, ["id", "step", "maker", "value"]))


@bank.command()
@click.argument("namespace")
@click.option("--id", "query_id", help="Use the stored vector of this id as the query.")
@click.option(
    "--vector",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Query vector file: .npy, a JSON list, or floats separated by spaces/commas.",
)
@click.option("-k", "k", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--kind", default="embedding", show_default=True)
@click.option("--metric", type=click.Choice(["cosine", "dot"]), default="cosine", show_default=True)
@click.option("--from-step", type=int, help="Compare vectors from this step (inclusive) ...")
@click.option("--to-step", type=int, help="... to this step; default: the newest step only.")
@click.option(
    "--exact",
    is_flag=True,
    help="Scan every vector (exact) even when the makers saved an index for the step.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def neighbours(
    ctx: click.Context,
    namespace: str,
    query_id: str | None,
    vector: Path | None,
    k: int,
    kind: str,
    metric: str,
    from_step: int | None,
    to_step: int | None,
    exact: bool,
    as_json: bool,
) -> None:
    """Top-k nearest ids by cosine or dot product, within one model generation.

    For cosine neighbours of embeddings at one step, the HNSW index the makers built for
    that step is loaded from the bank and searched (approximate; its measured recall is in
    the README); otherwise, or with --exact, every vector of the step is scanned."""
    from carls.bank.admin import load_vector
    from carls.bank.protocol import nearest

    if (query_id is None) == (vector is None):
        raise click.UsageError("give exactly one of --id ID or --vector FILE")
    if (from_step is None) != (to_step is None):
        raise click.UsageError("give both --from-step and --to-step, or neither")
    steps = (from_step, to_step) if from_step is not None and to_step is not None else None
    with _bank(ctx) as b:
        if query_id is not None:
            got = b.read(namespace, kind, [query_id])
            if got.missing[0]:
                raise click.UsageError(f"{query_id} has no {kind} in {namespace}")
            query, exclude = got.values[0], [query_id]
            if steps is None:
                steps = (int(got.steps[0]), int(got.steps[0]))
        else:
            assert vector is not None
            query, exclude = load_vector(vector), []
        indexed = None
        one_step = steps is None or steps[0] == steps[1]
        if not exact and kind == "embedding" and metric == "cosine" and one_step:
            indexed = _indexed_nearest(b, namespace, query, k, steps, exclude)
        if indexed is not None:
            found, how = indexed
        else:
            found = nearest(
                b, namespace, kind, query, k, metric=metric, steps=steps, exclude=exclude
            )
            how = f"exact: every {kind} vector of the step scanned"
    if len(found) < k:
        how += f"; {k} asked, {len(found)} there (every id of the step but the query)"
    click.echo(how, err=True)
    rows = [{"id": n.id, "score": n.score, "step": n.step} for n in found]
    if as_json:
        emit_json(rows)
    else:
        click.echo(table([(r["id"], r["score"], r["step"]) for r in rows], ["id", metric, "step"]))


def _indexed_nearest(
    b: CassandraBank,
    namespace: str,
    query: Any,
    k: int,
    steps: tuple[int, int] | None,
    exclude: list[str],
) -> tuple[list[Any], str] | None:
    """Nearest ids from the makers' saved index of the step (the newest, without
    ``steps``), or None when there is none."""
    import numpy as np

    from carls.bank.blobs import CassandraBlobs
    from carls.bank.errors import DimensionError
    from carls.bank.indexes import index_step, load_index, saved_index
    from carls.bank.types import Neighbour

    spec = b.namespace(namespace)
    blobs = CassandraBlobs(b.connection).start()
    try:
        info = saved_index(blobs, namespace, spec.created_at, steps[0] if steps else None)
        if info is None:
            return None
        ids, index = load_index(blobs, namespace, info.name)
    finally:
        blobs.close()
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    if q.shape[1] != index.dim or not np.isfinite(q).all():
        raise DimensionError(f"query: expected {index.dim} finite floats, got {q.shape[1]}")
    step = index_step(info.name)
    position = {i: n for n, i in enumerate(ids)}
    self_row = position.get(exclude[0], -1) if exclude else -1
    rows, scores = index.search(q, k, self_index=np.array([self_row], np.int64))
    found = [
        Neighbour(ids[int(r)], float(sc), step) for r, sc in zip(rows[0], scores[0], strict=True)
    ]
    how = "exact" if index.exact else "approximate: HNSW"
    return found, f"{how} index of step {step} ({index.size:,} ids), saved by the makers"


@bank.command("export")
@click.argument("namespace")
@click.argument("path", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def export_(ctx: click.Context, namespace: str, path: Path, as_json: bool) -> None:
    """Write NAMESPACE (examples and knowledge with lineage) to one portable file."""
    from carls.bank.transfer import describe, export_namespace

    if not path.parent.is_dir():  # say so before reading the whole namespace
        fail(f"cannot write {path}: directory {path.parent} does not exist")
    t0 = time.monotonic()
    with _bank(ctx) as b:
        try:
            manifest = export_namespace(b, namespace, path, progress=_Progress())
        except OSError as exc:
            fail(f"cannot write {path}: {exc.strerror or exc}")
    info = {
        **describe(manifest),
        "path": str(path),
        "bytes": path.stat().st_size,
        "seconds": round(time.monotonic() - t0, 2),
    }
    if as_json:
        emit_json(info)
    else:
        click.echo(
            f"exported {namespace} to {path} ({info['bytes'] / 1e6:.1f} MB, "
            f"{info['seconds']:.1f} s): {manifest['counts']}"
        )


@bank.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--namespace", "new_name", help="Import under this name instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def import_(ctx: click.Context, path: Path, new_name: str | None, as_json: bool) -> None:
    """Create a namespace from an export file (checked in full before anything is written)."""
    from carls.bank.admin import spec_dict
    from carls.bank.transfer import import_namespace

    t0 = time.monotonic()
    with _bank(ctx) as b:
        spec = import_namespace(b, path, new_name, progress=_Progress())
    info = {**spec_dict(spec), "seconds": round(time.monotonic() - t0, 2)}
    if as_json:
        emit_json(info)
    else:
        click.echo(f"imported {path} as namespace {spec.name} ({info['seconds']:.1f} s)")


@bank.command()
@click.argument("namespace")
@click.option("--from-step", type=click.IntRange(min=0), required=True)
@click.option("--to-step", type=click.IntRange(min=0), required=True)
@click.option("--kind", "kinds", multiple=True, help="Only this kind (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def quarantine(
    ctx: click.Context,
    namespace: str,
    from_step: int,
    to_step: int,
    kinds: tuple[str, ...],
    as_json: bool,
) -> None:
    """Remove knowledge made by steps FROM..TO (inclusive), e.g. of a bad checkpoint.

    Those rows read as missing; replays of those steps stay removed; newer steps land."""
    with _bank(ctx) as b:
        n = b.quarantine(namespace, from_step, to_step, list(kinds) or None)
    if as_json:
        emit_json(
            {"namespace": namespace, "from_step": from_step, "to_step": to_step, "removed": n}
        )
    else:
        click.echo(f"quarantined {n:,} rows of steps {from_step}..{to_step} in {namespace}")


@bank.command()
@click.argument("namespace")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def drop(ctx: click.Context, namespace: str, yes: bool, as_json: bool) -> None:
    """Delete NAMESPACE with all its examples, knowledge, and the checkpoints and neighbour
    indexes kept in the bank's store (asks unless --yes)."""
    from carls.bank.blobs import CassandraBlobs

    with _bank(ctx) as b:
        b.namespace(namespace)  # unknown: error before asking
        if not yes and not click.confirm(
            f"drop namespace {namespace} and all its knowledge?", default=False, err=True
        ):
            raise click.Abort()
        started = time.monotonic()
        progress(f"dropping {namespace}: its examples and knowledge ...")
        b.drop_namespace(namespace)
        progress(f"  done ({time.monotonic() - started:.1f} s); its stored checkpoints ...")
        blobs = CassandraBlobs(b.connection).start()
        checkpoints = blobs.delete_scope(f"checkpoints/{namespace}")
        progress(f"  {checkpoints} deleted; its neighbour indexes ...")
        indexes = blobs.delete_scope(f"indexes/{namespace}")
        progress(f"  {indexes} deleted ({time.monotonic() - started:.1f} s in all)")
    if as_json:
        emit_json(
            {"dropped": namespace, "checkpoints_deleted": checkpoints, "indexes_deleted": indexes}
        )
    else:
        click.echo(
            f"dropped namespace {namespace} ({checkpoints} stored checkpoint(s), "
            f"{indexes} neighbour index(es) deleted)"
        )
