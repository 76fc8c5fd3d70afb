"""``carls bench …``: performance figures measured side by side in one run."""

from __future__ import annotations

from typing import Any

import click

from carls.output import emit_json, progress, table


@click.group()
def bench() -> None:
    """Benchmarks on the local stack; each prints its ratios against in-process baselines."""


@bench.command("bank")
@click.option("--rows", type=click.IntRange(1000), default=100_000, show_default=True)
@click.option("--dim", type=click.IntRange(1, 4096), default=128, show_default=True)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=1024,
    show_default=True,
    help="Ids per lookup.",
)
@click.option("--lookups", type=click.IntRange(10), default=100, show_default=True)
@click.option("--buckets", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bench_bank(
    ctx: click.Context, rows: int, dim: int, batch: int, lookups: int, buckets: int, as_json: bool
) -> None:
    """Batch lookup, bulk write, export/import of the Cassandra bank, side by side with
    the cassandra-driver's own best ways to do the same work on the same table and rows
    (prepared statements, execute_concurrent, unlogged same-partition batches), and with
    numpy and dict lookups in memory. Takes about a minute with the defaults."""
    from carls.bank.cassandra import CassandraBank
    from carls.benches.bank import run
    from carls.cli import settings_of

    bank = CassandraBank(settings_of(ctx).cassandra).start()
    try:
        result = run(
            bank,
            bank.session,
            rows=rows,
            dim=dim,
            batch=batch,
            lookups=lookups,
            buckets=buckets,
            say=progress,
        )
    finally:
        bank.close()
    if as_json:
        emit_json(result)
        return
    r = result
    click.echo(
        table(
            [
                (
                    f"lookup {batch} x {dim}-d, median",
                    f"{r['lookup_median_ms']:.2f} ms",
                    f"numpy gather {r['numpy_gather_median_ms']:.3f} ms "
                    f"(x{r['lookup_vs_numpy']:.0f}); dict {r['dict_median_ms']:.2f} ms "
                    f"(x{r['lookup_vs_dict']:.1f})",
                ),
                (
                    "lookup vs the driver's best",
                    f"x{r['lookup_vs_driver_best']:.2f} median, "
                    f"x{r['lookup_p99_vs_driver_best']:.2f} p99",
                    f"{r['driver_best_lookup']}: "
                    f"{r['driver_lookup_ms'][r['driver_best_lookup']]['median']:.2f} ms median, "
                    f"{r['driver_lookup_ms'][r['driver_best_lookup']]['p99']:.2f} ms p99",
                ),
                ("lookup p99", f"{r['lookup_p99_ms']:.2f} ms", ""),
                ("lookup rows/s", f"{r['lookup_rows_per_s']:,.0f}", ""),
                (
                    "lookup bytes/s",
                    f"{r['lookup_bytes_per_s'] / 1e6:,.1f} MB/s",
                    f"loopback {r['loopback_bytes_per_s'] / 1e6:,.0f} MB/s "
                    f"({100 * r['lookup_vs_loopback']:.2f}%)",
                ),
                (
                    f"bulk write {dim}-d",
                    f"{r['write_rows_per_s']:,.0f} rows/s",
                    f"x{r['write_vs_driver_best']:.2f} of the driver's best, "
                    f"{r['driver_best_write']}: "
                    f"{r['driver_write_rows_per_s'][r['driver_best_write']]:,.0f} rows/s",
                ),
                (
                    f"export {rows:,} rows",
                    f"{r['export_s']:.1f} s",
                    f"{r['export_bytes'] / 1e6:.0f} MB",
                ),
                (f"import {rows:,} rows", f"{r['import_s']:.1f} s", ""),
            ],
            ["measure", "carls bank", "side by side"],
        )
    )
    click.echo(
        table(
            [
                (k, v["target"], v["value"], "met" if v["met"] else "NOT MET")
                for k, v in r["targets"].items()
            ],
            ["target", "goal", "measured", ""],
        )
    )


@bench.command("makers")
@click.option(
    "--ids",
    "--examples",
    "examples",
    type=click.IntRange(1000),
    default=100_000,
    show_default=True,
    help="Ids in the refresh campaign (1000000: about 25 minutes, 4 GB of memory).",
)
@click.option(
    "--intrinsic-dim",
    type=click.IntRange(1, 64),
    default=16,
    show_default=True,
    help="The synthetic features lie near a random subspace of this dimension (64: "
    "isotropic noise, the hardest case for approximate neighbours).",
)
@click.option(
    "--records",
    type=click.IntRange(1000),
    default=100_000,
    show_default=True,
    help="Records for the consumption comparison.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bench_makers(
    ctx: click.Context, examples: int, intrinsic_dim: int, records: int, as_json: bool
) -> None:
    """Faust vs aiokafka consumption; maker throughput vs raw inference and bank writes;
    freshness of every kind, neighbours included, in a refresh campaign vs its lower
    bound; recall@10 of the neighbours against exact search on 10k ids.

    Consumption is measured on 100-byte records and on the id batches makers really read,
    raw aiokafka against the worker's Faust path (whole fetches handed to the makers),
    interleaved over three rounds, best of each; Faust's per-record streams are shown for
    comparison. Takes about three minutes with the default sizes.
    """
    from carls.benches.makers import run
    from carls.cli import settings_of
    from carls.trainers.checkpoints import save_artifact

    settings = settings_of(ctx)
    r = run(
        settings.kafka,
        settings.cassandra,
        save_artifact,
        examples=examples,
        records=records,
        intrinsic_dim=intrinsic_dim,
        say=progress,
    )
    if as_json:
        emit_json(r)
        return
    c, m, f, raw = r["consume"], r["maker"], r["freshness"], r["raw"]
    rc = r["recall"]
    st = m["stages_s"]
    click.echo(
        table(
            [
                *(
                    (
                        f"consume {label} (records/s)",
                        f"{cc['faust_per_s']:,.0f} Faust",
                        f"{cc['aiokafka_per_s']:,.0f} aiokafka",
                        f"x{cc['faust_vs_aiokafka']:.2f}",
                    )
                    for label, cc in (
                        (f"{c['small_records']['record_bytes']} B", c["small_records"]),
                        (f"id batches of {c['id_batches']['record_bytes']:,} B", c["id_batches"]),
                    )
                ),
                (
                    "  Faust per-record streams",
                    f"{c['small_records']['faust_streams_per_s']:,.0f}",
                    "",
                    f"x{c['small_records']['faust_streams_vs_aiokafka']:.3f}",
                ),
                (
                    "maker end to end (ids/s)",
                    f"{m['examples_per_s']:,.0f}",
                    f"inference {raw['inference_per_s']:,.0f}; bank writes "
                    f"{raw['bank_write_ids_per_s']:,.0f}",
                    f"x{m['vs_min_raw']:.2f} of the min",
                ),
                (
                    "worker time split (s)",
                    f"consume {st['consume_s'] or 0:.1f} fetch {st['fetch_s'] or 0:.1f} "
                    f"infer {st['infer_s'] or 0:.1f} write {st['write_s'] or 0:.1f} "
                    f"index {st['pool_s'] or 0:.1f} search {st['search_s'] or 0:.1f}",
                    "",
                    "",
                ),
                *(
                    (
                        f"freshness {kind} 50/99/100% (s)",
                        f"{k['p50_s']:.1f} / {k['p99_s']:.1f} / {k['p100_s']:.1f}",
                        f"lower bound {f['lower_bound_s']:.1f}",
                        f"x{k['p99_s'] / f['lower_bound_s']:.2f} at 99%",
                    )
                    for kind, k in f["kinds"].items()
                ),
                (
                    f"neighbours recall@{rc['k']} ({rc['sample']:,} ids)",
                    f"{rc['recall']:.4f}",
                    "exact search",
                    "",
                ),
            ],
            ["measure", "carls", "baseline", "ratio"],
        )
    )
    click.echo(
        table([(k, "met" if v else "NOT MET") for k, v in r["targets"].items()], ["target", ""])
    )


@bench.command("trainer")
@click.option("--steps", type=click.IntRange(20), default=300, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bench_trainer(ctx: click.Context, steps: int, as_json: bool) -> None:
    """Training step time: knowledge reader vs in-memory arrays vs synchronous bank reads,
    and a KnowledgeModel's fit step vs the same model's plain fit."""
    from carls.bank.cassandra import CassandraBank
    from carls.benches.trainer import run
    from carls.cli import settings_of

    bank = CassandraBank(settings_of(ctx).cassandra).start()
    try:
        r = run(bank, steps=steps, say=progress)
    finally:
        bank.close()
    if as_json:
        emit_json(r)
        return
    m = r["median_step_ms"]
    click.echo(
        table(
            [
                ("in-memory arrays", m["memory"], r["p90_step_ms"]["memory"], 1.0),
                (
                    "knowledge reader",
                    m["reader"],
                    r["p90_step_ms"]["reader"],
                    r["reader_vs_memory"],
                ),
                (
                    "synchronous bank reads",
                    m["sync"],
                    r["p90_step_ms"]["sync"],
                    r["sync_vs_memory"],
                ),
            ],
            ["knowledge from", "median step ms", "p90 step ms", "x in-memory"],
        )
    )
    f = r["fit"]
    click.echo(
        table(
            [
                (name, f[key]["plain_ms"], f[key]["wrapper_ms"], f[key]["wrapper_vs_plain"])
                for name, key in (("small CNN, 8x8 images", "cnn"), ("MLP 64-256-10", "mlp"))
            ],
            [
                f"fit step, batch {f['batch']}",
                "plain fit ms",
                "KnowledgeModel.fit ms",
                "x plain fit",
            ],
        )
    )
    click.echo(
        f"target reader <= 1.1x in-memory: "
        f"{'met' if r['target_reader_vs_memory_le_1.1'] else 'NOT MET'}"
    )
    click.echo(
        f"target KnowledgeModel.fit <= 1.15x plain fit (the CNN): "
        f"{'met' if r['target_wrapper_fit_vs_plain_fit_le_1.15'] else 'NOT MET'}"
    )


@bench.command("learning")
@click.option(
    "--datasets",
    default="iris,digits,moons,circles,classification",
    show_default=True,
    help="Comma-separated datasets of the suite.",
)
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--paradigm",
    default="pseudo_label_graph",
    show_default=True,
    help="The carls paradigm, run with its default parameters.",
)
@click.option(
    "--params",
    default="{}",
    show_default=True,
    help='The paradigm\'s parameters as JSON, e.g. \'{"thresholds": "adaptive"}\' (the '
    "defaults when not given).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bench_learning(
    ctx: click.Context, datasets: str, seeds: str, paradigm: str, params: str, as_json: bool
) -> None:
    """Semi-supervised accuracy of carls at its default settings against scikit-learn's
    LabelSpreading, SelfTraining and a supervised logistic regression, on one identical
    split per dataset and seed (iris, digits as plain vectors, two moons, two circles, a
    four-class make_classification; few labels each). Each carls job runs on the local
    stack with one worker making its knowledge, which has caught up with a job before the
    next starts; 15 to 20 seconds per job."""
    from carls.cli import settings_of
    from carls.demo import learning_bench

    seed_list = _seeds(seeds)
    from carls.benches.learning import NAMES

    names = [d.strip() for d in datasets.split(",") if d.strip()]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise click.BadParameter(
            f"unknown {', '.join(unknown)}; the suite has {', '.join(NAMES)}",
            param_hint="--datasets",
        )
    overrides = _paradigm_params(paradigm, params, {}, "--paradigm/--params")
    r = learning_bench(settings_of(ctx), progress, names, seed_list, paradigm, overrides)
    if as_json:
        emit_json(r)
        return
    rows = []
    for name, d in r["datasets"].items():
        best = d["baselines"][d["best_baseline"]]
        rows.append(
            (
                f"{name} ({d['labels']} labels)",
                f"{d['carls']['mean']:.4f} ± {d['carls']['std']:.4f}",
                f"{d['best_baseline']} {best['mean']:.4f} ± {best['std']:.4f}",
                f"{d['carls_minus_best']:+.4f}",
            )
        )
    click.echo(table(rows, ["dataset", f"carls {r['paradigm']}", "best baseline", "difference"]))
    click.echo(
        f"carls matches the best baseline on every set: "
        f"{'yes' if r['matches_best_on_every_set'] else 'no'}; beats it on "
        f"{r['beats_best_on']} of {len(r['datasets'])}"
    )


@bench.command("teacher")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--params",
    default="{}",
    show_default=True,
    help='The student\'s teacher-paradigm parameters as JSON, e.g. \'{"schedule": "pace"}\' '
    "(digits_student.yaml's when not given).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bench_teacher(ctx: click.Context, seeds: str, params: str, as_json: bool) -> None:
    """How much a finished teacher accelerates a student: the teacher
    (trainers/examples/digits_teacher.yaml, the MLP on every label) trains once and one
    worker makes its knowledge; then per seed the student (digits_student.yaml, the same
    MLP from random weights, 50 labels) trains alone and with the teacher from the same
    initial weights. Prints the steps each takes to reach 95 % of the final accuracy of
    the student alone, and both final accuracies. 3 to 4 minutes for three seeds."""
    from carls.cli import settings_of
    from carls.demo_teacher import run

    seed_list = _seeds(seeds)
    overrides = _paradigm_params("teacher", params, {"teacher": "t"}, "--params")
    r = run(settings_of(ctx), progress, seed_list, overrides)
    if as_json:
        emit_json(r)
        return
    rows = [
        (
            str(s["seed"]),
            f"{s['mark']:.4f}",
            str(s["alone_steps"]),
            str(s["guided_steps"]),
            f"{s['speedup']}x" if s["speedup"] else "-",
            f"{s['alone_final']:.4f}",
            f"{s['guided_final']:.4f}",
        )
        for s in r["seeds"]
    ]
    heads = ["seed", "95% mark", "steps alone", "steps guided", "speed-up", "final alone"]
    click.echo(table(rows, [*heads, "final guided"]))
    click.echo(f"teacher: {r['teacher']['test_accuracy']:.4f} test accuracy")


@bench.command("message")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--size",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Floats per message (both sides).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bench_message(ctx: click.Context, seeds: str, size: int, as_json: bool) -> None:
    """A learned message channel against a fixed message and no message: digits split in
    halves, A sees the top and B the bottom of each image. Per seed, through `carls
    submit` and two `carls trainer` processes that meet only in the bank: A and B with
    A's message learned from B's feedback (trainers/examples/digits_message_a.yaml and
    _b.yaml), with a fixed message of the same size (A's embedding through a random
    projection), and B alone. Prints B's test accuracy in each and the bandwidth. About
    a minute a seed."""
    from carls.cli import settings_of
    from carls.demo_message import run

    r = run(settings_of(ctx), progress, _seeds(seeds), size)
    if as_json:
        emit_json(r)
        return
    rows = [
        (
            str(s["seed"]),
            f"{s['learned']:.4f}",
            f"{s['fixed']:.4f}",
            f"{s['alone']:.4f}",
            f"{s['a_learned']:.4f}",
        )
        for s in r["seeds"]
    ]
    heads = ["seed", "B, learned message", "B, fixed message", "B alone", "A (learned)"]
    click.echo(table(rows, heads))
    click.echo(
        f"message: {size} floats, {r['bytes_per_example_each_way']} bytes per example per "
        f"publication each way; learned beats fixed on {r['learned_beats_fixed_on']} of "
        f"{len(r['seeds'])} seeds, beats B alone on {r['learned_beats_alone_on']}"
    )


@bench.command("hyperlearn")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--steps", type=click.IntRange(50), default=600, show_default=True, help="Steps per learner."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bench_hyperlearn(ctx: click.Context, seeds: str, steps: int, as_json: bool) -> None:
    """HyperLearn on the quadrant digits: four modalities (the 4x4 quadrants of each
    digit), one learner per modality in its own `carls job run` process, a hypergraph of
    kNN hyperedges within each quadrant and the quadrants of one image across; 100 labels.
    Per seed, with no item and with 20 % of items lacking a quadrant: the fused
    representation (logistic regression on the labeled items, test accuracy) against the
    best modality alone (an MLP on one quadrant), the best learner (its own test accuracy,
    or the same regression on its embedding) and one MLP on the concatenated features.
    Then learner q0's time and CPU time per step with 2, 3 and 4 learners running. About
    fifteen minutes."""
    from carls.cli import settings_of
    from carls.demo_hyper import run

    r = run(settings_of(ctx), progress, _seeds(seeds), steps)
    if as_json:
        emit_json(r)
        return
    rows = [
        (
            str(s["seed"]),
            f"{s['missing']:.0%}",
            f"{s['fused']:.4f}",
            f"{s['best_alone']:.4f}",
            f"{s['best_learner']:.4f}",
            f"{s['concatenated']:.4f}",
            " ".join(f"{s[f'q{q}_learner']:.3f}" for q in range(4)),
        )
        for s in r["runs"]
    ]
    heads = [
        "seed",
        "lacking",
        "fused",
        "best modality alone",
        "best learner",
        "concatenated",
        "learners q0-q3",
    ]
    click.echo(table(rows, heads))
    click.echo(
        f"of {len(r['runs'])} runs, fused beats the best modality alone on "
        f"{r['fused_beats_best_alone_on']}, the best learner on "
        f"{r['fused_beats_best_learner_on']}, the concatenated features on "
        f"{r['fused_beats_concatenated_on']}"
    )
    click.echo(
        table(
            [
                (
                    str(s["learners"]),
                    f"{s['q0_s_per_step'] * 1000:.1f}",
                    f"{s['q0_cpu_s_per_step'] * 1000:.1f}",
                )
                for s in r["scaling"]
            ],
            ["learners running", "q0 ms per step", "q0 CPU ms per step"],
        )
    )


def _seeds(seeds: str) -> tuple[int, ...]:
    """``--seeds``: comma-separated integers."""
    try:
        return tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise click.BadParameter(
            f"not comma-separated integers: {seeds!r}", param_hint="--seeds"
        ) from None


def _paradigm_params(
    paradigm: str, params: str, required: dict[str, Any], hint: str
) -> dict[str, Any]:
    """``--params``: a JSON object of ``paradigm``'s parameters, checked as a job spec
    would check them (with ``required`` filled in) before the stack is touched."""
    import json

    try:
        overrides = json.loads(params)
        if not isinstance(overrides, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise click.BadParameter(f"{params!r}: {exc}", param_hint="--params") from None
    from carls.trainers.errors import SpecError
    from carls.trainers.spec import load_spec

    try:
        load_spec(
            {
                "namespace": "check",
                "dataset": {"name": "iris"},
                "paradigm": {"name": paradigm, "params": {**required, **overrides}},
            }
        )
    except SpecError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None
    return overrides
