"""Job specs: defaults, round trips, and every bad input named by its field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from carls.cli import main
from carls.trainers.errors import DatasetError, SpecError
from carls.trainers.spec import (
    PARADIGMS,
    CodistillationParams,
    DatasetSpec,
    JobSpec,
    ModelSpec,
    MultimodalParams,
    ParadigmSpec,
    PseudoLabelGraphParams,
    TrainSpec,
    load_spec,
)

BASE: dict[str, Any] = {
    "namespace": "digits_ssl",
    "dataset": {"name": "digits"},
    "paradigm": {"name": "supervised"},
}
DELETE = object()


def spec_dict(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """BASE with dotted-path changes applied (``DELETE`` removes the key)."""
    out = copy.deepcopy(BASE)
    for dotted, value in (changes or {}).items():
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return out


def spec_error(source: Any, field: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(source)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    return info.value


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, X=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    return path


# ---------------------------------------------------------------------------------------
# Valid specs


def test_yaml_spec_loads_with_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "namespace: digits_ssl\n"
        "dataset: {name: digits, labeled: 50}\n"
        "paradigm:\n  name: pseudo_label_graph\n  params: {threshold: 0.8}\n"
        "train: {learning_rate: 1e-3}\n"  # YAML 1.1 would read 1e-3 as a string
    )
    spec = load_spec(path)
    assert spec.namespace == "digits_ssl"
    assert spec.dataset == DatasetSpec(name="digits", labeled=50)
    assert spec.model == ModelSpec(hidden=(256,), embedding_dim=64, dropout=0.1)
    assert spec.paradigm == ParadigmSpec(
        "pseudo_label_graph", PseudoLabelGraphParams(threshold=0.8)
    )
    assert spec.train == TrainSpec(learning_rate=0.001)
    assert spec.train.steps == 2000 and spec.train.checkpoint_every_s is None


def test_json_spec_loads_like_the_same_yaml(tmp_path: Path) -> None:
    data = spec_dict({"train.steps": 10, "model.hidden": [32, 16]})
    (tmp_path / "job.json").write_text(json.dumps(data))
    (tmp_path / "job.yml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "job.json")
    assert spec == load_spec(tmp_path / "job.yml") == load_spec(data)
    assert spec.train.steps == 10 and spec.model.hidden == (32, 16)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"paradigm": {"name": "pseudo_label", "params": {"class_balance": False}}},
        {"paradigm": {"name": "graph", "params": {"k": 4, "target": "probabilities"}}},
        {"paradigm": {"name": "curriculum", "params": {"pacing": "root"}}},
        {"paradigm": {"name": "codistillation", "params": {"peer": "digits_peer"}}},
        {
            "dataset.modalities": {"left": [0, 32], "right": [32, 64]},
            "paradigm": {"name": "multimodal", "params": {"modality": "left", "others": ["right"]}},
        },
        {"train.checkpoint_every_s": 30, "dataset.labeled": 20, "dataset.test_size": 0.25},
    ],
)
def test_to_dict_round_trips_and_is_json(changes: dict[str, Any]) -> None:
    spec = load_spec(spec_dict(changes))
    as_dict = spec.to_dict()
    assert load_spec(as_dict) == spec
    assert load_spec(json.loads(json.dumps(as_dict))) == spec


def test_relative_paths_resolve_against_the_spec_file(tmp_path: Path, npz_file: Path) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text("{}")
    job = tmp_path / "jobs" / "job.yaml"
    job.parent.mkdir()
    data = spec_dict(
        {
            "dataset": {"path": "../data.npz"},
            "paradigm": {"name": "graph", "params": {"graph": "../graph.json"}},
        }
    )
    job.write_text(yaml.safe_dump(data))
    spec = load_spec(job)
    assert spec.dataset.path == npz_file.resolve()
    assert spec.to_dict()["paradigm"]["params"]["graph"] == str(graph.resolve())
    assert load_spec(spec.to_dict()) == spec


def test_kinds_are_the_standard_five_plus_the_modalities() -> None:
    spec = load_spec(spec_dict({"model.embedding_dim": 32}))
    assert spec.kinds(10) == {
        "embedding": 32,
        "pseudo_label": 10,
        "prediction": 10,
        "difficulty": 1,
        "neighbours": 8,
    }
    multi = load_spec(
        spec_dict(
            {
                "dataset.modalities": {"a": [0, 8], "b": [8, 16], "c": [16, 64]},
                "paradigm": {"name": "multimodal", "params": {"modality": "a", "others": ["b"]}},
            }
        )
    )
    assert isinstance(multi.paradigm.params, MultimodalParams)
    kinds = multi.kinds(3)
    assert kinds["embedding/a"] == kinds["embedding/b"] == 64
    assert "embedding/c" not in kinds


# ---------------------------------------------------------------------------------------
# Bad specs, each named by its field


def test_unknown_paradigm_lists_the_valid_ones() -> None:
    err = spec_error(spec_dict({"paradigm.name": "magic"}), "paradigm.name")
    assert all(name in str(err) for name in PARADIGMS)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"epochs": 3}, "epochs", "unknown key"),
        ({"train.stpes": 3}, "train.stpes", "unknown key"),
        (
            {"paradigm": {"name": "pseudo_label", "params": {"thresh": 0.5}}},
            "paradigm.params.thresh",
            "unknown key; expected one of threshold, weight, class_balance",
        ),
        ({"paradigm.params": {"threshold": 0.5}}, "paradigm.params.threshold", "expected none"),
        ({"train.steps": "many"}, "train.steps", "expected an int"),
        ({"train.batch_size": True}, "train.batch_size", "expected an int"),
        ({"train.steps": 2.0}, "train.steps", "expected an int"),
        ({"model.hidden": [64, 0]}, "model.hidden", "positive ints"),
        ({"model": [1]}, "model", "expected a mapping"),
        ({"train.steps": 0}, "train.steps", ">= 1"),
        ({"dataset.test_size": 1.0}, "dataset.test_size", "in (0.0, 1.0)"),
        ({"model.dropout": 1}, "model.dropout", "in [0.0, 1.0)"),
        ({"train.learning_rate": 0}, "train.learning_rate", "> 0.0"),
        (
            {"paradigm": {"name": "pseudo_label", "params": {"threshold": 1.5}}},
            "paradigm.params.threshold",
            "in [0.0, 1.0]",
        ),
        (
            {"paradigm": {"name": "graph", "params": {"target": "logits"}}},
            "paradigm.params.target",
            "embedding, probabilities",
        ),
        ({"namespace": "Digits SSL"}, "namespace", "does not match"),
        ({"namespace": DELETE}, "namespace", "required"),
        ({"paradigm": DELETE}, "paradigm", "required"),
        ({"dataset.name": "mnist"}, "dataset.name", "digits, breast_cancer, wine, iris"),
        ({"dataset.path": "x.npz"}, "dataset", "exactly one of name"),
        ({"dataset.labeled": 0}, "dataset.labeled", ">= 1"),
        ({"dataset.modalities": {"a": [4, 2]}}, "dataset.modalities.a", "start < stop"),
        (
            {"paradigm": {"name": "codistillation", "params": {}}},
            "paradigm.params.peer",
            "required",
        ),
        (
            {"paradigm": {"name": "codistillation", "params": {"peer": "digits_ssl"}}},
            "paradigm.params.peer",
            "not this one",
        ),
        (
            {
                "dataset.modalities": {"a": [0, 8], "b": [8, 64]},
                "paradigm": {"name": "multimodal", "params": {"modality": "z", "others": ["b"]}},
            },
            "paradigm.params.modality",
            "declares a, b",
        ),
        (
            {
                "dataset.modalities": {"a": [0, 8], "b": [8, 64]},
                "paradigm": {"name": "multimodal", "params": {"modality": "a", "others": ["a"]}},
            },
            "paradigm.params.others[0]",
            "own modality",
        ),
        (
            {"paradigm": {"name": "multimodal", "params": {"modality": "a", "others": []}}},
            "paradigm.params.modality",
            "declares none",
        ),
    ],
)
def test_bad_values_are_named(changes: dict[str, Any], field: str, words: str) -> None:
    err = spec_error(spec_dict(changes), field)
    assert words in err.problem


def test_codistillation_reads_its_peer() -> None:
    spec = load_spec(spec_dict({"paradigm": {"name": "codistillation", "params": {"peer": "b"}}}))
    assert spec.paradigm.params == CodistillationParams(peer="b")


def test_missing_files_say_their_path(tmp_path: Path) -> None:
    err = spec_error(tmp_path / "nope.yaml", str(tmp_path / "nope.yaml"))
    assert "no such file" in str(err)
    missing = tmp_path / "data.npz"
    err = spec_error(spec_dict({"dataset": {"path": str(missing)}}), "dataset.path")
    assert str(missing) in str(err)
    err = spec_error(
        spec_dict({"paradigm": {"name": "graph", "params": {"graph": str(tmp_path / "g.npz")}}}),
        "paradigm.params.graph",
    )
    assert "g.npz" in str(err)


def test_csv_needs_a_label_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    spec_error(spec_dict({"dataset": {"path": str(path)}}), "dataset.label_column")
    spec_error(spec_dict({"dataset.label_column": "b"}), "dataset.label_column")


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("job.yaml", "namespace: [a\n", "not valid YAML (line 2"),
        ("job.yaml", "namespace: a\nnamespace: b\n", "appears twice"),
        ("job.json", '{"namespace": "a",}', "not valid JSON (line 1"),
        ("job.yaml", "- a\n- b\n", "expected a mapping"),
        ("job.toml", "namespace = 'a'", "expected a .yaml, .yml or .json"),
    ],
)
def test_unreadable_files_are_named(tmp_path: Path, name: str, text: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    err = spec_error(path, str(path))
    assert words in err.problem


# ---------------------------------------------------------------------------------------
# carls submit --dry-run


def write_job(tmp_path: Path, changes: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec_dict(changes)))
    return path


def test_submit_dry_run_validates_without_servers(tmp_path: Path) -> None:
    job = write_job(tmp_path, {"dataset": {"name": "iris", "labeled": 6}})
    result = CliRunner().invoke(main, ["submit", str(job), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["namespace"] == "digits_ssl" and out["dry_run"] is True
    assert out["job_id"].startswith("digits_ssl-") and out["topic"].endswith(".jobs")
    assert "105 train (6 labeled) + 45 test examples, 4 features, 3 classes" in result.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"paradigm.name": "magic"}, "error: paradigm.name: unknown value 'magic'"),
        ({"dataset": {"name": "iris", "labeled": 2}}, "error: dataset.labeled: 2 labeled"),
    ],
)
def test_submit_reports_bad_specs(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    job = write_job(tmp_path, changes)
    result = CliRunner().invoke(main, ["submit", str(job), "--dry-run"])
    assert result.exit_code == 1
    assert message in result.stderr


def test_dataset_errors_are_spec_errors() -> None:
    assert issubclass(DatasetError, SpecError)
    assert isinstance(load_spec(BASE), JobSpec)
