"""`carls bank` as users drive it, against the real Cassandra.

Data is written with the Python API (as makers and trainers do); every admin command is
then run as a subprocess, in its human form and with --json."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from carls.bank.ann import VectorIndex
from carls.bank.blobs import CassandraBlobs
from carls.bank.cassandra import CassandraBank
from carls.bank.errors import NamespaceError
from carls.bank.indexes import index_name
from carls.bank.types import (
    DEFAULT_BUCKETS,
    NO_LABEL,
    KnowledgeBatch,
    Lineage,
    NamespaceSpec,
    default_kinds,
)
from carls.settings import Settings
from tests.acceptance.conftest import CarlsRun, json_of

pytestmark = pytest.mark.acceptance

IDS = [f"id{i:02d}" for i in range(12)]
NEW = IDS[:8]  # rewritten at step 200; IDS[8:] keep their step-100 embedding
LABELED = 5
KINDS = {**default_kinds(8, classes=4, k=3), "embedding/text": 5}


def _vectors(seed: int, n: int, dim: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


class World:
    """The bank (Python API), and what was written to it, to check the CLI against."""

    def __init__(self, bank: CassandraBank) -> None:
        self.bank = bank
        self.names: list[str] = []
        self.emb100 = _vectors(100, len(IDS), 8)
        self.emb200 = _vectors(200, len(NEW), 8)
        self.text100 = _vectors(101, 6, 5)

    def populate(self, name: str) -> str:
        """12 examples (5 labeled); embedding at step 100 for all, then step 200 for 8;
        embedding/text at step 100 for 6; pseudo_label and neighbours at step 200."""
        b = self.bank
        b.create_namespace(NamespaceSpec(name, KINDS, buckets=4))
        self.names.append(name)
        labels = [i % 4 for i in range(LABELED)] + [NO_LABEL] * (len(IDS) - LABELED)
        b.register_examples(name, IDS, _vectors(1, len(IDS), 6), labels)
        b.write(name, "embedding", KnowledgeBatch(IDS, self.emb100), Lineage(100, "maker_a", "f1"))
        b.write(name, "embedding", KnowledgeBatch(NEW, self.emb200), Lineage(200, "maker_b", "f2"))
        b.write(
            name, "embedding/text", KnowledgeBatch(IDS[:6], self.text100), Lineage(100, "text_m")
        )
        probs = np.full((4, 4), 0.1, np.float32) + np.eye(4, dtype=np.float32) * 0.6
        b.write(
            name,
            "pseudo_label",
            KnowledgeBatch(IDS[:4], probs, np.arange(4, dtype=np.int32), probs.max(axis=1)),
            Lineage(200, "labeler"),
        )
        b.write(
            name,
            "neighbours",
            KnowledgeBatch(
                IDS[:2],
                np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]], np.float32),
                neighbour_ids=[["id05", "id06", "id07"], ["id09", "id10", "id11"]],
            ),
            Lineage(200, "knn"),
        )
        return name

    def track(self, name: str) -> str:
        self.names.append(name)
        return name

    def exists(self, name: str) -> bool:
        try:
            self.bank.namespace(name)
        except NamespaceError:
            return False
        return True


@pytest.fixture
def world(stack: Settings) -> Iterator[World]:
    bank = CassandraBank(stack.cassandra).start()
    w = World(bank)
    try:
        yield w
    finally:
        for name in w.names:
            with contextlib.suppress(NamespaceError):
                bank.drop_namespace(name)
        bank.close()


def _fails(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command exited 1 with a one-line `error:` naming every needle, no traceback."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in {proc.stderr!r}"
    return proc.stderr


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _line_of(text: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with ``first_cell``."""
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{text}")


def _cosine_top(mat: np.ndarray[Any, Any], ids: list[str], q: np.ndarray[Any, Any], k: int) -> Any:
    m, v = mat.astype(np.float64), q.astype(np.float64)
    scores = m @ v / (np.linalg.norm(m, axis=1) * np.linalg.norm(v))
    order = np.argsort(-scores)[:k]
    return [ids[i] for i in order], scores[order]


