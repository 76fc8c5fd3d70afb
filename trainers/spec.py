"""Job specs: what ``carls submit`` sends and a trainer runs, read from YAML, JSON or a dict.

Only ``namespace``, ``dataset`` (``name`` or ``path``) and ``paradigm.name`` are required;
every other key has the default declared on the models below::

    namespace: digits_ssl
    dataset: {name: digits, labeled: 50, test_size: 0.3}   # or path: data.npz / data.csv
    model: {hidden: [256], embedding_dim: 64, dropout: 0.1} # or builder: pkg.mod:fn / path: m.keras
    paradigm: {name: pseudo_label_graph, params: {threshold: 0.9, k: 8}}
    train: {steps: 2000, batch_size: 128, learning_rate: 0.003, checkpoint_every: 200}

The sections are pydantic models; each field carries its own type and bounds. ``paradigm``
is a union discriminated by ``name`` over ``carls.trainers.paradigms.registry.PARADIGMS``:
its ``params`` are validated by the registered entry, which for a plug-in is the plug-in
class itself, so a library user's ``PseudoLabel(threshold=...)`` and a spec's
``threshold:`` are one declaration. ``load_spec`` reports the first problem as a
``SpecError`` naming the dotted field (``paradigm.params.threshold: must be <= 1, got
1.5``). Relative file paths are resolved against the spec file's folder (passed to the
validators as the ``base_dir`` of the validation context), so ``JobSpec.to_dict()`` carries
absolute paths and reads back into an equal spec.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self, Union, get_args, get_origin
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from carls.bank.artifacts import check_uri, is_local
from carls.bank.types import default_kinds
from carls.schemas.errors import CarlsError
from carls.trainers.errors import SpecError
from carls.trainers.fields import (
    FieldProblem,
    Flag,
    Int,
    Modality,
    Name,
    Number,
    Text,
    check_file,
    existing_file,
    kind_of,
    resolved_path,
)
from carls.trainers.paradigms.base import ParadigmParams
from carls.trainers.paradigms.graph import DEFAULT_K, Graph
from carls.trainers.paradigms.hypergraph import HyperLearn
from carls.trainers.paradigms.message import Message
from carls.trainers.paradigms.multimodal import Multimodal
from carls.trainers.paradigms.pseudo_label import PseudoLabel
from carls.trainers.paradigms.registry import PARADIGMS as REGISTRY

__all__ = [
    "BUILDER_PATTERN",
    "DATASETS",
    "DEFAULT_K",
    "PARADIGMS",
    "DatasetSpec",
    "JobSpec",
    "ModelSpec",
    "ParadigmSpec",
    "TrainSpec",
    "load_spec",
    "spec_error",
]

DatasetName = Literal["digits", "breast_cancer", "wine", "iris"]
DATASETS: Final[tuple[str, ...]] = get_args(DatasetName)
"""The scikit-learn bundled datasets a spec may name (they need no network)."""

PARADIGMS: Final[tuple[str, ...]] = tuple(REGISTRY)
"""The paradigm names a spec may use, in registration order."""

BUILDER_PATTERN: Final = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*"
"""``package.module:function``, the form of ``model.builder``."""

# ---------------------------------------------------------------------------------------
# The spec


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _empty_if_null(value: object) -> object:
    """An optional section given as ``key:`` with nothing after it reads as ``{}``."""
    return {} if value is None else value


def _columns(value: tuple[int, int]) -> tuple[int, int]:
    start, stop = value
    if not 0 <= start < stop:
        raise ValueError(
            f"expected [start, stop) column indices with 0 <= start < stop, got {list(value)}"
        )
    return value


Columns = Annotated[tuple[Int, Int], AfterValidator(_columns)]
"""``[start, stop)`` feature columns."""


_REGISTERED = re.compile(r"-[0-9a-f]{12}$")


def _data_uri(value: str) -> str:
    """A remote data file's URI: ``bank://datasets/<name>`` (``carls dataset register``)
    or an object store's, naming an .npz or .csv file."""
    if is_local(value):
        raise ValueError(f"{value}: a local file goes in path:, a URI in uri:")
    try:
        check_uri(value)
    except CarlsError as exc:
        raise ValueError(str(exc)) from exc
    if PurePosixPath(urlparse(value).path).suffix.lower() not in (".npz", ".csv"):
        raise ValueError(f"{value}: expected an .npz or .csv file")
    return value


