"""Contract: a namespace exported to a file and imported again is the same namespace, and
a bad file or a failed import never leaves a namespace behind."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bank_contract_support import CONTRACT_KINDS, MakeNamespace, batch_for, lineage, unique_name

from carls.bank import transfer
from carls.bank.errors import BankUnavailableError, ExportFormatError, NamespaceError
from carls.bank.protocol import KnowledgeBank, iter_example_ids, scan_all
from carls.bank.transfer import export_namespace, import_namespace
from carls.bank.types import NO_LABEL, KnowledgeBatch, Lineage

NewName = Callable[[], str]

IDS = [f"ex{i:03d}" for i in range(30)] + ["ünï côdé 7"]
ORPHANS = ["orphan_a", "orphan_b"]  # knowledge without a registered example
FEATURE_DIM = 6
T0 = 1_600_000_000.0  # explicit written_at, whole milliseconds (what Cassandra keeps)


@pytest.fixture
def new_name(bank: KnowledgeBank) -> Iterator[NewName]:
    """Unique names for import targets; whatever exists under them is dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        names.append(unique_name())
        return names[-1]

    yield make
    for name in names:
        with contextlib.suppress(NamespaceError):
            bank.drop_namespace(name)


def populate(bank: KnowledgeBank, name: str) -> None:
    """Examples in three modalities (labeled, unlabeled, mixed), and every kind written at
    step 10 by one maker, then partly overwritten at step 20 by another."""
    kinds = bank.namespace(name).kinds
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((len(IDS), FEATURE_DIM)).astype(np.float32)
    bank.register_examples(name, IDS[:10], feats[:10], list(range(10)))
    bank.register_examples(name, IDS[10:20], feats[10:20], modality="text")
    labels = [3, NO_LABEL] * 5 + [0]
    bank.register_examples(name, IDS[20:], feats[20:], labels, modality="image")
    old, new = IDS[:20], IDS[10:] + ORPHANS
    for seed, (kind, dim) in enumerate(sorted(kinds.items())):
        b = batch_for(kind, dim, old, seed=seed)
        b.written_at = T0 + np.arange(len(old)) * 1.5
        bank.write(name, kind, b, Lineage(10, "maker_one", "fp_ten"))
        if kind == "neighbours":  # fewer than k neighbours for some ids, at the same step
            half = len(new) // 2
            narrow = batch_for(kind, 2, new[:half], seed=100 + seed)
            bank.write(name, kind, narrow, lineage(20))
            bank.write(name, kind, batch_for(kind, dim, new[half:], 200 + seed), lineage(20))
        else:
            bank.write(name, kind, batch_for(kind, dim, new, seed=100 + seed), lineage(20))


def snapshot(bank: KnowledgeBank, name: str) -> dict[str, Any]:
    """Everything a namespace holds, as plain comparable data (float arrays as raw bytes)."""
    spec = bank.namespace(name)
    ids = sorted(i for _, part in iter_example_ids(bank, name) for i in part)
    out: dict[str, Any] = {
        "spec": (dict(spec.kinds), spec.buckets, dict(spec.ttl_s)),
        "example_ids": ids,
    }
    if ids:
        ex = bank.fetch_examples(name, ids)
        assert not ex.missing.any()
        out["features"] = ex.features.astype("<f4").tobytes()
        out["feature_dim"] = ex.features.shape[1]
        out["labels"] = ex.labels.tolist()
        out["modalities"] = list(ex.modalities or [])
    for kind in sorted(spec.kinds):
        rows = scan_all(bank, name, kind)
        order = np.argsort(np.asarray(rows.ids, dtype=str), kind="stable")
        pick = [int(i) for i in order]
        got: dict[str, Any] = {
            "ids": [rows.ids[i] for i in pick],
            "values": rows.values[pick].astype("<f4").tobytes(),
            "steps": rows.steps[pick].tolist(),
            "makers": [(rows.makers or [])[i] for i in pick],
            "fingerprints": [(rows.fingerprints or [])[i] for i in pick],
            "written_at": (rows.written_at[pick].tolist() if rows.written_at is not None else []),
        }
        if kind == "pseudo_label" and rows.ids:
            assert rows.classes is not None and rows.confidence is not None
            got["classes"] = rows.classes[pick].tolist()
            got["confidence"] = rows.confidence[pick].astype("<f4").tobytes()
        if kind == "neighbours" and rows.ids:
            got["neighbour_ids"] = [(rows.neighbour_ids or [])[i] for i in pick]
        out[kind] = got
    return out


