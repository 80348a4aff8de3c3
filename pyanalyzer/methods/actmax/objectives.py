"""Objectives: what an image should maximise, per image of a batch, composable.

Erhan et al. (2009) maximise one unit; Simonyan et al. (2013) a class score before the
softmax; Olah et al. (2017, lucid) add neurons, channels, directions in activation space, a
diversity term and linear combinations of all of these::

    obj = channel("relu6", 5) - 0.5 * neuron("relu5", 1)

An objective maps the tapped activations of one forward pass (:class:`Activations`) to one
value per image, float ``[N]``; the render loop maximises their sum. Every unit objective
takes the batch into account, so that a whole layer is optimised in one batch:

* ``unit`` may be a sequence with one entry per image: ``channel("relu4", range(64))`` asks
  image ``i`` to excite channel ``i``;
* ``batch=i`` restricts an objective to image ``i`` (the other images get 0).

Layers are named by alias or ONNX tensor name. Spatial maps are read as ``[N, C, H, W]``
whatever the model's layout; a rank-2 tensor ``[N, K]`` (a fully connected layer, the logits)
is read as ``[N, K, 1, 1]``, so ``channel("fc1", k)`` is simply that output.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pyanalyzer._checks import is_int
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    from pyanalyzer.model.model import Model

__all__ = [
    "LOGITS",
    "OBJECTIVES",
    "Activations",
    "Objective",
    "TensorRef",
    "channel",
    "class_logit",
    "direction",
    "diversity",
    "find_logits",
    "neuron",
    "resolve",
    "unit_objective",
]

LOGITS = "logits:"
"""Prefix of the layer reference of :func:`class_logit` (followed by the output's name)."""

_SOFTMAX_OPS = ("Softmax", "LogSoftmax")
_TRANSPARENT_OPS = ("Identity",)

Units = int | Sequence[int]


# ---- what objectives read ------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRef:
    """A tensor an objective reads, resolved against a model.

    Attributes:
        name: the ONNX tensor name.
        alias: a short name for file names and messages.
        layout: the layout the model computes it in, ``"nchw"``, ``"nhwc"`` or ``""`` (rank
            2); objectives always read ``[N, C, H, W]`` (the engines convert).
        channels: channels (or classes).
        height, width: spatial size (1 for rank 2).
    """

    name: str
    alias: str
    layout: str
    channels: int
    height: int
    width: int


def find_logits(model: Model, layer: str | None = None) -> TensorRef:
    """The class scores before any softmax: from the model's output (or ``layer``), walk back
    through ``Softmax``/``LogSoftmax`` (and ``Identity``) nodes to their input tensor.

    Raises:
        UserInputError: no single non-spatial output, or an unknown layer.
    """
    if layer is None:
        outs = [info for info in model.layers if info.is_output and not info.is_spatial]
        if len(outs) != 1:
            names = ", ".join(info.alias for info in outs) or "none"
            raise UserInputError(
                f"class objectives need one class-score output; the model has {len(outs)} "
                f"({names}): name one as the layer"
            )
        info = outs[0]
    else:
        info = model.layer(layer)
    per_class = int(np.prod(info.shape[2:])) if info.is_spatial and len(info.shape) == 4 else 1
    if (info.is_spatial and per_class != 1) or (not info.is_spatial and len(info.shape) != 2):
        raise UserInputError(
            f"class objectives read class scores [N, K]; layer {info.alias} has shape "
            f"{list(info.shape)}: name the class-score output, or use the channel or neuron "
            "objective for a feature map"
        )
    producer = {out: node for node in model.proto.graph.node for out in node.output}
    name, seen = info.name, set()
    while name in producer and name not in seen:
        seen.add(name)
        node = producer[name]
        if node.op_type not in _SOFTMAX_OPS + _TRANSPARENT_OPS or not node.input:
            break
        name = node.input[0]
    alias = info.alias if name == info.name else f"{info.alias}_logits"
    channels = info.channels or 0
    return TensorRef(name, alias, "", int(channels), 1, 1)


def resolve(model: Model, ref: str) -> TensorRef:
    """A layer reference (alias, ONNX name, or ``LOGITS + [layer]``) against a model.

    Raises:
        UserInputError: unknown layer (with suggestions), or a tensor of rank other than 2/4.
    """
    if ref.startswith(LOGITS):
        return find_logits(model, ref[len(LOGITS) :] or None)
    info = model.layer(ref)
    if info.is_spatial:
        return TensorRef(
            info.name, info.alias, info.layout, int(info.channels or 0), int(info.height or 1),
            int(info.width or 1),
        )  # fmt: skip
    if len(info.shape) != 2:
        raise UserInputError(
            f"layer {info.alias} has shape {list(info.shape)}: objectives read [N, C, H, W] "
            "maps or [N, K] vectors"
        )
    return TensorRef(info.name, info.alias, "", int(info.shape[1]), 1, 1)


class Activations:
    """The tensors of one forward pass, as objectives see them: ``acts(ref)`` is
    ``[N, C, H, W]`` (rank-2 tensors as ``[N, K, 1, 1]``), with autograd history.

    Args:
        values: ``{layer reference: tensor}``, spatial maps ``[N, C, H, W]`` as the engines
            hand them out (whatever layout the model computes in), vectors ``[N, K]``.
    """

    def __init__(self, values: Mapping[str, torch.Tensor]):
        self._values = values

    def __call__(self, ref: str) -> torch.Tensor:
        t = self._values[ref]
        if t.ndim == 2:
            return t[:, :, None, None]
        return t

    @property
    def n(self) -> int:
        return int(next(iter(self._values.values())).shape[0])

    @property
    def device(self) -> torch.device:
        """Where the tensors are (the gradient engine's device)."""
        return next(iter(self._values.values())).device


# ---- the composable base -------------------------------------------------------------------


class Objective:
    """Base class: ``value(acts) -> [N]`` to maximise, composable with ``+``, ``-``, ``*`` and
    ``/`` by numbers, and unary ``-``."""

    def value(self, acts: Activations) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, acts: Activations) -> torch.Tensor:
        return self.value(acts)

    def refs(self) -> frozenset[str]:
        """The layer references this objective reads."""
        return frozenset()

    def check(self, model: Model, n: int) -> None:
        """Validate against a model and a batch of ``n`` images.

        Raises:
            UserInputError: unknown layer, unit out of range, a batch index or unit list that
                does not fit ``n``.
        """

    # ---- algebra ---------------------------------------------------------------------------
    def _terms(self) -> tuple[tuple[float, Objective], ...]:
        return ((1.0, self),)

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return _Linear(self._terms() + other._terms(), self._const() + other._const())
        if isinstance(other, numbers.Real):
            return _Linear(self._terms(), self._const() + float(other))
        return NotImplemented

    def __radd__(self, other: float) -> Objective:
        return self.__add__(other)

    def __mul__(self, k: float) -> Objective:
        if not isinstance(k, numbers.Real) or isinstance(k, bool):
            raise TypeError(f"objectives multiply by numbers only, not {type(k).__name__}")
        return _Linear(tuple((c * float(k), o) for c, o in self._terms()), self._const() * k)

    def __rmul__(self, k: float) -> Objective:
        return self.__mul__(k)

    def __truediv__(self, k: float) -> Objective:
        if not isinstance(k, numbers.Real) or isinstance(k, bool):
            raise TypeError(f"objectives divide by numbers only, not {type(k).__name__}")
        return self.__mul__(1.0 / float(k))

    def __neg__(self) -> Objective:
        return self.__mul__(-1.0)

    def __sub__(self, other: Objective | float) -> Objective:
        return self.__add__(-other)

    def __rsub__(self, other: float) -> Objective:
        return (-self).__add__(other)

    def _const(self) -> float:
        return 0.0


