"""The render loop: optimise a batch of images for an objective (lucent's ``render_vis``).

1. the parametrization (:mod:`.param`) makes RGB 0..1 images;
2. the transforms of the regularizer set (:mod:`.transforms`) pad, jitter, scale and rotate
   them, a centre crop brings them back to the image size (one resampling for all the
   geometric steps), and a resize to the model's input size when the image size differs;
3. ``model.preprocessing.normalize_torch`` maps them into the model's input range and layout
   (on the CPU, steps 2 and 3 run as one compiled pass where the transforms are one
   resampling and no resize follows: :mod:`.fused`);
4. the model's torch twin, cut after the layers the objective reads (the gradient engine's
   :meth:`~pyanalyzer.model.gradient.GradientEngine.truncated`), runs forward; where the
   objective reads one channel per image of a convolution (or its ReLU), the cut is at the
   convolution's input and each image's channel is computed alone (:mod:`.selected`);
5. Adam ascends the objective minus the penalties; pixel-editing regularizers and the
   parametrization's projection run after each step.

During the first ``redirect_steps`` steps the ReLUs of the cut network are redirected
(:mod:`.redirect`), so that a unit that is zero on the start image still gets a gradient.
What renders one image per unit of a layer is beside this loop, in :mod:`.method`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pyanalyzer._checks import check_int, is_int
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.actmax.fused import fused_input
from pyanalyzer.methods.actmax.objectives import Activations, Objective, TensorRef, resolve
from pyanalyzer.methods.actmax.param import PARAMS, STARTS, make_param, mean_color
from pyanalyzer.methods.actmax.redirect import redirected_relu
from pyanalyzer.methods.actmax.regularizers import RegularizerSet, regularizer_set
from pyanalyzer.methods.actmax.selected import selected_units
from pyanalyzer.methods.actmax.transforms import CenterCrop, Compose, draw_ahead, resize
from pyanalyzer.model.layout import grad_in_layout

if TYPE_CHECKING:
    from pyanalyzer.model.model import Model

__all__ = [
    "DRAW_AHEAD",
    "MAX_STEPS",
    "Net",
    "Rendering",
    "check_memory",
    "check_options",
    "concat_renderings",
    "image_size",
    "render",
    "unit_seed",
]


class Net:
    """The model from RGB 0..1 images ``[N, C, H, W]`` to the objective's tensors
    (:class:`~.objectives.Activations`), cut after the last of them.

    Args:
        model: a loaded model whose graph converted to torch.
        refs: ``{layer reference: TensorRef}`` (:func:`~.objectives.resolve`).
        device: where the network runs (:func:`~pyanalyzer.model.gradient.torch_device`);
            the images handed in must be there (:attr:`device`).

    Raises:
        GradientUnavailableError: the model has no torch twin (the ops are named).
        BackendUnavailableError: CUDA was asked for and is unavailable.
        UserInputError: a tensor the torch twin does not compute.
    """

    def __init__(
        self, model: Model, refs: Mapping[str, TensorRef], device: str | torch.device = "auto"
    ):
        # GradientUnavailableError (a UserInputError) names the ops
        engine = model.gradient.on(device)
        self.device = engine.device
        for r in refs.values():
            if not engine.has_tensor(r.name):
                raise UserInputError(
                    f"layer {r.alias} ({r.name!r}) is not computed by the model's torch twin"
                )
        self.engine = engine
        self.refs = dict(refs)
        self.keys = list(refs)
        self.names = [refs[k].name for k in self.keys]
        self.module = engine.truncated(self.names)  # ReLUs are redirected on this module
        self.spec = model.preprocessing
        # Channels-last convolutions are faster on CPU (oneDNN) and on tensor-core GPUs; the
        # values are the same.
        self.channels_last = self.spec.layout == "nchw"
        self.redirecting = False
        """Whether the ReLUs are redirected now (:meth:`redirected`)."""

    def __call__(self, rgb01: torch.Tensor) -> Activations:
        return self.on_input(self.prepare(rgb01))

    def prepare(self, rgb01: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 images in the model's input range and layout."""
        x = self.spec.normalize_torch(rgb01)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @contextlib.contextmanager
    def redirected(self, *modules: torch.nn.Module) -> Iterator[None]:
        """lucid's redirected ReLU gradients inside the block (:mod:`.redirect`), on this
        network and on ``modules`` (other cuts of it that the loop runs); :attr:`redirecting`
        tells code that applies a ReLU itself."""
        with contextlib.ExitStack() as stack:
            for m in (self.module, *modules):
                stack.enter_context(redirected_relu(m))
            self.redirecting = True
            try:
                yield
            finally:
                self.redirecting = False

    def on_input(self, x: torch.Tensor) -> Activations:
        """The objective's tensors from ``x`` already in the model's input range and layout
        (what :meth:`__call__` makes of RGB 0..1 images)."""
        feats = self.engine.features(x, self.names)
        # the objective's gradient goes back to each map in the map's layout (model/layout.py)
        return Activations(
            {k: grad_in_layout(feats[n]) for k, n in zip(self.keys, self.names, strict=True)}
        )


DRAW_AHEAD = True
"""Whether :func:`render` takes the transforms' draws ahead (:func:`~.transforms.draw_ahead`;
the same values either way: False draws each from torch, as the benchmark compares)."""

MAX_STEPS = 100_000
"""The most optimiser steps one call accepts (the per-step curve is kept in memory)."""


