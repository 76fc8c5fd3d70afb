"""Job specs: what ``carls submit`` sends and a trainer runs, read from YAML, JSON or a dict.

Only ``namespace``, ``dataset`` (``name`` or ``path``) and ``paradigm.name`` are required;
every other key has the default of the dataclasses below::

    namespace: digits_ssl
    dataset: {name: digits, labeled: 50, test_size: 0.3}   # or path: data.npz / data.csv
    model: {hidden: [256], embedding_dim: 64, dropout: 0.1}
    paradigm: {name: pseudo_label_graph, params: {threshold: 0.9, k: 8}}
    train: {steps: 2000, batch_size: 128, learning_rate: 0.003, checkpoint_every: 200}

Every key is checked: unknown keys, wrong types and out-of-range values raise ``SpecError``
naming the dotted field. Relative file paths are resolved against the spec file's folder,
so ``JobSpec.to_dict()`` carries absolute paths and reads back into an equal spec.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, cast

import yaml

from carls.bank.types import default_kinds
from carls.schemas import names
from carls.schemas.errors import SchemaError
from carls.trainers.errors import SpecError

DATASETS: Final = ("digits", "breast_cancer", "wine", "iris")
"""The scikit-learn bundled datasets a spec may name (they need no network)."""

PARADIGMS: Final = (
    "supervised",
    "pseudo_label",
    "graph",
    "pseudo_label_graph",
    "curriculum",
    "codistillation",
    "multimodal",
)
GRAPH_TARGETS: Final = ("embedding", "probabilities")
PACINGS: Final = ("linear", "root", "step")
DEFAULT_K: Final = 8
"""Neighbours per example, for paradigms that do not set ``k`` themselves."""

Paradigm = Literal[
    "supervised",
    "pseudo_label",
    "graph",
    "pseudo_label_graph",
    "curriculum",
    "codistillation",
    "multimodal",
]

# ---------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """A bundled dataset (``name``) or a file (``path``: .npz or .csv)."""

    name: str | None = None
    path: Path | None = None
    label_column: str | None = None
    labeled: int | None = None
    """Labeled training examples to keep, stratified; ``None``: all (or the npz mask)."""
    test_size: float = 0.3
    modalities: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Modality name -> ``[start, stop)`` feature columns."""

    @property
    def display_name(self) -> str:
        return self.name if self.name is not None else Path(str(self.path)).stem


@dataclass(frozen=True, slots=True)
class ModelSpec:
    hidden: tuple[int, ...] = (256,)
    embedding_dim: int = 64
    dropout: float = 0.1


@dataclass(frozen=True, slots=True)
class SupervisedParams:
    pass


@dataclass(frozen=True, slots=True)
class PseudoLabelParams:
    threshold: float = 0.9
    weight: float = 1.0
    class_balance: bool = True


@dataclass(frozen=True, slots=True)
class GraphParams:
    weight: float = 0.5
    k: int = DEFAULT_K
    temperature: float = 0.1
    """Neighbour weights are softmax(score / temperature) over an example's neighbours."""
    bootstrap: bool = True
    """Until the makers' neighbours arrive, use a kNN graph of the input features."""
    graph: Path | None = None
    """A user-given graph (.npz with ``ids`` and ``neighbours``, or JSON {id: [ids]})."""
    target: Literal["embedding", "probabilities"] = "embedding"


@dataclass(frozen=True, slots=True)
class PseudoLabelGraphParams:
    pseudo_weight: float = 1.0
    threshold: float = 0.9
    class_balance: bool = True
    graph_weight: float = 0.5
    k: int = DEFAULT_K
    temperature: float = 0.1
    bootstrap: bool = True
    graph: Path | None = None
    target: Literal["embedding", "probabilities"] = "embedding"


@dataclass(frozen=True, slots=True)
class CurriculumParams:
    pacing: Literal["linear", "root", "step"] = "linear"
    start_fraction: float = 0.3
    """Fraction of the data (easiest first) available at step 0."""
    full_at: float = 0.7
    """Fraction of the steps after which all the data is available."""


@dataclass(frozen=True, slots=True)
class CodistillationParams:
    peer: str
    """The peer trainer's namespace, whose predictions this trainer distils."""
    weight: float = 0.5
    temperature: float = 1.0


