"""Job specs: defaults, round trips, and every bad input named by its field."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from carls.cli import main
from carls.trainers.errors import DatasetError, SpecError
from carls.trainers.paradigms import (
    Codistillation,
    Graph,
    Multimodal,
    PseudoLabel,
    PseudoLabelGraph,
    from_spec,
)
from carls.trainers.paradigms.registry import PARADIGMS as REGISTRY
from carls.trainers.spec import (
    PARADIGMS,
    DatasetSpec,
    JobSpec,
    ModelSpec,
    ParadigmSpec,
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
    assert spec.paradigm == ParadigmSpec.of(PseudoLabelGraph(threshold=0.8))
    assert spec.paradigm.name == "pseudo_label_graph"
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
        {"dataset.standardize": False, "model.hidden": [], "model.logits": 0},
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
    assert isinstance(multi.paradigm.params, Multimodal)
    kinds = multi.kinds(3)
    assert kinds["embedding/a"] == kinds["embedding/b"] == 64
    assert "embedding/c" not in kinds


# ---------------------------------------------------------------------------------------
# Bad specs, each named by its field


def test_unknown_paradigm_lists_the_valid_ones() -> None:
    err = spec_error(spec_dict({"paradigm.name": "magic"}), "paradigm.name")
    assert all(name in str(err) for name in PARADIGMS)
    assert err.problem == f"unknown paradigm 'magic'; expected one of {', '.join(PARADIGMS)}"
    assert PARADIGMS[:2] == ("supervised", "pseudo_label") and tuple(REGISTRY) == PARADIGMS
    err = spec_error(spec_dict({"paradigm.name": DELETE}), "paradigm.name")
    assert err.problem.startswith("required; expected one of supervised, pseudo_label")


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"epochs": 3}, "epochs", "unknown key"),
        ({"train.stpes": 3}, "train.stpes", "unknown key"),
        (
            {"paradigm": {"name": "pseudo_label", "params": {"thresh": 0.5}}},
            "paradigm.params.thresh",
            "unknown key; expected one of source, thresholds, threshold, align, weight",
        ),
        ({"paradigm.params": {"threshold": 0.5}}, "paradigm.params.threshold", "expected none"),
        ({"train.steps": "many"}, "train.steps", "expected an int"),
        ({"train.batch_size": True}, "train.batch_size", "expected an int"),
        ({"train.steps": 2.0}, "train.steps", "expected an int"),
        ({"train.seed": "3"}, "train.seed", "expected an int, got str '3'"),
        ({"train.ema": True}, "train.ema", "expected a number, got a boolean (True)"),
        ({"train.learning_rate": float("nan")}, "train.learning_rate", "a finite number"),
        (
            {"paradigm": {"name": "pseudo_label", "params": {"class_balance": "yes"}}},
            "paradigm.params.class_balance",
            "expected true or false, got str 'yes'",
        ),
        ({"train.augment": "flip"}, "train.augment", "unknown value 'flip'; expected one of none,"),
        ({"dataset.label_column": ""}, "dataset.label_column", "a non-empty string"),
        ({"dataset.standardize": 1}, "dataset.standardize", "expected true or false, got int 1"),
        ({"dataset.modalities": {"A": [0, 2]}}, "dataset.modalities.A", "must match"),
        ({"dataset.modalities": {"a": [0, 2, 4]}}, "dataset.modalities.a", "at most 2 items"),
        ({"model.hidden": [64, 0]}, "model.hidden[1]", "must be >= 1, got 0"),
        ({"model": [1]}, "model", "expected a mapping"),
        ({"train.steps": 0}, "train.steps", "must be >= 1, got 0"),
        ({"dataset.test_size": 1.0}, "dataset.test_size", "must be < 1, got 1.0"),
        ({"model.dropout": 1}, "model.dropout", "must be < 1, got 1"),
        ({"train.learning_rate": 0}, "train.learning_rate", "must be > 0, got 0"),
        (
            {"paradigm": {"name": "pseudo_label", "params": {"threshold": 1.5}}},
            "paradigm.params.threshold",
            "must be <= 1, got 1.5",
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
        ({"dataset.labeled": 0}, "dataset.labeled", "must be >= 1, got 0"),
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
            {"paradigm": {"name": "multimodal", "params": {"modality": "a", "others": ["b"]}}},
            "paradigm.params.modality",
            "declares none",
        ),
        (
            {"paradigm": {"name": "multimodal", "params": {"modality": "a", "others": []}}},
            "paradigm.params.others",
            "expected at least 1 item, got 0",
        ),
    ],
)
def test_bad_values_are_named(changes: dict[str, Any], field: str, words: str) -> None:
    err = spec_error(spec_dict(changes), field)
    assert words in err.problem


def test_several_problems_report_the_first_and_count_the_others() -> None:
    bad = {"train.steps": 0, "train.seed": -1, "train.ema": 2}
    err = spec_error(spec_dict(bad), "train.steps")
    assert err.problem == "must be >= 1, got 0 (and 2 more problems)"
    err = spec_error(spec_dict({"train.steps": 0, "train.seed": -1}), "train.steps")
    assert err.problem.endswith(" (and 1 more problem)")


def test_empty_optional_sections_take_the_defaults() -> None:
    spec = load_spec(
        spec_dict(
            {"model": None, "train": None, "dataset.modalities": None, "paradigm.params": None}
        )
    )
    assert spec.model == ModelSpec() and spec.train == TrainSpec()
    assert spec.dataset.modalities == {}


def test_codistillation_reads_its_peer() -> None:
    spec = load_spec(spec_dict({"paradigm": {"name": "codistillation", "params": {"peer": "b"}}}))
    assert spec.paradigm.params == Codistillation(peer="b")


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
# The model: the built-in MLP, a user's builder, or a saved Keras model

BUILDERS = "carls_test_builders"


@pytest.fixture
def builders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of model builders, as a user's package would be."""
    (tmp_path / f"{BUILDERS}.py").write_text(
        "def build(input_shape, classes, **params):\n"
        "    return ('model', input_shape, classes, params)\n"
        "not_callable = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, BUILDERS, raising=False)
    return BUILDERS


def test_a_builder_is_imported_and_loads(builders: str) -> None:
    spec = load_spec(spec_dict({"model": {"builder": f"{builders}:build", "params": {"width": 8}}}))
    assert spec.model.builder == f"{builders}:build" and spec.model.params == {"width": 8}
    assert (spec.model.embedding, spec.model.logits) == ("embedding", "logits")
    build = spec.model.load_builder()
    assert build(input_shape=(8, 8, 1), classes=10, **spec.model.params) == (
        "model",
        (8, 8, 1),
        10,
        {"width": 8},
    )
    with pytest.raises(SpecError) as info:
        ModelSpec().load_builder()
    assert info.value.field == "model.builder"


@pytest.mark.parametrize(
    ("builder", "words"),
    [
        ("no_colon", "expected package.module:function, got 'no_colon'"),
        ("pkg.mod:fn:extra", "expected package.module:function"),
        ("carls_no_such_module.models:build", "cannot import 'carls_no_such_module.models': No "),
        (f"{BUILDERS}:absent", f"{BUILDERS} has no callable 'absent'"),
        (f"{BUILDERS}:not_callable", f"{BUILDERS} has no callable 'not_callable'"),
    ],
)
def test_bad_builders_name_model_builder(builders: str, builder: str, words: str) -> None:
    err = spec_error(spec_dict({"model": {"builder": builder}}), "model.builder")
    assert words in err.problem


def test_a_saved_model_must_exist_and_excludes_a_builder(tmp_path: Path, builders: str) -> None:
    err = spec_error(spec_dict({"model.path": str(tmp_path / "m.keras")}), "model.path")
    assert "no such file" in err.problem
    (tmp_path / "m.h5").write_text("")
    err = spec_error(spec_dict({"model.path": str(tmp_path / "m.h5")}), "model.path")
    assert "expected a .keras file" in err.problem
    saved = tmp_path / "m.keras"
    saved.write_text("")
    err = spec_error(
        spec_dict({"model": {"path": str(saved), "builder": f"{builders}:build"}}), "model"
    )
    assert "not both" in err.problem


def test_params_only_with_a_builder(tmp_path: Path) -> None:
    err = spec_error(spec_dict({"model.params": {"width": 8}}), "model.params")
    assert err.problem == "only a builder takes params"
    saved = tmp_path / "m.keras"
    saved.write_text("")
    spec_error(spec_dict({"model": {"path": str(saved), "params": {"a": 1}}}), "model.params")


@pytest.mark.parametrize("value", [True, "", 1.5, None, [0]])
def test_outputs_are_names_or_indices(value: object) -> None:
    err = spec_error(spec_dict({"model.logits": value}), "model.logits")
    assert "expected an output name or index" in err.problem
    assert load_spec(spec_dict({"model.logits": 1, "model.embedding": "emb"})).model.logits == 1


def test_round_trip_with_a_user_model(tmp_path: Path, builders: str) -> None:
    job = tmp_path / "jobs" / "job.yaml"
    job.parent.mkdir()
    (job.parent / "m.keras").write_text("")
    for model in (
        {"builder": f"{builders}:build", "params": {"width": 8, "acts": ["relu"]}, "logits": 1},
        {"path": "m.keras", "embedding": "emb", "logits": "out"},
    ):
        job.write_text(yaml.safe_dump(spec_dict({"model": model})))
        spec = load_spec(job)
        as_dict = spec.to_dict()
        assert load_spec(as_dict) == spec
        assert load_spec(json.loads(json.dumps(as_dict))) == spec
    assert spec.model.path == (job.parent / "m.keras").resolve()
    assert as_dict["model"]["path"] == str(spec.model.path)


# ---------------------------------------------------------------------------------------
# The paradigms: one declaration per parameter, shared with the library


def test_library_plugins_validate_like_the_spec() -> None:
    with pytest.raises(ValidationError) as info:
        PseudoLabel(threshold=1.5)
    assert info.value.errors()[0]["loc"] == ("threshold",)
    with pytest.raises(ValidationError):
        Graph(k=2.0)
    with pytest.raises(ValidationError):
        Graph(target="logits")
    with pytest.raises(ValidationError):
        PseudoLabel(treshold=0.5)
    with pytest.raises(ValidationError):
        Multimodal(modality="a", others=("a",))
    assert PseudoLabel(threshold=1) == PseudoLabel(threshold=1.0)


def test_the_spec_params_are_the_plugin_classes() -> None:
    spec = load_spec(spec_dict({"paradigm": {"name": "graph", "params": {"k": 4}}}))
    assert type(spec.paradigm.params) is Graph
    assert spec.paradigm == ParadigmSpec.of(Graph(k=4))
    assert spec.kinds(10)["neighbours"] == 4


def test_from_spec_returns_fresh_plugins() -> None:
    spec = load_spec(spec_dict({"paradigm": {"name": "pseudo_label", "params": {"weight": 2}}}))
    first, second = from_spec(spec), from_spec(spec)
    assert first == second == [PseudoLabel(weight=2.0)]
    assert first[0] is not second[0] and first[0] is not spec.paradigm.params
    assert isinstance(first[0], PseudoLabel)
    first[0].threshold = 0.1
    assert spec.paradigm.params == PseudoLabel(weight=2.0)
    assert from_spec(spec)[0] == PseudoLabel(weight=2.0)
    assert from_spec(load_spec(BASE)) == []


def test_pseudo_label_graph_is_both_plugins_with_their_declarations() -> None:
    spec = load_spec(
        spec_dict(
            {"paradigm": {"name": "pseudo_label_graph", "params": {"pseudo_weight": 2, "k": 3}}}
        )
    )
    assert from_spec(spec) == [PseudoLabel(weight=2.0), Graph(k=3)]
    own = {
        "pseudo_weight": (PseudoLabel, "weight"),
        "source": (PseudoLabel, "source"),
        "thresholds": (PseudoLabel, "thresholds"),
        "threshold": (PseudoLabel, "threshold"),
        "align": (PseudoLabel, "align"),
        "class_balance": (PseudoLabel, "class_balance"),
        "graph_weight": (Graph, "weight"),
        "k": (Graph, "k"),
        "temperature": (Graph, "temperature"),
        "bootstrap": (Graph, "bootstrap"),
        "graph": (Graph, "graph"),
        "target": (Graph, "target"),
    }
    assert list(PseudoLabelGraph.model_fields) == list(own)
    for name, (plugin, field) in own.items():
        mine, theirs = PseudoLabelGraph.model_fields[name], plugin.model_fields[field]
        assert mine.rebuild_annotation() == theirs.rebuild_annotation(), name
        assert mine.default == theirs.default and mine.description == theirs.description
    spec_error(
        spec_dict({"paradigm": {"name": "pseudo_label_graph", "params": {"k": 0}}}),
        "paradigm.params.k",
    )


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


def test_submit_dry_run_describes_image_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "images.npz", X=np.ones((20, 8, 8, 1)), y=np.arange(20) % 2)
    job = write_job(tmp_path, {"dataset": {"path": "images.npz", "standardize": False}})
    result = CliRunner().invoke(main, ["submit", str(job), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "14 train (14 labeled) + 6 test examples, 8 x 8 x 1 inputs, 2 classes" in result.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"paradigm.name": "magic"}, "error: paradigm.name: unknown paradigm 'magic'"),
        ({"dataset": {"name": "iris", "labeled": 2}}, "error: dataset.labeled: 2 labeled"),
        (  # iris's 4 features are not a 2 x 2 image
            {"dataset": {"name": "iris", "labeled": 9}, "train.augment": "affine"},
            "error: train.augment:",
        ),
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


