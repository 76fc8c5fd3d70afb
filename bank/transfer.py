"""Export a namespace to one self-describing file, and import it anywhere.

The file is a zip archive (stored, not compressed: float32 does not compress) of ``.npy``
arrays plus ``manifest.json``: the format name and version, the namespace's spec, row
counts, and the sha256 of every member. Import checks all of it before writing a row, and
removes what it wrote if anything fails half-way, so a bad file never leaves half a
namespace behind. Paths inside are relative, so the file moves between machines.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.errors import ExportFormatError, NamespaceError
from carls.bank.protocol import KnowledgeBank
from carls.bank.types import KnowledgeBatch, Lineage, NamespaceSpec, validate_name

FORMAT = "carls-bank-export"
VERSION = 1
SEP = "\x1f"
CHUNK = 5000
Progress = Callable[[str, int, int], None]


def _quiet(_what: str, _done: int, _total: int) -> None:
    return None


def export_namespace(
    bank: KnowledgeBank, namespace: str, path: Path, progress: Progress = _quiet
) -> dict[str, Any]:
    """Write ``namespace`` to ``path``; return the manifest. Written to a temporary file
    first and renamed, so ``path`` is either complete or absent."""
    spec = bank.namespace(namespace)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    ids: list[str] = []
    for bucket in range(spec.buckets):
        ids += bank.example_ids(namespace, bucket)
        progress("enumerate examples", bucket + 1, spec.buckets)
    feats, labels, mods = [], [], []
    for start in range(0, len(ids), CHUNK):
        ex = bank.fetch_examples(namespace, ids[start : start + CHUNK])
        feats.append(ex.features)
        labels.append(ex.labels)
        mods += ex.modalities or [""] * len(ex.ids)
        progress("examples", min(start + CHUNK, len(ids)), len(ids))
    feature_dim = int(feats[0].shape[1]) if feats else 0
    arrays["examples/ids"] = _strings(ids)
    arrays["examples/features"] = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
    arrays["examples/labels"] = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    arrays["examples/modalities"] = _strings(mods)
    kinds = sorted(spec.kinds)
    counts = {"examples": len(ids)}
    for k_index, kind in enumerate(kinds):
        parts = []
        for bucket in range(spec.buckets):
            parts.append(bank.scan(namespace, kind, bucket))
            progress(f"knowledge {kind}", bucket + 1, spec.buckets)
        prefix = f"knowledge/{k_index}/"
        rows = [p for p in parts if p.ids]
        counts[kind] = sum(len(p.ids) for p in rows)
        dim = spec.kinds[kind]
        arrays[prefix + "ids"] = _strings([i for p in rows for i in p.ids])
        arrays[prefix + "values"] = (
            np.concatenate([p.values for p in rows]) if rows else np.zeros((0, dim), np.float32)
        )
        arrays[prefix + "steps"] = (
            np.concatenate([p.steps for p in rows]) if rows else np.zeros(0, np.int64)
        )
        arrays[prefix + "makers"] = _strings([m for p in rows for m in p.makers or []])
        arrays[prefix + "fingerprints"] = _strings([f for p in rows for f in p.fingerprints or []])
        arrays[prefix + "written_at"] = (
            np.concatenate([p.written_at for p in rows if p.written_at is not None])
            if rows
            else np.zeros(0, np.float64)
        )
        if kind == "pseudo_label":
            arrays[prefix + "classes"] = (
                np.concatenate([p.classes for p in rows if p.classes is not None])
                if rows
                else np.zeros(0, np.int32)
            )
            arrays[prefix + "confidence"] = (
                np.concatenate([p.confidence for p in rows if p.confidence is not None])
                if rows
                else np.zeros(0, np.float32)
            )
        if kind == "neighbours":
            arrays[prefix + "neighbour_ids"] = _strings(
                [SEP.join(n) for p in rows for n in p.neighbour_ids or []]
            )
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": time.time(),
        "namespace": {
            "name": spec.name,
            "buckets": spec.buckets,
            "kinds": dict(spec.kinds),
            "ttl_s": dict(spec.ttl_s),
            "created_at": spec.created_at,
        },
        "feature_dim": feature_dim,
        "kinds": kinds,
        "counts": counts,
    }
    digests: dict[str, str] = {}
    tmp = path.with_name(path.name + ".partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                data = buf.getvalue()
                digests[name] = hashlib.sha256(data).hexdigest()
                zf.writestr(name + ".npy", data)
            manifest["sha256"] = digests
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind (disk full, ...)
        raise
    return manifest


def read_export(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """Open and fully verify an export file; ``ExportFormatError`` says what is wrong."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError) as exc:
        with open(path, "rb") as fh:
            looks_like_zip = fh.read(4) == b"PK\x03\x04"
        if looks_like_zip:  # a zip that lost its end (central directory): cut short
            raise ExportFormatError(
                f"{path}: corrupt or truncated export (unreadable zip archive: {exc})"
            ) from exc
        raise ExportFormatError(f"{path} is not a carls export (not a zip archive: {exc})") from exc
    with zf:
        try:
            manifest = json.loads(zf.read("manifest.json"))
        except KeyError as exc:
            raise ExportFormatError(f"{path} is not a carls export (no manifest.json)") from exc
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise ExportFormatError(f"{path}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ExportFormatError(
                f"{path} is not a carls export (format "
                f"{manifest.get('format') if isinstance(manifest, dict) else None!r})"
            )
        if manifest.get("version") != VERSION:
            raise ExportFormatError(
                f"{path}: export format version {manifest.get('version')!r}"
                f" is not supported (this build reads {VERSION})"
            )
        digests = manifest.get("sha256")
        if not isinstance(digests, dict) or not digests:
            raise ExportFormatError(f"{path}: manifest is incomplete (no member checksums)")
        arrays = {}
        for name, digest in digests.items():
            try:
                data = zf.read(name + ".npy")
            except (KeyError, zipfile.BadZipFile, OSError) as exc:
                raise ExportFormatError(
                    f"{path}: member {name} is missing or corrupt ({exc})"
                ) from exc
            if hashlib.sha256(data).hexdigest() != digest:
                raise ExportFormatError(f"{path}: member {name} fails its sha256 (corrupt)")
            try:
                arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise ExportFormatError(f"{path}: member {name} is not an array ({exc})") from exc
    _check_shapes(path, manifest, arrays)
    return manifest, arrays


