"""Regularizers and the named sets of them.

Two kinds, both called by the render loop:

* **penalties** (differentiable, subtracted from the objective, any parametrization):
  :class:`TotalVariation` and :class:`AlphaNorm` (Mahendran & Vedaldi, "Understanding Deep
  Image Representations by Inverting Them", CVPR 2015), on the rendered image;
* **pixel edits** between optimiser steps, Yosinski et al., "Understanding Neural Networks
  Through Deep Visualization", ICML DL workshop 2015, Section 3: :class:`L2Decay`
  (θ_decay), :class:`GaussianBlur` (θ_b_width every θ_b_every steps), :class:`NormClip`
  (θ_n_pct) and :class:`ContributionClip` (θ_c_pct). They edit ``delta``, the image minus the
  model's mean image (Yosinski's ``x`` is the mean-subtracted image), so they need the
  ``pixel`` parametrization: a Fourier spectrum has no pixels to clip, and decaying or
  blurring it would be a different regularizer. Asking for them with ``fft`` raises
  :class:`~pyanalyzer.errors.UserInputError` rather than silently doing something else.

A :class:`RegularizerSet` bundles transforms, regularizers and the start image. The named
sets (:data:`SETS`):

=============  =======  ==========  ==========  =======  =======  ==================  =====
set            θ_decay  θ_b_width   θ_b_every   θ_n_pct  θ_c_pct  transforms          start
=============  =======  ==========  ==========  =======  =======  ==================  =====
``lucid``      –        –           –           –        –        lucid's standard    noise
``yosinski1``  0        0.5         4           50       0        none                noise
``yosinski2``  0.3      0           0           20       0        none                noise
``yosinski3``  0.0001   1.0         4           0        0        none                noise
``yosinski4``  0        0.5         4           0        90       none                noise
``none``       –        –           –           –        –        none                noise
=============  =======  ==========  ==========  =======  =======  ==================  =====

The four Yosinski rows are Table 1 of the paper, as its authors' toolbox reproduces it
(``doc/running-optimize-image.md`` of github.com/yosinski/deep-visualization-toolbox, the
``optimize_image.py`` flags in Table 1's order); the third is the one used for most figures.
Yosinski's ``noise`` start is the toolbox default ``mean_plus_rand`` (the mean image plus
N(0, 10) on 0–255 pixels). Yosinski optimised by plain gradient ascent with a learning rate of
100 on 0–255 caffe pixels (the first and last rows with a "progress" schedule); here every set
uses the render loop's optimiser (Adam, a fixed per-pixel step) so that the same values mean
the same relative strength on any model, whatever the scale of its gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.actmax.transforms import Compose, Transform, standard_transforms
from pyanalyzer.methods.priors import alpha_norm, total_variation

__all__ = [
    "SETS",
    "AlphaNorm",
    "ContributionClip",
    "GaussianBlur",
    "L2Decay",
    "NormClip",
    "Regularizer",
    "RegularizerSet",
    "TotalVariation",
    "regularizer_set",
]


class Regularizer:
    """Base class. ``edits_pixels`` regularizers implement :meth:`after_step`, penalties
    :meth:`penalty`."""

    edits_pixels = False

    def penalty(self, image: torch.Tensor, centre: torch.Tensor) -> torch.Tensor | None:
        """A cost per image, float ``[N]``, subtracted from the objective.

        Args:
            image: the rendered images, RGB 0..1 ``[N, C, H, W]``, with autograd history.
            centre: the mean image's colour ``[1, C, 1, 1]``.
        """
        return None

    def after_step(self, delta: torch.Tensor, grad: torch.Tensor | None, step: int) -> None:
        """Edit ``delta`` (the image minus the mean image, ``[N, C, H, W]``) in place after
        optimiser step ``step`` (0-based); ``grad`` is the gradient of the loss (minus the
        objective) with respect to ``delta`` at that step."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _check_pct(pct: float, what: str) -> float:
    if not 0 <= pct < 100:
        raise UserInputError(f"{what} must be a percentile in [0, 100), got {pct}")
    return float(pct)