def test_a_dataset_at_a_uri_is_checked_before_anything_is_read(tmp_path: Path) -> None:
    spec = load_spec(spec_dict({"dataset": {"uri": "bank://datasets/mine-0123456789ab.npz"}}))
    assert spec.dataset.uri == "bank://datasets/mine-0123456789ab.npz"
    assert spec.dataset.display_name == "mine" and spec.dataset.suffix == ".npz"
    assert load_spec(spec.to_dict()) == spec
    for uri, problem in (
        ("bank://datasets/mine.txt", "expected an .npz or .csv file"),
        ("nosuch://bucket/mine.npz", "no reader for scheme 'nosuch'"),
        ("s3://bucket/mine.npz", "s3fs"),  # fsspec knows s3; its package is not installed
        ("file:///data/mine.npz", "a local file goes in path:"),
        ("bank://mine.npz", "not a bank://<scope>/<name> URI"),
    ):
        err = spec_error(spec_dict({"dataset": {"uri": uri}}), "dataset.uri")
        assert problem in str(err), (uri, str(err))
    both = {"dataset": {"uri": "bank://datasets/a.npz", "name": "digits"}}
    assert "exactly one of name" in str(spec_error(spec_dict(both), "dataset"))


def test_a_group_whose_jobs_disagree_on_task_or_seed_is_refused(tmp_path: Path) -> None:
    def peer(name: str, **changes: Any) -> str:
        path = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.yaml"
        base = {"namespace": name, "dataset": {"name": "iris", "labeled": 6}, **changes}
        path.write_text(yaml.safe_dump(spec_dict(base)))
        return str(path)

    ok = CliRunner().invoke(main, ["submit", peer("a"), peer("b"), "--dry-run", "--json"])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert out["group"].startswith("group-")
    assert [j["namespace"] for j in out["jobs"]] == ["a", "b"]
    for other, what in (
        (peer("c", **{"train.seed": 7}), "train.seed"),
        (peer("d", dataset={"name": "wine", "labeled": 6}), "dataset"),
        (peer("a"), "namespaces of their own"),
    ):
        bad = CliRunner().invoke(main, ["submit", peer("a"), other, "--dry-run"])
        assert bad.exit_code == 2 and what in bad.stderr, bad.output
    # peers that start from different weights on one split: one split_seed, two train seeds
    split = {"name": "iris", "labeled": 6, "split_seed": 4}
    a, b = peer("a", dataset=split), peer("b", dataset=split, **{"train.seed": 9})
    ok = CliRunner().invoke(main, ["submit", a, b, "--dry-run", "--json"])
    assert ok.exit_code == 0, ok.output