def _check_shapes(
    path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray[Any, Any]]
) -> None:
    """Every member has the shape and kind of numbers its manifest implies (an export
    that disagrees with its own manifest is refused before anything is written)."""
    try:
        n = int(manifest["counts"]["examples"])
        width = int(manifest["feature_dim"])
        want: dict[str, tuple[tuple[int, ...], str]] = {
            "examples/ids": ((n,), "U"),
            "examples/features": ((n, width) if n else (0, width), "f"),
            "examples/labels": ((n,), "i"),
            "examples/modalities": ((n,), "U"),
        }
        for k_index, kind in enumerate(manifest["kinds"]):
            rows = int(manifest["counts"][kind])
            dim = int(manifest["namespace"]["kinds"][kind])
            pre = f"knowledge/{k_index}/"
            want[pre + "ids"] = ((rows,), "U")
            want[pre + "values"] = ((rows, dim), "f")
            want[pre + "steps"] = ((rows,), "i")
            want[pre + "makers"] = ((rows,), "U")
            want[pre + "fingerprints"] = ((rows,), "U")
            want[pre + "written_at"] = ((rows,), "f")
            if kind == "pseudo_label":
                want[pre + "classes"] = ((rows,), "i")
                want[pre + "confidence"] = ((rows,), "f")
            if kind == "neighbours":
                want[pre + "neighbour_ids"] = ((rows,), "U")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportFormatError(f"{path}: manifest is incomplete ({exc!r})") from exc
    missing = [m for m in want if m not in arrays]
    if missing:
        raise ExportFormatError(f"{path}: members missing: {', '.join(missing)}")
    numbers = {"f": "floating point", "i": "integer", "U": "text"}
    for name, (shape, kind) in want.items():
        arr = arrays[name]
        if tuple(arr.shape) != shape and not (shape[0] == 0 and arr.size == 0):
            raise ExportFormatError(
                f"{path}: {name} has shape {tuple(arr.shape)}, its manifest says {shape}"
            )
        if arr.dtype.kind != kind and not (kind == "f" and arr.dtype.kind == "i" and not arr.size):
            raise ExportFormatError(
                f"{path}: {name} holds {arr.dtype}, expected {numbers[kind]} values"
            )


