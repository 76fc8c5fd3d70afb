"""Hypergraphs of a multimodal task, kept in the bank's blob store.

A hyperedge joins 2 to 4 items, each a ``(modality, id)``: the id of an example registered
in the modality's namespace ``<task>_<modality>``. Hyperedges within one modality (kNN)
and across modalities (the parts of one object) live in one ``Hypergraph``; an optional
positive weight per hyperedge scales it.

The file form (``.npz``, no pickled objects): ``modality`` and ``id``, two string arrays of
shape ``(E, K)`` (``K`` <= 4; an empty string leaves a place unused), and optionally
``weight`` ``(E,)`` and ``edge`` ``(E,)`` (hyperedge ids; default ``e<row>``).

A task's hypergraph is registered whole (``register``): checked, then written as one blob
``hypergraphs/<task>/g<time>-<sha>.npz``; the newest blob is the task's hypergraph.
Learners poll for it, so adding a modality is registering a hypergraph that names it.
Nothing is half-written: the blob store shows a blob only once every byte is in.

Each learner also **announces** itself (``announce``: a small blob under
``hypergraph-learners``): its task, modality, feature and embedding widths, and whether
the workers should make the task's hypergraph (``knn``). The workers' hypergraph maker
(``carls.makers.hypergraphs``) reads the announcements: it makes the hypergraph of tasks
that ask for one, again when a modality joins, and fuses every task's embeddings.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from carls.bank.blobs import BlobInfo, BlobStore, file_digest
from carls.schemas.errors import CarlsError, InvalidValueError
from carls.schemas.names import MODALITY_PATTERN, validate_id

MIN_ORDER, MAX_ORDER = 2, 4
SCOPE = "hypergraphs"
LEARNERS = "hypergraph-learners"
KEEP = 3
"""Hypergraphs kept per task (the newest is the task's)."""
_MODALITY = re.compile(MODALITY_PATTERN)


class HypergraphError(InvalidValueError):
    """A hypergraph that cannot be registered: the message says which hyperedge and why."""


@dataclass(frozen=True, slots=True)
class Hypergraph:
    """Hyperedges, each ``members[e]``: a tuple of ``(modality, id)``, and ``weights[e]``."""

    members: tuple[tuple[tuple[str, str], ...], ...]
    weights: npt.NDArray[np.float64]
    edges: tuple[str, ...] = ()
    name: str = field(default="", compare=False)
    """The blob it was read from (empty for one built in memory)."""

    def __post_init__(self) -> None:
        if not self.edges:
            object.__setattr__(self, "edges", tuple(f"e{i}" for i in range(len(self.members))))
        check_structure(self)

    @classmethod
    def of(
        cls,
        members: Iterable[Sequence[tuple[str, str]]],
        weights: Sequence[float] | None = None,
    ) -> Hypergraph:
        """A hypergraph from lists of ``(modality, id)`` members (weights default 1)."""
        rows = tuple(tuple((str(m), str(i)) for m, i in edge) for edge in members)
        w = np.ones(len(rows)) if weights is None else np.asarray(weights, np.float64)
        return cls(rows, w)

    @property
    def modalities(self) -> list[str]:
        """The modalities the hyperedges name, sorted."""
        return sorted({m for edge in self.members for m, _ in edge})

    def ids_of(self, modality: str) -> list[str]:
        """The distinct ids of ``modality`` the hyperedges name, sorted."""
        return sorted({i for edge in self.members for m, i in edge if m == modality})

    def orders(self) -> dict[int, int]:
        """Hyperedges by order."""
        out: dict[int, int] = {}
        for edge in self.members:
            out[len(edge)] = out.get(len(edge), 0) + 1
        return dict(sorted(out.items()))

    def to_bytes(self) -> bytes:
        k = max((len(e) for e in self.members), default=MIN_ORDER)
        mod = np.full((len(self.members), k), "", dtype=object)
        ids = np.full((len(self.members), k), "", dtype=object)
        for r, edge in enumerate(self.members):
            for c, (m, i) in enumerate(edge):
                mod[r, c], ids[r, c] = m, i
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            modality=mod.astype(str),
            id=ids.astype(str),
            weight=self.weights.astype(np.float64),
            edge=np.asarray(self.edges, dtype=str),
        )
        return buf.getvalue()


