"""The render loop, and activation maximization of a layer's units built on it.

:func:`render` optimises a batch of images for any :class:`~.objectives.Objective`:

1. the parametrization (:mod:`.param`) makes RGB 0..1 images;
2. the transforms of the regularizer set (:mod:`.transforms`) pad, jitter, scale and rotate
   them, a centre crop brings them back to the image size (one resampling for all the
   geometric steps), and a resize to the model's input size when the image size differs;
3. ``model.preprocessing.normalize_torch`` maps them into the model's input range and layout;
4. the model's torch twin, cut after the layers the objective reads, runs forward;
5. Adam ascends the objective minus the penalties; pixel-editing regularizers and the
   parametrization's projection run after each step.

During the first ``redirect_steps`` steps every ``nn.ReLU`` (and ``nn.ReLU6``) of the (private,
cut) torch module is replaced by :class:`RedirectedReLU` (:class:`RedirectedReLU6`; lucid's
``redirected_relu_grad`` and ``redirected_relu6_grad``), so that a unit that
is zero on the start image still gets a gradient; :func:`redirected_relu` restores them in
``finally``.

:class:`ActivationMaximization` (and :func:`run_actmax`, the function the CLI calls) renders one
image per unit of a layer, all units in one batch: ``channel(layer, units)`` asks image ``i`` to
excite unit ``i``, so 64 channels cost one optimisation of a batch of 64, not 64 optimisations.
Each image draws its noise and transforms from its own generator, seeded by ``(seed, unit)``,
so a unit's image does not depend on which other units share its batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import operator
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pyanalyzer._checks import check_int
from pyanalyzer.errors import UserInputError
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
from pyanalyzer.methods.actmax.param import PARAMS, STARTS, make_param, mean_color
from pyanalyzer.methods.actmax.regularizers import RegularizerSet, regularizer_set
from pyanalyzer.methods.actmax.transforms import CenterCrop, Compose, resize

if TYPE_CHECKING:
    from pyanalyzer.data.images import ImageSource
    from pyanalyzer.model.model import Model

__all__ = [
    "ActivationMaximization",
    "ActmaxResult",
    "RedirectedReLU",
    "RedirectedReLU6",
    "Rendering",
    "redirected_relu",
    "reference_maxima",
    "KINDS",
    "as_directions",
    "load_directions",
    "method_objective",
    "render",
    "run_actmax",
    "unit_seed",
]


# ---- redirected ReLU -----------------------------------------------------------------------


class _RedirectedReLUFunction(torch.autograd.Function):
    """ReLU forward; lucid's redirected gradient backward.

    ``grad`` is the gradient of the loss being minimised. Per image: when the ordinary ReLU
    gradient (``grad`` where ``x >= 0``) is nonzero somewhere, it is used unchanged; when it is
    zero everywhere (the unit is dead on this image), ``grad`` passes through except where it
    would push an already negative input lower, so the optimiser can raise it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        neg = x < 0
        relu_grad = grad.masked_fill(neg, 0.0)
        if x.ndim == 0:
            return relu_grad if bool(relu_grad != 0) else grad.masked_fill(neg & (grad > 0), 0.0)
        dead = relu_grad.reshape(x.shape[0], -1).abs().amax(dim=1) == 0
        if bool(dead.any()):  # only dead images pay for the redirection
            g, ng = grad[dead], neg[dead]
            relu_grad[dead] = g.masked_fill(ng & (g > 0), 0.0)
        return relu_grad


class RedirectedReLU(nn.Module):
    """Drop-in ``nn.ReLU`` with lucid's redirected gradient (forward is unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RedirectedReLUFunction.apply(x)


class _RedirectedReLU6Function(torch.autograd.Function):
    """ReLU6 forward; lucid's ``redirected_relu6_grad`` backward.

    Per image: the ordinary gradient (zero where ``x < 0`` or ``x > 6``) when it is nonzero
    somewhere; otherwise ``grad`` passes through except where it would push an input that is
    already below 0 lower, or one already above 6 higher.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        low, high = x < 0, x > 6
        relu6_grad = grad.masked_fill(low | high, 0.0)
        flat = relu6_grad.reshape(x.shape[0], -1) if x.ndim else relu6_grad.reshape(1, -1)
        dead = flat.abs().amax(dim=1) == 0
        if bool(dead.any()):
            blocked = (low & (grad > 0)) | (high & (grad < 0))  # grad of the loss minimised
            redirected = grad.masked_fill(blocked, 0.0)
            if x.ndim == 0:
                return redirected
            relu6_grad[dead] = redirected[dead]
        return relu6_grad


