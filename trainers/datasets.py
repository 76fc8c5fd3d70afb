"""Datasets for trainers: scikit-learn's bundled sets, .npz and .csv files, split one way.

The protocol, so every trainer of a job (and every peer with the same split seed: the
spec's ``dataset.split_seed``, else ``train.seed``) sees the same data: a stratified
train/test split with that seed; unless the spec says
``standardize: false``, a ``StandardScaler`` fit per flat feature on the training split and
applied to both, values clipped to +-``CLIP`` (a pixel that is almost constant in training
would otherwise become a huge outlier); a stratified labeled subset of the training split
chosen with that seed. An .npz file may fix both itself: its ``test`` mask is the test
split, its ``labeled`` mask the labeled examples, as given (labeled rows are never moved
to the test split: without a ``test`` mask, the test split is drawn from the unlabeled
rows). Example ids are
``<dataset>-<row>`` with the row of the source, so an example keeps its id whatever the
seed or trainer; an .npz may name them itself (``ids``: one distinct string per row, e.g.
the item ids a multimodal task's modality files share).

Examples keep their shape: an .npz ``X`` may be N x D features, N x H x W x C images,
N x T sequences, any rank >= 2; ``Dataset.input_shape`` is the shape of one example and
``feature_dim`` its flat size. CSV files and the bundled sets are N x D.
"""

from __future__ import annotations

import csv
import math
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from carls.bank.artifacts import local_copy
from carls.bank.blobs import MAX_BYTES, BlobStore
from carls.bank.errors import (
    BlobCorruptError,
    BlobMissingError,
    BlobTooLargeError,
    UnreadableUriError,
)
from carls.bank.types import NO_LABEL, NamespaceSpec
from carls.schemas.errors import CarlsError
from carls.schemas.names import validate_id
from carls.trainers.augment import image_of
from carls.trainers.errors import DatasetError, SpecError
from carls.trainers.paradigms.graph import Graph
from carls.trainers.spec import DatasetSpec, JobSpec

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
CLIP = 5.0
BUNDLED_IMAGES = {"digits": (8, 8)}
"""The bundled datasets whose flat features are images."""
NPZ_ARRAYS = ("X", "y", "labeled", "test", "ids")
"""The arrays an .npz dataset may hold."""

_INT_LABEL = re.compile(r"[-+]?[0-9]+")