class _Linear(Objective):
    """``sum(coef * objective) + const``."""

    def __init__(self, terms: tuple[tuple[float, Objective], ...], const: float = 0.0):
        self.terms = terms
        self.const = float(const)

    def _terms(self) -> tuple[tuple[float, Objective], ...]:
        return self.terms

    def _const(self) -> float:
        return self.const

    def value(self, acts: Activations) -> torch.Tensor:
        total: torch.Tensor | None = None
        for c, o in self.terms:
            v = c * o.value(acts)
            total = v if total is None else total + v
        if total is None:
            return torch.full((acts.n,), self.const, device=acts.device)
        return total + self.const if self.const else total

    def refs(self) -> frozenset[str]:
        return frozenset().union(*(o.refs() for _, o in self.terms))

    def check(self, model: Model, n: int) -> None:
        for _, o in self.terms:
            o.check(model, n)

    def __repr__(self) -> str:
        parts = []
        for c, o in self.terms:
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            body = repr(o) if mag == 1 else f"{mag:g} * {o!r}"
            parts.append((sign, body))
        if self.const:
            parts.append(("-" if self.const < 0 else "+", f"{abs(self.const):g}"))
        if not parts:
            return "0"
        text = ("-" if parts[0][0] == "-" else "") + parts[0][1]
        return text + "".join(f" {s} {b}" for s, b in parts[1:])