class RedirectedReLU6(nn.Module):
    """Drop-in ``nn.ReLU6`` (onnx2torch's ``Clip(0, 6)``) with lucid's redirected gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RedirectedReLU6Function.apply(x)


_REDIRECTED = ((nn.ReLU, RedirectedReLU), (nn.ReLU6, RedirectedReLU6))


@contextlib.contextmanager
def redirected_relu(module: nn.Module) -> Iterator[int]:
    """Replace every ``nn.ReLU`` submodule of ``module`` by :class:`RedirectedReLU` (and every
    ``nn.ReLU6`` by :class:`RedirectedReLU6`, as lucid redirects both) inside the block, and
    put the originals back in ``finally`` (also when the block raises).

    onnx2torch turns every ONNX ``Relu`` node into an ``nn.ReLU`` submodule of the
    ``fx.GraphModule``, whose generated ``forward`` looks its submodules up by attribute, so
    swapping the attribute swaps the op.

    Yields:
        the number of ReLUs replaced.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, sub in list(module.named_modules(remove_duplicate=False)):
            replacement = next((r for kind, r in _REDIRECTED if isinstance(sub, kind)), None)
            if replacement is not None and name:
                parent_name, _, attr = name.rpartition(".")
                parent = module.get_submodule(parent_name) if parent_name else module
                setattr(parent, attr, replacement())
                swapped.append((parent, attr, sub))
        yield len(swapped)
    finally:
        for parent, attr, sub in reversed(swapped):
            setattr(parent, attr, sub)


# ---- the torch twin, cut after the tapped tensors ------------------------------------------


def _truncate(gm: torch.fx.GraphModule, producers: Sequence[tuple[str, int]]):
    """A new GraphModule (sharing ``gm``'s submodules) that stops at the given tensors
    (``(submodule name, output index)``, as ``GradientEngine`` records them) and returns them
    as a tuple: layers after the objective are never computed."""
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    wanted = []
    for mod_name, k in producers:
        node = by_target.get(mod_name)
        if node is None:
            raise UserInputError(f"no torch module computes ONNX node {mod_name}")
        pick = next(
            (
                u
                for u in node.users
                if u.op == "call_function" and u.target is operator.getitem and u.args[1] == k
            ),
            None,
        )
        if pick is None and k != 0:
            raise UserInputError(f"output {k} of ONNX node {mod_name} is not used by the model")
        wanted.append(pick if pick is not None else node)
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    remaining = set(wanted)
    for node in gm.graph.nodes:
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, lambda a: env[a])
        remaining.discard(node)
        if not remaining:
            break
    graph.output(tuple(env[w] for w in wanted))
    cut = torch.fx.GraphModule(gm, graph)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return cut


class _Net:
    """The model from RGB 0..1 images to the objective's tensors."""

    def __init__(self, model: Model, refs: Mapping[str, TensorRef]):
        engine = model.gradient  # GradientUnavailableError (a UserInputError) names the ops
        for r in refs.values():
            if not engine.has_tensor(r.name):
                raise UserInputError(
                    f"layer {r.alias} ({r.name!r}) is not computed by the model's torch twin"
                )
        self.refs = dict(refs)
        self.keys = list(refs)
        producers = [engine._producer[refs[k].name] for k in self.keys]
        self.module = _truncate(engine.module, producers)
        self.spec = model.preprocessing
        # Channels-last convolutions are faster on CPU (oneDNN); the values are the same.
        self.channels_last = self.spec.layout == "nchw"

    def __call__(self, rgb01: torch.Tensor) -> Activations:
        x = self.spec.normalize_torch(rgb01)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = self.module(x)
        return Activations(dict(zip(self.keys, outs, strict=True)), self.refs)


# ---- render --------------------------------------------------------------------------------

REVISION = 2
"""Bumped when the same parameters render different images (part of the store key, so that
older cached results are not returned): 2 = the standard transforms fill with mid-grey."""

MAX_STEPS = 100_000
"""The most optimiser steps one call accepts (the per-step curve is kept in memory)."""


