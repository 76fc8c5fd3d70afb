"""Export a namespace to one self-describing file, and import it anywhere, in bounded memory.

The file is a zip archive (stored, not compressed: float32 does not compress) of ``.npy``
arrays plus ``manifest.json``: the format name and version, the namespace's spec, the rows
of every part, and the sha256 of every member. Rows travel in parts of at most ``CHUNK``
(examples per bucket, knowledge per kind and bucket), so export and import hold one part at
a time, never the namespace: a million ids move in the memory of a few thousand.

Import reads the file twice: first it checks every member against its checksum and its
``.npy`` header against the shape and kind of numbers the manifest implies, without loading
the data; only a file that passes is written, part by part, and anything that fails
half-way (the bank going away) removes what was written, so a bad file never leaves half a
namespace behind. Paths inside are relative, so the file moves between machines. Files of
version 1 (one part per member, written before parts existed) still import.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from carls.bank.errors import ExportFormatError, NamespaceError
from carls.bank.protocol import KnowledgeBank
from carls.bank.types import (
    KnowledgeBatch,
    KnowledgeRead,
    Lineage,
    NamespaceSpec,
    validate_name,
)

FORMAT = "carls-bank-export"
VERSION = 2
READS = (1, 2)
SEP = "\x1f"
CHUNK = 5000
Progress = Callable[[str, int, int], None]
Array = np.ndarray[Any, Any]
_BLOCK = 1 << 20

# Fields of a part and the kind of numbers each holds (dtype.kind).
EXAMPLE_FIELDS = {"ids": "U", "features": "f", "labels": "i", "modalities": "U"}
KNOWLEDGE_FIELDS = {
    "ids": "U",
    "values": "f",
    "steps": "i",
    "makers": "U",
    "fingerprints": "U",
    "written_at": "f",
}
KIND_FIELDS = {
    "pseudo_label": {"classes": "i", "confidence": "f"},
    "neighbours": {"neighbour_ids": "U"},
}


def _quiet(_what: str, _done: int, _total: int) -> None:
    return None


def _member(version: int, prefix: str, part: int, field: str) -> str:
    """Version 2 names ``examples/3/features``; version 1 had one part, ``examples/features``."""
    return f"{prefix}/{field}" if version == 1 else f"{prefix}/{part}/{field}"


class _Writer:
    """Members appended to an open zip, each hashed as it is written."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self.zf = zf
        self.digests: dict[str, str] = {}

    def put(self, name: str, arr: Array) -> None:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        data = buf.getvalue()
        self.digests[name] = hashlib.sha256(data).hexdigest()
        self.zf.writestr(name + ".npy", data)


def export_namespace(
    bank: KnowledgeBank, namespace: str, path: Path, progress: Progress = _quiet
) -> dict[str, Any]:
    """Write ``namespace`` to ``path``; return the manifest. Written to a temporary file
    first and renamed, so ``path`` is either complete or absent."""
    spec = bank.namespace(namespace)
    kinds = sorted(spec.kinds)
    parts: dict[str, list[int]] = {"examples": [], **{k: [] for k in kinds}}
    feature_dim: int | None = None
    tmp = path.with_name(path.name + ".partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            out = _Writer(zf)
            for bucket in range(spec.buckets):
                ids = bank.example_ids(namespace, bucket)
                for start in range(0, len(ids), CHUNK):
                    ex = bank.fetch_examples(namespace, ids[start : start + CHUNK])
                    width = int(ex.features.shape[1])
                    if feature_dim is None:
                        feature_dim = width
                    elif width != feature_dim:
                        raise ValueError(
                            f"namespace {namespace}: examples of {width} and of {feature_dim} "
                            "features; an export needs one width"
                        )
                    p = len(parts["examples"])
                    out.put(f"examples/{p}/ids", _strings(ex.ids))
                    out.put(f"examples/{p}/features", ex.features)
                    out.put(f"examples/{p}/labels", ex.labels)
                    out.put(
                        f"examples/{p}/modalities", _strings(ex.modalities or [""] * len(ex.ids))
                    )
                    parts["examples"].append(len(ex.ids))
                progress("examples", bucket + 1, spec.buckets)
            for k_index, kind in enumerate(kinds):
                for bucket in range(spec.buckets):
                    for rows in bank.scan_parts(namespace, kind, bucket, CHUNK):
                        _put_knowledge(out, f"knowledge/{k_index}/{len(parts[kind])}/", rows)
                        parts[kind].append(len(rows.ids))
                    progress(f"knowledge {kind}", bucket + 1, spec.buckets)
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
                "feature_dim": feature_dim or 0,
                "kinds": kinds,
                "counts": {what: sum(rows) for what, rows in parts.items()},
                "parts": parts,
                "sha256": out.digests,
            }
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind (disk full, ...)
        raise
    return manifest