@dataclass(eq=False, slots=True)
class Dataset:
    """A split, standardised dataset; ``y_*`` hold every true label, ``labeled`` says which
    training labels the trainer may use (``labels_for_bank`` hides the others). ``x_*``
    are float32 of shape ``(N, *input_shape)``."""

    ids_train: list[str]
    x_train: F32
    y_train: I32
    labeled: Bool
    ids_test: list[str]
    x_test: F32
    y_test: I32
    classes: int
    feature_dim: int
    """The flat size of one example (the product of ``input_shape``)."""
    name: str
    input_shape: tuple[int, ...]
    """The shape of one example: ``(D,)`` for features, e.g. ``(H, W, C)`` for images."""
    modalities: dict[str, tuple[int, int]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    """The source's label of each class index (classes are the sorted distinct labels)."""
    image_shape: tuple[int, int] | None = None
    """``(height, width)`` when the examples are one-channel images (``dataset.image_shape``,
    the bundled ``digits``, or N x H x W (x 1) arrays); None for other features."""
    x_train_raw: npt.NDArray[np.float64] | None = None
    """Training examples before standardization, in the example shape (for augmentations
    in input space)."""
    mean: npt.NDArray[np.float64] | None = None
    """Per flat feature training mean; ``None`` when the spec does not standardize."""
    scale: npt.NDArray[np.float64] | None = None

    def standardize(self, raw: npt.ArrayLike) -> F32:
        """Raw examples -> the model's input space (standardized per flat feature, clipped
        to +-CLIP; only cast to float32 when the spec does not standardize). Any shape
        whose trailing dimensions hold whole examples, flat or not, keeps its shape."""
        return _standardize(raw, self.mean, self.scale)

    def labels_for_bank(self) -> I32:
        """The training labels with ``NO_LABEL`` (-1) where the example is unlabeled."""
        return np.where(self.labeled, self.y_train, NO_LABEL).astype(np.int32)


def hold_out(ds: Dataset, fraction: float, seed: int) -> Bool:
    """Hold out ``fraction`` of each class's labeled training examples (rounded, each
    class keeping at least one label), chosen by ``seed``: they become unlabeled in
    ``ds.labeled`` (so in training and in the bank) and the returned mask names them,
    to measure knowledge against their true labels."""
    held = np.zeros(len(ds.y_train), bool)
    if fraction <= 0:
        return held
    rng = np.random.default_rng([seed, 1])
    for c in range(ds.classes):
        rows = np.flatnonzero(ds.labeled & (ds.y_train == c))
        take = min(round(fraction * len(rows)), len(rows) - 1)
        if take > 0:
            held[rng.choice(rows, size=take, replace=False)] = True
    ds.labeled &= ~held
    return held


@dataclass(slots=True)
class _Raw:
    x: F64
    labels: npt.NDArray[Any]
    mask: Bool | None
    """The file's own labeled examples (``labeled``)."""
    test: Bool | None
    """The file's own test split (``test``)."""
    columns: list[str] | None
    """Names of the feature columns of flat data (``None``: a position names a value)."""
    where: str
    """The spec field that names the source (``dataset.name``, ``.path`` or ``.uri``)."""
    ids: list[str] | None = None
    """The file's own example ids (``ids``; ``None``: ``<dataset>-<row>``)."""


def load_dataset(
    spec: DatasetSpec, seed: int, blobs: BlobStore | None = None, max_bytes: int = MAX_BYTES
) -> Dataset:
    """Load, check, split, standardise and label ``spec``'s data; ``DatasetError`` if bad.
    ``seed`` splits and labels unless ``spec.split_seed`` is set.
    A ``bank://`` URI is read from ``blobs`` (the bank's blob store); no file over
    ``max_bytes`` is fetched. A store that does not answer raises its retriable error."""
    from sklearn.preprocessing import StandardScaler

    if spec.split_seed is not None:
        seed = spec.split_seed
    raw = _load_raw(spec, blobs, max_bytes)
    _check_finite(raw)
    values, inverse = np.unique(raw.labels, return_inverse=True)
    y: I32 = inverse.astype(np.int32).reshape(-1)
    classes = len(values)
    if classes < 2:
        raise DatasetError(raw.where, f"needs at least 2 classes, found {classes}")
    input_shape = tuple(int(d) for d in raw.x.shape[1:])
    dim = math.prod(input_shape)
    if spec.modalities and len(input_shape) != 1:
        raise DatasetError(
            "dataset.modalities",
            f"only flat (N x D) data has column modalities; the examples are {input_shape}",
        )
    for modality, (start, stop) in spec.modalities.items():
        if stop > dim:
            raise DatasetError(
                f"dataset.modalities.{modality}",
                f"columns [{start}, {stop}) exceed the {dim} feature columns",
            )
    if raw.mask is not None and spec.labeled is not None:
        raise DatasetError(
            "dataset.labeled",
            "the file's labeled mask says which examples are labeled; drop dataset.labeled "
            "(or the mask)",
        )
    rows_train, rows_test = _split(spec, raw, y, seed)
    y_train = y[rows_train]
    if raw.mask is not None:
        labeled = raw.mask[rows_train].copy()
        if not labeled.any():
            raise DatasetError(raw.where, "its labeled mask marks no training example labeled")
    elif spec.labeled is None:
        labeled = np.ones(len(rows_train), dtype=bool)
    else:
        labeled = _choose_labeled(y_train, classes, spec.labeled, np.random.default_rng(seed))
    name = spec.display_name
    mean: F64 | None = None
    scale: F64 | None = None
    if spec.standardize:
        scaler = StandardScaler().fit(raw.x[rows_train].reshape(len(rows_train), dim))
        mean = scaler.mean_.astype(np.float64)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0).astype(np.float64)
    ids = raw.ids if raw.ids is not None else [f"{name}-{row:06d}" for row in range(len(y))]
    return Dataset(
        ids_train=[ids[row] for row in rows_train],
        x_train=_standardize(raw.x[rows_train], mean, scale),
        y_train=y_train,
        labeled=labeled,
        ids_test=[ids[row] for row in rows_test],
        x_test=_standardize(raw.x[rows_test], mean, scale),
        y_test=y[rows_test],
        classes=classes,
        feature_dim=dim,
        name=name,
        input_shape=input_shape,
        modalities=dict(spec.modalities),
        class_names=[str(v) for v in values],
        image_shape=_image_shape(spec, input_shape),
        x_train_raw=raw.x[rows_train].astype(np.float64),
        mean=mean,
        scale=scale,
    )