@dataclass(frozen=True, slots=True)
class MultimodalParams:
    modality: str
    """This trainer's modality: a key of ``dataset.modalities``."""
    others: tuple[str, ...]
    """The modalities whose embeddings this trainer aligns with."""
    weight: float = 1.0


ParadigmParams = (
    SupervisedParams
    | PseudoLabelParams
    | GraphParams
    | PseudoLabelGraphParams
    | CurriculumParams
    | CodistillationParams
    | MultimodalParams
)


@dataclass(frozen=True, slots=True)
class ParadigmSpec:
    name: Paradigm
    params: ParadigmParams = field(default_factory=SupervisedParams)


@dataclass(frozen=True, slots=True)
class TrainSpec:
    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 0.003
    checkpoint_every: int = 200
    checkpoint_every_s: float | None = None
    eval_every: int = 100
    max_staleness: int = 1000
    seed: int = 0
    warmup_steps: int = 0
    """Supervised steps on the labeled examples before the first checkpoint (which comes
    after ``max(warmup_steps, checkpoint_every)`` steps: an untrained model is never
    published)."""
    labeled_batch_size: int = 64
    augment: Literal["none", "shift", "affine"] = "none"
    """Input-space augmentation for square images: 1-pixel shifts, or random affine views."""
    augment_views: int = 16
    cutout: int = 0
    """Blank a random square of this side in each unlabeled example (square images; 0: off)."""
    ema: float = 0.0
    """Evaluate an exponential moving average of the weights with this decay (0: off)."""
    weight_decay: float = 0.0


@dataclass(frozen=True, slots=True)
class JobSpec:
    namespace: str
    dataset: DatasetSpec
    paradigm: ParadigmSpec
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def kinds(self, classes: int) -> dict[str, int]:
        """The bank kinds (with dimensions) the namespace needs for ``classes`` classes."""
        params = self.paradigm.params
        k = params.k if isinstance(params, GraphParams | PseudoLabelGraphParams) else DEFAULT_K
        out = default_kinds(self.model.embedding_dim, classes, k)
        if isinstance(params, MultimodalParams):
            for modality in (params.modality, *params.others):
                out[f"embedding/{modality}"] = self.model.embedding_dim
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every default spelled out; ``load_spec`` reads it back."""
        dataset: dict[str, Any] = (
            {"name": self.dataset.name}
            if self.dataset.name is not None
            else {"path": str(self.dataset.path)}
        )
        if self.dataset.label_column is not None:
            dataset["label_column"] = self.dataset.label_column
        dataset.update(
            labeled=self.dataset.labeled,
            test_size=self.dataset.test_size,
            modalities={m: list(r) for m, r in self.dataset.modalities.items()},
        )
        return {
            "namespace": self.namespace,
            "dataset": dataset,
            "model": _plain(self.model),
            "paradigm": {"name": self.paradigm.name, "params": _plain(self.paradigm.params)},
            "train": _plain(self.train),
        }


def _plain(obj: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cast(Any, obj)):
        value = getattr(obj, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


# ---------------------------------------------------------------------------------------
# Reading


def load_spec(source: Path | str | Mapping[str, Any], *, base_dir: Path | None = None) -> JobSpec:
    """Read and validate a job spec from a .yaml/.yml/.json file or a mapping.

    Relative paths inside the spec are resolved against the file's folder (for a mapping:
    ``base_dir``, default the working directory). Raises ``SpecError`` naming the field.
    """
    if isinstance(source, Mapping):
        data: object = source
        origin = "spec"
        base = base_dir if base_dir is not None else Path.cwd()
    else:
        path = Path(source).expanduser()
        data = _read_file(path)
        origin = str(path)
        base = base_dir if base_dir is not None else path.resolve().parent
    if not isinstance(data, Mapping):
        raise SpecError(origin, f"expected a mapping of sections, got {_kind_of(data)}")
    return _parse(data, base)


def _read_file(path: Path) -> object:
    suffix = path.suffix.lower()
    if suffix not in {".yaml", ".yml", ".json"}:
        raise SpecError(str(path), "expected a .yaml, .yml or .json job spec")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), f"cannot read the file: {exc}") from exc
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(
                str(path), f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
            ) from exc
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(str(path), f"not valid YAML{where}: {problem}") from exc


class _YamlLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML is untyped
    """Safe YAML with two fixes: ``1e-3`` is a float (YAML 1.1 wants ``1.0e-3``), and a
    key given twice is an error instead of silently the last one."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            pass
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse(data: Mapping[str, Any], base: Path) -> JobSpec:
    top = _Section(data, "", ("namespace", "dataset", "model", "paradigm", "train"))
    namespace = top.name("namespace")
    dataset = _parse_dataset(top.section("dataset", required=True), base)
    model = _parse_model(top.section("model"))
    paradigm = _parse_paradigm(top.section("paradigm", required=True), namespace, dataset, base)
    train = _parse_train(top.section("train"))
    return JobSpec(namespace, dataset, paradigm, model, train)