def unit_seed(seed: int, key: int) -> int:
    """The seed of image ``key``'s generator (a unit number, or an image index)."""
    digest = hashlib.sha256(f"pyanalyzer.actmax:{int(seed)}:{int(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """RGB (or gray) 0..1 ``[N, C, H, W]`` to ``uint8 [N, H, W, C]``."""
    arr = images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
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


def check_options(
    param: str, regs: RegularizerSet, steps: int, lr: float, start: str | None, redirect: int
) -> None:
    """Validate the options shared by :func:`render` and the actmax parameters."""
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


def check_memory(
    model: Model, target: TensorRef, units: int, batch: int, size: tuple[int, int], steps: int
) -> None:
    """Refuse, before anything runs, a rendering of ``units`` images in batches of ``batch``
    whose peak memory exceeds the budget (:func:`pyanalyzer.budget.actmax_bytes`).

    Raises:
        BudgetError: one line naming the request, the estimate and the budget.
    """
    from pyanalyzer import budget

    budget.check(
        f"activation maximization of {units} unit(s) at {size[0]}x{size[1]} pixels, {batch} "
        f"image(s) a batch, {steps} steps",
        budget.actmax_bytes(model, target.name, batch=batch, units=units, size=size, steps=steps),
        advice="use a smaller --batch-size or --size, or fewer --units",
    )


def image_size(size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    try:
        pair = (size, size) if is_int(size) else tuple(size)
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
    device: str | torch.device = "auto",
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
        keys: one key per image (default ``range(n)``); activation maximization passes the
            units.
        lr: Adam's learning rate (lucid: 0.05).
        start: ``"mean"`` or ``"noise"``; default the regularizer set's.
        redirect_steps: steps with redirected ReLU gradients (lucid's trick for dead units).
        color: :class:`~.param.FFTParam`'s colour square root (None: ImageNet's).
        on_step: called after every step (progress bars).
        device: where the network and the images live: ``"auto"`` (CUDA when torch sees a
            device), ``"cpu"`` or ``"cuda"``. Random draws are made on the CPU in every case,
            so every device starts from the same images and draws the same transforms.

    Raises:
        UserInputError: bad arguments, an objective that does not fit the model, regularizers
            that edit pixels with ``param="fft"``, or no gradient path from the objective to
            the image; :class:`~pyanalyzer.errors.GradientUnavailableError` when the model
            has no torch twin; :class:`~pyanalyzer.errors.BackendUnavailableError` when CUDA
            was asked for and is unavailable.
    """
    regs = regularizer_set(regularizers)
    check_options(param, regs, steps, lr, start, redirect_steps)
    if n < 1:
        raise UserInputError(f"need at least one image, got n={n}")
    start = regs.start if start is None else start
    keys = list(range(n)) if keys is None else [int(k) for k in keys]
    if len(keys) != n:
        raise UserInputError(f"got {len(keys)} keys for {n} images")
    objective.check(model, n)
    if not objective.refs():
        raise UserInputError(f"objective {objective!r} reads no layer")
    net = Net(model, {ref: resolve(model, ref) for ref in sorted(objective.refs())}, device)
    dev = net.device
    spec = model.preprocessing
    in_hw = spec.input_size
    hw = image_size(size, in_hw)
    gens = [torch.Generator().manual_seed(unit_seed(seed, k)) for k in keys]
    centre_values = mean_color(spec)
    centre = torch.tensor(centre_values, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    image = make_param(
        param, n, hw, centre_values, start=start, generators=gens, color=color, device=dev
    )
    # torch's fused Adam: one pass over the parameters instead of one per operation (0.18
    # against 0.56-1.08 ms a step for 64 spectra of 64 px), the same update to float rounding
    opt = torch.optim.Adam(image.parameters(), lr=lr, fused=True)
    penalties = [r for r in regs.regularizers if not r.edits_pixels]
    edits = [r for r in regs.regularizers if r.edits_pixels]

    pipeline = Compose([*(regs.transforms or ()), CenterCrop(hw)])
    # On the CPU, the transforms and the normalisation in one compiled pass where they allow
    fused = fused_input(pipeline, spec, hw, dev)
    # The transforms' draws made ahead, from the generators' states after the start noise
    # (the same values); custom transforms get the generators themselves.
    draws = draw_ahead(gens) if DRAW_AHEAD and pipeline.draws_by_index() else gens

    # Each image's own unit alone where the objective reads one channel of a convolution
    select = selected_units(net, objective, n)

    def transformed(img: torch.Tensor) -> torch.Tensor:  # the objective's values [N]
        if fused is not None:
            x = fused(img, draws)
        else:
            x = net.prepare(resize(pipeline(img, draws), in_hw))
        if select is not None:
            return select(x)
        return objective.value(net.on_input(x))

    def measure(rgb01: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return objective.value(net(resize(rgb01, in_hw))).cpu().numpy().astype(np.float32)

    with torch.no_grad():
        start_values = measure(image())
    # Kept where the values are: no copy to the host (and no wait for the device) per step.
    curve = torch.zeros((steps, n), dtype=torch.float32, device=dev)
    with contextlib.ExitStack() as redirect:
        if redirect_steps > 0:
            redirect.enter_context(net.redirected(*(select.modules() if select else ())))
        for step in range(steps):
            if step == redirect_steps:
                redirect.close()  # ordinary ReLU gradients from here on
            opt.zero_grad(set_to_none=True)
            img = image()
            values = transformed(img)
            total = values
            for r in penalties:
                cost = r.penalty(img, centre)
                if cost is not None:  # a regularizer may have no penalty
                    total = total - cost
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
            curve[step] = values.detach()
            if on_step is not None:
                on_step()
    with torch.no_grad():
        pixels = _to_uint8(image())
    reached = measure(torch.from_numpy(pixels).to(dev).permute(0, 3, 1, 2).float() / 255.0)
    return Rendering(pixels, start_values, reached, curve.cpu().numpy())