def test_the_split_seed_splits_and_labels_whatever_the_train_seed() -> None:
    from carls.trainers.datasets import load_dataset
    from carls.trainers.spec import DatasetSpec

    spec = DatasetSpec(name="digits", labeled=30, split_seed=5)
    a, b = load_dataset(spec, seed=0), load_dataset(spec, seed=1)
    assert a.ids_train == b.ids_train and a.ids_test == b.ids_test
    assert (a.labeled == b.labeled).all()
    c = load_dataset(DatasetSpec(name="digits", labeled=30), seed=5)
    assert c.ids_train == a.ids_train and (c.labeled == a.labeled).all()
    d = load_dataset(DatasetSpec(name="digits", labeled=30), seed=0)
    assert d.ids_train != a.ids_train


def test_the_codistillation_demo_submits_valid_peers_on_one_split_from_two_starts(
    tmp_path: Path,
) -> None:
    from carls.demo_codistill import PEER_OFFSET, specs

    jobs = specs(2, "abc123")
    a, b, alone = (load_spec(jobs[r]) for r in ("a", "b", "alone"))
    assert a.paradigm.params.peer == b.namespace and b.paradigm.params.peer == a.namespace
    assert a.dataset == b.dataset == alone.dataset and a.dataset.split_seed == 2
    assert (a.train.seed, b.train.seed, alone.train.seed) == (2, 2 + PEER_OFFSET, 2)
    assert alone.paradigm.name == "supervised" and alone.model == a.model
    assert alone.train == a.train
    paths = []
    for role in ("a", "b"):
        paths.append(tmp_path / f"{role}.yaml")
        paths[-1].write_text(yaml.safe_dump(jobs[role]))
    ok = CliRunner().invoke(main, ["submit", *map(str, paths), "--dry-run", "--json"])
    assert ok.exit_code == 0, ok.output


def test_a_job_reading_propagated_labels_declares_that_kind() -> None:
    default = load_spec(spec_dict({"paradigm": {"name": "pseudo_label"}}))  # propagated
    assert default.kinds(10)["propagated"] == 10
    spreading = load_spec(spec_dict({"paradigm": {"name": "pseudo_label_graph"}}))
    assert spreading.kinds(10)["propagated"] == 10
    predictions = load_spec(
        spec_dict({"paradigm": {"name": "pseudo_label", "params": {"source": "pseudo_label"}}})
    )
    assert "propagated" not in predictions.kinds(10)
    spec_error(
        spec_dict({"paradigm": {"name": "pseudo_label", "params": {"source": "oracle"}}}),
        "paradigm.params.source",
    )