# ---------------------------------------------------------------------------------------


def test_namespaces_stats_and_coverage(world: World, unique: str, carls: CarlsRun) -> None:
    ns = world.populate(unique)

    listed = {s["name"]: s for s in json_of(carls("bank", "namespaces", "--json"))}
    assert listed[ns]["kinds"] == KINDS and listed[ns]["buckets"] == 4
    assert _line_of(_ok(carls("bank", "namespaces")), ns)[1:3] == ["4", "difficulty=1,"]

    st = json_of(carls("bank", "stats", ns, "--json"))
    assert (st["examples"], st["labeled"]) == (len(IDS), LABELED)
    rows = {k: (v["rows"], v["min_step"], v["max_step"]) for k, v in st["kinds"].items()}
    assert rows == {
        "embedding": (12, 100, 200),
        "embedding/text": (6, 100, 100),
        "pseudo_label": (4, 200, 200),
        "neighbours": (2, 200, 200),
        "prediction": (0, None, None),
        "difficulty": (0, None, None),
    }
    human = _ok(carls("bank", "stats", ns))
    assert f"namespace {ns}: 12 examples (5 labeled), 4 buckets" in human
    assert _line_of(human, "embedding") == ["embedding", "8", "12", "100", "200"]
    assert _line_of(human, "difficulty") == ["difficulty", "1", "0", "-", "-"]

    cov = {r["kind"]: r for r in json_of(carls("bank", "coverage", ns, "--json"))}
    assert set(cov) == set(KINDS)
    emb = cov["embedding"]
    assert (emb["total"], emb["newest_step"], emb["at_newest"], emb["older"], emb["none"]) == (
        12,
        200,
        8,
        4,
        0,
    )
    assert emb["steps"] == {"100": 4, "200": 8}
    text = cov["embedding/text"]
    assert (text["newest_step"], text["at_newest"], text["older"], text["none"]) == (100, 6, 0, 6)
    assert (cov["difficulty"]["newest_step"], cov["difficulty"]["none"]) == (None, 12)
    assert cov["pseudo_label"]["fraction_at_newest"] == pytest.approx(4 / 12, abs=1e-6)

    only = json_of(carls("bank", "coverage", ns, "--kind", "embedding/text", "--json"))
    assert [r["kind"] for r in only] == ["embedding/text"]
    human = _ok(carls("bank", "coverage", ns, "--kind", "embedding", "--kind", "difficulty"))
    assert _line_of(human, "embedding") == ["embedding", "12", "200", "8", "66.7%", "4", "0"]
    assert _line_of(human, "difficulty") == ["difficulty", "12", "-", "0", "0.0%", "0", "12"]
    assert "embedding/text" not in human


def test_create(world: World, unique: str, carls: CarlsRun) -> None:
    name = world.track(unique)
    args = ("--dim", "16", "--buckets", "3", "--kind", "embedding/text=8", "--json")
    made = json_of(carls("bank", "create", name, *args))
    assert made["name"] == name and made["buckets"] == 3
    assert made["kinds"] == {**default_kinds(16), "embedding/text": 8}
    spec = world.bank.namespace(name)
    assert dict(spec.kinds) == made["kinds"] and spec.buckets == 3

    _fails(carls("bank", "create", name, "--dim", "4"), f"namespace {name} already exists")
    assert dict(world.bank.namespace(name).kinds) == made["kinds"]  # unchanged
    _fails(carls("bank", "create", "Not-A-Name", "--dim", "4"), "Not-A-Name", "does not match")

    other = world.track(unique + "_h")
    out = _ok(
        carls("bank", "create", other, "--dim", "4", "--classes", "3", "--ttl", "difficulty=60")
    )
    assert out == (
        f"created namespace {other}: {DEFAULT_BUCKETS} buckets, kinds difficulty=1, "
        "embedding=4, neighbours=16, prediction=3, pseudo_label=3\n"
    )
    assert dict(world.bank.namespace(other).ttl_s) == {"difficulty": 60}


