"""The admin tool's logic: summaries of namespaces and knowledge, as plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.errors import DimensionError, ValueRejectedError
from carls.bank.protocol import KnowledgeBank, coverage
from carls.bank.types import F32, NO_LABEL, NamespaceSpec


def spec_dict(spec: NamespaceSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "buckets": spec.buckets,
        "kinds": dict(spec.kinds),
        "ttl_s": dict(spec.ttl_s),
        "created_at": spec.created_at,
    }


def stats(bank: KnowledgeBank, namespace: str) -> dict[str, Any]:
    """Examples registered (labeled or not) and, per kind, rows and their step range."""
    spec = bank.namespace(namespace)
    examples = labeled = 0
    for bucket in range(spec.buckets):
        ids = bank.example_ids(namespace, bucket)
        examples += len(ids)
        for start in range(0, len(ids), 5000):
            ex = bank.fetch_examples(namespace, ids[start : start + 5000])
            labeled += int((ex.labels != NO_LABEL).sum())
    kinds = {}
    for kind in sorted(spec.kinds):
        steps = np.concatenate([bank.scan(namespace, kind, b).steps for b in range(spec.buckets)])
        kinds[kind] = {
            "dim": spec.kinds[kind],
            "rows": int(steps.size),
            "min_step": int(steps.min()) if steps.size else None,
            "max_step": int(steps.max()) if steps.size else None,
        }
    return {"namespace": spec_dict(spec), "examples": examples, "labeled": labeled, "kinds": kinds}


def coverage_dicts(
    bank: KnowledgeBank, namespace: str, kinds: list[str] | None
) -> list[dict[str, Any]]:
    spec = bank.namespace(namespace)
    out = []
    for kind in kinds or sorted(spec.kinds):
        cov = coverage(bank, namespace, kind)
        out.append(
            {
                "kind": kind,
                "total": cov.total,
                "newest_step": cov.newest_step,
                "at_newest": cov.at_newest,
                "older": cov.older,
                "none": cov.none,
                "fraction_at_newest": round(cov.fraction_at_newest, 6),
                "steps": {str(k): v for k, v in sorted(cov.steps.items())},
            }
        )
    return out


def get_rows(
    bank: KnowledgeBank, namespace: str, kind: str, ids: list[str]
) -> list[dict[str, Any]]:
    read = bank.read(namespace, kind, ids, lineage=True)
    rows = []
    for i, id_ in enumerate(read.ids):
        if read.missing[i]:
            rows.append({"id": id_, "missing": True})
            continue
        row: dict[str, Any] = {
            "id": id_,
            "missing": False,
            "step": int(read.steps[i]),
            "maker": read.makers[i] if read.makers else "",
            "fingerprint": read.fingerprints[i] if read.fingerprints else "",
            "written_at": float(read.written_at[i]) if read.written_at is not None else None,
            "value": [float(v) for v in read.values[i]],
        }
        if read.classes is not None and read.confidence is not None:
            row["class"] = int(read.classes[i])
            row["confidence"] = float(read.confidence[i])
        if read.neighbour_ids is not None:
            row["neighbours"] = read.neighbour_ids[i]
            row["value"] = row["value"][: len(read.neighbour_ids[i])]
        rows.append(row)
    return rows


def load_vector(path: Path) -> F32:
    """A query vector from ``.npy``, a JSON list, or whitespace/comma separated floats."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            text = path.read_text().strip()
            if text.startswith("["):
                import json

                arr = np.asarray(json.loads(text), dtype=np.float64)
            else:
                arr = np.asarray([float(x) for x in text.replace(",", " ").split()])
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise ValueRejectedError(
            f"{path}: not a vector (.npy, JSON list or floats): {exc}"
        ) from exc
    arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise DimensionError(f"{path}: the vector is empty or holds NaN/Inf")
    return arr
