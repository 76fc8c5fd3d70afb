"""Datasets: the split, scaling and labeling protocol, file formats, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from carls.bank.artifacts import register_data
from carls.bank.blobs import MemoryBlobs
from carls.bank.types import NamespaceSpec, default_kinds
from carls.schemas.errors import CarlsError
from carls.trainers.datasets import (
    CLIP,
    Dataset,
    hold_out,
    load_dataset,
    validate_against_namespace,
)
from carls.trainers.errors import DatasetError, SpecError
from carls.trainers.spec import DatasetSpec, load_spec


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DatasetSpec(name="digits", labeled=50), seed=0)


def rows(ids: list[str]) -> np.ndarray:
    return np.array([int(i.rsplit("-", 1)[1]) for i in ids])


def dataset_error(spec: DatasetSpec, field: str, seed: int = 0) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(spec, seed)
    assert info.value.field == field, str(info.value)
    return info.value


# ---------------------------------------------------------------------------------------
# The protocol


def test_digits_split_is_stratified_70_30(digits: Dataset) -> None:
    y_all = load_digits().target
    n = len(y_all)
    assert len(digits.ids_train) + len(digits.ids_test) == n
    # scikit-learn's split, rounded up: the demo's and every peer's 1,257 / 540
    assert (len(digits.ids_train), len(digits.ids_test)) == (1257, 540)
    assert set(digits.ids_train).isdisjoint(digits.ids_test)
    overall = np.bincount(y_all) / n
    assert np.abs(np.bincount(digits.y_train) / len(digits.y_train) - overall).max() < 0.01
    assert np.abs(np.bincount(digits.y_test) / len(digits.y_test) - overall).max() < 0.01
    assert digits.classes == 10 and digits.feature_dim == 64 and digits.name == "digits"
    assert digits.input_shape == (64,) and digits.x_train.shape == (len(digits.ids_train), 64)
    # the ids carry the source row: the label of an id is the label of that row
    assert (digits.y_train == y_all[rows(digits.ids_train)]).all()
    assert (digits.y_test == y_all[rows(digits.ids_test)]).all()


def test_features_are_standardised_on_the_training_split(digits: Dataset) -> None:
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int32
    # Standardized on the training split, then clipped to +-CLIP: a nearly constant pixel
    # would otherwise become an extreme outlier (clipping moves a few columns slightly).
    assert np.abs(digits.x_train).max() <= CLIP
    clipped = (np.abs(digits.x_train) >= CLIP).any(axis=0)
    assert (np.abs(digits.x_train) >= CLIP).mean() < 0.005  # a handful of outlier values
    assert np.abs(digits.x_train[:, ~clipped].mean(axis=0)).max() < 1e-4
    std = digits.x_train.std(axis=0)
    varying = (std > 0) & ~clipped  # digits has pixels that are always 0
    assert varying.sum() > 40
    assert np.allclose(std[varying], 1.0, atol=1e-3)
    assert abs(float(digits.x_test[:, varying].mean())) < 0.1
    raw = digits.x_train_raw
    assert raw is not None
    assert np.allclose(digits.standardize(raw), digits.x_train, atol=1e-5)


def test_labeled_subset_has_the_count_and_is_balanced(digits: Dataset) -> None:
    assert digits.labeled.dtype == np.bool_ and digits.labeled.sum() == 50
    assert (np.bincount(digits.y_train[digits.labeled], minlength=10) == 5).all()
    bank_labels = digits.labels_for_bank()
    assert bank_labels.dtype == np.int32
    assert (bank_labels[~digits.labeled] == -1).all()
    assert (bank_labels[digits.labeled] == digits.y_train[digits.labeled]).all()


def test_a_held_out_slice_of_the_labels_is_hidden_from_training_and_the_bank() -> None:
    ds = load_dataset(DatasetSpec(name="digits", labeled=50), seed=0)
    labeled = ds.labeled.copy()
    held = hold_out(ds, 0.2, seed=0)
    # a fifth of each class's 5 labels; the rest stay labeled, the slice is unlabeled
    assert held.sum() == 10 and (np.bincount(ds.y_train[held], minlength=10) == 1).all()
    assert (held <= labeled).all() and (ds.labeled == labeled & ~held).all()
    assert (ds.labels_for_bank()[held] == -1).all()
    # every class keeps a label, however large the fraction; none held at 0
    few = load_dataset(DatasetSpec(name="digits", labeled=20), seed=0)  # 2 per class
    assert hold_out(few, 0.9, seed=0).sum() == 10
    assert (np.bincount(few.y_train[few.labeled], minlength=10) == 1).all()
    assert hold_out(load_dataset(DatasetSpec(name="digits", labeled=50), 0), 0.0, 0).sum() == 0


def test_uneven_counts_spread_as_evenly_as_possible() -> None:
    data = load_dataset(DatasetSpec(name="digits", labeled=23), seed=3)
    counts = np.bincount(data.y_train[data.labeled], minlength=10)
    assert counts.sum() == 23 and set(counts.tolist()) == {2, 3}


def test_small_classes_give_their_share_to_the_others(tmp_path: Path) -> None:
    y = np.array([0] * 6 + [1] * 40 + [2] * 40)  # class 0: 4 training examples
    path = tmp_path / "skewed.npz"
    np.savez(path, X=np.random.default_rng(0).normal(size=(len(y), 3)), y=y)
    data = load_dataset(DatasetSpec(path=path, labeled=30, test_size=0.25), seed=0)
    counts = np.bincount(data.y_train[data.labeled])
    assert counts[0] == (data.y_train == 0).sum() == 4
    assert counts.tolist() == [4, 13, 13]


def test_ids_are_stable_across_seeds() -> None:
    a = load_dataset(DatasetSpec(name="iris"), seed=0)
    b = load_dataset(DatasetSpec(name="iris"), seed=1)
    assert set(a.ids_train) != set(b.ids_train)
    assert set(a.ids_train + a.ids_test) == set(b.ids_train + b.ids_test)
    label_a = dict(zip(a.ids_train + a.ids_test, [*a.y_train, *a.y_test], strict=True))
    label_b = dict(zip(b.ids_train + b.ids_test, [*b.y_train, *b.y_test], strict=True))
    assert label_a == label_b
    again = load_dataset(DatasetSpec(name="iris"), seed=0)
    assert again.ids_train == a.ids_train and np.array_equal(again.x_train, a.x_train)


def test_labeled_fewer_than_classes_is_an_error() -> None:
    err = dataset_error(DatasetSpec(name="wine", labeled=2), "dataset.labeled")
    assert "3 classes" in str(err)
    dataset_error(DatasetSpec(name="iris", labeled=1000), "dataset.labeled")


# ---------------------------------------------------------------------------------------
# Files


def masked(tmp_path: Path, n: int = 60, **arrays: np.ndarray) -> Path:
    """An .npz of ``n`` 2-feature examples of three string classes, with ``arrays``."""
    y = np.array(["b", "a", "c"] * (n // 3))
    path = tmp_path / "masked.npz"
    np.savez(path, X=np.arange(n * 2, dtype=np.float64).reshape(n, 2), y=y, **arrays)
    return path


def test_npz_labeled_mask_is_honoured_as_given(tmp_path: Path) -> None:
    n = 60
    mask = np.arange(n) % 4 == 0
    path = masked(tmp_path, n, labeled=mask)
    for seed in (0, 1, 2):
        data = load_dataset(DatasetSpec(path=path), seed=seed)
        assert data.name == "masked" and data.ids_train[0].startswith("masked-")
        # every labeled row trains, labeled; the test split comes from the others
        assert sorted(rows(data.ids_train)[data.labeled]) == np.flatnonzero(mask).tolist()
        assert not mask[rows(data.ids_test)].any() and len(data.ids_test) == 18
        y = np.array(["b", "a", "c"] * (n // 3))
        assert data.class_names == ["a", "b", "c"]
        assert (data.y_train == np.searchsorted(["a", "b", "c"], y[rows(data.ids_train)])).all()


def test_npz_labeled_mask_and_a_labeled_count_is_an_error(tmp_path: Path) -> None:
    path = masked(tmp_path, labeled=np.arange(60) % 4 == 0)
    err = dataset_error(DatasetSpec(path=path, labeled=3), "dataset.labeled")
    assert "labeled mask" in str(err) and "drop dataset.labeled" in str(err)


def test_npz_test_mask_is_the_test_split(tmp_path: Path) -> None:
    n = 60
    test, labeled = np.arange(n) >= 45, np.arange(n) % 5 == 0
    path = masked(tmp_path, n, labeled=labeled & ~test, test=test)
    for seed in (0, 7):
        data = load_dataset(DatasetSpec(path=path), seed=seed)
        assert rows(data.ids_test).tolist() == list(range(45, 60))
        assert rows(data.ids_train).tolist() == list(range(45))
        assert (data.labeled == labeled[:45]).all()
    # with a count instead of the labeled mask: chosen among the file's training rows
    path = masked(tmp_path, n, test=test)
    data = load_dataset(DatasetSpec(path=path, labeled=6), seed=0)
    assert rows(data.ids_test).tolist() == list(range(45, 60)) and data.labeled.sum() == 6


def test_npz_test_mask_conflicts_are_errors(tmp_path: Path) -> None:
    test = np.arange(60) >= 45
    path = masked(tmp_path, test=test)
    err = dataset_error(DatasetSpec(path=path, test_size=0.2), "dataset.test_size")
    assert "own test split" in str(err)
    path = masked(tmp_path, test=test, labeled=np.arange(60) % 5 == 0)
    err = dataset_error(DatasetSpec(path=path), "dataset.path")
    assert "3 rows are marked both labeled and test" in str(err)
    path = masked(tmp_path, test=np.zeros(60, bool))
    assert "both sides" in str(dataset_error(DatasetSpec(path=path), "dataset.path"))
    path = masked(tmp_path, test=np.arange(60) % 2)
    assert "test must be a boolean mask" in str(
        dataset_error(DatasetSpec(path=path), "dataset.path")
    )


def test_npz_arrays_carls_does_not_read_are_an_error(tmp_path: Path) -> None:
    path = masked(tmp_path, weights=np.ones(60), unlabeled=np.zeros(60, bool))
    err = dataset_error(DatasetSpec(path=path), "dataset.path")
    assert "does not read: weights, unlabeled" in str(err)


def test_only_declared_or_shaped_images_are_images(tmp_path: Path) -> None:
    assert load_dataset(DatasetSpec(name="digits"), 0).image_shape == (8, 8)
    assert load_dataset(DatasetSpec(name="iris"), 0).image_shape is None  # 4 = 2 x 2, still
    flat = tmp_path / "flat.npz"
    np.savez(flat, X=np.random.default_rng(0).random((40, 16)), y=np.arange(40) % 2)
    assert load_dataset(DatasetSpec(path=flat), 0).image_shape is None
    assert load_dataset(DatasetSpec(path=flat, image_shape=(2, 8)), 0).image_shape == (2, 8)
    err = dataset_error(DatasetSpec(path=flat, image_shape=(4, 5)), "dataset.image_shape")
    assert "4 x 5 is 20 pixels; the examples have 16 features" in str(err)
    path, _, _ = images(tmp_path)
    assert load_dataset(DatasetSpec(path=path), 0).image_shape == (8, 8)
    err = dataset_error(DatasetSpec(path=path, image_shape=(8, 8)), "dataset.image_shape")
    assert "only for flat features" in str(err)


def test_npz_without_x_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, features=np.zeros((4, 2)), y=np.zeros(4))
    err = dataset_error(DatasetSpec(path=path), "dataset.path")
    assert "no array 'X'" in str(err) and "features" in str(err)


def test_npz_nan_feature_is_named(tmp_path: Path) -> None:
    x = np.zeros((20, 3))
    x[7, 2] = np.inf
    path = tmp_path / "inf.npz"
    np.savez(path, X=x, y=np.arange(20) % 2)
    err = dataset_error(DatasetSpec(path=path), "dataset.path")
    assert "column 2" in str(err) and "row 7" in str(err)


def images(tmp_path: Path, n: int = 90) -> tuple[Path, np.ndarray, np.ndarray]:
    """An .npz of ``n`` 8x8x1 images in [0, 16] with three classes."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 17, size=(n, 8, 8, 1)).astype(np.float64)
    x[:, 0, 0, 0] = 0.0  # a constant pixel: scale 1, not a division by zero
    path = tmp_path / "images.npz"
    np.savez(path, X=x, y=y)
    return path, x, y


