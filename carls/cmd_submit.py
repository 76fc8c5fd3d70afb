"""``carls submit JOB``: validate a job spec and its dataset, then put it on the jobs topic."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import click

from carls.output import emit_json, fail, progress

if TYPE_CHECKING:
    from carls.bank.types import NamespaceSpec


@click.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the spec and its dataset only; submit nothing (a dataset named by a "
    "bank:// URI is still read from the bank).",
)
@click.option(
    "--local-files",
    is_flag=True,
    help="Send the dataset's local path as it is (only trainers on this machine can run the "
    "job) instead of registering the file in the bank.",
)
@click.pass_context
def submit(ctx: click.Context, job: Path, as_json: bool, dry_run: bool, local_files: bool) -> None:
    """Submit the training job in JOB (a .yaml, .yml or .json job spec).

    The spec and its dataset are checked first, and so is the namespace when it already
    exists in the bank (its dimensions must match the job's). A dataset given by a local
    `path` is registered in the bank (`carls dataset register`) and the job names it by its
    bank:// URI, so a trainer on any machine can run it. Prints the job id.
    """
    from carls.bank.errors import BankUnavailableError, NamespaceError
    from carls.cli import settings_of
    from carls.schemas import TrainingJob
    from carls.trainers.datasets import load_dataset, validate_against_namespace
    from carls.trainers.spec import load_spec

    settings = settings_of(ctx)
    spec = load_spec(job)
    if spec.dataset.uri is not None:  # read, even with --dry-run: it is checked like a file
        from carls.bank.blobs import CassandraBlobs

        with CassandraBlobs(settings.cassandra) as blobs:
            data = load_dataset(
                spec.dataset, spec.train.seed, blobs, settings.artifact_max_mb << 20
            )
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
    augment.check(spec.train.augment, spec.train.cutout, data.input_shape, multimodal)
    user_model = spec.model.builder or spec.model.path
    embedding_dim = None
    if user_model:  # the built-in MLP fits any dataset; a user's model is built and checked
        from carls.trainers.runner import check_job

        shapes = check_job(spec, data)
        embedding_dim = shapes.embedding_dim
        progress(
            f"model {user_model}: embedding of {shapes.embedding_dim}, {shapes.classes} logits"
        )
    if not dry_run:
        from carls.bank.cassandra import CassandraBank

        existing: NamespaceSpec | None = None
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
            return
        validate_against_namespace(spec, data, existing, embedding_dim)
        progress(
            f"namespace {spec.namespace}: "
            f"{'exists, dimensions match' if existing else 'new; the trainer creates it'}"
        )
        if spec.dataset.path is not None and not local_files:
            from carls.bank.artifacts import register_data
            from carls.bank.blobs import CassandraBlobs

            with CassandraBlobs(settings.cassandra) as blobs:
                uri, _ = register_data(
                    blobs, spec.dataset.path, max_bytes=settings.artifact_max_mb << 20
                )
            progress(f"dataset {spec.dataset.path.name}: in the bank as {uri}")
            dataset = spec.dataset.model_copy(update={"path": None, "uri": uri})
            spec = spec.model_copy(update={"dataset": dataset})
    record = TrainingJob(
        job_id=f"{spec.namespace}-{uuid.uuid4().hex[:8]}",
        namespace=spec.namespace,
        spec=spec.to_dict(),
        submitted_at=time.time(),
    )
    topic = settings.topics.jobs
    if not dry_run:
        from carls.bank.jobs import CassandraJobStore
        from carls.streams.producer import Publisher

        store = CassandraJobStore(settings.cassandra).start()
        try:  # queued before it is on the topic, so a fast trainer never goes back in time
            store.put(
                record.job_id,
                {
                    "job_id": record.job_id,
                    "namespace": record.namespace,
                    "paradigm": spec.paradigm.name,
                    "state": "queued",
                    "history": [],
                    "submitted_at": record.submitted_at,
                },
            )
        finally:
            store.close()
        with Publisher(settings.kafka, settings.topics) as pub:
            pub.job(record)
    if as_json:
        emit_json(
            {
                "job_id": record.job_id,
                "namespace": record.namespace,
                "topic": topic,
                "dry_run": dry_run,
            }
        )
    elif dry_run:
        progress(f"valid: {spec.paradigm.name} on {data.name}; nothing submitted (--dry-run)")
    else:
        progress(f"submitted {spec.paradigm.name} on {data.name} to {topic}")
        click.echo(record.job_id)