class DatasetSpec(_Spec):
    """A bundled dataset (``name``), a file on this machine (``path``: .npz or .csv), or a
    file every machine can read (``uri``: registered in the bank, or in an object store).
    """

    name: DatasetName | None = None
    """A scikit-learn bundled dataset (one of ``DATASETS``)."""
    path: Annotated[Path | None, resolved_path] = None
    """An .npz file (``X``: N examples of any shape, N x D features or N x H x W x C
    images or N x T sequences; ``y``: N labels; optional ``labeled``: N booleans), or a
    .csv file with a header row. Relative to the spec file. ``carls submit`` registers it
    in the bank and sends the job with its ``uri``, so a trainer on any machine reads it."""
    uri: Annotated[Text, AfterValidator(_data_uri)] | None = None
    """The same kinds of file at a URI: ``bank://datasets/<name>`` (``carls dataset
    register``) or an object store's (``s3://…``, with its fsspec backend installed)."""
    label_column: Text | None = None
    """The label column of a .csv file (required for a .csv, and only for one)."""
    labeled: Annotated[Int, Field(ge=1)] | None = None
    """Labeled training examples to keep, stratified; ``None``: all (or the npz mask)."""
    test_size: Number = Field(0.3, gt=0, lt=1)
    """Fraction of the examples held out for testing, stratified."""
    split_seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] | None = None
    """Seed of the train/test split and of which training examples keep their labels;
    ``None``: ``train.seed``. Peers that must see one split but start from different
    weights (codistillation) share this and differ in ``train.seed``."""
    standardize: Flag = True
    """Standardize each feature on the training split (clipped to +-5); false keeps the
    values as they are (token ids, or inputs the model scales itself)."""
    modalities: dict[Modality, Columns] = Field(default_factory=dict)
    """Modality name -> ``[start, stop)`` feature columns (flat N x D data only)."""
    image_shape: tuple[Annotated[Int, Field(ge=2)], Annotated[Int, Field(ge=2)]] | None = None
    """``[height, width]``: flat N x D features are one-channel images stored row by row
    (D = height x width), which the image augmentations (``train.augment: shift |
    affine``, ``train.cutout``) need. Flat data are features otherwise, whatever their
    number; N x H x W (x 1) arrays and the bundled ``digits`` are images already."""

    _null_is_empty = field_validator("modalities", mode="before")(_empty_if_null)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if sum(source is not None for source in (self.name, self.path, self.uri)) != 1:
            raise ValueError(
                "give exactly one of name (a bundled dataset), path (an .npz or .csv file) "
                "or uri (one registered in the bank or in an object store)"
            )
        csv = self.suffix == ".csv"
        if self.path is not None:
            try:
                check_file(self.path, (".npz", ".csv"))
            except ValueError as exc:
                raise FieldProblem(("path",), str(exc)) from exc
            if csv and self.label_column is None:
                raise FieldProblem(("label_column",), "required for a .csv dataset")
        if self.label_column is not None and not csv:
            raise FieldProblem(("label_column",), "only a .csv dataset has a label column")
        return self

    @property
    def suffix(self) -> str:
        """The file's suffix, lower case (``""`` for a bundled dataset)."""
        if self.uri is not None:
            return PurePosixPath(urlparse(self.uri).path).suffix.lower()
        return self.path.suffix.lower() if self.path is not None else ""

    @property
    def display_name(self) -> str:
        """The bundled dataset's name, or the file's stem (example ids start with it). A
        registered file's stem drops the ``-<sha256[:12]>`` its registration added, so a
        job reading it registered names its examples as one reading the file would."""
        if self.name is not None:
            return self.name
        if self.uri is not None:
            stem = PurePosixPath(urlparse(self.uri).path).stem
            return _REGISTERED.sub("", stem) or stem
        return Path(str(self.path)).stem