def test_npz_images_keep_their_shape_and_are_standardised_per_pixel(tmp_path: Path) -> None:
    path, x, _ = images(tmp_path)
    data = load_dataset(DatasetSpec(path=path, labeled=9), seed=0)
    assert data.input_shape == (8, 8, 1) and data.feature_dim == 64
    assert data.x_train.shape == (len(data.ids_train), 8, 8, 1)
    assert data.x_test.shape == (len(data.ids_test), 8, 8, 1)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    flat = data.x_train.reshape(len(data.x_train), -1)
    assert np.abs(flat.mean(axis=0)).max() < 1e-4
    assert np.allclose(flat.std(axis=0)[1:], 1.0, atol=1e-3) and flat[:, 0].std() == 0
    raw = data.x_train_raw
    assert raw is not None and raw.shape == data.x_train.shape
    assert np.array_equal(raw, x[rows(data.ids_train)])
    assert np.allclose(data.standardize(raw), data.x_train, atol=1e-5)
    assert data.standardize(raw[:1, :, :, :]).shape == (1, 8, 8, 1)


def test_npz_images_without_standardisation_keep_their_values(tmp_path: Path) -> None:
    path, x, _ = images(tmp_path)
    data = load_dataset(DatasetSpec(path=path, standardize=False), seed=0)
    assert data.input_shape == (8, 8, 1) and data.mean is None and data.scale is None
    assert data.x_train.dtype == np.float32
    assert np.array_equal(data.x_train, x[rows(data.ids_train)].astype(np.float32))
    assert np.array_equal(data.x_test, x[rows(data.ids_test)].astype(np.float32))
    assert data.x_train.max() == 16.0
    assert data.x_train_raw is not None
    assert np.array_equal(data.standardize(data.x_train_raw), data.x_train)


