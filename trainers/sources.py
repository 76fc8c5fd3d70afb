"""Checks of the knowledge a job reads from other namespaces (a teacher's), against the
bank: run by ``carls submit`` before a job is queued and by the runner before it trains,
so a missing teacher is an error naming the field, not a student that silently learns
alone."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from carls.bank.errors import NamespaceError
from carls.bank.protocol import NamespaceLookup
from carls.trainers.errors import SpecError
from carls.trainers.spec import JobSpec


def check_sources(
    spec: JobSpec,
    bank: NamespaceLookup,
    has_checkpoint: Callable[[str, float], bool] | None,
    widths: Mapping[str, int] | None = None,
) -> None:
    """Each ``Requirement`` of the job's paradigm: the namespace exists in ``bank``,
    declares the kinds, and (when ``has_checkpoint`` is given: whether a namespace
    created at a time has published a checkpoint since) has a checkpoint. Raises
    ``SpecError`` naming the paradigm's field. ``widths``: the widths this job reads kinds
    at (``prediction``: its classes), checked like the requirements' own."""
    for need in spec.paradigm.params.requires():
        field = ".".join(("paradigm", "params", *need.where))
        try:
            found = bank.namespace(need.namespace)
        except NamespaceError:
            if not need.exists:  # a peer that has not started yet: it checks this side
                continue
            raise SpecError(
                field,
                f"namespace {need.namespace} does not exist in the bank: run the teacher's "
                "job (train.teach: true) or publish a pre-trained model "
                "(carls.trainers.publish_teacher) first",
            ) from None
        missing = [k for k in need.kinds if k not in found.kinds]
        if missing:
            hint = (
                " (a teacher's namespace declares it when its job has train.teach: true)"
                if "instruction" in missing
                else ""
            )
            raise SpecError(
                field,
                f"namespace {need.namespace} does not declare {', '.join(missing)}; it has "
                f"{', '.join(sorted(found.kinds))}{hint}",
            )
        wanted = {k: w for k, w in (widths or {}).items() if k in need.kinds} | dict(need.dims)
        for kind, dim in wanted.items():
            if found.kinds[kind] != dim:
                raise SpecError(
                    field,
                    f"namespace {need.namespace} has {kind} of width {found.kinds[kind]}; "
                    f"this side's is {dim}: both sides must agree",
                )
        if (
            need.checkpoint
            and has_checkpoint is not None
            and not has_checkpoint(need.namespace, found.created_at)
        ):
            raise SpecError(
                field,
                f"namespace {need.namespace} has no checkpoint: its knowledge is made "
                "from one (has its job run?)",
            )
