"""Checkpoint artifacts: save, verify, load, infer and cache, with tiny Keras models."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import keras
import numpy as np
import pytest

from carls.bank.artifacts import ArtifactStore
from carls.bank.blobs import MemoryBlobs
from carls.bank.errors import BankUnavailableError, BlobTooLargeError, UnreadableUriError
from carls.makers.checkpoints import (
    ModelCache,
    artifact_path,
    fetch_artifact,
    file_sha256,
    load_model,
)
from carls.makers.errors import (
    ArtifactCorruptError,
    ArtifactMissingError,
    BadModelOutputError,
    InvalidInputError,
    NotAModelError,
)
from carls.schemas.errors import CarlsError
from carls.schemas.records import CheckpointManifest
from carls.streams.errors import PublishError
from carls.trainers.checkpoints import CheckpointPublisher, publish_artifact, save_artifact


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

    loaded = load_model(manifest, tmp_path)
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
    loaded = load_model(save_artifact(model, tmp_path, "ns", 1), tmp_path)
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
    loaded = load_model(save_artifact(model, tmp_path, "ns", 1), tmp_path)

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
    manifest = save_artifact(keras.Model(inputs, [emb, logits]), tmp_path, "ns", 1)
    loaded = load_model(manifest, tmp_path)
    with pytest.raises(BadModelOutputError, match="softmax"):
        loaded.infer(np.ones((2, 8), np.float32))


def test_sha256_mismatch_is_corrupt(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 1)
    wrong = dataclasses.replace(manifest, sha256="0" * 64)
    with pytest.raises(ArtifactCorruptError, match="sha256"):
        load_model(wrong, tmp_path)
    path = tmp_path / "ns" / "step-000000000001.keras"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=manifest.sha256[:12]):
        load_model(manifest, tmp_path)


def test_size_mismatch_is_corrupt(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 1)
    with pytest.raises(ArtifactCorruptError, match="bytes"):
        load_model(dataclasses.replace(manifest, size=manifest.size + 1), tmp_path)


def test_missing_file_is_missing(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 1)
    (tmp_path / "ns" / "step-000000000001.keras").unlink()
    with pytest.raises(ArtifactMissingError, match="does not exist") as info:
        load_model(manifest, tmp_path)
    assert manifest.uri in str(info.value)


def test_random_bytes_are_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "junk.keras"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NotAModelError, match="does not load as Keras") as info:
        load_model(manifest_for(path), tmp_path)
    assert info.value.__cause__ is not None


def test_single_output_model_is_not_a_model(tmp_path: Path) -> None:
    inputs = keras.Input((8,))
    single = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    manifest = save_artifact(single, tmp_path, "ns", 1)
    with pytest.raises(NotAModelError, match="1 input"):
        load_model(manifest, tmp_path)


def test_other_formats_are_refused(model: Any, tmp_path: Path) -> None:
    manifest = dataclasses.replace(save_artifact(model, tmp_path, "ns", 1), format="onnx")
    with pytest.raises(NotAModelError, match="onnx"):
        load_model(manifest, tmp_path)


def test_local_uris_name_files_inside_the_root(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "file")
    root = tmp_path.resolve()
    assert store.local_path((root / "a b.keras").as_uri()) == root / "a b.keras"
    assert store.local_path(f"file://localhost{root}/b.keras") == root / "b.keras"
    assert store.local_path(str(root / "c.keras")) == root / "c.keras"
    assert store.local_path("ns/x.keras") == root / "ns" / "x.keras"
    for bad in ("file://host/x.keras", "file:x.keras", "../x.keras"):
        with pytest.raises(UnreadableUriError):
            store.local_path(bad)


def test_a_manifest_of_an_unknown_scheme_or_an_absent_backend_is_missing(
    model: Any, tmp_path: Path
) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 1)
    for uri, why in (
        ("nosuch://bucket/x.keras", "no reader for scheme 'nosuch'"),
        ("s3://bucket/x.keras", "s3fs"),  # fsspec knows s3, its backend is not installed
        ("bank://checkpoints/ns/step-1.keras", "no bank blob store"),
    ):
        with pytest.raises(ArtifactMissingError, match=why):
            load_model(dataclasses.replace(manifest, uri=uri), tmp_path)


def test_a_worker_loads_only_from_its_store_however_the_uri_names_the_file(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path / "store", "file")
    (store.root / "ns").mkdir(parents=True)
    inside = store.root / "ns" / "step-1.keras"
    inside.write_bytes(b"x")
    assert store.local_path(inside.as_uri()) == inside.resolve()
    assert store.local_path(str(inside)) == inside.resolve()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for makers")
    (store.root / "ns" / "link.keras").symlink_to(secret)
    for uri in (
        secret.as_uri(),
        str(secret),
        "file:///etc/passwd",
        "ns/../../secret.txt",
        "ns/link.keras",  # a symlink out of the store
    ):
        with pytest.raises(UnreadableUriError, match="outside the checkpoint root"):
            store.local_path(uri)
        manifest = CheckpointManifest(
            namespace="ns", step=1, uri=uri, format="keras", sha256="0" * 64, size=1, created_at=1.0
        )
        with pytest.raises(ArtifactMissingError, match="outside the checkpoint root"):
            load_model(manifest, store)


def test_a_file_that_does_not_match_its_manifest_is_refused_without_telling_its_digest(
    model: Any, tmp_path: Path
) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 4)
    real = file_sha256(tmp_path / "ns" / "step-000000000004.keras")
    for wrong in (
        dataclasses.replace(manifest, size=manifest.size + 1),
        dataclasses.replace(manifest, sha256="0" * 64),
    ):
        with pytest.raises(ArtifactCorruptError) as err, fetch_artifact(wrong, tmp_path):
            pass
        assert real not in str(err.value) and f"{manifest.size} bytes" not in str(err.value)


def test_relative_uri_loads_against_the_root(model: Any, tmp_path: Path) -> None:
    manifest = save_artifact(model, tmp_path, "ns", 3)
    relative = dataclasses.replace(manifest, uri="ns/step-000000000003.keras")
    assert load_model(relative, tmp_path).classes == 3


def test_artifact_path_validates_its_parts(tmp_path: Path) -> None:
    assert artifact_path(tmp_path, "ns", 7).name == "step-000000000007.keras"
    with pytest.raises(InvalidInputError):
        artifact_path(tmp_path, "ns", -1)
    with pytest.raises(InvalidInputError, match="namespace"):
        artifact_path(tmp_path, "../etc", 1)


def test_cache_loads_each_step_once_and_evicts_old_steps(model: Any, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_per_namespace=2)
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
    cache = ModelCache(tmp_path, max_per_namespace=1)
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
    cache = ModelCache(tmp_path)
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
    assert all(Path(urlparse(m.uri).path).is_file() for m in saved)  # saved before announcing
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


class _BankAway(MemoryBlobs):
    """A blob store that does not answer the first ``failures`` uploads."""

    def __init__(self, failures: int) -> None:
        super().__init__(chunk_bytes=4096)
        self.failures = failures

    def put(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise BankUnavailableError("cassandra write a blob's index failed: timeout")
        return super().put(*args, **kwargs)


def test_checkpoints_go_to_the_banks_store_and_load_on_a_machine_without_the_files(
    model: Any, features: np.ndarray, tmp_path: Path
) -> None:
    blobs = _BankAway(failures=2)
    trainer = ArtifactStore(tmp_path / "trainer", "bank", blobs, keep=2)
    sent = _Manifests()
    ckpt = CheckpointPublisher(sent, trainer, "ns", "test", every_steps=1)  # type: ignore[arg-type]
    for step in (1, 2, 3):
        ckpt.publish(tiny_model(seed=step), step)
    ckpt.close()  # the bank came back after two refusals: all three went, in order
    assert [m.step for m in sent.sent] == [1, 2, 3]
    assert [m.uri for m in sent.sent] == [
        f"bank://checkpoints/ns/step-{s:012d}.keras" for s in (1, 2, 3)
    ]
    assert not list(trainer.root.rglob("step-*"))  # the trainer's copies are gone
    assert [i.name for i in blobs.entries("checkpoints/ns")] == [
        f"step-{s:012d}.keras" for s in (2, 3)
    ]  # the newest two are kept

    worker = ArtifactStore(tmp_path / "worker", "bank", blobs)
    loaded = load_model(sent.sent[-1], worker)
    want = np.asarray(tiny_model(seed=3)(features, training=False)[1])
    assert np.allclose(loaded.infer(features)[1], want, atol=1e-5)
    assert not list(worker.root.rglob("*.keras"))  # the fetched copy is deleted
    with pytest.raises(ArtifactMissingError, match="not in the bank"):
        load_model(sent.sent[0], worker)  # beyond the retention

    info = blobs.info("checkpoints/ns", "step-000000000003.keras")
    assert info is not None and info.chunks > 1
    key = ("checkpoints/ns", info.name, info.sha256, 1)
    blobs.rows.chunks[key] = b"\0" * info.chunk_bytes
    with pytest.raises(ArtifactCorruptError, match="corrupt"):
        load_model(sent.sent[-1], worker)
    del blobs.rows.chunks[key]
    with pytest.raises(ArtifactCorruptError, match=f"chunk 1 of {info.chunks} is missing"):
        load_model(sent.sent[-1], worker)
    small = ArtifactStore(tmp_path / "worker", "bank", blobs, max_bytes=100)
    with pytest.raises(ArtifactCorruptError, match="over the limit of 100 bytes"):
        load_model(sent.sent[-2], small)


def test_a_checkpoint_over_the_size_limit_fails_the_publish_and_leaves_nothing(
    model: Any, tmp_path: Path
) -> None:
    store = ArtifactStore(tmp_path, "bank", MemoryBlobs(), max_bytes=1000)
    ckpt = CheckpointPublisher(_Manifests(), store, "ns", "test", every_steps=1)  # type: ignore[arg-type]
    with pytest.raises(BlobTooLargeError, match="over the limit of 1,000 bytes"):
        ckpt.publish(model, 1)
    ckpt.close()
    assert not list(tmp_path.rglob("step-*"))


def test_checkpoints_go_to_an_object_store_through_fsspec(
    model: Any, features: np.ndarray, tmp_path: Path
) -> None:
    prefix = f"memory://carls-{uuid.uuid4().hex[:8]}/ckpt"
    trainer = ArtifactStore(tmp_path / "trainer", prefix, keep=1)
    first = publish_artifact(model, trainer, "ns", 1)
    second = publish_artifact(model, trainer, "ns", 2)
    assert second.uri == f"{prefix}/ns/step-000000000002.keras"
    worker = ArtifactStore(tmp_path / "worker", "file")
    assert load_model(second, worker).classes == 3
    with pytest.raises(ArtifactMissingError, match="cannot read it"):
        load_model(first, worker)  # kept: the newest one only


def test_destinations_are_checked_when_the_store_is_made(tmp_path: Path) -> None:
    for bad, why in (
        ("bank", "needs the bank's blob store"),
        ("ckpt", "expected 'bank', 'file' or an object-store URI prefix"),
        ("nosuch://x", "no reader for scheme 'nosuch'"),
    ):
        with pytest.raises(CarlsError, match=why):
            ArtifactStore(tmp_path, bad)


def test_kept_files_are_trimmed_only_once_announced(model: Any, tmp_path: Path) -> None:
    away = _KafkaAway(failures=3)
    store = ArtifactStore(tmp_path, "file", keep=2)
    ckpt = CheckpointPublisher(away, store, "ns", "test", every_steps=1)  # type: ignore[arg-type]
    saved = [ckpt.publish(model, step) for step in (1, 2, 3, 4)]
    assert all(Path(urlparse(m.uri).path).is_file() for m in saved)  # all wait for Kafka
    ckpt.close()
    assert [m.step for m in away.sent] == [1, 2, 3, 4]  # every one announced, in order
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == [
        "step-000000000003.keras",
        "step-000000000004.keras",
    ]