def test_npz_sequences_are_flat_examples(tmp_path: Path) -> None:
    tokens = np.random.default_rng(1).integers(0, 1000, size=(40, 12))
    path = tmp_path / "tokens.npz"
    np.savez(path, X=tokens, y=np.arange(40) % 2)
    data = load_dataset(DatasetSpec(path=path, standardize=False), seed=0)
    assert data.input_shape == (12,) and data.feature_dim == 12
    assert np.array_equal(data.x_train, tokens[rows(data.ids_train)])


@pytest.mark.parametrize(
    "x", [np.zeros(6), np.zeros((6, 0)), np.zeros((6, 2, 0)), np.array([["a"] * 2] * 6)]
)
def test_npz_x_needs_examples_of_some_shape(tmp_path: Path, x: np.ndarray) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, X=x, y=np.arange(6) % 2)
    err = dataset_error(DatasetSpec(path=path), "dataset.path")
    assert "rank >= 2" in str(err)


def test_npz_image_nan_is_named_by_position(tmp_path: Path) -> None:
    path, x, y = images(tmp_path)
    x[5, 2, 3, 0] = np.nan
    np.savez(path, X=x, y=y)
    err = dataset_error(DatasetSpec(path=path), "dataset.path")
    assert "at (2, 3, 0), row 5" in str(err) and "finite" in str(err)