def _parse_dataset(s: _Section, base: Path) -> DatasetSpec:
    s.declared_by(DatasetSpec)
    name = s.opt_str("name")
    raw_path = s.opt_str("path")
    if (name is None) == (raw_path is None):
        raise SpecError(
            s.path,
            "give exactly one of name (a bundled dataset) or path (an .npz or .csv file)",
        )
    path = None
    if name is not None and name not in DATASETS:
        raise SpecError(
            s.field("name"), f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}"
        )
    label_column = s.opt_str("label_column")
    if raw_path is not None:
        path = _existing_file(s.field("path"), raw_path, base, (".npz", ".csv"))
        if path.suffix.lower() == ".csv" and label_column is None:
            raise SpecError(s.field("label_column"), "required for a .csv dataset")
    if label_column is not None and (path is None or path.suffix.lower() != ".csv"):
        raise SpecError(s.field("label_column"), "only a .csv dataset has a label column")
    labeled = s.opt_int("labeled", ge=1)
    test_size = s.float_("test_size", gt=0.0, lt=1.0)
    modalities: dict[str, tuple[int, int]] = {}
    mods = s.section("modalities")
    for key, value in mods.data.items():
        where = mods.field(key)
        if not isinstance(key, str) or re.fullmatch(names.MODALITY_PATTERN, key) is None:
            raise SpecError(where, f"modality names must match {names.MODALITY_PATTERN}")
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(_is_int(v) for v in value)
            or not 0 <= value[0] < value[1]
        ):
            raise SpecError(
                where,
                f"expected [start, stop) column indices with 0 <= start < stop, got {value!r}",
            )
        modalities[key] = (int(value[0]), int(value[1]))
    return DatasetSpec(name, path, label_column, labeled, test_size, modalities)


def _parse_model(s: _Section) -> ModelSpec:
    s.declared_by(ModelSpec)
    hidden = s.get("hidden")
    if not isinstance(hidden, list | tuple) or not all(_is_int(h) and h >= 1 for h in hidden):
        raise SpecError(s.field("hidden"), f"expected a list of positive ints, got {hidden!r}")
    return ModelSpec(
        hidden=tuple(hidden),
        embedding_dim=s.int_("embedding_dim", ge=1, le=65536),
        dropout=s.float_("dropout", ge=0.0, lt=1.0),
    )


def _parse_train(s: _Section) -> TrainSpec:
    s.declared_by(TrainSpec)
    every_s = s.opt_float("checkpoint_every_s", gt=0.0)
    return TrainSpec(
        steps=s.int_("steps", ge=1),
        batch_size=s.int_("batch_size", ge=1),
        learning_rate=s.float_("learning_rate", gt=0.0),
        checkpoint_every=s.int_("checkpoint_every", ge=1),
        checkpoint_every_s=every_s,
        eval_every=s.int_("eval_every", ge=1),
        max_staleness=s.int_("max_staleness", ge=0),
        seed=s.int_("seed", ge=0, le=2**32 - 1),
        warmup_steps=s.int_("warmup_steps", ge=0),
        labeled_batch_size=s.int_("labeled_batch_size", ge=1),
        augment=cast(Any, s.choice("augment", ("none", "shift", "affine"))),
        augment_views=s.int_("augment_views", ge=2, le=256),
        cutout=s.int_("cutout", ge=0, le=64),
        ema=s.float_("ema", ge=0.0, lt=1.0),
        weight_decay=s.float_("weight_decay", ge=0.0),
    )


