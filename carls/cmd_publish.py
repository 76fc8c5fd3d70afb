"""``carls checkpoint publish`` and ``carls examples publish``: drive makers by hand."""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from pathlib import Path

import click

from carls.output import emit_json


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@click.group()
def checkpoint() -> None:
    """Checkpoint manifests on the compacted checkpoints topic."""


@checkpoint.command("publish")
@click.argument("namespace")
@click.option(
    "--step",
    type=click.IntRange(min=0),
    required=True,
    help="Training step the artifact was saved at.",
)
@click.option(
    "--artifact",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The model file makers load (a .keras file).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["keras", "tf_saved_model"]),
    default="keras",
    show_default=True,
    help="The artifact's format (schemas.artifacts).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_context
def checkpoint_publish(
    ctx: click.Context, namespace: str, step: int, artifact: Path, fmt: str, as_json: bool
) -> None:
    """Copy ARTIFACT, saved at STEP of NAMESPACE, into the checkpoint store
    (CARLS_CHECKPOINT_STORE: the bank by default) and publish its manifest (uri, sha256,
    size)."""
    from carls.bank.blobs import CassandraBlobs
    from carls.bank.session import Connection
    from carls.cli import settings_of
    from carls.schemas import CheckpointManifest
    from carls.streams.producer import Publisher

    settings = settings_of(ctx)
    path = artifact.resolve()
    with Connection(settings.cassandra) as cassandra:
        store = settings.artifact_store(CassandraBlobs(cassandra).start())
        uri = store.publish_copy(path, namespace, step, fmt)
    manifest = CheckpointManifest(
        namespace=namespace,
        step=step,
        uri=uri,
        format=fmt,
        sha256=_sha256(path),
        size=path.stat().st_size,
        created_at=time.time(),
        producer="carls checkpoint publish",
    )
    with Publisher(settings.kafka, settings.topics) as pub:
        pub.manifest(manifest)
    if as_json:
        emit_json(dataclasses.asdict(manifest))
    else:
        click.echo(
            f"published {namespace} step {step}: {manifest.uri} "
            f"(sha256 {manifest.sha256[:12]}…, {manifest.size:,} bytes)"
        )


@click.group()
def examples() -> None:
    """Example-id batches on the examples topic."""


@examples.command("publish")
@click.argument("namespace")
@click.option(
    "--ids",
    "ids_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A text file with one example id per line.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=256,
    show_default=True,
    help="Ids per message.",
)
@click.option(
    "--priority",
    type=click.Choice(["demand", "refresh"]),
    default="demand",
    show_default=True,
    help="demand batches are processed ahead of refresh work.",
)
@click.option("--kind", "kinds", multiple=True, help="Only these kinds (default: all makers).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def examples_publish(
    ctx: click.Context,
    namespace: str,
    ids_file: Path,
    batch_size: int,
    priority: str,
    kinds: tuple[str, ...],
    as_json: bool,
) -> None:
    """Ask makers for knowledge of the ids in a file, now."""
    from carls.cli import settings_of
    from carls.schemas import ExampleBatch
    from carls.streams.producer import Publisher

    ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise click.BadParameter(f"{ids_file} holds no ids (one per line)", param_hint="--ids")
    settings = settings_of(ctx)
    campaign = f"cli-{uuid.uuid4().hex[:8]}"
    batches = [
        ExampleBatch(
            namespace=namespace,
            ids=ids[s : s + batch_size],
            priority=priority,
            campaign=campaign,
            kinds=list(kinds),
        )
        for s in range(0, len(ids), batch_size)
    ]  # validated before anything is sent
    with Publisher(settings.kafka, settings.topics) as pub:
        for batch in batches:
            pub.examples(batch)
        pub.flush()
    if as_json:
        emit_json(
            {
                "namespace": namespace,
                "ids": len(ids),
                "messages": len(batches),
                "campaign": campaign,
            }
        )
    else:
        click.echo(
            f"published {len(ids):,} ids of {namespace} in {len(batches)} messages "
            f"(campaign {campaign})"
        )