def _split(spec: DatasetSpec, raw: _Raw, y: I32, seed: int) -> tuple[I64, I64]:
    """Sorted train and test rows: the file's ``test`` mask, else a stratified split with
    ``seed`` (of the unlabeled rows only, when the file has a ``labeled`` mask)."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    if raw.test is not None:
        if "test_size" in spec.model_fields_set:
            raise DatasetError(
                "dataset.test_size",
                "the file carries its own test split (its test mask); drop test_size",
            )
        if raw.mask is not None and (both := int((raw.mask & raw.test).sum())):
            raise DatasetError(
                raw.where, f"{both} rows are marked both labeled and test; a row is one or other"
            )
        if raw.test.all() or not raw.test.any():
            raise DatasetError(
                raw.where, "its test mask must leave rows on both sides (train and test)"
            )
        return np.flatnonzero(~raw.test), np.flatnonzero(raw.test)
    if raw.mask is None:
        try:
            rows_train, rows_test = train_test_split(
                np.arange(n), test_size=spec.test_size, stratify=y, random_state=seed
            )
        except ValueError as exc:
            raise DatasetError(
                "dataset.test_size",
                f"cannot split {n} examples of {len(np.unique(y))} classes stratified: {exc}",
            ) from exc
        return np.sort(rows_train), np.sort(rows_test)
    pool = np.flatnonzero(~raw.mask)
    count = math.ceil(spec.test_size * n)  # as many as a split of every row would hold
    if count >= len(pool):
        raise DatasetError(
            "dataset.test_size",
            f"a test split of {count} rows, and only {len(pool)} rows are unlabeled: the "
            "labeled mask's rows stay in training (give a test mask, or a smaller test_size)",
        )
    try:
        _, rows_test = train_test_split(pool, test_size=count, stratify=y[pool], random_state=seed)
    except ValueError as exc:
        raise DatasetError(
            "dataset.test_size",
            f"cannot split {len(pool)} examples of {len(np.unique(y[pool]))} classes "
            f"stratified: {exc}",
        ) from exc
    test = np.zeros(n, dtype=bool)
    test[rows_test] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def _image_shape(spec: DatasetSpec, input_shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(input_shape) != 1:
        if spec.image_shape is not None:
            raise DatasetError(
                "dataset.image_shape",
                f"only for flat features; the examples already have shape {input_shape}",
            )
        return image_of(input_shape)
    if spec.image_shape is not None:
        h, w = spec.image_shape
        if h * w != input_shape[0]:
            raise DatasetError(
                "dataset.image_shape",
                f"{h} x {w} is {h * w} pixels; the examples have {input_shape[0]} features",
            )
        return h, w
    return BUNDLED_IMAGES.get(spec.name or "")


def _standardize(raw: npt.ArrayLike, mean: F64 | None, scale: F64 | None) -> F32:
    """Raw examples -> standardized per flat feature, clipped to +-CLIP, float32, in the
    shape they came in (the trailing dimensions hold whole examples); without ``mean``
    and ``scale`` only cast to float32."""
    if mean is None or scale is None:
        return np.asarray(raw, np.float32)
    x = np.asarray(raw, np.float64)
    z = (x.reshape(-1, mean.size) - mean) / scale
    return np.clip(z, -CLIP, CLIP).astype(np.float32).reshape(x.shape)


def _choose_labeled(y: I32, classes: int, count: int, rng: np.random.Generator) -> Bool:
    """``count`` examples, as evenly spread over the classes as their sizes allow."""
    if count < classes:
        raise DatasetError(
            "dataset.labeled",
            f"{count} labeled examples for {classes} classes; at least one per class is needed",
        )
    if count > len(y):
        raise DatasetError(
            "dataset.labeled",
            f"{count} labeled examples asked for, the training split has {len(y)}",
        )
    members = [rng.permutation(np.flatnonzero(y == c)) for c in range(classes)]
    available = np.array([len(m) for m in members])
    if available.min() < 1:
        raise DatasetError("dataset.labeled", "a class has no example in the training split")
    quota = np.zeros(classes, dtype=np.int64)
    remaining = count
    while remaining > 0:
        open_ = np.flatnonzero(quota < available)
        share = remaining // len(open_)
        if share == 0:  # fewer left than classes: one more for randomly chosen classes
            quota[rng.choice(open_, size=remaining, replace=False)] += 1
            break
        added = np.minimum(share, available[open_] - quota[open_])
        quota[open_] += added
        remaining -= int(added.sum())
    labeled = np.zeros(len(y), dtype=bool)
    for m, q in zip(members, quota, strict=True):
        labeled[m[:q]] = True
    return labeled


# ---------------------------------------------------------------------------------------
# Sources


def _load_raw(spec: DatasetSpec, blobs: BlobStore | None, max_bytes: int) -> _Raw:
    if spec.name is not None:
        from sklearn import datasets

        x, y = getattr(datasets, f"load_{spec.name}")(return_X_y=True)
        x = np.asarray(x, dtype=np.float64)
        return _Raw(x, np.asarray(y), None, None, _numbered(x.shape[1]), "dataset.name")
    if spec.uri is not None:
        try:
            with local_copy(spec.uri, blobs, max_bytes=max_bytes) as path:
                return _load_file(path, spec, "dataset.uri")
        except (BlobMissingError, BlobCorruptError, BlobTooLargeError, UnreadableUriError) as exc:
            raise DatasetError("dataset.uri", str(exc)) from exc
    if spec.path is None:
        raise SpecError("dataset", "give exactly one of name or path")
    if not spec.path.is_file():
        raise DatasetError("dataset.path", f"no such file: {spec.path}")
    return _load_file(spec.path, spec, "dataset.path")


def _load_file(path: Path, spec: DatasetSpec, where: str) -> _Raw:
    if spec.suffix == ".npz":
        return _load_npz(path, where)
    if spec.label_column is None:
        raise DatasetError("dataset.label_column", "required for a .csv dataset")
    return _load_csv(path, spec.label_column, where)


def _numbered(d: int) -> list[str]:
    return [f"column {j}" for j in range(d)]


def _load_npz(path: Path, where: str) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(where, f"{path}: not a readable .npz file ({exc})") from exc
    for key in ("X", "y"):
        if key not in arrays:
            raise DatasetError(
                where, f"{path.name} has no array {key!r}; it holds {', '.join(arrays) or 'none'}"
            )
    unknown = [key for key in arrays if key not in NPZ_ARRAYS]
    if unknown:
        raise DatasetError(
            where,
            f"{path.name} holds arrays carls does not read: {', '.join(unknown)} (it reads X "
            "and y, and optionally the boolean masks labeled and test and the example ids "
            "ids); remove them",
        )
    x, y, mask, test = arrays["X"], arrays["y"], arrays.get("labeled"), arrays.get("test")
    if x.ndim < 2 or 0 in x.shape or x.dtype.kind not in "iuf":
        raise DatasetError(
            where,
            f"{path.name}: X must be a numeric array of N examples of any shape (N x D, "
            f"N x H x W x C, ...: rank >= 2, no empty dimension), got {x.dtype} {x.shape}",
        )
    if y.shape != (x.shape[0],):
        raise DatasetError(
            where, f"{path.name}: y must be 1-D with {x.shape[0]} labels, got {y.shape}"
        )
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DatasetError(where, f"{path.name}: y holds non-integer numbers")
    if y.dtype.kind not in "iubfUS":
        raise DatasetError(where, f"{path.name}: y must hold ints or strings, got {y.dtype}")
    for key, m in (("labeled", mask), ("test", test)):
        if m is not None and (m.dtype != np.bool_ or m.shape != (x.shape[0],)):
            raise DatasetError(
                where,
                f"{path.name}: {key} must be a boolean mask of {x.shape[0]} rows, "
                f"got {m.dtype} {m.shape}",
            )
    labels = y.astype(np.int64) if y.dtype.kind in "bf" else y
    columns = _numbered(x.shape[1]) if x.ndim == 2 else None
    ids = _npz_ids(arrays.get("ids"), x.shape[0], path.name, where)
    return _Raw(x.astype(np.float64), labels, mask, test, columns, where, ids)


def _npz_ids(ids: npt.NDArray[Any] | None, n: int, name: str, where: str) -> list[str] | None:
    """An .npz's own example ids: N distinct valid ids (strings), or ``None``."""
    if ids is None:
        return None
    if ids.shape != (n,) or ids.dtype.kind != "U":
        raise DatasetError(where, f"{name}: ids must be {n} strings, got {ids.dtype} {ids.shape}")
    out: list[str] = [str(i) for i in ids.tolist()]
    for row, i in enumerate(out):
        try:
            validate_id(i)
        except CarlsError as exc:
            raise DatasetError(where, f"{name}: ids[{row}]: {exc}") from None
    if len(set(out)) != n:
        dup = Counter(out).most_common(1)[0][0]
        raise DatasetError(where, f"{name}: ids must be distinct; {dup!r} appears twice")
    return out


