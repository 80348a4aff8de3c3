"""Activation maximization as an analysis: one image per unit of a layer, in batches.

:class:`ActivationMaximization` renders, for each chosen unit (a channel, a neuron, a class or
a direction row), an image that maximises it, with the loop of :mod:`.render`: ``channel(layer,
units)`` asks image ``i`` to excite unit ``i``, so 64 channels cost one optimisation of a batch
of 64, not 64 optimisations. Each image draws its noise and transforms from its own generator,
seeded by ``(seed, unit)``, so a unit's image does not depend on which other units share its
batch. Every finished batch is checkpointed in the store, so an interrupted run resumes at the
batch it was in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, field_serializer
from pydantic import model_validator as _model_validator

from pyanalyzer._backend import DEVICES
from pyanalyzer._checks import is_int
from pyanalyzer.analysis import Analysis, Choice, Float, Int, Params, Result, Units
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.actmax.directions import as_directions
from pyanalyzer.methods.actmax.objectives import (
    OBJECTIVES,
    Activations,
    Objective,
    TensorRef,
    direction,
    find_logits,
    resolve,
    unit_objective,
)
from pyanalyzer.methods.actmax.param import PARAMS, STARTS
from pyanalyzer.methods.actmax.regularizers import SETS, RegularizerSet, regularizer_set
from pyanalyzer.methods.actmax.render import (
    MAX_STEPS,
    Net,
    Rendering,
    check_memory,
    check_options,
    concat_renderings,
    image_size,
    render,
)
from pyanalyzer.model.gradient import torch_device
from pyanalyzer.units import select_units

if TYPE_CHECKING:
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Checkpoint

__all__ = [
    "KINDS",
    "ActivationMaximization",
    "ActmaxParams",
    "ActmaxResult",
    "method_objective",
    "reference_maxima",
]

KINDS = (*OBJECTIVES, "direction")
"""What :class:`ActivationMaximization` renders one image of per unit: a channel, a neuron, a
class, or a direction (one image per row of a direction matrix)."""


def method_objective(
    kind: str, layer: str | None, units: int | Sequence[int], directions: np.ndarray | None = None
) -> Objective:
    """The objective of :class:`ActivationMaximization`: :func:`~.objectives.unit_objective`
    for channels, neurons and classes; for ``"direction"``, row(s) ``units`` of
    ``directions`` (one per image when ``units`` is a sequence)."""
    if kind != "direction":
        return unit_objective(kind, layer, units)
    if layer is None:
        raise UserInputError("the direction objective needs a layer")
    if directions is None:
        raise UserInputError("the direction objective needs directions")
    rows = int(units) if is_int(units) else [int(u) for u in units]
    return direction(layer, directions[rows])


def _digest(a: np.ndarray) -> str:
    """An identity of an array for store keys: shape, dtype and a hash of the bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(a.tobytes()).hexdigest()[:16]
    return f"{a.dtype.str}{list(a.shape)}:{h}"


# ---- parameters ----------------------------------------------------------------------------


def _check_size(value: Any) -> tuple[int, int] | None:
    return None if value is None else image_size(value, (0, 0))


def _check_regularizers(value: Any) -> str | RegularizerSet:
    regularizer_set(value)  # an unknown name fails here, in one line
    return value


def _check_directions(value: Any) -> list[list[float]] | None:
    return None if value is None else as_directions(value).tolist()


def _check_color(value: Any) -> bool | list[list[float]] | None:
    if value is None or isinstance(value, bool):
        return value
    try:
        m = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise UserInputError("color must be a square matrix of numbers") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.isfinite(m).all():
        raise UserInputError(f"color must be a finite square matrix, got shape {list(m.shape)}")
    return m.tolist()


Size = Annotated[
    tuple[int, int] | None,
    BeforeValidator(_check_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 8, "maximum": 4096},
                {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                {"type": "null"},
            ]
        }
    ),
]
Regularizers = Annotated[
    str | RegularizerSet,
    BeforeValidator(_check_regularizers),
    WithJsonSchema({"type": "string", "enum": list(SETS)}),
]
Directions = Annotated[
    list[list[float]] | None,
    BeforeValidator(_check_directions),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                {"type": "null"},
            ]
        }
    ),
]
Color = Annotated[
    bool | list[list[float]] | None,
    BeforeValidator(_check_color),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "boolean"},
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                {"type": "null"},
            ]
        }
    ),
]