# ---- unit objectives -----------------------------------------------------------------------


def _units_text(unit: Units) -> str:
    if is_int(unit):
        return str(int(unit))
    u = list(unit)
    return f"[{u[0]}..{u[-1]}]" if len(u) > 3 else str(u)


def _as_units(unit: Units) -> int | tuple[int, ...]:
    if is_int(unit):
        return int(unit)
    try:
        out = tuple(int(u) for u in unit)
    except TypeError:
        raise UserInputError(f"a unit is an integer or a list of integers, got {unit!r}") from None
    if not out:
        raise UserInputError("the list of units is empty")
    return out


class _UnitObjective(Objective):
    """Shared by neuron, channel and class objectives: reduce ``acts(layer)`` to ``[N, C]``,
    then pick each image's unit."""

    kind = "unit"
    noun = "unit"

    def __init__(self, ref: str, unit: Units, batch: int | None = None):
        self.ref = ref
        self.unit = _as_units(unit)
        self.batch = None if batch is None else int(batch)

    def refs(self) -> frozenset[str]:
        return frozenset([self.ref])

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C]
        raise NotImplementedError

    def check(self, model: Model, n: int) -> None:
        tref = resolve(model, self.ref)
        units = [self.unit] if isinstance(self.unit, int) else list(self.unit)
        for u in units:
            if not 0 <= u < tref.channels:
                where = (
                    f"the model has classes 0..{tref.channels - 1}"
                    if self.kind == "class"
                    else f"layer {tref.alias} has units 0..{tref.channels - 1}"
                )
                raise UserInputError(f"{self.noun} {u} is out of range: {where}")
        if not isinstance(self.unit, int) and len(self.unit) != n:
            raise UserInputError(
                f"{self.kind} objective lists {len(self.unit)} units for a batch of {n} images "
                "(one unit per image)"
            )
        if self.batch is not None and not 0 <= self.batch < n:
            raise UserInputError(f"batch index {self.batch} is outside the batch of {n} images")
        self._check_position(tref)

    def _check_position(self, tref: TensorRef) -> None:
        pass

    def value(self, acts: Activations) -> torch.Tensor:
        per_unit = self._reduce(acts(self.ref))  # [N, C]
        n = per_unit.shape[0]
        if isinstance(self.unit, int):
            v = per_unit[:, self.unit]
        else:
            if len(self.unit) != n:
                raise UserInputError(
                    f"{self.kind} objective lists {len(self.unit)} units for a batch of {n}"
                )
            idx = torch.tensor(self.unit, device=per_unit.device)[:, None]
            v = per_unit.gather(1, idx)[:, 0]
        return self._masked(v)

    def own_value(self, own: torch.Tensor) -> torch.Tensor:
        """The value per image, ``[N]``, from ``own [N, 1, H, W]``: each image's own unit's map
        alone (what :mod:`.selected` computes instead of the whole layer)."""
        return self._masked(self._reduce(own)[:, 0])

    def _masked(self, v: torch.Tensor) -> torch.Tensor:
        if self.batch is not None:
            mask = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
            mask[self.batch] = 1.0
            v = v * mask
        return v

    def _args(self) -> str:
        return f"{self.ref}, {_units_text(self.unit)}"

    def __repr__(self) -> str:
        b = "" if self.batch is None else f", batch={self.batch}"
        return f"{self.kind}({self._args()}{b})"