def _import_builder(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        reason = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"cannot import {module_name!r}: {reason}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def _builder(ref: str) -> str:
    if re.fullmatch(BUILDER_PATTERN, ref) is None:
        raise ValueError(f"expected package.module:function, got {ref!r}")
    _import_builder(ref)
    return ref


def _output(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"expected an output name or index, got {kind_of(value)}")
    return value


Output = Annotated[str | int, BeforeValidator(_output)]
"""One of a model's outputs: a dict key or layer name, or an index into its outputs."""


class ModelSpec(_Spec):
    """The trainer's model: the built-in MLP (``hidden``, ``embedding_dim``, ``dropout``),
    a user's ``builder`` function, or a saved Keras model at ``path``.

    A builder is called as ``builder(input_shape=<tuple per example>, classes=<int>,
    **params)`` and returns a Keras model whose outputs include the embedding and the
    logits, found by ``embedding`` and ``logits``: a key of a dict of outputs, an index
    into a list of outputs, or a layer name. A saved model (``.keras``) is loaded as it is
    and its outputs are found the same way.
    """

    hidden: tuple[Annotated[Int, Field(ge=1)], ...] = (256,)
    """Widths of the MLP's hidden layers."""
    embedding_dim: Int = Field(64, ge=1, le=65536)
    """Width of the MLP's embedding (the bank's ``embedding`` kind)."""
    dropout: Number = Field(0.1, ge=0, lt=1)
    """The MLP's dropout rate after each hidden layer and the embedding."""
    builder: Annotated[str | None, AfterValidator(lambda v: v if v is None else _builder(v))] = None
    """``package.module:function`` that builds the model; imported when the spec is read."""
    path: Annotated[Path | None, existing_file(".keras")] = None
    """A saved Keras model (a ``.keras`` file), relative to the spec file."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the builder (only with ``builder``)."""
    embedding: Output = "embedding"
    """Which output is the embedding."""
    logits: Output = "logits"
    """Which output is the logits."""

    @model_validator(mode="after")
    def _one_model(self) -> Self:
        if self.builder is not None and self.path is not None:
            raise ValueError(
                "give builder (a function that builds the model) or path (a saved .keras "
                "model), not both"
            )
        if self.params and self.builder is None:
            raise FieldProblem(("params",), "only a builder takes params")
        return self

    def load_builder(self) -> Callable[..., Any]:
        """The ``builder`` function, imported; ``SpecError`` naming ``model.builder`` if the
        spec has none or it cannot be imported here."""
        if self.builder is None:
            raise SpecError("model.builder", "this spec has no builder")
        try:
            return _import_builder(self.builder)
        except ValueError as exc:
            raise SpecError("model.builder", str(exc)) from exc


class TrainSpec(_Spec):
    """The training loop: length, batches, optimizer, checkpoints, augmentation."""

    steps: Int = Field(2000, ge=1)
    batch_size: Int = Field(128, ge=1)
    """Unlabeled examples per step."""
    learning_rate: Number = Field(0.003, gt=0)
    publish: Flag | None = None
    """Publish checkpoints to the makers. Unset: a job does when its paradigm reads
    knowledge (every paradigm but ``supervised``), so a supervised baseline keeps no
    worker busy; true: a supervised job too (a teacher whose knowledge others read);
    false: never."""
    checkpoint_every: Int = Field(200, ge=1)
    """Steps between checkpoints published to the makers."""
    checkpoint_every_s: Annotated[Number, Field(gt=0)] | None = None
    """Also publish a checkpoint when this many seconds passed since the last one."""
    eval_every: Int = Field(100, ge=1)
    max_staleness: Int = Field(1000, ge=0)
    """Knowledge older than this many steps gets weight 0."""
    seed: Int = Field(0, ge=0, le=2**32 - 1)
    warmup_steps: Int = Field(0, ge=0)
    """Steps before the first checkpoint, which comes after ``max(warmup_steps,
    checkpoint_every)`` steps: an untrained model is never published. Until the makers
    answer it, the knowledge terms have nothing from the bank (a bootstrap graph aside)."""
    labeled_batch_size: Int = Field(64, ge=1)
    """Labeled examples per step (drawn again and again: they are usually few)."""
    augment: Literal["none", "shift", "affine", "corrupt"] = "none"
    """Input-space views of each training example, one picked per step. For images
    (``dataset.image_shape``, bundled digits, N x H x W (x 1) arrays): ``shift`` (1-pixel
    translations) or ``affine`` (random small rotations, scalings, shears, shifts). For
    any flat features, tabular ones included: ``corrupt``, each view replacing a random
    ``corruption`` fraction of the features by the same features of other random training
    examples (SCARF's corruption, VIME's mask-and-replace)."""
    augment_views: Int = Field(16, ge=2, le=256)
    corruption: Number = Field(0.3, gt=0, lt=1)
    """Fraction of the features each ``corrupt`` view replaces."""
    cutout: Int = Field(0, ge=0, le=64)
    """Blank a random square of this side in each unlabeled example (images only; 0: off)."""
    ema: Number = Field(0.0, ge=0, lt=1)
    """Keep an exponential moving average of the weights with this decay (0: off): the
    evaluations use it, and it is the job's final model."""
    weight_decay: Number = Field(0.0, ge=0)
    teach: Flag = False
    """Serve as a teacher: the namespace also declares the per-example ``instruction``
    kind a student's ``teacher`` paradigm reads, and the job publishes checkpoints (the
    makers keep its final step's predictions, difficulty and instructions)."""
    holdout: Number = Field(0.0, ge=0, lt=1)
    """Fraction of the labeled training examples held out (0: none): their labels are
    kept from training and from the makers, and measure the pseudo labels instead (job
    status: pseudo-label accuracy). Each class keeps at least one label."""

    @model_validator(mode="after")
    def _teach_publishes(self) -> Self:
        if self.teach and self.publish is False:
            raise FieldProblem(("publish",), "a teacher (teach: true) publishes checkpoints")
        return self


class ParadigmSpec(_Spec):
    """The job's paradigm: a registered ``name`` and its ``params``, that entry's model.

    Reading a spec picks the member of the union (one subclass per registered name) whose
    ``name`` matches; in code, ``ParadigmSpec.of(PseudoLabel(threshold=0.8))``.
    """

    name: str
    """A key of ``carls.trainers.paradigms.registry.PARADIGMS``."""
    params: ParadigmParams
    """The entry's parameters; ``plugins()`` makes the plug-ins a trainer runs."""

    _null_is_empty = field_validator("params", mode="before")(_empty_if_null)

    @classmethod
    def of(cls, params: ParadigmParams) -> ParadigmSpec:
        """The spec of the paradigm ``params`` is registered as."""
        return MEMBERS[params.name](name=params.name, params=params)


def _member(name: str, entry: type[ParadigmParams]) -> type[ParadigmSpec]:
    tag: Any = Literal[name]
    return create_model(
        f"{entry.__name__}Spec",
        __base__=ParadigmSpec,
        __module__=__name__,
        name=(tag, ...),
        params=(entry, Field(default_factory=entry)),
    )


MEMBERS: Final[dict[str, type[ParadigmSpec]]] = {
    name: _member(name, entry) for name, entry in REGISTRY.items()
}
"""Paradigm name -> its ``ParadigmSpec`` subclass, the members of the union."""

if TYPE_CHECKING:
    AnyParadigm = ParadigmSpec
else:
    AnyParadigm = Annotated[Union[tuple(MEMBERS.values())], Field(discriminator="name")]  # noqa: UP007


class JobSpec(_Spec):
    """A training job: the namespace it writes, its data, model, paradigm and loop."""

    namespace: Name
    """The bank namespace of the job's examples and knowledge."""
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    paradigm: AnyParadigm
    train: TrainSpec = Field(default_factory=TrainSpec)

    _null_is_empty = field_validator("model", "train", mode="before")(_empty_if_null)

    @model_validator(mode="after")
    def _paradigm_fits_the_job(self) -> Self:
        try:
            self.paradigm.params.check_against(self.namespace, self.dataset.modalities)
        except FieldProblem as p:
            raise FieldProblem(("paradigm", "params", *p.loc), p.problem) from None
        return self

    def kinds(self, classes: int, embedding_dim: int | None = None) -> dict[str, int]:
        """The bank kinds (with dimensions) the namespace needs for ``classes`` classes;
        ``embedding_dim``: the model's embedding width (default: the built-in MLP's)."""
        dim = self.model.embedding_dim if embedding_dim is None else embedding_dim
        plugins = self.paradigm.params.plugins()
        k = max([p.k for p in plugins if isinstance(p, Graph)], default=DEFAULT_K)
        out = default_kinds(dim, classes, k)
        if any(isinstance(p, PseudoLabel) and p.source == "propagated" for p in plugins):
            out["propagated"] = classes
        if self.train.teach:
            out["instruction"] = 2
        for p in plugins:
            if isinstance(p, Message):
                out[p.own_kind] = p.size
            elif isinstance(p, HyperLearn):
                out[p.own_kind] = dim
        for p in plugins:
            if isinstance(p, Multimodal):
                for modality in (p.modality, *p.others):
                    out[f"embedding/{modality}"] = dim
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every default spelled out and absolute paths;
        ``load_spec`` reads it back into an equal spec."""
        return self.model_dump(mode="json")


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
        raise SpecError(origin, f"expected a mapping of sections, got {kind_of(data)}")
    try:
        return JobSpec.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        raise spec_error(exc) from exc


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


# ---------------------------------------------------------------------------------------
# Validation errors -> SpecError

_EXPECTED: Final = {
    "int_type": "an int",
    "int_parsing": "an int",
    "int_from_float": "an int",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "string_too_short": "a non-empty string",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "iterable_type": "a list",
    "path_type": "a file path",
}
_BOUNDS: Final = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def spec_error(exc: ValidationError) -> SpecError:
    """A ``JobSpec`` validation error as a ``SpecError``: the first problem at its dotted
    field (``model.hidden[1]``), with a count of the others."""
    errors = exc.errors(include_url=False)
    field, problem = _describe(errors[0])
    if len(errors) > 1:
        more = len(errors) - 1
        problem += f" (and {more} more problem{'s' if more > 1 else ''})"
    return SpecError(field, problem)


def _describe(err: ErrorDetails) -> tuple[str, str]:
    """``(dotted field, problem)`` for one pydantic error of ``JobSpec``."""
    raw = tuple(err["loc"])
    loc: list[str | int] = [
        part
        for i, part in enumerate(raw)
        if part != "[key]" and not (i == 1 and raw[0] == "paradigm" and part in MEMBERS)
    ]
    kind, value = err["type"], err["input"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    error = ctx.get("error")
    if isinstance(error, FieldProblem):
        loc.extend(error.loc)
        problem = error.problem
    elif kind in ("value_error", "assertion_error"):
        problem = str(error) if error is not None else err["msg"].removeprefix("Value error, ")
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("name")
        name = value.get("name") if isinstance(value, Mapping) else None
        head = "required" if name is None else f"unknown paradigm {name!r}"
        problem = f"{head}; expected one of {', '.join(PARADIGMS)}"
    elif kind == "missing":
        problem = "required"
    elif kind == "extra_forbidden":
        model = _model_at(raw[:-1])
        known = list(model.model_fields) if model is not None else []
        problem = f"unknown key; expected {'one of ' + ', '.join(known) if known else 'none'}"
    elif kind in _EXPECTED:
        problem = f"expected {_EXPECTED[kind]}, got {kind_of(value)}"
    elif kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        problem = f"must be {op} {_number(ctx[key])}, got {value!r}"
    elif kind == "literal_error":
        choices = _literal_at(raw)
        expected = ", ".join(map(str, choices)) if choices else str(ctx.get("expected"))
        problem = f"unknown value {value!r}; expected one of {expected}"
    elif kind in ("too_short", "too_long"):
        n = ctx["min_length" if kind == "too_short" else "max_length"]
        least = "at least" if kind == "too_short" else "at most"
        problem = f"expected {least} {n} item{'s' if n != 1 else ''}, got {ctx['actual_length']}"
    else:
        problem = err["msg"]
    return _dotted(loc), problem


def _dotted(loc: list[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "spec"


def _number(bound: object) -> object:
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model validating the value at ``loc`` of a ``JobSpec`` (union tags included)."""
    current: Any = JobSpec
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif isinstance(part, str) and part in MEMBERS:
            current = MEMBERS[part]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _literal_at(loc: tuple[str | int, ...]) -> tuple[object, ...]:
    """The choices of the ``Literal`` field at ``loc``, if that is what it is."""
    model = _model_at(loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model is not None and loc else None
    return _literal_values(field.annotation) if field is not None else ()


def _literal_values(annotation: object) -> tuple[object, ...]:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if values := _literal_values(arg):
            return values
    return ()