class ActmaxParams(Params):
    """Parameters of :class:`ActivationMaximization`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    title: ClassVar[str] = "actmax"

    layer: str | None = Field(
        None,
        description="Layer (alias or ONNX name); for the class objective the output to start "
        "from, or null for the model's only class-score output.",
    )
    units: Units = Field("all", description="Units (classes for class, rows for direction).")
    objective: Annotated[str, Choice("objective", KINDS)] = Field(
        "channel",
        description="channel: a channel's mean; neuron: a channel at the centre; class: a "
        "class logit before any softmax; direction: a direction in the layer's channel space.",
    )
    param: Annotated[str, Choice("parametrization", PARAMS)] = Field(
        "fft", description="Image parametrization: fft (lucid's, decorrelated) or pixel."
    )
    regularizers: Regularizers = Field(
        "lucid",
        description="lucid (transforms only), yosinski1..yosinski4 (pixel only), none; from "
        "Python also a RegularizerSet.",
    )
    steps: Annotated[int, Int("steps", 1, MAX_STEPS)] = Field(256, description="Optimiser steps.")
    size: Size = Field(None, description="Image size (default: the model's input size).")
    seed: Annotated[int, Int("seed", 0)] = Field(0, description="Random seed.")
    lr: Annotated[
        float, Float("learning rate", low=0.0, low_open=True, message="a positive finite number")
    ] = Field(0.05, description="Adam's learning rate.")
    start: Annotated[str | None, Choice("start", STARTS, optional=True)] = Field(
        None, description="Start image: mean or noise (default: the regularizer set's)."
    )
    redirect_steps: Annotated[int, Int("redirect steps", 0)] = Field(
        16, description="Steps with redirected ReLU gradients (lucid's trick for dead units)."
    )
    color: Color = Field(
        None,
        description="FFT colour square root: null (ImageNet's), false (none), or a matrix.",
    )
    batch: bool = Field(True, description="Optimise units in batches (else one by one).")
    batch_size: Annotated[int, Int("batch size", 1)] = Field(
        64, description="Most units in one batch."
    )
    directions: Directions = Field(
        None, description="For the direction objective: one direction per row, [K, C]."
    )
    device: Annotated[str, Choice("device", DEVICES)] = Field(
        "auto",
        description="Where torch runs: auto (CUDA when torch sees a GPU), cpu or cuda. The "
        "images agree across devices to float rounding; not part of the stored key.",
    )

    @field_serializer("regularizers")
    def _regularizers_id(self, value: str | RegularizerSet) -> str:
        # a named set is identified by its name, a custom one by everything in it
        return value if isinstance(value, str) else value.describe()

    @_model_validator(mode="after")
    def _consistent(self) -> ActmaxParams:
        if self.objective == "direction" and self.directions is None:
            raise UserInputError("the direction objective needs directions (--direction FILE)")
        if self.objective != "direction" and self.directions is not None:
            raise UserInputError(
                f"directions are used by the direction objective only, not by {self.objective!r}"
            )
        check_options(
            self.param,
            regularizer_set(self.regularizers),
            self.steps,
            self.lr,
            self.start,
            self.redirect_steps,
        )
        return self


# ---- result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActmaxResult(Result):
    """Activation maximization of some units of one layer.

    Attributes:
        images: ``uint8 [U, H, W, 3]`` RGB (gray models: the gray value in all three).
        units: int64 ``[U]``, the units (channels or classes), in order.
        reached: float32 ``[U]``, each unit's activation on its final image (the uint8 image,
            at the model's input size, without transforms): the channel mean, the neuron's
            value or the class logit, as the objective.
        start: float32 ``[U]``, the same on the start image (the mean image, plus noise for
            ``start="noise"``), also without transforms.
        curve: float32 ``[steps, U]``, the objective at every step (with transforms).
        reference_max: float32 ``[U]``: each unit's maximum of the same activation over a
            reference image set, or None.
        layer: the ONNX tensor the objective reads; ``alias``: its short name.
        objective: ``"channel"``, ``"neuron"``, ``"class"`` or ``"direction"``.
        labels: one caption per unit (the unit number; for classes also the class name; for
            directions ``d<row>``).
        params: the parameters that produced it, resolved against the model (JSON-able).
        seconds: wall time of the optimisation.
    """

    images: np.ndarray
    units: np.ndarray
    reached: np.ndarray
    start: np.ndarray
    curve: np.ndarray
    reference_max: np.ndarray | None
    layer: str
    alias: str
    objective: str
    labels: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def relative(self) -> np.ndarray | None:
        """``reached / reference_max`` per unit (NaN where the reference maximum is <= 0), or
        None without a reference set."""
        if self.reference_max is None:
            return None
        ref = self.reference_max.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(ref > 0, self.reached / ref, np.nan)
        return out.astype(np.float32)

    @property
    def gain(self) -> np.ndarray:
        """``reached / start`` per unit (inf where the start is 0 and the unit moved)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.reached.astype(np.float64) / self.start).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """Per-unit numbers as plain JSON-able data."""
        rel = self.relative
        return {
            "layer": self.layer,
            "alias": self.alias,
            "objective": self.objective,
            "seconds": self.seconds,
            "units": [
                {
                    "unit": int(u),
                    "label": self.labels[i],
                    "start": float(self.start[i]),
                    "reached": float(self.reached[i]),
                    "reference_max": None
                    if self.reference_max is None
                    else float(self.reference_max[i]),
                    "relative": None if rel is None else float(rel[i]),
                }
                for i, u in enumerate(self.units)
            ],
        }