class Neuron(_UnitObjective):
    """One position of a channel (lucid's ``neuron``); see :func:`neuron`."""

    kind = "neuron"

    def __init__(self, ref: str, unit: Units, x: int | None, y: int | None, batch: int | None):
        super().__init__(ref, unit, batch)
        self.x, self.y = x, y

    def position(self, height: int, width: int) -> tuple[int, int]:
        """``(y, x)``, the centre by default (lucid: ``H // 2, W // 2``)."""
        return (height // 2 if self.y is None else self.y, width // 2 if self.x is None else self.x)

    def _check_position(self, tref: TensorRef) -> None:
        y, x = self.position(tref.height, tref.width)
        if not (0 <= y < tref.height and 0 <= x < tref.width):
            raise UserInputError(
                f"position (y={y}, x={x}) is outside layer {tref.alias} "
                f"({tref.height}x{tref.width})"
            )

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        y, x = self.position(t.shape[2], t.shape[3])
        return t[:, :, y, x]

    def _args(self) -> str:
        pos = "" if self.x is None and self.y is None else f", x={self.x}, y={self.y}"
        return super()._args() + pos


class Channel(_UnitObjective):
    """The mean of a channel over positions; see :func:`channel`."""

    kind = "channel"

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=(2, 3))


class ClassLogit(_UnitObjective):
    """A class score before the softmax; see :func:`class_logit`."""

    kind = "class"
    noun = "class"

    def __init__(self, unit: Units, layer: str | None, batch: int | None):
        super().__init__(LOGITS + (layer or ""), unit, batch)
        self.layer = layer

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1)

    def _args(self) -> str:
        return _units_text(self.unit) + ("" if self.layer is None else f", layer={self.layer}")


def neuron(
    layer: str, unit: Units, x: int | None = None, y: int | None = None, batch: int | None = None
) -> Objective:
    """One neuron: channel ``unit`` of ``layer`` at position ``(y, x)`` (default the centre,
    ``H // 2, W // 2``).

    Args:
        layer: alias or ONNX name.
        unit: the channel, or one channel per image.
        x, y: the position in the layer's map.
        batch: only this image of the batch.
    """
    return Neuron(layer, unit, x, y, batch)


def channel(layer: str, unit: Units, batch: int | None = None) -> Objective:
    """A channel: the mean of channel ``unit`` of ``layer`` over all positions.

    Args:
        layer: alias or ONNX name.
        unit: the channel, or one channel per image.
        batch: only this image of the batch.
    """
    return Channel(layer, unit, batch)


def class_logit(unit: Units, layer: str | None = None, batch: int | None = None) -> Objective:
    """A class score before the softmax (Simonyan et al. 2013): the logit ``unit``, found by
    walking back from the model's output (or ``layer``) through ``Softmax``/``LogSoftmax``
    (:func:`find_logits`). Maximising a softmax probability instead would mostly push the
    other classes down.

    Args:
        unit: the class index, or one per image.
        layer: the output to start from (default: the model's only non-spatial output).
        batch: only this image of the batch.
    """
    return ClassLogit(unit, layer, batch)