def _load_csv(path: Path, label_column: str, where: str) -> _Raw:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(where, f"{path}: cannot read the CSV file ({exc})") from exc
    if not lines:
        raise DatasetError(where, f"{path.name} is empty; expected a header row")
    header = [h.strip() for h in lines[0]]
    if header.count(label_column) != 1:
        problem = "is named twice" if label_column in header else "is not a column"
        raise DatasetError(
            "dataset.label_column",
            f"{label_column!r} {problem} of {path.name}; its columns are {', '.join(header)}",
        )
    li = header.index(label_column)
    columns = header[:li] + header[li + 1 :]
    if not columns:
        raise DatasetError(where, f"{path.name} has no feature column besides {label_column!r}")
    cells: list[list[str]] = []
    labels: list[str] = []
    linenos: list[int] = []
    for lineno, fields_ in enumerate(lines[1:], start=2):
        if not fields_:
            continue
        if len(fields_) != len(header):
            raise DatasetError(
                where,
                f"{path.name} line {lineno}: {len(fields_)} fields, the header has {len(header)}",
            )
        label = fields_[li].strip()
        if not label:
            raise DatasetError(where, f"{path.name} line {lineno}: empty {label_column!r}")
        labels.append(label)
        cells.append(fields_[:li] + fields_[li + 1 :])
        linenos.append(lineno)
    if not cells:
        raise DatasetError(where, f"{path.name} has a header but no rows")
    try:
        x = np.array(cells, dtype=np.float64)
    except ValueError:
        for row, values in enumerate(cells):
            for column, cell in zip(columns, values, strict=True):
                try:
                    float(cell)
                except ValueError:
                    raise DatasetError(
                        where,
                        f"{path.name}: column {column!r}, row {row} (line {linenos[row]}): "
                        f"{cell!r} is not a number; every column but {label_column!r} must be",
                    ) from None
        raise  # pragma: no cover - numpy and float() disagree
    label_array: npt.NDArray[Any] = (
        np.array([int(v) for v in labels], dtype=np.int64)
        if all(_INT_LABEL.fullmatch(v) for v in labels)
        else np.array(labels)
    )
    return _Raw(x, label_array, None, None, columns, where)