# ---- the analysis --------------------------------------------------------------------------


class ActivationMaximization(Analysis[ActmaxParams, ActmaxResult]):
    """Activation maximization (Erhan et al. 2009; Simonyan et al. 2013; Yosinski et al. 2015;
    Olah et al. 2017): for each unit of a layer, an image that maximises it.

    Parameters (:class:`ActmaxParams`): ``layer``, ``units``, ``objective`` (``"channel"``,
    ``"neuron"``, ``"class"``, ``"direction"`` with ``directions``), ``param`` (``"fft"`` or
    ``"pixel"``), ``regularizers`` (``"lucid"``, ``"yosinski1"``..``"yosinski4"`` (pixel
    only), ``"none"``, or a :class:`~.regularizers.RegularizerSet`), ``steps``, ``size``,
    ``seed`` (unit ``u``'s generator is seeded by ``(seed, u)``), ``lr``, ``start``,
    ``redirect_steps``, ``color`` (the FFT colour square root;
    :func:`~.param.color_correlation_from_images`), ``batch`` and ``batch_size`` (units in
    batches of near-equal size; a unit's image does not depend on its batch up to float
    rounding, which Adam can amplify over many steps), ``device`` (where torch runs; not part
    of the stored key).

    :meth:`run` takes an optional reference image source over which each unit's maximum
    activation is measured (``reference_max``, ``relative``).

    Raises:
        UserInputError: unknown objective, parametrization or regularizer set, Yosinski sets
            with ``fft``, bad numbers, missing or malformed directions, units out of range;
            GradientUnavailableError (a UserInputError) naming the ops when the model has no
            torch twin; BackendUnavailableError when CUDA was asked for and is unavailable.
    """

    method: ClassVar[str] = "actmax"
    inputs: ClassVar[str] = "reference"
    params_type: ClassVar[type[Params]] = ActmaxParams
    key_excludes: ClassVar[frozenset[str]] = frozenset({"device"})
    result_type: ClassVar[type[Result]] = ActmaxResult
    revision: ClassVar[int] = 3
    """3: the contract's key layout (2: the standard transforms fill with mid-grey)."""
    summary_line: ClassVar[str] = (
        "Activation maximization: the input each unit, channel or class prefers (Erhan et al. "
        "2009, Simonyan et al. 2013, Yosinski et al. 2015, Olah et al. 2017)."
    )

    # ---- what to optimise ------------------------------------------------------------------
    def check(self) -> None:
        p = self.params
        _ = self.model.gradient  # fail now, naming the ops, when there is no torch twin
        torch_device(p.device)  # and when CUDA was asked for and is unavailable
        self.directions = (
            None if p.directions is None else np.asarray(p.directions, dtype=np.float32)
        )
        self.target = self._target()
        self.units = self._units()
        self.size = image_size(p.size, self.model.preprocessing.input_size)
        self.regs = regularizer_set(p.regularizers)
        self.start = self.regs.start if p.start is None else p.start
        self.color = None if p.color is None else (
            p.color if isinstance(p.color, bool) else np.asarray(p.color, np.float64)
        )  # fmt: skip
        p = self.params
        batch = min(p.batch_size if p.batch else 1, len(self.units))
        check_memory(self.model, self.target, len(self.units), batch, self.size, p.steps)

    def _target(self) -> TensorRef:
        """The tensor the objective reads: ``layer``, or for classes the logits behind it."""
        p = self.params
        if p.objective == "class":
            return find_logits(self.model, p.layer)
        if p.layer is None:
            raise UserInputError(f"the {p.objective} objective needs a layer")
        tref = resolve(self.model, p.layer)
        if self.directions is not None and self.directions.shape[1] != tref.channels:
            raise UserInputError(
                f"the directions have {self.directions.shape[1]} entries; layer {tref.alias} "
                f"has {tref.channels} channels"
            )
        return tref

    def _units(self) -> list[int]:
        tref, kind = self.target, self.params.objective
        count, noun = tref.channels, "class" if kind == "class" else "unit"
        where = (
            f"the model has classes 0..{count - 1}"
            if noun == "class"
            else f"layer {tref.alias} has units 0..{count - 1}"
        )
        if self.directions is not None:
            count = len(self.directions)
            noun, where = "direction", f"{count} direction(s) were given (0..{count - 1})"
        return select_units(self.params.units, count, noun=noun, where=where)

    def resolved(self) -> dict[str, Any]:
        """The parameters that determine the images (the store key's)."""
        p = self.params
        color = self.color
        if color is None or color is True:
            color_id: Any = "imagenet" if self.model.preprocessing.channels == 3 else "none"
        elif color is False:
            color_id = "none"
        else:
            color_id = np.round(np.asarray(color, np.float64), 6).tolist()
        out = {
            "layer": self.target.name,
            "objective": p.objective,
            "units": self.units,
            "param": p.param,
            "regularizers": p.canonical()["regularizers"],
            "steps": p.steps,
            "size": list(self.size),
            "seed": p.seed,
            "lr": p.lr,
            "start": self.start,
            "redirect_steps": p.redirect_steps,
            "color": color_id,
            "batch": p.batch,
            "batch_size": p.batch_size if p.batch else 1,
        }
        if self.directions is not None:
            out["directions"] = _digest(self.directions)
        return out

    # ---- run -------------------------------------------------------------------------------
    def prepare(self, inputs: Any) -> ImageSource | None:
        if inputs is not None and len(inputs) == 0:
            raise UserInputError("the reference image set is empty")
        return inputs

    def identify(self, inputs: ImageSource | None) -> Any:
        if inputs is None:
            return None
        from pyanalyzer.data.images import source_identity

        return {"reference": source_identity(inputs)}

    def _groups(self) -> list[list[int]]:
        # ceil(U / batch_size) groups of near-equal size (65 units in batches of 64: 33 + 32),
        # so that no unit is left alone in a batch of one, whose kernels round differently.
        per_batch = self.params.batch_size if self.params.batch else 1
        n_groups = -(-len(self.units) // per_batch)
        return [g.tolist() for g in np.array_split(np.asarray(self.units), n_groups)]

    def render_group(self, group: list[int], on_step: Any = None) -> Rendering:
        """One batch: the images of the units of ``group`` (a group of :meth:`_groups`)."""
        p = self.params
        return render(
            self.model,
            method_objective(p.objective, p.layer, group, self.directions),
            len(group),
            keys=group,
            on_step=on_step,
            param=p.param,
            regularizers=self.regs,
            steps=p.steps,
            size=self.size,
            seed=p.seed,
            lr=p.lr,
            start=self.start,
            redirect_steps=p.redirect_steps,
            color=self.color,
            device=p.device,
        )

    def _render_sharded(
        self, groups: list[list[int]], parts: list[Rendering], checkpoint: Checkpoint
    ) -> list[Rendering]:
        """The groups rendered on :attr:`executor`, one group a shard (the same batches as
        locally); the finished prefix of groups is checkpointed as it grows."""
        assert self.executor is not None
        done: dict[int, Rendering] = {}
        jobs = [(self.params, group) for group in groups]
        saved = 0

        def finished(i: int, rendering: Rendering) -> None:
            nonlocal parts, saved
            done[i] = rendering
            while saved in done:  # the groups finished in order so far
                parts = [concat_renderings([*parts, done.pop(saved)])]
                saved += 1
                if len(parts[0].pixels) < len(self.units):
                    checkpoint.save(_arrays(parts[0]), force=True)

        self.executor.map(render_shard, self.model, None, jobs, finished,
                          label=f"actmax {self.target.alias}", progress=self.progress)  # fmt: skip
        return parts

    def compute(self, inputs: ImageSource | None, checkpoint: Checkpoint) -> ActmaxResult:
        from pyanalyzer._progress import progress_bar

        p, tref = self.params, self.target
        groups = self._groups()
        parts: list[Rendering] = []
        self.resumed_units = 0
        state = checkpoint.state
        if state is not None:  # the units of the batches an interrupted run finished
            resume = Rendering(*(np.asarray(state[k]) for k in _RENDERING))
            ends = np.cumsum([len(g) for g in groups]).tolist()
            if len(resume.pixels) in ends and resume.curve.shape[0] == p.steps:
                parts = [resume]
                groups = groups[ends.index(len(resume.pixels)) + 1 :]
                self.resumed_units = len(resume.pixels)
        t0 = time.perf_counter()
        if self.executor is not None and groups:
            parts = self._render_sharded(groups, parts, checkpoint)
        else:
            with progress_bar(
                p.steps * len(groups), label=f"actmax {tref.alias}", enabled=self.progress
            ) as bar:
                for group in groups:
                    parts.append(self.render_group(group, lambda: bar.update(1)))
                    parts = [concat_renderings(parts)]
                    if len(parts[0].pixels) < len(self.units):  # the last one is the result
                        checkpoint.save(_arrays(parts[0]), force=True)
        done = parts[0]
        pixels = done.pixels
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        ref_max = None
        if inputs is not None:
            ref_max = reference_maxima(
                self.model, p.objective, p.layer, self.units, inputs, progress=self.progress,
                directions=self.directions, device=p.device,
            )  # fmt: skip
        names = self.model.class_names if p.objective == "class" else None
        if names and len(names) != tref.channels:  # scores of another head: no class names
            names = None
        if self.directions is not None:
            labels = tuple(f"d{u}" for u in self.units)
        else:
            labels = tuple(
                f"{u} {names[u]}" if names and u < len(names) else str(u) for u in self.units
            )
        return ActmaxResult(
            images=pixels,
            units=np.asarray(self.units, np.int64),
            reached=done.reached,
            start=done.start,
            curve=done.curve,
            reference_max=ref_max,
            layer=tref.name,
            alias=tref.alias,
            objective=p.objective,
            labels=labels,
            params=self.resolved(),
            seconds=time.perf_counter() - t0,
        )


_RENDERING = ("pixels", "start", "reached", "curve")


def render_shard(model: Model, data: Any, job: tuple[ActmaxParams, list[int]]) -> Rendering:
    """A worker's shard: one group of units rendered as :meth:`ActivationMaximization.compute`
    renders it (the same batch, the same seeds)."""
    params, group = job
    torch.set_num_threads(max(1, int(model.forward.threads or torch.get_num_threads())))
    analysis = ActivationMaximization(model, params.replace(units=group), progress=False)
    return analysis.render_group(group)


def _arrays(r: Rendering) -> dict[str, np.ndarray]:
    """A rendering as checkpoint arrays (its fields, in :class:`Rendering`'s order)."""
    return {k: getattr(r, k) for k in _RENDERING}


def reference_maxima(
    model: Model,
    objective: str,
    layer: str | None,
    units: Sequence[int],
    source: ImageSource,
    *,
    batch_size: int = 32,
    progress: bool = True,
    directions: np.ndarray | None = None,
    device: str = "auto",
) -> np.ndarray:
    """Each unit's maximum over ``source`` of what activation maximization reports as
    ``reached`` (the channel mean, the centre neuron, the class logit, or for
    ``objective="direction"`` the mean dot product with row ``u`` of ``directions``), float32
    ``[U]``.

    Layers of the catalogue stream through onnxruntime (``model.forward.iter_layers``); the
    logits behind a softmax, which the catalogue does not list, through the torch twin (on
    ``device``).
    """
    if len(source) == 0:
        raise UserInputError("the reference image set is empty")
    objs = [method_objective(objective, layer, u, directions) for u in units]
    (ref,) = objs[0].refs()
    tref = resolve(model, ref)
    best = np.full(len(units), -np.inf, np.float64)

    def update(acts: Activations) -> None:
        for i, o in enumerate(objs):
            best[i] = max(best[i], float(o.value(acts).max()))

    if any(info.name == tref.name for info in model.layers):
        for _, got in model.forward.iter_layers(
            source, [tref.name], batch_size=batch_size, progress=progress, label="reference"
        ):
            update(Activations({ref: torch.from_numpy(np.asarray(got[tref.name], np.float32))}))
    else:
        from pyanalyzer._progress import progress_bar

        net = Net(model, {ref: tref}, device)
        spec = model.preprocessing
        starts = range(0, len(source), batch_size)
        with progress_bar(len(starts), label="reference", enabled=progress) as bar:
            for s in starts:
                idx = range(s, min(len(source), s + batch_size))
                pix = np.stack([source.pixels(i, spec) for i in idx])
                with torch.no_grad():
                    rgb01 = torch.from_numpy(pix).to(net.device).permute(0, 3, 1, 2).float()
                    update(net(rgb01 / 255.0))
                bar.update(1)
    return best.astype(np.float32)