def _put_knowledge(out: _Writer, pre: str, rows: KnowledgeRead) -> None:
    n = len(rows.ids)
    out.put(pre + "ids", _strings(rows.ids))
    out.put(pre + "values", rows.values)
    out.put(pre + "steps", rows.steps)
    out.put(pre + "makers", _strings(rows.makers or [""] * n))
    out.put(pre + "fingerprints", _strings(rows.fingerprints or [""] * n))
    written = rows.written_at if rows.written_at is not None else np.zeros(n)
    out.put(pre + "written_at", written.astype(np.float64))
    if rows.kind == "pseudo_label":
        assert rows.classes is not None and rows.confidence is not None
        out.put(pre + "classes", rows.classes)
        out.put(pre + "confidence", rows.confidence)
    if rows.kind == "neighbours":
        out.put(pre + "neighbour_ids", _strings([SEP.join(x) for x in rows.neighbour_ids or []]))


class ExportFile:
    """An export file opened and checked: ``manifest``, and ``part(prefix, p)`` to load one
    part's arrays. ``ExportFormatError`` from the constructor says what is wrong."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zf = _open_zip(path)
        try:
            self.manifest = self._read_manifest()
            self.version = int(self.manifest["version"])
            self.expected = _expected_members(path, self.manifest)
            self._verify()
        except BaseException:
            self.zf.close()
            raise

    def __enter__(self) -> ExportFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zf.close()

    def parts(self, what: str) -> list[int]:
        return [int(n) for n in self.manifest["parts"][what]]

    def part(self, prefix: str, p: int, fields: Iterable[str]) -> dict[str, Array]:
        out = {}
        for field in fields:
            name = _member(self.version, prefix, p, field)
            with self.zf.open(name + ".npy") as fh:
                out[field] = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        return out

    def _read_manifest(self) -> dict[str, Any]:
        path = self.path
        try:
            manifest = json.loads(self.zf.read("manifest.json"))
        except KeyError as exc:
            raise ExportFormatError(f"{path} is not a carls export (no manifest.json)") from exc
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise ExportFormatError(f"{path}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ExportFormatError(
                f"{path} is not a carls export (format "
                f"{manifest.get('format') if isinstance(manifest, dict) else None!r})"
            )
        if manifest.get("version") not in READS:
            raise ExportFormatError(
                f"{path}: export format version {manifest.get('version')!r}"
                f" is not supported (this build reads {', '.join(map(str, READS))})"
            )
        digests = manifest.get("sha256")
        if not isinstance(digests, dict):
            raise ExportFormatError(f"{path}: manifest is incomplete (no member checksums)")
        if manifest["version"] == 1:  # one part per member
            counts = manifest.get("counts")
            if not isinstance(counts, dict):
                raise ExportFormatError(f"{path}: manifest is incomplete (no row counts)")
            manifest["parts"] = {what: [n] for what, n in counts.items()}
        return manifest

    def _verify(self) -> None:
        """Every expected member is present, matches its sha256 (streamed, not loaded) and
        has the shape and kind of numbers its manifest implies (read from its header)."""
        path, digests = self.path, self.manifest["sha256"]
        missing = [m for m in self.expected if m not in digests]
        if missing:
            raise ExportFormatError(f"{path}: members missing: {', '.join(missing[:5])}")
        numbers = {"f": "floating point", "i": "integer", "U": "text"}
        for name, (shape, kind) in self.expected.items():
            try:
                with self.zf.open(name + ".npy") as fh:
                    h = hashlib.sha256()
                    head = fh.read(_BLOCK)
                    h.update(head)
                    while block := fh.read(_BLOCK):
                        h.update(block)
            except (KeyError, zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ExportFormatError(
                    f"{path}: member {name} is missing or corrupt ({exc})"
                ) from exc
            if h.hexdigest() != digests[name]:
                raise ExportFormatError(f"{path}: member {name} fails its sha256 (corrupt)")
            try:
                got_shape, dtype = _npy_header(head)
            except (ValueError, OSError, EOFError) as exc:
                raise ExportFormatError(f"{path}: member {name} is not an array ({exc})") from exc
            if got_shape != shape and not (shape[0] == 0 and 0 in got_shape):
                raise ExportFormatError(
                    f"{path}: {name} has shape {got_shape}, its manifest says {shape}"
                )
            if dtype.kind != kind and not (kind == "f" and dtype.kind == "i" and not shape[0]):
                raise ExportFormatError(
                    f"{path}: {name} holds {dtype}, expected {numbers[kind]} values"
                )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
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


def _npy_header(head: bytes) -> tuple[tuple[int, ...], np.dtype[Any]]:
    fh = io.BytesIO(head)
    major, _minor = np.lib.format.read_magic(fh)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, _fortran, dtype = read(fh)
    return tuple(int(s) for s in shape), dtype


def _expected_members(
    path: Path, manifest: dict[str, Any]
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every member the manifest implies, with its shape and kind of numbers."""
    version = int(manifest["version"])
    try:
        width = int(manifest["feature_dim"])
        parts = manifest["parts"]
        want: dict[str, tuple[tuple[int, ...], str]] = {}
        for p, rows in enumerate(parts["examples"]):
            n = int(rows)
            for field, kind in EXAMPLE_FIELDS.items():
                shape = ((n, width) if n else (0, width)) if field == "features" else (n,)
                want[_member(version, "examples", p, field)] = (shape, kind)
        if sum(int(r) for r in parts["examples"]) != int(manifest["counts"]["examples"]):
            raise ValueError("the parts' examples do not add up to the count")
        for k_index, kind_name in enumerate(manifest["kinds"]):
            dim = int(manifest["namespace"]["kinds"][kind_name])
            fields = {**KNOWLEDGE_FIELDS, **KIND_FIELDS.get(kind_name, {})}
            for p, rows in enumerate(parts[kind_name]):
                n = int(rows)
                for field, kind in fields.items():
                    shape = (n, dim) if field == "values" else (n,)
                    want[_member(version, f"knowledge/{k_index}", p, field)] = (shape, kind)
            if sum(int(r) for r in parts[kind_name]) != int(manifest["counts"][kind_name]):
                raise ValueError(f"the parts' {kind_name} rows do not add up to the count")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportFormatError(f"{path}: manifest is incomplete ({exc!r})") from exc
    return want


