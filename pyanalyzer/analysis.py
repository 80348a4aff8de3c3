"""The analysis contract: one shape for every method pyanalyzer runs.

Every analysis (dissection, Net2Vec, DeconvNet / guided backprop / saliency, top-k patches,
activation maximization, optimisation and UpconvNet inversion, UpconvNet training) is

* an :class:`Analysis` subclass built on a loaded model with a :class:`Params` object, with one
  verb, :meth:`Analysis.run`, that takes the analysis' inputs (a concept dataset, images, an
  image source, or nothing);
* described by its params: validated in one place (pydantic), serialised to canonical JSON,
  publishing a JSON Schema (:meth:`Params.schema`), so that the CLI, the HTTP service and the
  atlas describe and check an analysis the same way;
* cached by one function, :func:`pyanalyzer.store.cached`: the key (model digest, method name,
  params resolved against the model, the inputs' identity, the preprocessing, the analysis'
  stored-format revision), the lookup, the checkpoints of long runs and their resumption;
* answered by a :class:`Result`: ``summary()`` (JSON-ready), its arrays (``to_arrays``, a state
  dict) and meta, written to files by a writer of :mod:`pyanalyzer.report`, never by the CLI.

::

    import pyanalyzer as pa

    model = pa.load_model("models/default.onnx")
    result = pa.ActivationMaximization(model, {"layer": "relu5", "units": "0-7"}).run()
    print(result.summary())

Adding an analysis is subclassing :class:`Analysis` (``method``, ``params_type``,
``result_type``, ``compute``) and registering it in :mod:`pyanalyzer.methods`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import core_schema

from pyanalyzer._checks import is_int
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    from typing_extensions import Self

    from pyanalyzer.executor import Executor
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Cached, Checkpoint, EntryInfo, Store

__all__ = [
    "Analysis",
    "Checked",
    "ImageAnalysis",
    "Choice",
    "Float",
    "Int",
    "Layers",
    "Params",
    "ParamsError",
    "NotStored",
    "Result",
    "StoredRun",
    "Units",
    "stored_data",
    "stored_runs",
]


class ParamsError(UserInputError):
    """Parameters that do not validate (one line naming each bad field)."""


class NotStored(Exception):  # noqa: N818  # not an error: the answer "compute it first"
    """Raised by :meth:`Analysis.run` with ``stored_only`` set when the store does not hold the
    result (nothing is computed)."""


def _message(exc: ValidationError, title: str) -> str:
    """One line for a pydantic error: our own validators' messages as they are (they name the
    field), pydantic's with the field's name in front."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "parameters"
        msg = str(err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown {title} parameter {loc!r}")
        elif err["type"] == "value_error":
            parts.append(msg)
        else:
            given = err.get("input")
            got = "" if isinstance(given, dict) else f", got {given!r}"
            parts.append(f"{title} parameter {loc}: {msg[:1].lower() + msg[1:]}{got}")
    return "; ".join(parts)


class Params(BaseModel):
    """Base of every analysis' parameters: an immutable, validated pydantic model.

    Subclasses declare fields with types, defaults, bounds and descriptions (the JSON Schema is
    generated from them) and field validators for the rules types cannot say. Unknown fields
    are refused, floats must be finite.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True
    )

    title: ClassVar[str] = "parameters"
    """What the parameters belong to, at the start of validation messages."""

    @classmethod
    def parse(cls, params: Params | Mapping[str, Any] | None = None, **overrides: Any) -> Self:
        """Validated parameters from another params object, a mapping (JSON), keywords, or any
        mix (keywords win).

        Raises:
            ParamsError: one line naming every field that does not validate.
        """
        if isinstance(params, cls) and not overrides:
            return params
        if isinstance(params, BaseModel):
            data: dict[str, Any] = params.model_dump()
        elif params is None:
            data = {}
        elif isinstance(params, Mapping):
            data = dict(params)
        else:
            raise ParamsError(
                f"{cls.title}: expected a mapping of parameters, got {type(params).__name__}"
            )
        data.update(overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ParamsError(_message(exc, cls.title)) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed."""
        return self.parse(self, **changes)

    def canonical(self) -> dict[str, Any]:
        """The parameters as plain JSON data (what the store key and the service see)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """The canonical JSON text (sorted keys, no whitespace): equal params, equal text."""
        from pyanalyzer.store import canonical_json

        return canonical_json(self.canonical())

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of these parameters (served by the HTTP service)."""
        return cls.model_json_schema()


# ---- field types with pyanalyzer's own checks and messages ---------------------------------
# ``Annotated`` metadata for params fields: ``steps: Annotated[int, Int("steps", 1)]``. Each
# checks the raw value before pydantic does (refusing bools as ints, floats as ints, NaN), with
# pyanalyzer's one-line message, and states the JSON Schema the service publishes.


class Checked:
    """``Annotated`` metadata: a check run on the raw value before pydantic's own validation
    (its ``UserInputError`` is the one-line message), and the field's JSON Schema."""

    def __init__(self, check: Callable[[Any], Any], schema: dict[str, Any]):
        self.check = check
        self.schema = schema

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return dict(self.schema)


def _nullable(schema: dict[str, Any], optional: bool) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]} if optional else schema