def test_export_then_import_round_trips_exactly(
    bank: KnowledgeBank, make_namespace: MakeNamespace, new_name: NewName, tmp_path: Path
) -> None:
    src = make_namespace(kinds=CONTRACT_KINDS, buckets=8, ttl_s={"difficulty": 864000})
    populate(bank, src.name)
    before = snapshot(bank, src.name)
    # The source really holds what the round trip must keep (so equality is not vacuous).
    assert len(before["example_ids"]) == len(IDS)
    assert set(before["modalities"]) == {"", "text", "image"}
    assert NO_LABEL in before["labels"] and 9 in before["labels"]
    for kind in CONTRACT_KINDS:
        assert len(before[kind]["ids"]) == len(IDS) + len(ORPHANS)
        assert set(before[kind]["steps"]) == {10, 20}
        assert {"maker_one", "contract"} <= set(before[kind]["makers"])
        assert {"fp_ten", "fp20"} <= set(before[kind]["fingerprints"])
    assert {len(n) for n in before["neighbours"]["neighbour_ids"]} == {2, 4}
    assert T0 in before["embedding/text"]["written_at"]

    path = tmp_path / "src.carls"
    manifest = export_namespace(bank, src.name, path)
    assert manifest["counts"]["examples"] == len(IDS)
    assert manifest["counts"]["embedding/text"] == len(IDS) + len(ORPHANS)

    target = new_name()
    created = import_namespace(bank, path, target)
    assert created.name == target
    assert snapshot(bank, target) == before
    assert snapshot(bank, src.name) == before  # the export read, and changed nothing

    # Reads by id (not only scans) see the imported lineage and the narrow neighbour rows.
    ids = [*IDS[8:12], ORPHANS[0], "never_written"]
    for kind in ("neighbours", "pseudo_label", "embedding/text"):
        a = bank.read(src.name, kind, ids, lineage=True)
        b = bank.read(target, kind, ids, lineage=True)
        assert a.missing.tolist() == b.missing.tolist() == [False] * 5 + [True]
        assert a.values.tobytes() == b.values.tobytes()
        assert a.steps.tolist() == b.steps.tolist() == [10, 10, 20, 20, 20, -1]
        assert a.makers == b.makers and a.fingerprints == b.fingerprints
        assert a.written_at is not None and b.written_at is not None
        assert a.written_at.tolist() == b.written_at.tolist()
        assert a.neighbour_ids == b.neighbour_ids
        if kind == "pseudo_label":
            assert a.classes is not None and b.classes is not None
            assert a.classes.tolist() == b.classes.tolist()