class Direction(Objective):
    """A direction in a layer's channel space; see :func:`direction`."""

    def __init__(self, ref: str, vector: Sequence[float] | np.ndarray | torch.Tensor, batch):
        v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
        if v.ndim not in (1, 2) or v.numel() == 0:
            raise UserInputError(
                "a direction is a vector over the layer's channels, or a matrix with one "
                f"such row per image; got shape {list(v.shape)}"
            )
        if not torch.isfinite(v).all():
            raise UserInputError("a direction must be finite (it has NaN or infinite entries)")
        self.ref, self.vector = ref, v
        self.batch = None if batch is None else int(batch)

    @property
    def per_image(self) -> bool:
        """True when :attr:`vector` has one row per image."""
        return self.vector.ndim == 2

    def refs(self) -> frozenset[str]:
        return frozenset([self.ref])

    def check(self, model: Model, n: int) -> None:
        tref = resolve(model, self.ref)
        if self.vector.shape[-1] != tref.channels:
            raise UserInputError(
                f"direction has {self.vector.shape[-1]} entries; layer {tref.alias} has "
                f"{tref.channels} channels"
            )
        if self.per_image and self.vector.shape[0] != n:
            raise UserInputError(
                f"direction objective has {self.vector.shape[0]} rows for a batch of {n} images "
                "(one row per image)"
            )
        if self.batch is not None and not 0 <= self.batch < n:
            raise UserInputError(f"batch index {self.batch} is outside the batch of {n} images")

    def value(self, acts: Activations) -> torch.Tensor:
        # mean over positions of <a[:, :, y, x], v> equals <mean over positions, v>.
        mean = acts(self.ref).mean(dim=(2, 3))  # [N, C]
        vec = self.vector.to(mean.device, mean.dtype)
        if self.per_image:
            if vec.shape[0] != mean.shape[0]:
                raise UserInputError(
                    f"direction objective has {vec.shape[0]} rows for a batch of {mean.shape[0]}"
                )
            v = (mean * vec).sum(dim=1)
        else:
            v = mean @ vec
        if self.batch is not None:
            mask = torch.zeros_like(v)
            mask[self.batch] = 1.0
            v = v * mask
        return v

    def __repr__(self) -> str:
        b = "" if self.batch is None else f", batch={self.batch}"
        shape = "x".join(str(d) for d in self.vector.shape)
        return f"direction({self.ref}, <{shape}>{b})"


def direction(
    layer: str, vector: Sequence[float] | np.ndarray | torch.Tensor, batch: int | None = None
) -> Objective:
    """A direction in activation space (Olah et al. 2017): the dot product of each position's
    channel vector with ``vector``, averaged over positions. The vector is used as given (not
    normalised), so a one-hot vector equals :func:`channel`.

    Args:
        layer: alias or ONNX name.
        vector: one weight per channel ``[C]`` (the same direction for every image), or a
            matrix ``[N, C]`` with one direction per image (a batch renders N directions).
        batch: only this image of the batch.
    """
    return Direction(layer, vector, batch)


class Diversity(Objective):
    """Dissimilarity of the images' Gram matrices; see :func:`diversity`."""

    def __init__(self, ref: str):
        self.ref = ref

    def refs(self) -> frozenset[str]:
        return frozenset([self.ref])

    def check(self, model: Model, n: int) -> None:
        resolve(model, self.ref)

    def value(self, acts: Activations) -> torch.Tensor:
        t = acts(self.ref)
        n, c = t.shape[:2]
        if n < 2:
            return t.sum() * 0.0 + torch.zeros(n, dtype=t.dtype, device=t.device)
        flat = t.reshape(n, c, -1)
        grams = F.normalize((flat @ flat.transpose(1, 2)).reshape(n, -1), p=2, dim=1)
        sim = grams @ grams.T  # cosine similarity of every pair
        off = sim.sum(1) - sim.diagonal()
        return -off / (n - 1)

    def __repr__(self) -> str:
        return f"diversity({self.ref})"


def diversity(layer: str) -> Objective:
    """lucid's diversity term (Olah et al. 2017): image ``i`` gets minus the mean cosine
    similarity between its Gram matrix of ``layer`` (channels × channels, over positions) and
    those of the other images, so maximising it pushes the batch's images apart in "style".
    Add it with a weight to an objective that applies to every image:
    ``channel("relu6", 5) + 0.5 * diversity("relu5")``. Zero for a batch of one.
    """
    return Diversity(layer)


# ---- the method's per-unit objectives ----------------------------------------------------

OBJECTIVES: dict[str, Callable[[str | None, Units], Objective]] = {
    "channel": lambda layer, units: channel(_need(layer), units),
    "neuron": lambda layer, units: neuron(_need(layer), units),
    "class": lambda layer, units: class_logit(units, layer),
}
"""Objective kinds :class:`~pyanalyzer.methods.actmax.ActivationMaximization` optimises one unit
per image."""


def _need(layer: str | None) -> str:
    if layer is None:
        raise UserInputError("this objective needs a layer")
    return layer


def unit_objective(kind: str, layer: str | None, units: Units) -> Objective:
    """``channel``/``neuron``/``class`` objective for ``units`` (one per image).

    Raises:
        UserInputError: an unknown kind.
    """
    if kind not in OBJECTIVES:
        raise UserInputError(f"unknown objective {kind!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[kind](layer, units)
