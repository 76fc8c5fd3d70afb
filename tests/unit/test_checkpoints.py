"""Checkpoint artifacts: save, verify, load, infer and cache, with tiny Keras models."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from carls.makers.checkpoints import (
    ModelCache,
    artifact_path,
    file_sha256,
    load_model,
    resolve_uri,
    verify_artifact,
)
from carls.makers.errors import (
    ArtifactCorruptError,
    ArtifactMissingError,
    BadModelOutputError,
    InvalidInputError,
    NotAModelError,
)
from carls.schemas.records import CheckpointManifest
from carls.streams.errors import PublishError
from carls.trainers.checkpoints import CheckpointPublisher, save_artifact


def tiny_model(seed: int = 0, features: int = 8) -> Any:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,), name="features")
    embedding = keras.layers.Dense(4, name="embedding")(inputs)
    probabilities = keras.layers.Dense(3, activation="softmax", name="probabilities")(embedding)
    return keras.Model(inputs, [embedding, probabilities])


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_model()


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(37, 8)).astype(np.float32)


def manifest_for(path: Path, namespace: str = "ns", step: int = 1) -> CheckpointManifest:
    data = path.read_bytes()
    return CheckpointManifest(
        namespace=namespace,
        step=step,
        uri=path.resolve().as_uri(),
        format="keras",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        created_at=1.0,
    )


def test_save_then_load_gives_the_same_outputs(
    model: Any, features: np.ndarray, tmp_path: Path
) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 42, producer="test")
    path = tmp_path / "ns" / "step-000000000042.keras"
    assert manifest.uri == path.resolve().as_uri()
    assert manifest.format == "keras" and manifest.step == 42 and manifest.producer == "test"
    assert manifest.size == path.stat().st_size
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(manifest.model_fingerprint) == 16
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind

    loaded = load_model(manifest)
    assert (loaded.feature_dim, loaded.embedding_dim, loaded.classes) == (8, 4, 3)
    assert loaded.fingerprint == manifest.model_fingerprint
    emb, probs = loaded.infer(features)
    want_emb, want_probs = (np.asarray(t) for t in model(features, training=False))
    assert emb.dtype == np.float32 and probs.dtype == np.float32
    assert np.allclose(emb, want_emb, atol=1e-5)
    assert np.allclose(probs, want_probs, atol=1e-5)


def test_infer_runs_in_chunks_and_handles_any_batch_size(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model(save_artifact(model, tmp_path, "ns", 1))
    monkeypatch.setattr("carls.makers.checkpoints.INFER_CHUNK", 16)
    x = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    emb, probs = loaded.infer(x)
    assert emb.shape == (50, 4) and probs.shape == (50, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[:3], loaded.infer(x[:3])[0], atol=1e-6)
    empty_emb, empty_probs = loaded.infer(np.zeros((0, 8), np.float32))
    assert empty_emb.shape == (0, 4) and empty_probs.shape == (0, 3)
    with pytest.raises(InvalidInputError, match=r"expected shape \(n, 8\)"):
        loaded.infer(np.zeros((2, 5), np.float32))


def test_nan_outputs_are_rejected(model: Any, tmp_path: Path) -> None:
    loaded = load_model(save_artifact(model, tmp_path, "ns", 1))

    def nan_function(x: Any) -> tuple[Any, Any]:
        emb, probs = loaded.function(x)
        return emb * np.float32(np.nan), probs

    broken = dataclasses.replace(loaded, function=nan_function)
    with pytest.raises(BadModelOutputError, match="embedding: NaN or Inf in row 0"):
        broken.infer(np.ones((3, 8), np.float32))


def test_logits_instead_of_probabilities_are_rejected(tmp_path: Path) -> None:
    inputs = keras.Input((8,))
    emb = keras.layers.Dense(4)(inputs)
    logits = keras.layers.Dense(3, kernel_initializer="ones", bias_initializer="ones")(emb)
    loaded = load_model(save_artifact(keras.Model(inputs, [emb, logits]), tmp_path, "ns", 1))
    with pytest.raises(BadModelOutputError, match="softmax"):
        loaded.infer(np.ones((2, 8), np.float32))


def test_sha256_mismatch_is_corrupt(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 1)
    wrong = dataclasses.replace(manifest, sha256="0" * 64)
    with pytest.raises(ArtifactCorruptError, match="sha256"):
        load_model(wrong)
    path = resolve_uri(manifest.uri)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=manifest.sha256):
        verify_artifact(manifest)


def test_size_mismatch_is_corrupt(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 1)
    with pytest.raises(ArtifactCorruptError, match="bytes"):
        verify_artifact(dataclasses.replace(manifest, size=manifest.size + 1))


def test_missing_file_is_missing(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 1)
    resolve_uri(manifest.uri).unlink()
    with pytest.raises(ArtifactMissingError, match="does not exist") as info:
        load_model(manifest)
    assert manifest.uri in str(info.value)


def test_random_bytes_are_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "junk.keras"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NotAModelError, match="does not load as Keras") as info:
        load_model(manifest_for(path))
    assert info.value.__cause__ is not None


def test_single_output_model_is_not_a_model(tmp_path: Path) -> None:
    inputs = keras.Input((8,))
    single = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    manifest = save_artifact(single, tmp_path, "ns", 1)
    with pytest.raises(NotAModelError, match="1 input"):
        load_model(manifest)


def test_other_formats_are_refused(model: Any, tmp_path: Path) -> None:
    manifest = dataclasses.replace(save_artifact(model, tmp_path, "ns", 1), format="onnx")
    with pytest.raises(NotAModelError, match="onnx"):
        load_model(manifest)


def test_resolve_uri(tmp_path: Path) -> None:
    assert resolve_uri("file:///a/b%20c.keras") == Path("/a/b c.keras")
    assert resolve_uri("file://localhost/a/b.keras") == Path("/a/b.keras")
    assert resolve_uri("/a/b.keras") == Path("/a/b.keras")
    assert resolve_uri("ns/x.keras", tmp_path) == tmp_path.resolve() / "ns" / "x.keras"
    for bad in ("s3://bucket/x.keras", "file://host/x.keras", "ns/x.keras", "../x.keras"):
        with pytest.raises(ArtifactMissingError):
            resolve_uri(bad, tmp_path if bad.startswith("..") else None)


def test_a_worker_loads_only_from_its_store_however_the_uri_names_the_file(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    (store / "ns").mkdir(parents=True)
    inside = store / "ns" / "step-1.keras"
    inside.write_bytes(b"x")
    assert resolve_uri(inside.as_uri(), store) == inside.resolve()
    assert resolve_uri(str(inside), store) == inside.resolve()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for makers")
    (store / "ns" / "link.keras").symlink_to(secret)
    for uri in (
        secret.as_uri(),
        str(secret),
        "file:///etc/passwd",
        "ns/../../secret.txt",
        "ns/link.keras",  # a symlink out of the store
    ):
        with pytest.raises(ArtifactMissingError, match="outside the checkpoint store"):
            resolve_uri(uri, store)


def test_a_file_that_does_not_match_its_manifest_is_refused_without_telling_its_digest(
    model: Any, tmp_path: Path
) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 4)
    real = file_sha256(resolve_uri(manifest.uri))
    for wrong in (
        dataclasses.replace(manifest, size=manifest.size + 1),
        dataclasses.replace(manifest, sha256="0" * 64),
    ):
        with pytest.raises(ArtifactCorruptError) as err:
            verify_artifact(wrong, tmp_path)
        assert real not in str(err.value) and f"{manifest.size} bytes" not in str(err.value)


def test_relative_uri_loads_against_the_root(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 3)
    relative = dataclasses.replace(manifest, uri="ns/step-000000000003.keras")
    assert load_model(relative, root=tmp_path).classes == 3


def test_artifact_path_validates_its_parts(tmp_path: Path) -> None:
    assert artifact_path(tmp_path, "ns", 7).name == "step-000000000007.keras"
    with pytest.raises(InvalidInputError):
        artifact_path(tmp_path, "ns", -1)
    with pytest.raises(InvalidInputError, match="namespace"):
        artifact_path(tmp_path, "../etc", 1)


def test_cache_loads_each_step_once_and_evicts_old_steps(model: Any, tmp_path: Path) -> None:
    cache = ModelCache(max_per_namespace=2)
    manifests = [save_artifact(model, tmp_path, "ns", step) for step in (1, 2, 3)]
    first = cache.get(manifests[0])
    assert cache.get(manifests[0]) is first
    assert cache.loads == 1
    cache.get(manifests[1])
    cache.get(manifests[2])
    assert cache.loads == 3
    assert cache.steps("ns") == [2, 3]
    latest = cache.latest("ns")
    assert latest is not None and latest.step == 3
    assert cache.latest("other") is None
    cache.get(manifests[0])  # evicted: loaded again, but older than the kept window
    assert cache.loads == 4 and cache.steps("ns") == [2, 3]


def test_failed_load_keeps_the_previous_model_serving(model: Any, tmp_path: Path) -> None:
    cache = ModelCache(max_per_namespace=1)
    serving = cache.get(save_artifact(model, tmp_path, "ns", 1))
    newer = save_artifact(tiny_model(seed=1), tmp_path, "ns", 2)
    corrupt = dataclasses.replace(newer, sha256="f" * 64)
    with pytest.raises(ArtifactCorruptError):
        cache.get(corrupt)
    assert cache.latest("ns") is serving
    assert cache.loads == 1 and cache.steps("ns") == [1]
    assert cache.get(newer).step == 2  # the good manifest of that step still loads
    assert cache.steps("ns") == [2]


def test_concurrent_gets_load_once(model: Any, tmp_path: Path) -> None:
    cache = ModelCache()
    manifest = save_artifact(model, tmp_path, "ns", 5)
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda _: cache.get(manifest), range(16)))
    assert cache.loads == 1
    assert all(g is got[0] for g in got)


def test_importing_makers_does_not_import_tensorflow() -> None:
    code = "import sys, makers.checkpoints, makers.compute; print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


class _Manifests:
    """Stands in for the Kafka publisher: keeps the manifests it is given."""

    def __init__(self) -> None:
        self.sent: list[CheckpointManifest] = []

    def manifest(self, m: CheckpointManifest) -> None:
        self.sent.append(m)


@pytest.mark.parametrize("start", [0, 800])
def test_a_job_never_publishes_its_untrained_model(model: Any, tmp_path: Path, start: int) -> None:
    """A peer distilling an untrained model's predictions, or a trainer taking them as
    pseudo labels, learns noise: the first checkpoint comes ``every_steps`` into the job,
    then one every ``every_steps``."""
    sent = _Manifests()
    ckpt = CheckpointPublisher(
        sent,  # type: ignore[arg-type]
        tmp_path,
        "ns",
        "test",
        every_steps=100,
        start_step=start,
    )
    for step in range(start + 1, start + 301):
        if ckpt.due(step):
            ckpt.publish(model, step)
    ckpt.close()
    assert [m.step for m in sent.sent] == [start + 100, start + 200, start + 300]
    assert ckpt.published == sent.sent


class _KafkaAway(_Manifests):
    """Refuses the first ``failures`` announcements, as a Kafka that is away would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def manifest(self, m: CheckpointManifest) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise PublishError("KafkaTimeoutError: failed to update metadata")
        super().manifest(m)


def test_checkpoints_are_saved_at_once_and_announced_in_order_once_kafka_is_back(
    model: Any, tmp_path: Path
) -> None:
    away = _KafkaAway(failures=3)
    ckpt = CheckpointPublisher(away, tmp_path, "ns", "test", every_steps=1)  # type: ignore[arg-type]
    saved = [ckpt.publish(model, step) for step in (1, 2, 3)]
    assert all(resolve_uri(m.uri).is_file() for m in saved)  # saved before any announcement
    ckpt.close()
    assert [m.step for m in away.sent] == [1, 2, 3] and away.calls == 6
    assert ckpt.published == away.sent


def test_announcements_kafka_never_takes_are_given_up_when_training_ends(
    model: Any, tmp_path: Path
) -> None:
    away = _KafkaAway(failures=10**6)
    ckpt = CheckpointPublisher(
        away,  # type: ignore[arg-type]
        tmp_path,
        "ns",
        "test",
        every_steps=1,
        announce_wait_s=1.0,
    )
    ckpt.publish(model, 1)
    ckpt.close()  # returns after announce_wait_s, without hanging training's end
    assert away.sent == [] and ckpt.published == []