def import_namespace(
    bank: KnowledgeBank, path: Path, new_name: str | None = None, progress: Progress = _quiet
) -> NamespaceSpec:
    """Create a namespace from an export file (under ``new_name`` if given)."""
    manifest, arrays = read_export(path)
    ns = manifest["namespace"]
    name = validate_name(new_name or ns["name"], "namespace")
    spec = NamespaceSpec(
        name=name,
        kinds={k: int(v) for k, v in ns["kinds"].items()},
        buckets=int(ns["buckets"]),
        ttl_s={k: int(v) for k, v in ns.get("ttl_s", {}).items()},
    )
    try:
        bank.namespace(name)
    except NamespaceError:
        pass
    else:
        raise NamespaceError(
            f"namespace {name} already exists; import under another name "
            "with --namespace NEW, or drop it first"
        )
    created = bank.create_namespace(spec)
    try:
        _write_all(bank, name, manifest, arrays, progress)
    except BaseException:
        bank.drop_namespace(name)  # nothing half-written
        raise
    return created


def _write_all(
    bank: KnowledgeBank,
    name: str,
    manifest: dict[str, Any],
    arrays: dict[str, np.ndarray[Any, Any]],
    progress: Progress,
) -> None:
    ids = arrays["examples/ids"].tolist()
    feats, labels = arrays["examples/features"], arrays["examples/labels"]
    mods = arrays["examples/modalities"].tolist()
    by_mod: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(mods):
        by_mod[m].append(i)
    done = 0
    for mod, rows in by_mod.items():
        for start in range(0, len(rows), CHUNK):
            sel = np.asarray(rows[start : start + CHUNK])
            bank.register_examples(
                name, [ids[i] for i in sel], feats[sel], labels[sel], modality=mod or None
            )
            done += len(sel)
            progress("examples", done, len(ids))
    for k_index, kind in enumerate(manifest["kinds"]):
        p = f"knowledge/{k_index}/"
        kids = arrays[p + "ids"].tolist()
        if not kids:
            continue
        steps, makers, fps = arrays[p + "steps"], arrays[p + "makers"], arrays[p + "fingerprints"]
        # Neighbour rows may hold fewer than k ids; a batch needs one width, so group by it.
        widths = (
            [j.count(SEP) + 1 if j else 0 for j in arrays[p + "neighbour_ids"].tolist()]
            if kind == "neighbours"
            else [0] * len(kids)
        )
        groups: dict[tuple[int, str, str, int], list[int]] = defaultdict(list)
        for i in range(len(kids)):
            groups[(int(steps[i]), str(makers[i]), str(fps[i]), widths[i])].append(i)
        done = 0
        for (step, maker, fp, _width), rows in groups.items():
            for start in range(0, len(rows), CHUNK):
                sel = np.asarray(rows[start : start + CHUNK])
                batch = KnowledgeBatch(
                    ids=[kids[i] for i in sel],
                    values=arrays[p + "values"][sel],
                    written_at=arrays[p + "written_at"][sel],
                )
                if kind == "pseudo_label":
                    batch.classes = arrays[p + "classes"][sel]
                    batch.confidence = arrays[p + "confidence"][sel]
                if kind == "neighbours":
                    joined = arrays[p + "neighbour_ids"][sel].tolist()
                    batch.neighbour_ids = [j.split(SEP) if j else [] for j in joined]
                    width = max(len(n) for n in batch.neighbour_ids)
                    batch.values = batch.values[:, :width]
                bank.write(name, kind, batch, Lineage(step, maker or "import", fp))
                done += len(sel)
                progress(f"knowledge {kind}", done, len(kids))


def _strings(values: list[str]) -> np.ndarray[Any, Any]:
    return np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")


def describe(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "namespace": manifest["namespace"]["name"],
        "counts": manifest["counts"],
        "format": f"{manifest['format']} v{manifest['version']}",
    }