def _parse_paradigm(s: _Section, namespace: str, dataset: DatasetSpec, base: Path) -> ParadigmSpec:
    s.check_keys(("name", "params"))
    name = s.choice("name", PARADIGMS)
    p = s.section("params")
    params: ParadigmParams
    if name == "supervised":
        p.declared_by(SupervisedParams)
        params = SupervisedParams()
    elif name == "pseudo_label":
        p.declared_by(PseudoLabelParams)
        params = PseudoLabelParams(
            threshold=p.float_("threshold", ge=0.0, le=1.0),
            weight=p.float_("weight", ge=0.0),
            class_balance=p.bool_("class_balance"),
        )
    elif name == "graph":
        p.declared_by(GraphParams)
        params = GraphParams(
            weight=p.float_("weight", ge=0.0),
            k=p.int_("k", ge=1, le=1024),
            temperature=p.float_("temperature", gt=0.0),
            bootstrap=p.bool_("bootstrap"),
            graph=_graph_file(p, "graph", base),
            target=cast(Any, p.choice("target", GRAPH_TARGETS)),
        )
    elif name == "pseudo_label_graph":
        p.declared_by(PseudoLabelGraphParams)
        params = PseudoLabelGraphParams(
            pseudo_weight=p.float_("pseudo_weight", ge=0.0),
            threshold=p.float_("threshold", ge=0.0, le=1.0),
            class_balance=p.bool_("class_balance"),
            graph_weight=p.float_("graph_weight", ge=0.0),
            k=p.int_("k", ge=1, le=1024),
            temperature=p.float_("temperature", gt=0.0),
            bootstrap=p.bool_("bootstrap"),
            graph=_graph_file(p, "graph", base),
            target=cast(Any, p.choice("target", GRAPH_TARGETS)),
        )
    elif name == "curriculum":
        p.declared_by(CurriculumParams)
        params = CurriculumParams(
            pacing=cast(Any, p.choice("pacing", PACINGS)),
            start_fraction=p.float_("start_fraction", gt=0.0, le=1.0),
            full_at=p.float_("full_at", gt=0.0, le=1.0),
        )
    elif name == "codistillation":
        p.declared_by(CodistillationParams)
        peer = p.name("peer")
        if peer == namespace:
            raise SpecError(
                p.field("peer"), "the peer is another trainer's namespace, not this one"
            )
        params = CodistillationParams(
            peer=peer,
            weight=p.float_("weight", ge=0.0),
            temperature=p.float_("temperature", gt=0.0),
        )
    else:
        params = _parse_multimodal(p, dataset)
    return ParadigmSpec(cast(Paradigm, name), params)


def _parse_multimodal(p: _Section, dataset: DatasetSpec) -> MultimodalParams:
    p.declared_by(MultimodalParams)
    known = sorted(dataset.modalities)
    declared = (
        f"dataset.modalities declares {', '.join(known)}"
        if known
        else "dataset.modalities declares none"
    )
    modality = p.str_("modality")
    if modality not in dataset.modalities:
        raise SpecError(p.field("modality"), f"unknown modality {modality!r}; {declared}")
    others = p.get("others")
    if not isinstance(others, list) or not others:
        raise SpecError(
            p.field("others"), f"expected a non-empty list of modalities, got {others!r}"
        )
    for i, other in enumerate(others):
        where = f"{p.field('others')}[{i}]"
        if not isinstance(other, str):
            raise SpecError(where, f"expected a string, got {_kind_of(other)}")
        if other not in dataset.modalities:
            raise SpecError(where, f"unknown modality {other!r}; {declared}")
        if other == modality:
            raise SpecError(where, f"{other!r} is this trainer's own modality")
        if other in others[:i]:
            raise SpecError(where, f"{other!r} is listed twice")
    return MultimodalParams(
        modality=modality, others=tuple(others), weight=p.float_("weight", ge=0.0)
    )


def _graph_file(p: _Section, key: str, base: Path) -> Path | None:
    raw = p.opt_str(key)
    return None if raw is None else _existing_file(p.field(key), raw, base, (".npz", ".json"))


def _existing_file(where: str, raw: str, base: Path, suffixes: Collection[str]) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = base / path
    path = path.resolve()
    if path.suffix.lower() not in suffixes:
        raise SpecError(where, f"{raw}: expected a {' or '.join(suffixes)} file")
    if not path.is_file():
        raise SpecError(where, f"no such file: {path}")
    return path


# ---------------------------------------------------------------------------------------
# Typed, range-checked access to one mapping of the spec

_MISSING: Final = object()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