def test_get(world: World, unique: str, carls: CarlsRun) -> None:
    ns = world.populate(unique)
    rows = json_of(carls("bank", "get", ns, "embedding", "id00", "id09", "nope", "--json"))
    assert [r["id"] for r in rows] == ["id00", "id09", "nope"]
    new, old, missing = rows
    assert (new["missing"], new["step"], new["maker"], new["fingerprint"]) == (
        False,
        200,
        "maker_b",
        "f2",
    )
    assert np.array_equal(np.float32(new["value"]), world.emb200[0])
    assert (old["step"], old["maker"]) == (100, "maker_a")
    assert np.array_equal(np.float32(old["value"]), world.emb100[9])
    assert missing == {"id": "nope", "missing": True}

    human = _ok(carls("bank", "get", ns, "embedding", "id00", "nope"))
    assert _line_of(human, "id00")[1:3] == ["200", "maker_b"]
    assert f"{float(world.emb200[0][0]):.4g}" in _line_of(human, "id00")[3]
    assert _line_of(human, "nope") == ["nope", "-", "-", "missing"]

    plabel = json_of(carls("bank", "get", ns, "pseudo_label", "id02", "--json"))[0]
    assert (plabel["class"], plabel["step"], plabel["maker"]) == (2, 200, "labeler")
    assert plabel["confidence"] == pytest.approx(0.7)
    nb = _line_of(_ok(carls("bank", "get", ns, "neighbours", "id01")), "id01")
    assert nb[1:7] == ["200", "knn", "neighbours", "id09", "id10", "id11"]
    assert " ".join(nb[7:]) == "[0.6, 0.5, 0.4]"

    err = _fails(carls("bank", "get", ns, "embeddings", "id00"), "'embeddings'")
    assert "embedding, embedding/text, neighbours" in err


def test_neighbours(world: World, unique: str, carls: CarlsRun, tmp_path: Path) -> None:
    ns = world.populate(unique)
    # --id: the query's own generation (step 200: IDS[:8]), itself excluded.
    got = json_of(carls("bank", "neighbours", ns, "--id", "id00", "-k", "3", "--json"))
    want_ids, want_scores = _cosine_top(world.emb200[1:], NEW[1:], world.emb200[0], 3)
    assert [g["id"] for g in got] == want_ids
    assert [g["score"] for g in got] == pytest.approx(want_scores.tolist(), abs=1e-5)
    assert {g["step"] for g in got} == {200}
    # An id last written at step 100 is compared with step-100 vectors only (IDS[8:]).
    old = json_of(carls("bank", "neighbours", ns, "--id", "id09", "--json"))
    assert sorted(g["id"] for g in old) == ["id08", "id10", "id11"]
    assert {g["step"] for g in old} == {100}

    # --vector: by default the newest step present (200).
    q = _vectors(7, 1, 8)[0]
    np.save(tmp_path / "q.npy", q)
    (tmp_path / "q.txt").write_text(", ".join(repr(float(x)) for x in q) + "\n")
    want_ids, want_scores = _cosine_top(world.emb200, NEW, q, 5)
    for file in ("q.npy", "q.txt"):
        got = json_of(
            carls("bank", "neighbours", ns, "--vector", str(tmp_path / file), "-k", "5", "--json")
        )
        assert [g["id"] for g in got] == want_ids, file
        assert [g["score"] for g in got] == pytest.approx(want_scores.tolist(), abs=1e-5)
    human = _ok(carls("bank", "neighbours", ns, "--vector", str(tmp_path / "q.npy"), "-k", "2"))
    assert human.splitlines()[0].split() == ["id", "cosine", "step"]
    assert [line.split()[0] for line in human.splitlines()[2:]] == want_ids[:2]

    (tmp_path / "short.txt").write_text("1 2 3")
    _fails(
        carls("bank", "neighbours", ns, "--vector", str(tmp_path / "short.txt")),
        "expected 8 finite floats, got 3",
    )


