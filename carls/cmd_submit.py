"""``carls submit JOB...``: validate job specs and their data, then put them on the jobs
topic; several specs make a job group whose members start together."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from carls.output import emit_json, fail, progress

if TYPE_CHECKING:
    from carls.settings import Settings
    from carls.trainers.datasets import Dataset
    from carls.trainers.spec import DatasetSpec, JobSpec


@dataclass
class _Job:
    path: Path
    spec: JobSpec
    data: Dataset
    embedding_dim: int | None


@click.command()
@click.argument("jobs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the specs and their datasets only; submit nothing (a dataset named by a "
    "bank:// URI is still read from the bank).",
)
@click.option(
    "--local-files",
    is_flag=True,
    help="Send a dataset's local path as it is (only trainers on this machine can run the "
    "job) instead of registering the file in the bank.",
)
@click.pass_context
def submit(
    ctx: click.Context, jobs: tuple[Path, ...], as_json: bool, dry_run: bool, local_files: bool
) -> None:
    """Submit the training job in each JOB (a .yaml, .yml or .json job spec).

    Each spec and its dataset are checked first, and so is each namespace that already
    exists in the bank (its dimensions must match the job's). A dataset given by a local
    `path` is registered in the bank (`carls dataset register`) and the job names it by its
    bank:// URI, so a trainer on any machine can run it.

    Two or more JOBs form a group: peers (codistillation partners, the learners of one
    multimodal task) that start together, on different trainers or concurrently in one.
    Their datasets and splits must agree (one dataset.split_seed lets their train.seed
    differ) and their namespaces differ. Prints the job ids.
    """
    from carls.cli import settings_of
    from carls.schemas import TrainingJob

    settings = settings_of(ctx)
    prepared = [_prepare(path, settings, dry_run) for path in jobs]
    if len(prepared) > 1:
        _check_group(prepared)
    if not dry_run:
        for job in prepared:
            _check_namespace(job, settings)
            if job.spec.dataset.path is not None and not local_files:
                job.spec = _registered(job.spec, settings)
    group = f"group-{uuid.uuid4().hex[:8]}" if len(prepared) > 1 else None
    records = [
        TrainingJob(
            job_id=f"{job.spec.namespace}-{uuid.uuid4().hex[:8]}",
            namespace=job.spec.namespace,
            spec=job.spec.to_dict(),
            submitted_at=time.time(),
            group=group,
            group_size=len(prepared),
        )
        for job in prepared
    ]
    topic = settings.topics.jobs
    if not dry_run:
        _queue(records, prepared, settings)
    if as_json:
        out: dict[str, Any] = {
            "job_id": records[0].job_id,
            "namespace": records[0].namespace,
            "topic": topic,
            "dry_run": dry_run,
        }
        if group is not None:
            out |= {
                "group": group,
                "jobs": [{"job_id": r.job_id, "namespace": r.namespace} for r in records],
            }
        emit_json(out)
        return
    for job, record in zip(prepared, records, strict=True):
        what = f"{job.spec.paradigm.name} on {job.data.name}"
        if dry_run:
            progress(f"valid: {what}; nothing submitted (--dry-run)")
        else:
            progress(f"submitted {what} to {topic}" + (f" (group {group})" if group else ""))
            click.echo(record.job_id)


def _prepare(path: Path, settings: Settings, dry_run: bool) -> _Job:
    """Load and check one spec, its dataset and its model."""
    from carls.trainers.datasets import load_dataset
    from carls.trainers.spec import load_spec

    spec = load_spec(path)
    if spec.dataset.uri is not None:  # read, even with --dry-run: it is checked like a file
        from carls.bank.blobs import CassandraBlobs

        limit = settings.artifact_max_mb << 20
        with CassandraBlobs(settings.cassandra) as blobs:
            data = load_dataset(spec.dataset, spec.train.seed, blobs, limit)
    else:
        data = load_dataset(spec.dataset, spec.train.seed)
    shape = (
        f"{data.feature_dim} features"
        if len(data.input_shape) == 1
        else f"{' x '.join(map(str, data.input_shape))} inputs"
    )
    progress(
        f"dataset {data.name}: {len(data.ids_train):,} train ({int(data.labeled.sum()):,} "
        f"labeled) + {len(data.ids_test):,} test examples, {shape}, {data.classes} classes"
    )
    from carls.trainers import augment
    from carls.trainers.paradigms import Multimodal

    multimodal = isinstance(spec.paradigm.params, Multimodal)
    augment.check(
        spec.train.augment, spec.train.cutout, data.image_shape, data.input_shape, multimodal
    )
    user_model = spec.model.builder or spec.model.path
    embedding_dim = None
    if user_model:  # the built-in MLP fits any dataset; a user's model is built and checked
        from carls.trainers.runner import check_job

        shapes = check_job(spec, data)
        embedding_dim = shapes.embedding_dim
        progress(
            f"model {user_model}: embedding of {shapes.embedding_dim}, {shapes.classes} logits"
        )
    return _Job(path, spec, data, embedding_dim)


def _split(spec: JobSpec) -> DatasetSpec:
    """The dataset with the seed that splits and labels it made explicit."""
    seed = spec.dataset.split_seed
    return spec.dataset.model_copy(update={"split_seed": spec.train.seed if seed is None else seed})


def _check_group(jobs: list[_Job]) -> None:
    """Peers must train on one task (one dataset, one split), each in its own namespace,
    and read from each other what the other declares (a message of the size it sends)."""
    from carls.trainers.errors import SpecError

    first = jobs[0]
    names = [j.spec.namespace for j in jobs]
    if len(set(names)) != len(names):
        raise click.UsageError(
            f"a group's jobs need namespaces of their own; {', '.join(names)} repeat one"
        )
    members = {j.spec.namespace: j for j in jobs}
    for job in jobs:
        for need in job.spec.paradigm.params.requires():
            partner = members.get(need.namespace)
            if partner is None:
                continue
            declared = partner.spec.kinds(partner.data.classes, partner.embedding_dim)
            for kind in need.kinds:
                want = need.dims.get(kind)
                if kind not in declared or (want is not None and declared[kind] != want):
                    has = f"{kind} of width {declared[kind]}" if kind in declared else f"no {kind}"
                    raise SpecError(
                        ".".join(("paradigm", "params", *need.where)),
                        f"{job.path}: its peer {need.namespace} ({partner.path}) has {has}; "
                        f"this side needs {kind}"
                        + (f" of width {want}: both sides must agree" if want else ""),
                    )
    for job in jobs[1:]:
        if job.spec.dataset != first.spec.dataset:
            raise click.UsageError(
                f"{job.path} and {first.path} disagree on dataset: the jobs of a group "
                "train on one task (submit them one by one otherwise)"
            )
        if _split(job.spec) != _split(first.spec):
            raise click.UsageError(
                f"{job.path} and {first.path} would split the dataset differently "
                f"(train.seed {job.spec.train.seed} and {first.spec.train.seed}): the jobs "
                "of a group train on one split; give both the same dataset.split_seed to "
                "let their train.seed differ"
            )


def _check_namespace(job: _Job, settings: Settings) -> None:
    from carls.bank.cassandra import CassandraBank
    from carls.bank.errors import BankUnavailableError, NamespaceError
    from carls.trainers.datasets import validate_against_namespace

    spec = job.spec
    existing = None
    try:
        with CassandraBank(settings.cassandra) as bank:
            existing = bank.namespace(spec.namespace)
    except NamespaceError:
        pass  # a new namespace: the trainer creates it
    except BankUnavailableError as exc:
        fail(
            f"cannot check namespace {spec.namespace} in the bank: {exc}",
            hint="start the stack (`carls infra up`), or validate only with --dry-run",
        )
    validate_against_namespace(spec, job.data, existing, job.embedding_dim)
    progress(
        f"namespace {spec.namespace}: "
        f"{'exists, dimensions match' if existing else 'new; the trainer creates it'}"
    )
    if spec.paradigm.params.requires():
        _check_sources(spec, settings, job.data.classes)


def _check_sources(spec: JobSpec, settings: Settings, classes: int) -> None:
    """The namespaces the paradigm reads besides its own (a teacher's) exist, declare
    the kinds it reads and have a checkpoint."""
    from carls.bank.cassandra import CassandraBank
    from carls.streams.manifests import latest_manifest
    from carls.trainers.sources import check_sources

    def has_checkpoint(namespace: str, since: float) -> bool:
        found = latest_manifest(settings.kafka, settings.topics.checkpoints, namespace, since)
        return found is not None

    with CassandraBank(settings.cassandra) as bank:
        check_sources(spec, bank, has_checkpoint, {"prediction": classes})
    for need in spec.paradigm.params.requires():
        if need.exists:
            checkpoint = " and a checkpoint" if need.checkpoint else ""
            progress(f"{need.namespace}: has {', '.join(need.kinds)}{checkpoint}")


def _registered(spec: JobSpec, settings: Settings) -> JobSpec:
    """``spec`` with its local dataset file registered in the bank and named by URI."""
    from carls.bank.artifacts import register_data
    from carls.bank.blobs import CassandraBlobs

    assert spec.dataset.path is not None
    with CassandraBlobs(settings.cassandra) as blobs:
        uri, _ = register_data(blobs, spec.dataset.path, max_bytes=settings.artifact_max_mb << 20)
    progress(f"dataset {spec.dataset.path.name}: in the bank as {uri}")
    dataset = spec.dataset.model_copy(update={"path": None, "uri": uri})
    return spec.model_copy(update={"dataset": dataset})


def _queue(records: list[Any], jobs: list[_Job], settings: Settings) -> None:
    """Record each job queued, then put them on the topic (queued before it is on the
    topic, so a fast trainer never goes back in time)."""
    from carls.bank.jobs import CassandraJobStore
    from carls.streams.producer import Publisher

    store = CassandraJobStore(settings.cassandra).start()
    try:
        for record, job in zip(records, jobs, strict=True):
            store.put(
                record.job_id,
                {
                    "job_id": record.job_id,
                    "namespace": record.namespace,
                    "paradigm": job.spec.paradigm.name,
                    "state": "queued",
                    "history": [],
                    "submitted_at": record.submitted_at,
                    "group": record.group,
                },
            )
    finally:
        store.close()
    with Publisher(settings.kafka, settings.topics) as pub:
        for record in records:
            pub.job(record)