class _Section:
    """One mapping of the spec at dotted ``path``; every getter names its field on error."""

    def __init__(self, data: object, path: str, known: Collection[str] | None = None) -> None:
        if not isinstance(data, Mapping):
            raise SpecError(path or "spec", f"expected a mapping, got {_kind_of(data)}")
        self.data: Mapping[Any, Any] = data
        self.path = path
        self.defaults: dict[str, Any] = {}
        if known is not None:
            self.check_keys(known)

    def declared_by(self, cls: type) -> _Section:
        """This mapping's keys are the fields of the dataclass ``cls``; an absent key takes
        the field's default, so each default is written once, where the field is declared."""
        self.check_keys([f.name for f in fields(cls)])
        self.defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        return self

    def field(self, key: object) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def check_keys(self, known: Collection[str]) -> None:
        for key in self.data:
            if key not in known:
                expected = f"expected one of {', '.join(known)}" if known else "expected none"
                raise SpecError(self.field(key), f"unknown key; {expected}")

    def get(self, key: str, default: object = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            default = self.defaults.get(key, _MISSING)
        if default is _MISSING:
            raise SpecError(self.field(key), "required")
        return default

    def section(self, key: str, required: bool = False) -> _Section:
        value = self.get(key, _MISSING if required else None)
        if value is None:
            if required:
                raise SpecError(self.field(key), "required")
            value = {}
        return _Section(value, self.field(key))

    def _typed(self, key: str, default: object, check: Callable[[object], bool], what: str) -> Any:
        value = self.get(key, default)
        if value is None and default is None:
            return None
        if not check(value):
            raise SpecError(self.field(key), f"expected {what}, got {_kind_of(value)}")
        return value

    def str_(self, key: str) -> str:
        value: str = self._typed(
            key, _MISSING, lambda v: isinstance(v, str) and v != "", "a string"
        )
        return value

    def opt_str(self, key: str) -> str | None:
        value: str | None = self._typed(
            key, None, lambda v: isinstance(v, str) and v != "", "a non-empty string"
        )
        return value

    def name(self, key: str) -> str:
        value = self.str_(key)
        try:
            return names.validate_name(value, self.field(key))
        except SchemaError as exc:
            raise SpecError(self.field(key), str(exc).removeprefix(f"{self.field(key)}: ")) from exc

    def choice(self, key: str, choices: Collection[str]) -> str:
        value = self.data.get(key, self.defaults.get(key, _MISSING))
        if value not in choices:
            problem = "required" if value is _MISSING else f"unknown value {value!r}"
            raise SpecError(self.field(key), f"{problem}; expected one of {', '.join(choices)}")
        return cast(str, value)

    def bool_(self, key: str) -> bool:
        value: bool = self._typed(key, _MISSING, lambda v: isinstance(v, bool), "true or false")
        return value

    def int_(self, key: str, *, ge: int | None = None, le: int | None = None) -> int:
        value: int = self._typed(key, _MISSING, _is_int, "an int")
        self._range(key, value, ge=ge, le=le)
        return value

    def opt_int(self, key: str, *, ge: int | None = None) -> int | None:
        value: int | None = self._typed(key, None, _is_int, "an int or null")
        if value is not None:
            self._range(key, value, ge=ge)
        return value

    def float_(
        self,
        key: str,
        *,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> float:
        value = self._typed(key, _MISSING, _is_number, "a number")
        self._range(key, value, ge=ge, gt=gt, le=le, lt=lt)
        return float(value)

    def opt_float(self, key: str, *, gt: float | None = None) -> float | None:
        value = self._typed(key, None, _is_number, "a number or null")
        if value is None:
            return None
        self._range(key, value, gt=gt)
        return float(value)

    def _range(
        self,
        key: str,
        value: float,
        *,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> None:
        low = (ge is None or value >= ge) and (gt is None or value > gt)
        high = (le is None or value <= le) and (lt is None or value < lt)
        if low and high:
            return
        lo, hi = (ge if gt is None else gt), (le if lt is None else lt)
        if lo is not None and hi is not None:
            rng = f"in {'(' if gt is not None else '['}{lo}, {hi}{')' if lt is not None else ']'}"
        elif lo is not None:
            rng = f"{'>' if gt is not None else '>='} {lo}"
        else:
            rng = f"{'<' if lt is not None else '<='} {hi}"
        raise SpecError(self.field(key), f"must be {rng}, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