def _check_finite(raw: _Raw) -> None:
    bad = ~np.isfinite(raw.x)
    if bad.any():
        row, *at = (int(i) for i in np.argwhere(bad)[0])
        feature = repr(raw.columns[at[0]]) if raw.columns is not None else f"at {tuple(at)}"
        raise DatasetError(
            raw.where,
            f"{raw.x[(row, *at)]} in feature {feature}, row {row}; features must be finite",
        )


# ---------------------------------------------------------------------------------------
# The job against an existing namespace


def validate_against_namespace(
    spec: JobSpec,
    dataset: Dataset,
    existing: NamespaceSpec | None,
    embedding_dim: int | None = None,
) -> None:
    """Raise ``SpecError`` if ``existing`` (the namespace in the bank, if any) declares
    dimensions that disagree with what the job will write and read (``embedding_dim``:
    the model's, when it is not the built-in MLP)."""
    if existing is None:
        return
    needed = spec.kinds(dataset.classes, embedding_dim)
    name = existing.name
    for kind, dim in needed.items():
        have = existing.kinds.get(kind)
        if have is None:
            raise SpecError(
                "namespace",
                f"the namespace {name} exists without kind {kind!r} that this job needs; "
                f"it declares {', '.join(sorted(existing.kinds))}",
            )
        if have == dim:
            continue
        if kind == "embedding" or kind.startswith("embedding/"):
            raise SpecError(
                "model.embedding_dim" if embedding_dim is None else "model",
                f"the namespace {name} declares {have} for {kind}, the job {dim}",
            )
        if kind in ("pseudo_label", "prediction"):
            raise SpecError(
                "dataset",
                f"the namespace {name} declares {have} classes for {kind}, the dataset has {dim}",
            )
        graph = any(isinstance(p, Graph) for p in spec.paradigm.params.plugins())
        if kind == "neighbours" and graph and have < dim:
            raise SpecError(
                "paradigm.params.k",
                f"the namespace {name} keeps {have} neighbours per example, the job needs {dim}",
            )