def check_structure(hg: Hypergraph) -> None:
    """Orders 2 to 4, valid names, no member twice in a hyperedge, positive finite weights,
    distinct hyperedge ids: ``HypergraphError`` naming the first hyperedge at fault."""
    if len(hg.weights) != len(hg.members) or len(hg.edges) != len(hg.members):
        raise HypergraphError(
            f"{len(hg.members)} hyperedges but {len(hg.weights)} weights and "
            f"{len(hg.edges)} hyperedge ids"
        )
    if not hg.members:
        raise HypergraphError("no hyperedges")
    for e, edge in enumerate(hg.members):
        where = f"hyperedge {hg.edges[e]!r} (row {e})"
        if not MIN_ORDER <= len(edge) <= MAX_ORDER:
            raise HypergraphError(
                f"{where}: order {len(edge)}; a hyperedge joins {MIN_ORDER} to {MAX_ORDER} items"
            )
        if len(set(edge)) != len(edge):
            raise HypergraphError(f"{where}: an item appears twice")
        for m, i in edge:
            if _MODALITY.match(m) is None:
                raise HypergraphError(f"{where}: modality {m!r} must match {MODALITY_PATTERN}")
            try:
                validate_id(i)
            except CarlsError as exc:
                raise HypergraphError(f"{where}: {exc}") from None
        w = float(hg.weights[e])
        if not (math.isfinite(w) and w > 0):
            raise HypergraphError(f"{where}: weight {w}; weights are positive and finite")
    if len(set(hg.edges)) != len(hg.edges):
        raise HypergraphError("hyperedge ids must be distinct")


def load(source: Path | bytes, name: str = "") -> Hypergraph:
    """Read a hypergraph file (see the module docstring); ``HypergraphError`` if bad."""
    try:
        got = np.load(io.BytesIO(source) if isinstance(source, bytes) else source)
        if not isinstance(got, np.lib.npyio.NpzFile):
            raise HypergraphError("not a hypergraph .npz file: it holds one array, not named ones")
        with got as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise HypergraphError(f"not a hypergraph .npz file: {exc}") from None
    unknown = sorted(set(arrays) - {"modality", "id", "weight", "edge"})
    if unknown:
        raise HypergraphError(
            f"unknown arrays {unknown}; a hypergraph holds modality, id, weight, edge"
        )
    if "modality" not in arrays or "id" not in arrays:
        raise HypergraphError("a hypergraph file needs the arrays 'modality' and 'id'")
    mod, ids = arrays["modality"], arrays["id"]
    if mod.ndim != 2 or mod.shape != ids.shape or mod.dtype.kind != "U" or ids.dtype.kind != "U":
        raise HypergraphError(
            f"'modality' and 'id' must be string arrays of one shape (E, K); got "
            f"{mod.dtype} {mod.shape} and {ids.dtype} {ids.shape}"
        )
    members = []
    for r in range(mod.shape[0]):
        edge = []
        for m, i in zip(mod[r].tolist(), ids[r].tolist(), strict=True):
            if (m == "") != (i == ""):
                raise HypergraphError(f"row {r}: a member needs both a modality and an id")
            if m:
                edge.append((m, i))
        members.append(tuple(edge))
    n = len(members)
    weight = arrays.get("weight", np.ones(n))
    edges = arrays.get("edge", np.asarray([f"e{r}" for r in range(n)]))
    if weight.shape != (n,) or weight.dtype.kind not in "fiu":
        raise HypergraphError(f"'weight' must be ({n},) numbers; got {weight.dtype} {weight.shape}")
    if edges.shape != (n,):
        raise HypergraphError(f"'edge' must be ({n},) strings; got {edges.shape}")
    return Hypergraph(tuple(members), weight.astype(np.float64), tuple(map(str, edges)), name)


Check = Callable[[str, list[str]], str | None]
"""``check(modality, ids)``: why ``modality``'s items cannot be used (``None``: they can)."""