def test_modalities_need_flat_data(tmp_path: Path) -> None:
    path, _, _ = images(tmp_path)
    err = dataset_error(DatasetSpec(path=path, modalities={"a": (0, 8)}), "dataset.modalities")
    assert "only flat (N x D) data has column modalities" in str(err)


def write_csv(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(body)
    return path


def csv_body(n: int = 30, bad: tuple[int, str] | None = None) -> str:
    lines = ["width,species,height"]
    for i in range(n):
        width = bad[1] if bad is not None and bad[0] == i else str(i * 0.5)
        lines.append(f"{width},{['cat', 'dog', 'eel'][i % 3]},{i % 7}")
    return "\n".join(lines) + "\n"


def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path, csv_body())
    data = load_dataset(DatasetSpec(path=path, label_column="species", labeled=6), seed=0)
    assert data.feature_dim == 2 and data.classes == 3 and data.input_shape == (2,)
    assert data.class_names == ["cat", "dog", "eel"]
    assert (data.y_train == rows(data.ids_train) % 3).all()
    assert np.bincount(data.y_train[data.labeled]).tolist() == [2, 2, 2]


def test_csv_int_labels_sort_as_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,label\n" + "".join(f"{i},{[2, 10][i % 2]}\n" for i in range(20)))
    data = load_dataset(DatasetSpec(path=path, label_column="label"), seed=0)
    assert data.class_names == ["2", "10"]