def test_neighbours_from_the_index_the_makers_saved(
    world: World, unique: str, carls: CarlsRun, tmp_path: Path
) -> None:
    ns = world.populate(unique)
    created = world.bank.namespace(ns).created_at
    # The makers' index of step 200: every registered id under the step-200 model (the
    # stored embeddings of NEW, and what that model gives the others), as an HNSW graph.
    pool = np.concatenate([world.emb200, _vectors(300, len(IDS) - len(NEW), 8)])
    index = VectorIndex(pool, exact_below=4)
    assert not index.exact
    index.save(tmp_path / "index", IDS)
    blobs = CassandraBlobs(world.bank.connection).start()
    try:
        blobs.put(f"indexes/{ns}", index_name(created, 200, "ab" * 32), tmp_path / "index")
        got = carls("bank", "neighbours", ns, "--id", "id00", "-k", "3", "--json")
        assert "approximate: HNSW index of step 200 (12 ids)" in got.stderr
        want_ids, want_scores = _cosine_top(pool[1:], IDS[1:], pool[0], 3)
        assert [g["id"] for g in json_of(got)] == want_ids  # 12 points: the graph is exact
        assert [g["score"] for g in json_of(got)] == pytest.approx(want_scores.tolist(), abs=1e-5)
        # --exact scans the stored step-200 embeddings instead (NEW only)
        exact = carls("bank", "neighbours", ns, "--id", "id00", "-k", "3", "--exact", "--json")
        assert "exact: every embedding vector of the step scanned" in exact.stderr
        want_ids, _ = _cosine_top(world.emb200[1:], NEW[1:], world.emb200[0], 3)
        assert [g["id"] for g in json_of(exact)] == want_ids
        # more neighbours asked than there are ids: all of them, and a count
        many = carls("bank", "neighbours", ns, "--id", "id00", "-k", "50", "--json")
        assert len(json_of(many)) == 11 and "50 asked, 11 there" in many.stderr
        # an id whose newest embedding is from step 100 has no index: scanned
        old = carls("bank", "neighbours", ns, "--id", "id09", "--json")
        assert "exact" in old.stderr and {g["step"] for g in json_of(old)} == {100}
    finally:
        blobs.delete_scope(f"indexes/{ns}")
        blobs.close()


def test_export_then_import_under_a_new_name(
    world: World, unique: str, carls: CarlsRun, tmp_path: Path
) -> None:
    ns = world.populate(unique)
    copy = world.track(unique + "_copy")
    path = tmp_path / "ns.carls"
    info = json_of(carls("bank", "export", ns, str(path), "--json"))
    assert info["namespace"] == ns and info["path"] == str(path)
    assert info["counts"]["examples"] == 12 and info["counts"]["embedding"] == 12
    assert info["bytes"] == path.stat().st_size > 0

    out = _ok(carls("bank", "import", str(path), "--namespace", copy))
    assert f"imported {path} as namespace {copy}" in out
    for kind in ("embedding", "pseudo_label", "neighbours"):
        args = ("bank", "get", "{}", kind, "id00", "id01", "id09", "nope", "--json")
        a = json_of(carls(*(x.format(ns) for x in args)))
        b = json_of(carls(*(x.format(copy) for x in args)))
        assert a == b, kind
    cov_a = json_of(carls("bank", "coverage", ns, "--json"))
    assert json_of(carls("bank", "coverage", copy, "--json")) == cov_a

    _fails(carls("bank", "import", str(path), "--namespace", copy), "already exists")
    _fails(carls("bank", "import", str(path)), f"namespace {ns} already exists")

    human = _ok(carls("bank", "export", ns, str(tmp_path / "again.carls")))
    assert human.startswith(f"exported {ns} to {tmp_path / 'again.carls'}")
    nowhere = tmp_path / "no_such_dir" / "x.carls"
    _fails(carls("bank", "export", ns, str(nowhere)), f"cannot write {nowhere}", "does not exist")

    garbage = tmp_path / "garbage.carls"
    garbage.write_bytes(b"this is not an export\n" * 50)
    fresh = unique + "_g"
    _fails(carls("bank", "import", str(garbage), "--namespace", fresh), "not a carls export")
    assert not world.exists(fresh)