def test_a_namespace_travels_in_parts_of_bounded_size(
    bank: KnowledgeBank,
    make_namespace: MakeNamespace,
    new_name: NewName,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Export and import hold one part at a time: with parts of at most 4 rows, every member
    of the file has at most 4 rows, buckets split into several parts, and the round trip is
    still exact."""
    monkeypatch.setattr(transfer, "CHUNK", 4)
    scan = getattr(bank, "_q_scan", None)
    if scan is not None:  # Cassandra: the driver's pages smaller than a part, so parts span pages
        monkeypatch.setattr(scan, "fetch_size", 3)
    src = make_namespace(kinds=CONTRACT_KINDS, buckets=2)
    populate(bank, src.name)
    before = snapshot(bank, src.name)
    path = tmp_path / "parts.carls"
    manifest = export_namespace(bank, src.name, path)
    assert max(manifest["parts"]["examples"]) <= 4
    assert len(manifest["parts"]["examples"]) >= len(IDS) // 4
    for kind in CONTRACT_KINDS:
        assert sum(manifest["parts"][kind]) == len(IDS) + len(ORPHANS)
        assert max(manifest["parts"][kind]) <= 4
    with zipfile.ZipFile(path) as zf:
        rows = [
            np.load(io.BytesIO(zf.read(n))).shape[0] for n in zf.namelist() if n.endswith(".npy")
        ]
    assert len(rows) > 100 and max(rows) <= 4
    target = new_name()
    import_namespace(bank, path, target)
    assert snapshot(bank, target) == before


def _as_version_1(path: Path, out: Path) -> Path:
    """The same export in the layout of format version 1: one member per field, no parts."""
    members = _members(path)
    manifest = json.loads(members.pop("manifest.json"))
    joined: dict[str, list[Any]] = {}
    for name in sorted(members, key=lambda n: [int(x) if x.isdigit() else x for x in n.split("/")]):
        *prefix, _part, field = name.removesuffix(".npy").split("/")
        joined.setdefault("/".join([*prefix, field]), []).append(np.load(io.BytesIO(members[name])))
    old: dict[str, bytes] = {}
    for name, arrays in joined.items():
        buf = io.BytesIO()
        np.save(buf, np.concatenate(arrays))
        old[name + ".npy"] = buf.getvalue()
    manifest["version"] = 1
    del manifest["parts"]
    manifest["sha256"] = {n[:-4]: hashlib.sha256(d).hexdigest() for n, d in old.items()}
    old["manifest.json"] = json.dumps(manifest).encode()
    return _rezip(path, out, old)


def test_an_export_of_format_version_1_still_imports(
    bank: KnowledgeBank, make_namespace: MakeNamespace, new_name: NewName, tmp_path: Path
) -> None:
    src = make_namespace(kinds=CONTRACT_KINDS, buckets=3)
    populate(bank, src.name)
    before = snapshot(bank, src.name)
    export_namespace(bank, src.name, tmp_path / "v2.carls")
    old = _as_version_1(tmp_path / "v2.carls", tmp_path / "v1.carls")
    with zipfile.ZipFile(old) as zf:
        assert "examples/features.npy" in zf.namelist()
    target = new_name()
    import_namespace(bank, old, target)
    assert snapshot(bank, target) == before


def test_export_of_an_empty_namespace_imports(
    bank: KnowledgeBank, make_namespace: MakeNamespace, new_name: NewName, tmp_path: Path
) -> None:
    src = make_namespace(kinds={"embedding": 4, "embedding/text": 2}, buckets=3)
    path = tmp_path / "empty.carls"
    manifest = export_namespace(bank, src.name, path)
    assert manifest["counts"] == {"examples": 0, "embedding": 0, "embedding/text": 0}
    target = new_name()
    import_namespace(bank, path, target)
    got = snapshot(bank, target)
    assert got == snapshot(bank, src.name)
    assert got["spec"] == ({"embedding": 4, "embedding/text": 2}, 3, {})
    assert got["example_ids"] == [] and got["embedding"]["ids"] == []
    # The imported namespace is a normal one: it takes examples and knowledge.
    bank.register_examples(target, ["a"], np.ones((1, 5), np.float32))
    bank.write(
        target, "embedding", KnowledgeBatch(["a"], np.ones((1, 4), np.float32)), Lineage(1, "m")
    )
    assert bank.read(target, "embedding", ["a"]).steps.tolist() == [1]


def test_import_onto_an_existing_name_raises_and_changes_nothing(
    bank: KnowledgeBank, make_namespace: MakeNamespace, tmp_path: Path
) -> None:
    src = make_namespace(kinds=CONTRACT_KINDS)
    populate(bank, src.name)
    path = tmp_path / "src.carls"
    export_namespace(bank, src.name, path)
    other = make_namespace(kinds={"embedding": 8}, buckets=2)
    bank.register_examples(other.name, ["x"], np.ones((1, 3), np.float32), [1])
    bank.write(other.name, "embedding", batch_for("embedding", 8, ["x"], 1), lineage(5))
    before_src, before_other = snapshot(bank, src.name), snapshot(bank, other.name)

    with pytest.raises(NamespaceError, match="already exists"):
        import_namespace(bank, path, other.name)
    with pytest.raises(NamespaceError, match="already exists"):
        import_namespace(bank, path)  # under its own name, which is still there
    assert snapshot(bank, other.name) == before_other
    assert snapshot(bank, src.name) == before_src


# Bad files -------------------------------------------------------------------------------


@pytest.fixture
def good_export(bank: KnowledgeBank, make_namespace: MakeNamespace, tmp_path: Path) -> Path:
    src = make_namespace(kinds={"embedding": 8, "embedding/text": 3, "neighbours": 4})
    populate(bank, src.name)
    path = tmp_path / "good.carls"
    export_namespace(bank, src.name, path)
    return path


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _rezip(path: Path, out: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out


def _with_manifest(path: Path, out: Path, **changes: Any) -> Path:
    members = _members(path)
    manifest = json.loads(members["manifest.json"])
    manifest.update(changes)
    members["manifest.json"] = json.dumps(manifest).encode()
    return _rezip(path, out, members)


def _flip_member_bytes(path: Path, out: Path) -> Path:
    """Flip bytes inside the stored data of examples/features.npy; the zip stays readable."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("examples/0/features.npy")
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    at = start + info.file_size - 5  # in the float data, past the .npy header
    data[at : at + 3] = bytes(b ^ 0xFF for b in data[at : at + 3])
    out.write_bytes(bytes(data))
    with zipfile.ZipFile(out) as zf:
        assert "manifest.json" in zf.namelist()
    return out


def _tamper_and_rezip(path: Path, out: Path) -> Path:
    """A member's data changed and the zip rebuilt (valid CRCs): only sha256 can tell."""
    members = _members(path)
    arr = np.load(io.BytesIO(members["examples/0/features.npy"]))
    arr[0, 0] += 1
    buf = io.BytesIO()
    np.save(buf, arr)
    members["examples/0/features.npy"] = buf.getvalue()
    return _rezip(path, out, members)


def _truncate(path: Path, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def _random_bytes(path: Path, out: Path) -> Path:
    out.write_bytes(os.urandom(4096))
    return out


def _zip_without_manifest(path: Path, out: Path) -> Path:
    members = _members(path)
    del members["manifest.json"]
    return _rezip(path, out, members)


def _plain_zip(path: Path, out: Path) -> Path:
    return _rezip(path, out, {"readme.txt": b"hello", "data.csv": b"a,b\n1,2\n"})


def _manifest_not_json(path: Path, out: Path) -> Path:
    members = _members(path)
    members["manifest.json"] = b"{not json"
    return _rezip(path, out, members)


def _missing_member(path: Path, out: Path) -> Path:
    members = _members(path)
    del members["knowledge/0/0/values.npy"]
    return _rezip(path, out, members)


def _consistent_member(path: Path, out: Path, name: str, change: Callable[[Any], Any]) -> Path:
    """Member ``name`` changed and its sha256 in the manifest updated to match: only the
    shape checks can tell."""
    members = _members(path)
    arr = change(np.load(io.BytesIO(members[name + ".npy"])))
    buf = io.BytesIO()
    np.save(buf, arr)
    members[name + ".npy"] = buf.getvalue()
    manifest = json.loads(members["manifest.json"])
    manifest["sha256"][name] = hashlib.sha256(buf.getvalue()).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    return _rezip(path, out, members)


BAD_FILES: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    (
        "features-wider-than-the-manifest",
        lambda p, o: _consistent_member(
            p, o, "examples/0/features", lambda a: np.concatenate([a, a], axis=1)
        ),
        r"examples/0/features has shape \(\d+, \d+\), its manifest says",
    ),
    (
        "steps-missing-a-row",
        lambda p, o: _consistent_member(p, o, "knowledge/0/0/steps", lambda a: a[:-1]),
        r"knowledge/0/0/steps has shape",
    ),
    (
        "labels-as-floats",
        lambda p, o: _consistent_member(p, o, "examples/0/labels", lambda a: a.astype(np.float32)),
        r"examples/0/labels holds float32, expected integer values",
    ),
    ("flipped-bytes", _flip_member_bytes, r"examples/0/features.*corrupt"),
    ("tampered-rezipped", _tamper_and_rezip, r"examples/0/features fails its sha256"),
    ("truncated", _truncate, r"truncated"),
    ("random-bytes", _random_bytes, r"not a carls export"),
    ("zip-without-manifest", _zip_without_manifest, r"not a carls export \(no manifest"),
    ("plain-zip", _plain_zip, r"not a carls export \(no manifest"),
    ("manifest-not-json", _manifest_not_json, r"unreadable manifest"),
    ("missing-member", _missing_member, r"knowledge/0/0/values is missing"),
    (
        "other-format",
        lambda p, o: _with_manifest(p, o, format="someone-elses-export"),
        r"not a carls export \(format 'someone-elses-export'\)",
    ),
    (
        "unknown-version",
        lambda p, o: _with_manifest(p, o, version=99),
        r"version 99 is not supported",
    ),
]


@pytest.mark.parametrize(
    ("make_bad", "message"), [pytest.param(f, m, id=i) for i, f, m in BAD_FILES]
)
def test_bad_file_raises_export_format_error_and_creates_nothing(
    bank: KnowledgeBank,
    good_export: Path,
    new_name: NewName,
    tmp_path: Path,
    make_bad: Callable[[Path, Path], Path],
    message: str,
) -> None:
    bad = make_bad(good_export, tmp_path / "bad.carls")
    names_before = {s.name for s in bank.namespaces()}
    target = new_name()
    with pytest.raises(ExportFormatError, match=message):
        import_namespace(bank, bad, target)
    with pytest.raises(NamespaceError):
        bank.namespace(target)
    assert {s.name for s in bank.namespaces()} - names_before == set()


def test_the_good_file_behind_the_bad_ones_imports(
    bank: KnowledgeBank, good_export: Path, new_name: NewName
) -> None:
    target = new_name()
    import_namespace(bank, good_export, target)
    assert bank.read(target, "embedding", IDS[:2]).steps.tolist() == [10, 10]


@pytest.mark.parametrize("fail_in", ["write", "register_examples"])
def test_a_failure_during_import_leaves_no_namespace(
    bank: KnowledgeBank,
    good_export: Path,
    new_name: NewName,
    monkeypatch: pytest.MonkeyPatch,
    fail_in: str,
) -> None:
    real = getattr(bank, fail_in)
    calls = []

    def fails_after_the_first_call(*args: Any, **kwargs: Any) -> int:
        calls.append(args[0])
        if len(calls) > 1:
            raise BankUnavailableError("injected: the backend went away")
        return int(real(*args, **kwargs))

    monkeypatch.setattr(bank, fail_in, fails_after_the_first_call)
    target = new_name()
    with pytest.raises(BankUnavailableError, match="injected"):
        import_namespace(bank, good_export, target)
    assert len(calls) == 2 and set(calls) == {target}  # one call landed before the failure
    monkeypatch.undo()
    with pytest.raises(NamespaceError):
        bank.namespace(target)
    assert target not in {s.name for s in bank.namespaces()}
    import_namespace(bank, good_export, target)  # the name is free again
    assert bank.read(target, "embedding", IDS[:1]).steps.tolist() == [10]


def test_progress_reaches_done_equals_total(
    bank: KnowledgeBank, make_namespace: MakeNamespace, new_name: NewName, tmp_path: Path
) -> None:
    src = make_namespace(kinds=CONTRACT_KINDS, buckets=4)
    populate(bank, src.name)
    for run in ("export", "import"):
        calls: list[tuple[str, int, int]] = []

        def record(what: str, done: int, total: int, calls: list[Any] = calls) -> None:
            calls.append((what, done, total))

        if run == "export":
            export_namespace(bank, src.name, tmp_path / "p.carls", progress=record)
        else:
            import_namespace(bank, tmp_path / "p.carls", new_name(), progress=record)
        assert calls, f"{run}: progress was never called"
        _, done, total = calls[-1]
        assert done == total > 0, calls[-1]
        last_of = {w: (d, t) for w, d, t in calls}
        assert all(d == t for d, t in last_of.values()), last_of
        assert "examples" in last_of and "knowledge embedding/text" in last_of
        assert all(0 <= d <= t for _, d, t in calls)