def unit_seed(seed: int, key: int) -> int:
    """The seed of image ``key``'s generator (a unit number, or an image index)."""
    digest = hashlib.sha256(f"pyanalyzer.actmax:{int(seed)}:{int(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """RGB (or gray) 0..1 ``[N, C, H, W]`` to ``uint8 [N, H, W, C]``."""
    arr = images.detach().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.round(arr * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class Rendering:
    """What :func:`render` returns.

    Attributes:
        pixels: the final images, ``uint8 [N, H, W, C]`` (C = the model's channels).
        start: the objective per image on the start image, without transforms, ``[N]``.
        reached: the objective per image on ``pixels``, without transforms, ``[N]``.
        curve: the objective per image at every step, with transforms, ``[steps, N]``.
    """

    pixels: np.ndarray
    start: np.ndarray
    reached: np.ndarray
    curve: np.ndarray


def concat_renderings(parts: Sequence[Rendering]) -> Rendering:
    """One :class:`Rendering` of the images of ``parts``, in order."""
    if len(parts) == 1:
        return parts[0]
    return Rendering(
        pixels=np.concatenate([p.pixels for p in parts]),
        start=np.concatenate([p.start for p in parts]),
        reached=np.concatenate([p.reached for p in parts]),
        curve=np.concatenate([p.curve for p in parts], axis=1),
    )


def _check_options(
    param: str, regs: RegularizerSet, steps: int, lr: float, start: str | None, redirect: int
) -> None:
    """Validate the options shared by :func:`render` and :class:`ActivationMaximization`."""
    if param not in PARAMS:
        raise UserInputError(
            f"unknown parametrization {param!r}; choose one of {', '.join(PARAMS)}"
        )
    if regs.edits_pixels and param != "pixel":
        raise UserInputError(
            f"regularizer set {regs.name!r} edits pixels between steps (Yosinski et al.); "
            "use param 'pixel' with it"
        )
    check_int("steps", steps, 1)
    if steps > MAX_STEPS:
        raise UserInputError(f"steps must be at most {MAX_STEPS}, got {steps}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise UserInputError(f"learning rate must be a positive finite number, got {lr!r}")
    if start is not None and start not in STARTS:
        raise UserInputError(f"unknown start {start!r}; choose one of {', '.join(STARTS)}")
    if redirect < 0:
        raise UserInputError(f"redirect steps must be >= 0, got {redirect}")


def _size(size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        pair = tuple(size)  # type: ignore[arg-type]
        if len(pair) != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair
        ):
            raise TypeError
    except TypeError:
        raise UserInputError(
            f"image size must be an integer or a (height, width) pair of integers, got {size!r}"
        ) from None
    h, w = int(pair[0]), int(pair[1])
    if min(h, w) < 8 or max(h, w) > 4096:
        raise UserInputError(f"image size must be 8..4096 pixels, got {h}x{w}")
    return h, w


def render(
    model: Model,
    objective: Objective,
    n: int = 1,
    *,
    param: str = "fft",
    regularizers: str | RegularizerSet = "lucid",
    steps: int = 256,
    size: int | Sequence[int] | None = None,
    seed: int = 0,
    keys: Sequence[int] | None = None,
    lr: float = 0.05,
    start: str | None = None,
    redirect_steps: int = 16,
    color: np.ndarray | None | bool = None,
    on_step: Callable[[], None] | None = None,
) -> Rendering:
    """Optimise ``n`` images for ``objective`` (the sum of its per-image values).

    Args:
        model: a loaded model whose graph converted to torch.
        objective: what to maximise (:mod:`.objectives`), per image.
        n: images in the batch.
        param: ``"fft"`` or ``"pixel"`` (:mod:`.param`).
        regularizers: a named set (``lucid``, ``yosinski1``..``yosinski4``, ``none``) or a
            :class:`~.regularizers.RegularizerSet`.
        steps: optimiser steps.
        size: the image's ``(height, width)`` (or one int); default the model's input size.
            Other sizes are resized to the input size after the transforms.
        seed: with ``keys``, seeds one generator per image (:func:`unit_seed`); everything
            random (start noise, transforms) comes from these generators.
        keys: one key per image (default ``range(n)``); :func:`run_actmax` passes the units.
        lr: Adam's learning rate (lucid: 0.05).
        start: ``"mean"`` or ``"noise"``; default the regularizer set's.
        redirect_steps: steps with redirected ReLU gradients (lucid's trick for dead units).
        color: :class:`~.param.FFTParam`'s colour square root (None: ImageNet's).
        on_step: called after every step (progress bars).

    Raises:
        UserInputError: bad arguments, an objective that does not fit the model, regularizers
            that edit pixels with ``param="fft"``, or no gradient path from the objective to
            the image; :class:`~pyanalyzer.errors.GradientUnavailableError` when the model
            has no torch twin.
    """
    regs = regularizer_set(regularizers)
    _check_options(param, regs, steps, lr, start, redirect_steps)
    if n < 1:
        raise UserInputError(f"need at least one image, got n={n}")
    start = regs.start if start is None else start
    keys = list(range(n)) if keys is None else [int(k) for k in keys]
    if len(keys) != n:
        raise UserInputError(f"got {len(keys)} keys for {n} images")
    objective.check(model, n)
    if not objective.refs():
        raise UserInputError(f"objective {objective!r} reads no layer")
    net = _Net(model, {ref: resolve(model, ref) for ref in sorted(objective.refs())})
    spec = model.preprocessing
    in_hw = spec.input_size
    hw = _size(size, in_hw)
    gens = [torch.Generator().manual_seed(unit_seed(seed, k)) for k in keys]
    centre_values = mean_color(spec)
    centre = torch.tensor(centre_values, dtype=torch.float32).view(1, -1, 1, 1)
    image = make_param(param, n, hw, centre_values, start=start, generators=gens, color=color)
    opt = torch.optim.Adam(image.parameters(), lr=lr)
    penalties = [r for r in regs.regularizers if not r.edits_pixels]
    edits = [r for r in regs.regularizers if r.edits_pixels]

    pipeline = Compose([*(regs.transforms or ()), CenterCrop(hw)])

    def measure(rgb01: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return objective.value(net(resize(rgb01, in_hw))).numpy().astype(np.float32)

    with torch.no_grad():
        start_values = measure(image())
    curve = np.zeros((steps, n), np.float32)
    with contextlib.ExitStack() as redirect:
        if redirect_steps > 0:
            redirect.enter_context(redirected_relu(net.module))
        for step in range(steps):
            if step == redirect_steps:
                redirect.close()  # ordinary ReLU gradients from here on
            opt.zero_grad(set_to_none=True)
            img = image()
            values = objective.value(net(resize(pipeline(img, gens), in_hw)))
            total = values
            for r in penalties:
                total = total - r.penalty(img, centre)
            if not total.requires_grad:
                raise UserInputError(
                    f"objective {objective!r} does not depend on the image through a "
                    "differentiable path"
                )
            (-total.sum()).backward()
            if any(p.grad is None for p in image.parameters()):
                raise UserInputError(f"objective {objective!r}: no gradient reaches the image")
            opt.step()
            with torch.no_grad():
                if edits:
                    delta = image.delta  # type: ignore[attr-defined]
                    for r in edits:
                        r.after_step(delta, delta.grad, step)
                image.project()
            curve[step] = values.detach().numpy()
            if on_step is not None:
                on_step()
    with torch.no_grad():
        pixels = _to_uint8(image())
    reached = measure(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
    return Rendering(pixels, start_values, reached, curve)


# ---- the method ----------------------------------------------------------------------------

KINDS = (*OBJECTIVES, "direction")
"""What :class:`ActivationMaximization` renders one image of per unit: a channel, a neuron, a
class, or a direction (one image per row of a direction matrix)."""


def as_directions(directions: Any) -> np.ndarray:
    """Directions in a layer's channel space as float32 ``[K, C]`` (a vector is one row).

    Raises:
        UserInputError: not a non-empty finite vector or matrix, or an all-zero row.
    """
    try:
        d = np.asarray(directions, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserInputError("directions must be numbers: a vector or a [K, C] matrix") from None
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2 or d.size == 0:
        raise UserInputError(
            f"directions must be a vector over the layer's channels or a [K, C] matrix, "
            f"got shape {list(np.shape(directions))}"
        )
    if not np.isfinite(d).all():
        raise UserInputError("directions must be finite (they have NaN or infinite entries)")
    zero = np.flatnonzero(~d.any(axis=1))
    if zero.size:
        raise UserInputError(f"direction {int(zero[0])} is all zeros: it has nothing to maximise")
    return np.ascontiguousarray(d)


def load_directions(path: str | os.PathLike[str]) -> np.ndarray:
    """Read directions from a ``.npy`` file (a vector ``[C]`` or a matrix ``[K, C]``) or from a
    text file (one direction per line, numbers separated by commas or spaces).

    Raises:
        UserInputError: a missing or unreadable file, or contents :func:`as_directions` refuses.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"direction file {p} does not exist or is not a file")
    try:
        if p.suffix.lower() == ".npy":
            data = np.load(p, allow_pickle=False)
        else:
            text = p.read_text(encoding="utf-8").replace(",", " ")
            rows = [line.split() for line in text.splitlines() if line.split()]
            widths = {len(r) for r in rows}
            if len(widths) > 1:
                raise ValueError(f"its lines have different lengths ({sorted(widths)})")
            data = np.asarray([[float(v) for v in r] for r in rows], np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot read direction file {p}: {e}") from None
    return as_directions(data)


def _digest(a: np.ndarray) -> str:
    """An identity of an array for store keys: shape, dtype and a hash of the bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(a.tobytes()).hexdigest()[:16]
    return f"{a.dtype.str}{list(a.shape)}:{h}"


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
    rows = int(units) if isinstance(units, numbers.Integral) else [int(u) for u in units]
    return direction(layer, directions[rows])


@dataclass(frozen=True)
class ActmaxResult:
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
        params: the parameters that produced it (JSON-able; the store key's parameters).
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

    # ---- files -----------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike[str], *, min_side: int = 128) -> list[Path]:
        """Write one PNG per unit (``<alias>_<objective>_unit<NNNN>.png``, at the image size)
        and a montage of the layer (``<alias>_<objective>.png``, tiles enlarged to
        ``min_side`` pixels, captioned with the unit, class name and relative activation).

        Returns:
            the paths written, the montage last.
        """
        from pyanalyzer.report.montage import grid, save_png, upscale

        out = Path(out_dir)
        stem = f"{self.alias}_{self.objective}"
        written = [
            save_png(out / f"{stem}_unit{int(u):04d}.png", img)
            for u, img in zip(self.units, self.images, strict=True)
        ]
        rel = self.relative
        captions = [
            label if rel is None or not np.isfinite(rel[i]) else f"{label} {rel[i]:.2f}x"
            for i, label in enumerate(self.labels)
        ]
        tiles = [upscale(img, min_side) for img in self.images]
        montage = grid(tiles, cols=min(len(tiles), 8), labels=captions)
        written.append(save_png(out / f"{stem}.png", montage))
        return written

    # ---- store -----------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for :meth:`pyanalyzer.store.Store.put`; :meth:`from_arrays` inverts it."""
        meta = {
            "layer": self.layer,
            "alias": self.alias,
            "objective": self.objective,
            "labels": list(self.labels),
            "params": self.params,
            "seconds": self.seconds,
        }
        arrays = {
            "images": self.images,
            "units": self.units,
            "reached": self.reached,
            "start": self.start,
            "curve": self.curve,
            "meta": np.asarray(json.dumps(meta, sort_keys=True)),
        }
        if self.reference_max is not None:
            arrays["reference_max"] = self.reference_max
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ActmaxResult:
        """Rebuild a result from :meth:`to_arrays` (or a store entry)."""
        meta = json.loads(str(np.asarray(arrays["meta"])[()]))
        ref = arrays.get("reference_max")
        return cls(
            images=np.asarray(arrays["images"], np.uint8),
            units=np.asarray(arrays["units"], np.int64),
            reached=np.asarray(arrays["reached"], np.float32),
            start=np.asarray(arrays["start"], np.float32),
            curve=np.asarray(arrays["curve"], np.float32),
            reference_max=None if ref is None else np.asarray(ref, np.float32),
            layer=meta["layer"],
            alias=meta["alias"],
            objective=meta["objective"],
            labels=tuple(meta["labels"]),
            params=meta["params"],
            seconds=float(meta.get("seconds", 0.0)),
        )


class ActivationMaximization:
    """Activation maximization (Erhan et al. 2009; Simonyan et al. 2013; Yosinski et al. 2015;
    Olah et al. 2017): for each unit of a layer, an image that maximises it.

    Args:
        model: a loaded model whose graph converted to torch.
        objective: ``"channel"`` (the channel's mean), ``"neuron"`` (the centre position),
            ``"class"`` (the logit before any softmax; units are classes) or ``"direction"``
            (a direction in the layer's channel space; units are rows of ``directions``).
        param: ``"fft"`` (lucid's) or ``"pixel"``.
        regularizers: ``"lucid"`` (default: transforms only), ``"yosinski1"``..``"yosinski4"``
            (Table 1 of Yosinski et al.; pixel parametrization only), ``"none"``, or a
            :class:`~.regularizers.RegularizerSet`.
        steps: optimiser steps.
        size: the image size (default: the model's input size).
        seed: the random seed (unit ``u``'s generator is seeded by ``(seed, u)``).
        lr: Adam's learning rate.
        start: ``"mean"`` or ``"noise"`` (default: the regularizer set's, ``noise``).
        redirect_steps: steps with redirected ReLU gradients.
        color: FFT colour square root (None: ImageNet's; see
            :func:`~.param.color_correlation_from_images`).
        batch: optimise the units in batches (True) or one after another (False).
        batch_size: the most units in one batch (default 64): a layer with more units is
            rendered in several batches of near-equal size, which bounds memory. A unit's image
            does not depend on its batch up to float rounding (which Adam can amplify over
            many steps; batches of one, as ``batch=False`` runs, round differently).
        progress: show a progress bar on stderr.
        directions: for ``objective="direction"`` (and only then): a vector over the layer's
            channels or a ``[K, C]`` matrix, one image per row (:func:`load_directions` reads
            them from a file).

    Raises:
        UserInputError: unknown objective, parametrization or regularizer set, Yosinski sets
            with ``fft``, bad numbers, missing or malformed directions; GradientUnavailableError
            (a UserInputError) naming the ops when the model has no torch twin.
    """

    def __init__(
        self,
        model: Model,
        *,
        objective: str = "channel",
        param: str = "fft",
        regularizers: str | RegularizerSet = "lucid",
        steps: int = 256,
        size: int | Sequence[int] | None = None,
        seed: int = 0,
        lr: float = 0.05,
        start: str | None = None,
        redirect_steps: int = 16,
        color: np.ndarray | None | bool = None,
        batch: bool = True,
        batch_size: int = 64,
        progress: bool = True,
        directions: Any = None,
    ):
        if objective not in KINDS:
            raise UserInputError(
                f"unknown objective {objective!r}; choose one of {', '.join(KINDS)}"
            )
        if objective == "direction" and directions is None:
            raise UserInputError("the direction objective needs directions (--direction FILE)")
        if objective != "direction" and directions is not None:
            raise UserInputError(
                f"directions are used by the direction objective only, not by {objective!r}"
            )
        self.directions = None if directions is None else as_directions(directions)
        self.regs = regularizer_set(regularizers)
        # a named set is identified by its name, a custom one by everything in it
        self._regs_id = regularizers if isinstance(regularizers, str) else self.regs.describe()
        _check_options(param, self.regs, steps, lr, start, redirect_steps)
        _ = model.gradient  # fail now, naming the ops, when there is no torch twin
        self.model = model
        self.objective = objective
        self.param = param
        self.steps = int(steps)
        self.size = _size(size, model.preprocessing.input_size)
        self.seed = int(seed)
        self.lr = float(lr)
        self.start = self.regs.start if start is None else start
        self.redirect_steps = int(redirect_steps)
        self.color = color
        self.batch = bool(batch)
        self.batch_size = check_int("batch size", batch_size, 1)
        self.progress = progress

    # ---- what to optimise ------------------------------------------------------------------
    def target(self, layer: str | None) -> TensorRef:
        """The tensor the objective reads: ``layer``, or for classes the logits behind it."""
        if self.objective == "class":
            return find_logits(self.model, layer)
        if layer is None:
            raise UserInputError(f"the {self.objective} objective needs a layer")
        tref = resolve(self.model, layer)
        if self.directions is not None and self.directions.shape[1] != tref.channels:
            raise UserInputError(
                f"the directions have {self.directions.shape[1]} entries; layer {tref.alias} "
                f"has {tref.channels} channels"
            )
        return tref

    def units(self, layer: str | None, units: str | int | Sequence[int]) -> list[int]:
        """``units`` as a list: ``"all"``, ``"0-7"``, ``"1,4,9"``, an int or a sequence.

        Raises:
            UserInputError: malformed, empty, repeated or out of range.
        """
        from pyanalyzer.methods.deconvnet import parse_units

        tref = self.target(layer)
        count = tref.channels
        noun = "class" if self.objective == "class" else "unit"
        where = (
            f"the model has classes 0..{count - 1}"
            if noun == "class"
            else f"layer {tref.alias} has units 0..{count - 1}"
        )
        if self.directions is not None:
            count = len(self.directions)
            noun, where = "direction", f"{count} direction(s) were given (0..{count - 1})"
        if isinstance(units, str):
            # "all", or parse only: the range is checked below, in this method's words
            all_units = units.strip().lower() == "all"
            chosen = list(range(count)) if all_units else parse_units(units, None)
        else:
            try:
                seq = [units] if isinstance(units, numbers.Integral) else list(units)
                if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) for u in seq):
                    raise TypeError
                chosen = [int(u) for u in seq]
            except TypeError:
                raise UserInputError(f"units must be integers, got {units!r}") from None
            if len(set(chosen)) != len(chosen):
                raise UserInputError(f"units repeat: {chosen}")
        for u in chosen:
            if not 0 <= u < count:
                raise UserInputError(f"{noun} {u} is out of range: {where}")
        if not chosen:
            raise UserInputError("no units chosen")
        return chosen

    def params(self, layer: str | None, units: str | int | Sequence[int]) -> dict[str, Any]:
        """The parameters that determine the result (JSON-able), for
        ``Key.make(model.sha256, "actmax", params)``. A reference image set is not included:
        add an identity of it (names, sizes, times) when one is used."""
        tref = self.target(layer)
        color = self.color
        if color is None or color is True:
            color_id: Any = "imagenet" if self.model.preprocessing.channels == 3 else "none"
        elif color is False:
            color_id = "none"
        else:
            color_id = np.round(np.asarray(color, np.float64), 6).tolist()
        return {
            "revision": REVISION,
            "layer": tref.name,
            "objective": self.objective,
            "units": self.units(layer, units),
            "param": self.param,
            "regularizers": self._regs_id,
            "steps": self.steps,
            "size": list(self.size),
            "seed": self.seed,
            "lr": self.lr,
            "start": self.start,
            "redirect_steps": self.redirect_steps,
            "color": color_id,
            "batch": self.batch,
            "batch_size": self.batch_size if self.batch else 1,
            "preprocessing": self.model.preprocessing.to_dict(),
            **({} if self.directions is None else {"directions": _digest(self.directions)}),
        }

    # ---- run -------------------------------------------------------------------------------
    def run(
        self,
        layer: str | None,
        units: str | int | Sequence[int],
        *,
        reference: ImageSource | None = None,
        resume: Rendering | None = None,
        on_batch: Callable[[Rendering], None] | None = None,
    ) -> ActmaxResult:
        """Render one image per unit.

        Args:
            layer: alias or ONNX name; for ``objective="class"`` the output to start from, or
                None for the model's only class-score output.
            units: ``"all"``, ``"0-7"``, ``"1,4,9"``, an int or a sequence of ints.
            reference: images over which each unit's maximum activation is measured
                (``reference_max``, ``relative``).
            resume: the units already rendered by an interrupted run with the same
                parameters (what ``on_batch`` was last given); their batches are skipped.
                Ignored when it does not end at a batch boundary.
            on_batch: called after every batch with everything rendered so far (a
                checkpoint: the CLI keeps it in the store).

        Raises:
            UserInputError: see the class; units out of range.
        """
        from pyanalyzer._progress import progress_bar

        tref = self.target(layer)
        chosen = self.units(layer, units)
        kw = {
            "param": self.param,
            "regularizers": self.regs,
            "steps": self.steps,
            "size": self.size,
            "seed": self.seed,
            "lr": self.lr,
            "start": self.start,
            "redirect_steps": self.redirect_steps,
            "color": self.color,
        }
        t0 = time.perf_counter()
        # ceil(U / batch_size) groups of near-equal size (65 units in batches of 64: 33 + 32),
        # so that no unit is left alone in a batch of one, whose kernels round differently.
        per_batch = self.batch_size if self.batch else 1
        n_groups = -(-len(chosen) // per_batch)
        groups = [g.tolist() for g in np.array_split(np.asarray(chosen), n_groups)]
        parts: list[Rendering] = []
        if resume is not None:
            ends = np.cumsum([len(g) for g in groups]).tolist()
            if len(resume.pixels) in ends and resume.curve.shape[0] == self.steps:
                parts = [resume]
                groups = groups[ends.index(len(resume.pixels)) + 1 :]
        with progress_bar(
            self.steps * len(groups), label=f"actmax {tref.alias}", enabled=self.progress
        ) as bar:

            def tick() -> None:
                bar.update(1)

            # Each unit's generator is keyed by the unit, so a unit's image does not depend on
            # the group it is rendered in (up to float rounding of batched kernels).
            for group in groups:
                parts.append(
                    render(
                        self.model,
                        method_objective(self.objective, layer, group, self.directions),
                        len(group),
                        keys=group,
                        on_step=tick,
                        **kw,
                    )
                )
                if on_batch is not None:
                    parts = [concat_renderings(parts)]
                    on_batch(parts[0])
        seconds = time.perf_counter() - t0
        pixels = np.concatenate([p.pixels for p in parts])
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        ref_max = None
        if reference is not None:
            ref_max = reference_maxima(
                self.model, self.objective, layer, chosen, reference, progress=self.progress,
                directions=self.directions,
            )  # fmt: skip
        names = self.model.class_names if self.objective == "class" else None
        if names and len(names) != tref.channels:  # scores of another head: no class names
            names = None
        if self.directions is not None:
            labels = tuple(f"d{u}" for u in chosen)
        else:
            labels = tuple(
                f"{u} {names[u]}" if names and u < len(names) else str(u) for u in chosen
            )
        return ActmaxResult(
            images=pixels,
            units=np.asarray(chosen, np.int64),
            reached=np.concatenate([p.reached for p in parts]),
            start=np.concatenate([p.start for p in parts]),
            curve=np.concatenate([p.curve for p in parts], axis=1),
            reference_max=ref_max,
            layer=tref.name,
            alias=tref.alias,
            objective=self.objective,
            labels=labels,
            params=self.params(layer, chosen),
            seconds=seconds,
        )


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
) -> np.ndarray:
    """Each unit's maximum over ``source`` of what :func:`run_actmax` reports as ``reached``
    (the channel mean, the centre neuron, the class logit, or for ``objective="direction"``
    the mean dot product with row ``u`` of ``directions``), float32 ``[U]``.

    Layers of the catalogue stream through onnxruntime (``model.forward.iter_layers``); the
    logits behind a softmax, which the catalogue does not list, through the torch twin.
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
            t = torch.from_numpy(np.asarray(got[tref.name], np.float32))
            update(Activations({ref: t}, {ref: tref}))
    else:
        from pyanalyzer._progress import progress_bar

        net = _Net(model, {ref: tref})
        spec = model.preprocessing
        starts = range(0, len(source), batch_size)
        with progress_bar(len(starts), label="reference", enabled=progress) as bar:
            for s in starts:
                idx = range(s, min(len(source), s + batch_size))
                pix = np.stack([source.pixels(i, spec) for i in idx])
                with torch.no_grad():
                    update(net(torch.from_numpy(pix).permute(0, 3, 1, 2).float() / 255.0))
                bar.update(1)
    return best.astype(np.float32)


def run_actmax(
    model: Model,
    layer: str | None,
    units: str | int | Sequence[int],
    *,
    objective: str = "channel",
    param: str = "fft",
    regularizers: str | RegularizerSet = "lucid",
    steps: int = 256,
    size: int | Sequence[int] | None = None,
    seed: int = 0,
    reference: ImageSource | None = None,
    batch: bool = True,
    progress: bool = True,
    **options: Any,
) -> ActmaxResult:
    """Activation maximization of ``units`` of ``layer``: one image per unit, all units
    optimised together in one batch (``batch=True``) or one after another.

    Args:
        model: a loaded :class:`~pyanalyzer.model.model.Model`.
        layer: alias or ONNX name (``relu4``); for ``objective="class"`` the output to start
            from, or None for the model's only class-score output.
        units: ``"all"``, ``"0-7"``, ``"1,4,9"``, an int or a sequence (classes for
            ``"class"``, rows of ``directions`` for ``"direction"``).
        objective: ``"channel"``, ``"neuron"`` (the centre position), ``"class"`` or
            ``"direction"`` (pass ``directions=``).
        param: ``"fft"`` or ``"pixel"``.
        regularizers: ``"lucid"``, ``"yosinski1"``..``"yosinski4"`` (pixel only), ``"none"``,
            or a :class:`~.regularizers.RegularizerSet`.
        steps: optimiser steps (256 by default).
        size: image size (default: the model's input size).
        seed: random seed; the same seed gives identical images.
        reference: an image source for ``reference_max`` and ``relative``.
        batch: units in batches of ``batch_size`` (True; 64 by default) or one optimisation
            per unit.
        progress: progress bar on stderr.
        **options: ``lr``, ``start``, ``redirect_steps``, ``color``, ``directions``,
            ``batch_size`` (see
            :class:`ActivationMaximization`).

    Returns:
        :class:`ActmaxResult`.

    Raises:
        UserInputError: any bad input, with a one-line message (see
            :class:`ActivationMaximization`).
    """
    method = ActivationMaximization(
        model,
        objective=objective,
        param=param,
        regularizers=regularizers,
        steps=steps,
        size=size,
        seed=seed,
        batch=batch,
        progress=progress,
        **options,
    )
    return method.run(layer, units, reference=reference)