def test_csv_absent_label_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path, csv_body())
    err = dataset_error(DatasetSpec(path=path, label_column="target"), "dataset.label_column")
    assert "width, species, height" in str(err)


def test_csv_non_numeric_feature_names_column_and_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path, csv_body(bad=(4, "wide")))
    err = dataset_error(DatasetSpec(path=path, label_column="species"), "dataset.path")
    assert "column 'width', row 4 (line 6)" in str(err) and "'wide'" in str(err)


def test_csv_nan_feature_names_column_and_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path, csv_body(bad=(9, "nan")))
    err = dataset_error(DatasetSpec(path=path, label_column="species"), "dataset.path")
    assert "'width', row 9" in str(err) and "finite" in str(err)


def test_modalities_must_fit_the_features() -> None:
    err = dataset_error(
        DatasetSpec(name="iris", modalities={"a": (0, 2), "b": (2, 5)}), "dataset.modalities.b"
    )
    assert "4 feature columns" in str(err)


# ---------------------------------------------------------------------------------------
# Against an existing namespace


def test_namespace_dimensions_must_match_the_job(digits: Dataset) -> None:
    spec = load_spec(
        {
            "namespace": "digits_ssl",
            "dataset": {"name": "digits"},
            "paradigm": {"name": "pseudo_label"},
            "model": {"embedding_dim": 64},
        }
    )
    validate_against_namespace(spec, digits, None)
    validate_against_namespace(spec, digits, NamespaceSpec("digits_ssl", spec.kinds(10)))
    with pytest.raises(SpecError) as info:
        validate_against_namespace(
            spec, digits, NamespaceSpec("digits_ssl", default_kinds(32, 10, 8))
        )
    assert info.value.field == "model.embedding_dim"
    assert "declares 32" in str(info.value) and "the job 64" in str(info.value)
    with pytest.raises(SpecError) as info:
        validate_against_namespace(
            spec, digits, NamespaceSpec("digits_ssl", default_kinds(64, 3, 8))
        )
    assert info.value.field == "dataset" and "3 classes" in str(info.value)


def test_a_registered_file_loads_like_the_file_and_a_missing_one_names_the_uri(
    tmp_path: Path,
) -> None:
    x, y = load_digits(return_X_y=True)
    path = tmp_path / "mine.npz"
    np.savez(path, X=x[:300], y=y[:300])
    blobs = MemoryBlobs()
    uri, info = register_data(blobs, path)
    assert uri == f"bank://datasets/mine-{info.sha256[:12]}.npz"
    assert register_data(blobs, path) == (uri, info)  # the same bytes: the same entry
    local = load_dataset(DatasetSpec(path=path, labeled=40), seed=1)
    remote = load_dataset(DatasetSpec(uri=uri, labeled=40), seed=1, blobs=blobs)
    assert remote.ids_train == local.ids_train
    assert np.array_equal(remote.x_train, local.x_train)
    assert np.array_equal(remote.labeled, local.labeled)
    assert remote.name == "mine"  # its examples' ids are those of the file's
    with pytest.raises(DatasetError, match=r"datasets/gone\.npz is not in the bank") as err:
        load_dataset(DatasetSpec(uri="bank://datasets/gone.npz"), seed=0, blobs=blobs)
    assert err.value.field == "dataset.uri"
    with pytest.raises(DatasetError, match="over the limit of 100 bytes"):
        load_dataset(DatasetSpec(uri=uri), seed=0, blobs=blobs, max_bytes=100)
    with pytest.raises(CarlsError, match=r"must end in \.npz"):
        register_data(blobs, path, "mine.csv")