def test_quarantine(world: World, unique: str, carls: CarlsRun) -> None:
    ns = world.populate(unique)
    # Only embedding/text at steps 100..100: the other kinds keep their step-100 rows.
    res = json_of(
        carls(
            "bank",
            "quarantine",
            ns,
            "--from-step",
            "100",
            "--to-step",
            "100",
            "--kind",
            "embedding/text",
            "--json",
        )
    )
    assert res == {"namespace": ns, "from_step": 100, "to_step": 100, "removed": 6}
    # All kinds, steps 150..250: the step-200 rows (8 embedding, 4 pseudo_label, 2 neighbours).
    out = _ok(carls("bank", "quarantine", ns, "--from-step", "150", "--to-step", "250"))
    assert f"quarantined 14 rows of steps 150..250 in {ns}" in out

    cov = {r["kind"]: r for r in json_of(carls("bank", "coverage", ns, "--json"))}
    emb = cov["embedding"]  # ids 0..7 lost their newest row; their step-100 one was replaced
    assert (emb["newest_step"], emb["at_newest"], emb["older"], emb["none"]) == (100, 4, 0, 8)
    for kind in ("embedding/text", "pseudo_label", "neighbours"):
        assert (cov[kind]["newest_step"], cov[kind]["none"]) == (None, 12), kind
    rows = json_of(carls("bank", "get", ns, "embedding", "id00", "id09", "--json"))
    assert rows[0]["missing"] is True and rows[1]["step"] == 100


def test_drop_asks_unless_yes(world: World, unique: str, carls: CarlsRun, tmp_path: Path) -> None:
    ns = world.populate(unique)
    blobs = CassandraBlobs(world.bank.connection).start()
    artifact = tmp_path / "step-000000000001.keras"
    artifact.write_bytes(b"a checkpoint")
    blobs.put(f"checkpoints/{ns}", artifact.name, artifact)
    blobs.put(f"indexes/{ns}", "g1-step-000000000001-ab", artifact)
    kept = carls("bank", "drop", ns, input_text="n\n")
    assert kept.returncode == 1 and "Traceback" not in kept.stderr
    assert f"drop namespace {ns} and all its knowledge?" in kept.stderr
    assert world.exists(ns)
    assert ns in {s["name"] for s in json_of(carls("bank", "namespaces", "--json"))}

    dropped = json_of(carls("bank", "drop", ns, "--yes", "--json"))
    assert dropped == {"dropped": ns, "checkpoints_deleted": 1, "indexes_deleted": 1}
    assert not world.exists(ns)
    assert blobs.entries(f"checkpoints/{ns}") == blobs.entries(f"indexes/{ns}") == []
    assert ns not in {s["name"] for s in json_of(carls("bank", "namespaces", "--json"))}

    again = world.populate(unique)  # same name: starts empty, then dropped by answering y
    out = _ok(carls("bank", "drop", again, input_text="y\n"))
    assert f"dropped namespace {again}" in out
    assert not world.exists(again)


def test_unknown_namespace_is_a_clear_error(unique: str, stack: Settings, carls: CarlsRun) -> None:
    missing = unique + "_nope"
    for args in (
        ("stats", missing),
        ("coverage", missing, "--json"),
        ("get", missing, "embedding", "a"),
        ("neighbours", missing, "--id", "a"),
        ("export", missing, "/tmp/never-written.carls"),
        ("quarantine", missing, "--from-step", "1", "--to-step", "2"),
        ("drop", missing, "--yes"),
    ):
        _fails(carls("bank", *args), f"namespace {missing} does not exist")
    assert not Path("/tmp/never-written.carls").exists()