class L2Decay(Regularizer):
    """θ_decay: ``delta *= 1 - decay`` after every step (Yosinski's L2 decay: it pulls the
    image towards the mean image and keeps a few extreme pixels from dominating)."""

    edits_pixels = True

    def __init__(self, decay: float):
        if not 0 <= decay < 1:
            raise UserInputError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)

    def after_step(self, delta, grad, step):
        if self.decay:
            delta.mul_(1.0 - self.decay)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D Gaussian of standard deviation ``sigma``, truncated at 4 sigma (as
    ``scipy.ndimage.gaussian_filter``, which Yosinski's toolbox uses), summing to 1."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel of ``[N, C, H, W]``, edges reflected about the
    border (scipy's ``reflect``: ``d c b a | a b c d``)."""
    k = gaussian_kernel(sigma).to(x.device, x.dtype)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    for dim, weight in ((3, k.view(1, 1, 1, -1)), (2, k.view(1, 1, -1, 1))):
        size = x.shape[dim]
        reps = math.ceil(r / size)  # reflect as many times as the radius needs
        xp = x
        for _ in range(reps):
            xp = torch.cat([xp.flip(dim), xp, xp.flip(dim)], dim=dim)
        start = reps * size - r
        xp = xp.narrow(dim, start, size + 2 * r)
        x = F.conv2d(xp, weight.expand(c, 1, *weight.shape[2:]), groups=c)
    return x


class GaussianBlur(Regularizer):
    """θ_b_width, θ_b_every: blur ``delta`` with a Gaussian of standard deviation ``width``
    pixels after every ``every``-th step (steps 0, every, 2·every, ..., as the toolbox)."""

    edits_pixels = True

    def __init__(self, width: float, every: int):
        if width < 0 or every < 0:
            raise UserInputError(f"blur width and period must be >= 0, got {width}, {every}")
        self.width = float(width)
        self.every = int(every)

    def after_step(self, delta, grad, step):
        if self.width > 0 and self.every > 0 and step % self.every == 0:
            delta.copy_(blur(delta, self.width))


def _below_percentile(score: torch.Tensor, pct: float) -> torch.Tensor:
    """``score [N, H, W] < its per-image percentile`` (numpy's linear interpolation), bool."""
    flat = score.flatten(1)
    q = torch.quantile(flat, pct / 100.0, dim=1, keepdim=True)
    return (flat < q).view_as(score)


class NormClip(Regularizer):
    """θ_n_pct: set to the mean image the pixels whose norm (over colour channels) of
    ``delta`` is below the ``pct``-th percentile of the image."""

    edits_pixels = True

    def __init__(self, pct: float):
        self.pct = _check_pct(pct, "norm clipping")

    def after_step(self, delta, grad, step):
        if self.pct > 0:
            small = _below_percentile(delta.norm(dim=1), self.pct)
            delta.masked_fill_(small[:, None].expand_as(delta), 0.0)


class ContributionClip(Regularizer):
    """θ_c_pct: set to the mean image the pixels whose contribution to the objective is small:
    the contribution of a pixel is the first-order change of the objective if the pixel were
    set to the mean, ``|sum over channels of grad * delta|``; pixels below the ``pct``-th
    percentile are cleared (the toolbox's ``px_abs_benefit_percentile``)."""

    edits_pixels = True

    def __init__(self, pct: float):
        self.pct = _check_pct(pct, "contribution clipping")

    def after_step(self, delta, grad, step):
        if self.pct > 0 and grad is not None:
            benefit = (grad * delta).sum(dim=1).abs()
            small = _below_percentile(benefit, self.pct)
            delta.masked_fill_(small[:, None].expand_as(delta), 0.0)


class TotalVariation(Regularizer):
    """Mahendran & Vedaldi's total variation ``R_{V^β}``: for every pixel,
    ``((x[i, j+1] - x[i, j])² + (x[i+1, j] - x[i, j])²)^(β/2)`` summed over channels, here
    averaged over pixels (so ``weight`` does not depend on the image size), times ``weight``.
    """

    def __init__(self, weight: float = 1.0, beta: float = 2.0):
        if weight < 0 or beta <= 0:
            raise UserInputError(f"TV weight must be >= 0 and beta > 0, got {weight}, {beta}")
        self.weight = float(weight)
        self.beta = float(beta)

    def penalty(self, image, centre):
        # Positions with both neighbours only, averaged (weight independent of image size).
        return self.weight * total_variation(image, self.beta, boundary="crop")


class AlphaNorm(Regularizer):
    """Mahendran & Vedaldi's α-norm ``||x||_α^α`` of the image minus the mean image (α = 6
    in their paper), averaged over pixels and channels, times ``weight``: it keeps the image
    in a natural range without a hard clip."""

    def __init__(self, weight: float = 1.0, alpha: float = 6.0):
        if weight < 0 or alpha <= 0:
            raise UserInputError(f"alpha-norm weight must be >= 0, alpha > 0: {weight}, {alpha}")
        self.weight = float(weight)
        self.alpha = float(alpha)

    def penalty(self, image, centre):
        return self.weight * alpha_norm(image - centre, self.alpha, per="element")


@dataclass(frozen=True)
class RegularizerSet:
    """Transforms, regularizers and start image of one optimisation.

    Attributes:
        name: the set's name (part of the result's parameters).
        transforms: applied to the images before every forward pass (None: none).
        regularizers: penalties and pixel edits.
        start: ``"mean"`` or ``"noise"`` (see :mod:`.param`).
    """

    name: str
    transforms: Compose | None = None
    regularizers: tuple[Regularizer, ...] = field(default_factory=tuple)
    start: str = "noise"

    @property
    def edits_pixels(self) -> bool:
        """Some regularizer edits pixels between steps: only the ``pixel`` parametrization."""
        return any(r.edits_pixels for r in self.regularizers)

    def describe(self) -> str:
        """Everything in the set, in one line (the identity of a custom set)."""
        parts = [repr(self.transforms) if self.transforms else "no transforms"]
        parts += [repr(r) for r in self.regularizers]
        return f"{self.name}: " + ", ".join(parts) + f"; start {self.start}"


def _yosinski(
    name: str, decay: float, b_width: float, b_every: int, n_pct: float, c_pct: float
) -> RegularizerSet:
    regs: list[Regularizer] = []
    if decay:
        regs.append(L2Decay(decay))
    if b_width and b_every:
        regs.append(GaussianBlur(b_width, b_every))
    if n_pct:
        regs.append(NormClip(n_pct))
    if c_pct:
        regs.append(ContributionClip(c_pct))
    return RegularizerSet(name, None, tuple(regs), "noise")


def _sets() -> dict[str, RegularizerSet]:
    return {
        "lucid": RegularizerSet("lucid", standard_transforms(), (), "noise"),
        # Yosinski et al. 2015, Table 1: θ_decay, θ_b_width, θ_b_every, θ_n_pct, θ_c_pct.
        "yosinski1": _yosinski("yosinski1", 0.0, 0.5, 4, 50, 0),
        "yosinski2": _yosinski("yosinski2", 0.3, 0.0, 0, 20, 0),
        "yosinski3": _yosinski("yosinski3", 0.0001, 1.0, 4, 0, 0),
        "yosinski4": _yosinski("yosinski4", 0.0, 0.5, 4, 0, 90),
        "none": RegularizerSet("none", None, (), "noise"),
    }


SETS = _sets()
"""The named regularizer sets (see the module docstring)."""


def regularizer_set(spec: str | RegularizerSet) -> RegularizerSet:
    """A named set (:data:`SETS`) or a :class:`RegularizerSet` as given.

    Raises:
        UserInputError: an unknown name.
    """
    if isinstance(spec, RegularizerSet):
        return spec
    if spec not in SETS:
        raise UserInputError(f"unknown regularizer set {spec!r}; choose one of {', '.join(SETS)}")
    return _sets()[spec]  # a fresh copy: transforms hold no state, but sets stay independent


def custom_set(
    name: str,
    transforms: Iterable[Transform] | None = None,
    regularizers: Iterable[Regularizer] = (),
    start: str = "noise",
) -> RegularizerSet:
    """A :class:`RegularizerSet` from any transforms and regularizers, e.g. lucid's transforms
    with a total-variation penalty::

        custom_set("lucid+tv", standard_transforms(), [TotalVariation(0.5)])
    """
    t = None if transforms is None else Compose(transforms)
    return RegularizerSet(name, t, tuple(regularizers), start)