class HypergraphStore:
    """A task's hypergraphs in the bank's blob store: register one, read the newest."""

    def __init__(self, blobs: BlobStore, keep: int = KEEP) -> None:
        self.blobs = blobs
        self.keep = keep

    def register(
        self,
        task: str,
        hg: Hypergraph,
        check: Check | None = None,
        made_by: dict[str, str] | None = None,
    ) -> BlobInfo:
        """Check ``hg`` (its structure, then ``check`` for every modality it names: the
        modality is trained and its ids registered) and make it the task's hypergraph.
        ``made_by`` marks one a maker made (with what it was made from), which it may
        replace; one registered without is the user's, which no maker replaces. Raises
        ``HypergraphError`` before anything is written."""
        check_structure(hg)
        if check is not None:
            for modality in hg.modalities:
                why = check(modality, hg.ids_of(modality))
                if why is not None:
                    raise HypergraphError(f"modality {modality!r}: {why}")
        data = hg.to_bytes()
        with tempfile.TemporaryDirectory(prefix="carls-hypergraph-") as tmp:
            path = Path(tmp) / "h.npz"
            path.write_bytes(data)
            sha, _ = file_digest(path)
            name = f"g{time.time_ns():020d}-{sha[:16]}.npz"
            meta = {"edges": len(hg.members), "orders": hg.orders(), **(made_by or {})}
            info = self.blobs.put(_scope(task), name, path, meta=meta)
        self.blobs.collect(_scope(task), self.keep)
        return info

    def newest(self, task: str) -> BlobInfo | None:
        """The entry of the task's hypergraph (the newest registered), or ``None``."""
        found = self.blobs.entries(_scope(task))
        return max(found, key=lambda i: i.name) if found else None

    def read(self, task: str, info: BlobInfo | None = None) -> Hypergraph | None:
        """The task's hypergraph (``info``'s, or the newest), or ``None`` when none is."""
        info = info if info is not None else self.newest(task)
        if info is None:
            return None
        buf = io.BytesIO()
        self.blobs.read(info.scope, info.name, buf, sha256=info.sha256)
        return load(buf.getvalue(), info.name)

    def drop(self, task: str) -> int:
        """Delete the task's hypergraphs and its learners' announcements; returns how many
        hypergraphs."""
        for info in self.blobs.entries(LEARNERS):
            if info.meta.get("task") == task:
                self.blobs.delete(LEARNERS, info.name)
        scope = _scope(task)
        return sum(self.blobs.delete(scope, i.name) for i in self.blobs.entries(scope))

    def announce(self, learner: Learner) -> None:
        """Say that ``learner`` trains its task's modality (kept until ``drop``); written
        only when it says something new."""
        name = f"{learner.task}.{learner.modality}"
        said = asdict(learner)
        have = self.blobs.info(LEARNERS, name)
        if have is not None and have.meta == said:
            return
        with tempfile.TemporaryDirectory(prefix="carls-hypergraph-") as tmp:
            path = Path(tmp) / "learner.json"
            path.write_text(json.dumps(said))
            self.blobs.put(LEARNERS, name, path, meta=said)

    def forget(self, task: str, modality: str) -> None:
        """Forget a learner's announcement (its namespace was dropped)."""
        self.blobs.delete(LEARNERS, f"{task}.{modality}")

    def learners(self) -> dict[str, dict[str, Learner]]:
        """The announced learners, by task and modality."""
        out: dict[str, dict[str, Learner]] = {}
        for info in self.blobs.entries(LEARNERS):
            try:
                one = Learner(**info.meta)
            except TypeError:  # written by another version: not ours to read
                continue
            out.setdefault(one.task, {})[one.modality] = one
        return out


@dataclass(frozen=True, slots=True)
class Learner:
    """A hypergraph learner's announcement: its task and modality, the width of its own
    features and of its embeddings, and ``knn``: the workers make the task's hypergraph
    (kNN hyperedges of its ``knn`` nearest within this modality, co-occurrence ones across
    at ``cross_weight``), or None: the task's hypergraph is registered by hand."""

    task: str
    modality: str
    features: int
    embedding_dim: int
    knn: int | None = None
    cross_weight: float = 1.0


def _scope(task: str) -> str:
    return f"{SCOPE}/{task}"