def Int(  # noqa: N802
    label: str, minimum: int | None = None, maximum: int | None = None, *, optional: bool = False
) -> Checked:
    """An integer field: no bools, no floats, within ``minimum..maximum`` (None allowed when
    ``optional``)."""

    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        if not is_int(value):
            raise UserInputError(
                f"{label} must be an integer, got {type(value).__name__} {value!r}"
            )
        if minimum is not None and value < minimum:
            raise UserInputError(f"{label} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise UserInputError(f"{label} must be at most {maximum}, got {value}")
        return int(value)

    schema: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return Checked(check, _nullable(schema, optional))


def Float(  # noqa: N802
    label: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    message: str | None = None,
    optional: bool = False,
) -> Checked:
    """A finite float field within an interval (``low``/``high``, open or closed ends); ints
    are taken as floats, bools are refused, None is allowed when ``optional``. ``message``
    replaces the default description of the allowed range (``"{label} must be {message}, got
    {value}"``)."""
    lo_b, hi_b = "(" if low_open else "[", ")" if high_open else "]"
    if message is None:
        if low is not None and high is not None:
            message = f"in {lo_b}{low:g}, {high:g}{hi_b}"
        elif low is not None:
            message = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            message = f"{'<' if high_open else '<='} {high:g}"
        else:
            message = "a finite number"

    def check(value: Any) -> float | None:
        if value is None and optional:
            return None
        ok_type = isinstance(value, numbers.Real) and not isinstance(value, bool)
        v = float(value) if ok_type else math.nan
        fits = ok_type and math.isfinite(v)
        if fits and low is not None:
            fits = v > low if low_open else v >= low
        if fits and high is not None:
            fits = v < high if high_open else v <= high
        if not fits:
            raise UserInputError(f"{label} must be {message}, got {value!r}")
        return v

    schema: dict[str, Any] = {"type": "number"}
    if low is not None:
        schema["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if high_open else "maximum"] = high
    return Checked(check, _nullable(schema, optional))


def Choice(label: str, choices: Sequence[str], *, optional: bool = False) -> Checked:  # noqa: N802
    """A string field taking one of ``choices`` (None too when ``optional``)."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if value not in choices:
            raise UserInputError(f"unknown {label} {value!r}; choose one of {', '.join(choices)}")
        return str(value)

    return Checked(check, _nullable({"type": "string", "enum": list(choices)}, optional))


MAX_UNITS = 1 << 20
"""The most units one selection may list (layers are far narrower; the layer's own width is
checked when the analysis is built)."""


def _check_units(value: Any) -> str | int | list[int]:
    from pyanalyzer.units import check_syntax

    if isinstance(value, str):
        return check_syntax(value)  # the syntax now; the range against the layer later
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    size = getattr(value, "__len__", None)
    if callable(size) and size() > MAX_UNITS:  # before listing it (a range of 10**12...)
        raise UserInputError(f"units: {size()} given, at most {MAX_UNITS}")
    try:
        seq = list(itertools.islice(iter(value), MAX_UNITS + 1))
    except TypeError:
        raise UserInputError(f"units must be integers, got {value!r}") from None
    if len(seq) > MAX_UNITS:
        raise UserInputError(f"units: more than {MAX_UNITS} given")
    if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) for u in seq):
        raise UserInputError(f"units must be integers, got {value!r}")
    return [int(u) for u in seq]


Units = Annotated[
    str | int | list[int],
    BeforeValidator(_check_units),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "'all', 'N', 'A-B' or a comma list"},
                {"type": "integer", "minimum": 0},
                {"type": "array", "items": {"type": "integer", "minimum": 0}},
            ]
        }
    ),
]
"""Units (channels, classes, direction rows): ``"all"``, ``"5"``, ``"0-7"``, ``"1,4,9"``, an int
or a list; the syntax is checked here, the range against the model when the analysis is
built (:func:`pyanalyzer.units.select_units`)."""


def _check_layers(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    try:
        layers = list(value)
    except TypeError:
        raise UserInputError(f"layers must be names, got {value!r}") from None
    if not layers:
        raise UserInputError("give at least one layer")
    if any(not isinstance(x, str) or not x for x in layers):
        raise UserInputError(f"layers must be names, got {value!r}")
    if len(set(layers)) != len(layers):
        raise UserInputError("a layer was given twice")
    return layers


Layers = Annotated[
    list[str],
    BeforeValidator(_check_layers),
    WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1}),
]
"""One or more layers by alias or ONNX name (a single name is taken as a list of one)."""


# ---- results --------------------------------------------------------------------------------


def _is_tuple_field(f: dataclasses.Field[Any]) -> bool:
    return str(f.type).replace("typing.", "").startswith(("tuple", "Tuple"))


class Result:
    """Base of every analysis' result.

    A result is a dataclass of arrays and JSON-able fields. The defaults here serialise it for
    the store: numpy fields go to :meth:`to_arrays`, the others to :meth:`to_meta`, and
    :meth:`from_stored` inverts both; subclasses with nested parts override the three.
    Subclasses implement :meth:`summary`.
    """

    def summary(self) -> dict[str, Any]:
        """The result's numbers as JSON-ready data (what ``--json`` prints)."""
        raise NotImplementedError

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The result's arrays, by name (a state dict)."""
        out: dict[str, np.ndarray] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # results are dataclasses
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                out[f.name] = value
        return out

    def to_meta(self) -> dict[str, Any]:
        """Everything else, as JSON-able data (None-valued array fields included as None)."""
        meta: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # results are dataclasses
            value = getattr(self, f.name)
            if not isinstance(value, np.ndarray):
                meta[f.name] = list(value) if isinstance(value, tuple) else value
        return meta

    @classmethod
    def from_stored(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Self:
        """Rebuild a result from :meth:`to_arrays` and :meth:`to_meta`.

        Raises:
            KeyError: a field is missing (the store then recomputes the result).
        """
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # results are dataclasses
            if f.name in arrays:
                kwargs[f.name] = np.asarray(arrays[f.name])
            elif f.name in meta:
                value = meta[f.name]
                kwargs[f.name] = tuple(value) if _is_tuple_field(f) and value is not None else value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f.name)
        return cls(**kwargs)


# ---- analyses -------------------------------------------------------------------------------


def stored_data(value: Any) -> Any:
    """JSON data as the store keeps it (tuples as lists, numpy scalars as numbers): what a
    request's parameters, inputs or preprocessing are compared with a :class:`StoredRun`'s
    as."""
    import json

    from pyanalyzer.store import canonical_json

    return json.loads(canonical_json(value))


def stored_runs(store: Store, method: str, model_sha256: str) -> list[StoredRun]:
    """The results of analysis ``method`` stored for a model, newest first, with the
    parameters, inputs and preprocessing each ran with (no array is read): e.g. to find a
    trained decoder whatever it was trained on."""
    runs = []
    for info in store.entries():
        key = info.key
        if key.model_sha256 != model_sha256 or key.method != method:
            continue
        wrapped: dict[str, Any] = info.params if isinstance(info.params, dict) else {}
        found = wrapped.get("params")
        inner: dict[str, Any] = found if isinstance(found, dict) else {}
        runs.append(
            StoredRun(
                info=info,
                params=dict(inner.get("params") or {}),
                inputs=inner.get("inputs"),
                preprocessing=inner.get("preprocessing"),
                revision=wrapped.get("revision"),
            )
        )
    return sorted(runs, key=lambda r: r.info.created, reverse=True)


@dataclasses.dataclass(frozen=True)
class StoredRun:
    """One stored result of an analysis, as :meth:`Analysis.stored` lists it.

    Attributes:
        info: the store's entry info (key, creation time, size...).
        params: the parameters resolved against the model (:meth:`Analysis.resolved`).
        inputs: the identity of the inputs (:meth:`Analysis.identify`).
        preprocessing: the model's preprocessing when it ran.
        revision: the analysis' stored-format revision when it ran.
    """

    info: EntryInfo
    params: dict[str, Any]
    inputs: Any
    preprocessing: Any
    revision: int | None


P = TypeVar("P", bound=Params)
R = TypeVar("R", bound=Result)


class Analysis(ABC, Generic[P, R]):
    """Base of every analysis: built on a model with parameters, one verb (:meth:`run`).

    Args:
        model: a loaded :class:`~pyanalyzer.model.model.Model`.
        params: a params object of :attr:`params_type`, a mapping (JSON), or None for the
            defaults; keyword ``options`` override single fields.
        store: the result store: a run whose result is stored returns it without computing,
            long runs checkpoint into it and resume. None: nothing is cached.
        progress: progress bars on stderr.
        checkpoint_every: seconds between checkpoints of long runs (0: at every opportunity).
        executor: where the shards run (:class:`~pyanalyzer.executor.RayExecutor` on a Ray
            cluster) for the analyses that split their work (dissection); the results are
            the same as without one. None: in this process, the analysis' own way.

    Raises:
        ParamsError: parameters that do not validate (one line).
        UserInputError: parameters that do not fit the model (an unknown layer, units out of
            range, no torch twin for a gradient method), raised here, before anything runs.
    """

    method: ClassVar[str]
    """The analysis' name: its store method and its name in the service and the CLI."""
    params_type: ClassVar[type[Params]]
    result_type: ClassVar[type[Result]]
    revision: ClassVar[int] = 1
    """The stored-format revision: bumped when the same parameters give other results (or
    other arrays), so that older stored results are not returned."""
    summary_line: ClassVar[str] = ""
    """One line saying what the analysis does and where it comes from (papers)."""
    key_excludes: ClassVar[frozenset[str]] = frozenset()
    """Params that do not change the result (batch sizes, devices): left out of the key."""
    inputs: ClassVar[str] = "none"
    """What :meth:`run` takes: ``"images"`` (uint8 images or an image source, required),
    ``"image-source"`` (an image source, or None for synthetic scenes), ``"reference"`` (an
    optional image source), ``"concepts"`` (a Broden-format dataset) or ``"none"``."""

    def __init__(
        self,
        model: Model,
        params: P | Mapping[str, Any] | None = None,
        *,
        store: Store | None = None,
        progress: bool = True,
        checkpoint_every: float = 2.0,
        executor: Executor | None = None,
        **options: Any,
    ):
        self.model = model
        self.executor = executor
        """Where the shards of an analysis that splits its work run
        (:mod:`pyanalyzer.executor`); None: the analysis' own local path."""
        self.params: P = typing.cast(P, self.params_type.parse(params, **options))
        self.store = store
        self.progress = progress
        if not (
            isinstance(checkpoint_every, numbers.Real)
            and not isinstance(checkpoint_every, bool)
            and math.isfinite(checkpoint_every)
            and checkpoint_every >= 0
        ):
            raise UserInputError(
                f"checkpoint_every must be a finite number of seconds >= 0, got {checkpoint_every!r}"
            )
        self.checkpoint_every: float = float(checkpoint_every)
        self.last: Cached[R] | None = None
        self.stored_only: bool = False
        """Answer from the store or raise :class:`NotStored`, never compute (the service's
        request handlers answer what is stored at once, and queue the rest)."""
        self.check()

    # ---- what subclasses provide -------------------------------------------------------------
    def check(self) -> None:
        """Validate the parameters against the model (override; raise UserInputError)."""

    def prepare(self, inputs: Any) -> Any:
        """Validate and normalise the inputs of :meth:`run` (override; default: as given)."""
        return inputs

    def identify(self, inputs: Any) -> Any:
        """JSON-able identity of the (prepared) inputs, part of the key (override)."""
        return None

    def resolved(self) -> dict[str, Any]:
        """The parameters resolved against the model (layer names, unit lists) that determine
        the result; the store key is made of them (override to resolve)."""
        return {k: v for k, v in self.params.canonical().items() if k not in self.key_excludes}

    @abstractmethod
    def compute(self, inputs: Any, checkpoint: Checkpoint) -> R:
        """Compute the result (called on a store miss, with the checkpoint to resume from)."""

    # ---- the verb ----------------------------------------------------------------------------
    def key_params(self, inputs: Any) -> dict[str, Any]:
        """Everything the result depends on, hashed into its store key."""
        return {
            "params": self.resolved(),
            "inputs": self.identify(inputs),
            "preprocessing": self.model.preprocessing.to_dict(),
        }

    def run(self, inputs: Any = None) -> R:
        """Run the analysis on ``inputs``, or answer from the store.

        Returns:
            the result (:attr:`result_type`); :attr:`last` says whether it came from the
            store or resumed a checkpoint.

        Raises:
            NotStored: :attr:`stored_only` is set and the store does not hold the result.
        """
        from pyanalyzer.store import cached

        prepared = self.prepare(inputs)
        compute = self.compute
        if self.stored_only:

            def compute(inputs: Any, checkpoint: Checkpoint) -> R:
                raise NotStored()

        run = cached(
            self.store,
            model_sha256=self.model.sha256,
            method=self.method,
            # the key only serves a store: without one, no hashing of the inputs (a folder's
            # files, a dataset) before the work starts
            params=self.key_params(prepared) if self.store is not None else None,
            revision=self.revision,
            compute=lambda ckpt: compute(prepared, ckpt),
            result_type=self.result_type,
            model_file=self.model.path.name,
            preprocessing=self.model.preprocessing.to_dict(),
            checkpoint_every=self.checkpoint_every,
        )
        self.last = typing.cast("Cached[R]", run)
        return self.last.result

    @property
    def from_store(self) -> bool:
        """Whether the last :meth:`run` was answered from the store."""
        return self.last is not None and self.last.from_store

    @property
    def resumed(self) -> bool:
        """Whether the last :meth:`run` resumed from a checkpoint."""
        return self.last is not None and self.last.resumed

    @classmethod
    def stored(cls, store: Store, model_sha256: str) -> list[StoredRun]:
        """This analysis' results stored for a model, newest first (:func:`stored_runs`)."""
        return stored_runs(store, cls.method, model_sha256)

    @classmethod
    def stored_usable(cls, store: Store, model: Model) -> list[StoredRun]:
        """This analysis' finished results stored for ``model`` that still apply: the current
        :attr:`revision` and the model's current preprocessing (checkpoints left out), newest
        first."""
        preprocessing = stored_data(model.preprocessing.to_dict())
        return [
            run
            for run in cls.stored(store, model.sha256)
            if not run.info.key.is_partial
            and run.revision == cls.revision
            and stored_data(run.preprocessing) == preprocessing
        ]

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The analysis for the service's method list: name, summary and params schema."""
        return {
            "method": cls.method,
            "summary": cls.summary_line,
            "revision": cls.revision,
            "inputs": cls.inputs,
            "params": cls.params_type.json_schema(),
        }


class ImageAnalysis(Analysis[P, R]):
    """An analysis of a batch of images: :meth:`run` takes uint8 ``[N, H, W, C]`` images at the
    model's input size (or one ``[H, W, C]`` image, or an image source, read as the model sees
    it), identified in the key by their bytes."""

    inputs: ClassVar[str] = "images"
    missing_inputs: ClassVar[str] = "give the images to analyse"
    """The message when :meth:`run` is called without images."""

    def check_images(self, count: int) -> None:
        """Refuse ``count`` images where the analysis could not hold them (its memory
        estimate over the budget); called before an image source is read and again on the
        images read. Nothing by default.

        Raises:
            BudgetError: what ``count`` images would need exceeds the memory budget.
        """

    def prepare(self, inputs: Any) -> np.ndarray:
        from pyanalyzer.data.images import model_images
        from pyanalyzer.errors import ImageError

        if inputs is None:
            raise ImageError(self.missing_inputs)
        if hasattr(inputs, "pixels") and hasattr(inputs, "__len__") and len(inputs):
            self.check_images(len(inputs))  # an image source: before reading it
        images = model_images(inputs, self.model.preprocessing)
        self.check_images(len(images))
        return images

    def identify(self, inputs: np.ndarray) -> Any:
        from pyanalyzer.data.images import array_digest

        return {"images": array_digest(inputs)}