def read_export(path: Path) -> tuple[dict[str, Any], dict[str, Array]]:
    """Open and fully verify an export file and load every member (small files, tests)."""
    with ExportFile(path) as f:
        arrays = {}
        for name in f.expected:
            arrays[name] = np.load(io.BytesIO(f.zf.read(name + ".npy")), allow_pickle=False)
        return f.manifest, arrays


def import_namespace(
    bank: KnowledgeBank, path: Path, new_name: str | None = None, progress: Progress = _quiet
) -> NamespaceSpec:
    """Create a namespace from an export file (under ``new_name`` if given): the whole
    file is checked first, then written part by part."""
    with ExportFile(path) as export:
        ns = export.manifest["namespace"]
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
            _write_all(bank, name, export, progress)
        except BaseException:
            bank.drop_namespace(name)  # nothing half-written
            raise
    return created


def _write_all(bank: KnowledgeBank, name: str, export: ExportFile, progress: Progress) -> None:
    sizes = export.parts("examples")
    total, done = sum(sizes), 0
    for p, rows in enumerate(sizes):
        if not rows:
            continue
        a = export.part("examples", p, EXAMPLE_FIELDS)
        ids, mods = a["ids"].tolist(), a["modalities"].tolist()
        by_mod: dict[str, list[int]] = defaultdict(list)
        for i, m in enumerate(mods):
            by_mod[m].append(i)
        for mod, rows_of in by_mod.items():
            sel = np.asarray(rows_of)
            bank.register_examples(
                name,
                [ids[i] for i in rows_of],
                a["features"][sel],
                a["labels"][sel],
                modality=mod or None,
            )
        done += rows
        progress("examples", done, total)
    for k_index, kind in enumerate(export.manifest["kinds"]):
        sizes = export.parts(kind)
        total, done = sum(sizes), 0
        fields = {**KNOWLEDGE_FIELDS, **KIND_FIELDS.get(kind, {})}
        for p, rows in enumerate(sizes):
            if not rows:
                continue
            a = export.part(f"knowledge/{k_index}", p, fields)
            _write_part(bank, name, kind, a)
            done += rows
            progress(f"knowledge {kind}", done, total)


def _write_part(bank: KnowledgeBank, name: str, kind: str, a: dict[str, Array]) -> None:
    kids = a["ids"].tolist()
    steps, makers, fps = a["steps"], a["makers"], a["fingerprints"]
    # Neighbour rows may hold fewer than k ids; a batch needs one width, so group by it.
    widths = (
        [j.count(SEP) + 1 if j else 0 for j in a["neighbour_ids"].tolist()]
        if kind == "neighbours"
        else [0] * len(kids)
    )
    groups: dict[tuple[int, str, str, int], list[int]] = defaultdict(list)
    for i in range(len(kids)):
        groups[(int(steps[i]), str(makers[i]), str(fps[i]), widths[i])].append(i)
    for (step, maker, fp, _width), rows in groups.items():
        sel = np.asarray(rows)
        batch = KnowledgeBatch(
            ids=[kids[i] for i in sel], values=a["values"][sel], written_at=a["written_at"][sel]
        )
        if kind == "pseudo_label":
            batch.classes = a["classes"][sel]
            batch.confidence = a["confidence"][sel]
        if kind == "neighbours":
            joined = a["neighbour_ids"][sel].tolist()
            batch.neighbour_ids = [j.split(SEP) if j else [] for j in joined]
            width = max(len(n) for n in batch.neighbour_ids)
            batch.values = batch.values[:, :width]
        bank.write(name, kind, batch, Lineage(step, maker or "import", fp))


def _strings(values: list[str]) -> np.ndarray[Any, Any]:
    return np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")


def describe(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "namespace": manifest["namespace"]["name"],
        "counts": manifest["counts"],
        "format": f"{manifest['format']} v{manifest['version']}",
    }
