"""The inversion objective of Mahendran & Vedaldi and the constants it is built from.

Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them", CVPR 2015
(and the authors' MATLAB code, github.com/aravindhm/deep-goggle: ``core/invert_nn.m`` and
``experiments/experiment_cnn.m``). The reconstruction ``x`` of features ``Φ0`` minimises::

    E(x) = ‖Φ(x) − Φ0‖² / ‖Φ0‖²  +  λ_α R_α(x)  +  λ_TV R_TV(x)

    R_α(x)  = Σ |x|^α / (H W B^α)
    R_TV(x) = Σ_ij (Δh_ij² + Δw_ij²)^(β/2) / (H W V^β)          V = B / 6.5

with ``x`` the image in 0–255 pixel units, centred (:func:`pixel_centre`), and ``B`` the
typical pixel value of such an image. The sums run over every pixel and channel; Δh, Δw are the
differences with the next row / column (zero past the last one, as in the authors' code).

The authors' code writes the same energy unnormalised: ``λ_TV^code/2 · TV(x) + λ_L^code/2 ·
Σ x^α``, divided by ``x0_sigma²``, the squared norm of a typical image, which equals
``H W C B²`` here. Their constants map onto the normalised weights as

    λ_α  = λ_L^code / 2 · B^α / (C B²)      = 8e-10 / 2 · B⁴ / 3             ≈ 5.5e-3
    λ_TV = λ_TV^code / 2 · V² / (C B²)      = λ_TV^code / (2 · 3 · 6.5²)     (β = 2)

with λ_TV^code = 1, 10, 100 for the first, middle and last third of AlexNet (layers 1–6,
7–12, 13–20 of ``experiment_cnn.m``), i.e. λ_TV ≈ 0.0039, 0.039, 0.39 here.

The variable optimised is the image divided by ``x0_sigma = B √(H W C)``: the code's update
``x_momentum = 0.9 x_momentum − lr (∇R + x0_sigma²/‖Φ0‖² ∇ℓ)`` is exactly momentum gradient
descent with step ``lr`` on ``E`` in that variable, which is what :class:`Schedule` runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pyanalyzer.methods.priors import alpha_norm_grad, total_variation_grad

ALPHA = 6.0
"""Exponent of the bounded-range regulariser R_α (paper and code: α = 6)."""

TV_BETA = 2.0
"""Exponent of the total-variation regulariser R_TV^β (code's ``TVbeta = 2`` for CNNs)."""

B = 80.0
"""Typical value of a pixel of a mean-subtracted 0–255 image (the paper's B = 80)."""

V = B / 6.5
"""Typical difference between neighbouring pixels (the paper's V = B / 6.5)."""

ALPHA_FLOOR = 1e-5
"""R_α's gradient raises ``|x / B|`` to at least this: it keeps ``|x/B|^α`` and the gradient
out of float32's subnormal range (where CPUs slow down a hundredfold); below it both are 0 to
float precision anyway."""

_CODE_LAMBDA_L = 8e-10  # experiment_cnn.m: opts.lambdaL2 (the α-norm weight, α = 6)
_CODE_LAMBDA_TV = (1.0, 10.0, 100.0)  # experiment_cnn.m: opts1/2/3.lambdaTV by depth
_CODE_CHANNELS = 3

LAMBDA_ALPHA = _CODE_LAMBDA_L / 2 * B**ALPHA / (_CODE_CHANNELS * B**2)
"""λ_α ≈ 5.5e-3: the code's ``lambdaL2 = 8e-10`` in the normalised objective."""

LAMBDA_TV_TIERS = tuple(lam / 2 * V**2 / (_CODE_CHANNELS * B**2) for lam in _CODE_LAMBDA_TV)
"""λ_TV for shallow, middle and deep layers (≈ 0.0039, 0.039, 0.39): the code's 1, 10, 100."""

TIER_BOUNDS = (0.3, 0.6)
"""A layer's tier is set by the fraction of the model's weighted layers (Conv, Gemm, MatMul)
computed up to it: ≤ 0.3 shallow, ≤ 0.6 middle, deeper above. On AlexNet's eight this puts
conv1–2 shallow, conv3–4 middle, conv5–fc8 deep, as the authors did."""

LR = 0.004
"""Base learning rate of the momentum descent (``experiment_cnn.m``: 0.004)."""

MOMENTUM = 0.9
"""Momentum (``invert_nn.m``: 0.9)."""

LR_PHASES = ((0.25, 1.0), (0.5, 0.1), (0.25, 0.01))
"""(fraction of the steps, learning-rate factor): the code's 100 / 200 / 100 steps at
0.004 × 1, 0.1, 0.01; the momentum is reset at each switch, as there."""

DEFAULT_STEPS = 400
"""Steps of the authors' schedule (100 + 200 + 100)."""

ADAM_LR = 0.02
"""Base learning rate for the Adam alternative (same phases, no momentum reset)."""

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def lambda_tv_for_depth(fraction: float) -> float:
    """λ_TV for a layer at ``fraction`` (0..1] of the model's weighted layers."""
    if fraction <= TIER_BOUNDS[0]:
        return LAMBDA_TV_TIERS[0]
    if fraction <= TIER_BOUNDS[1]:
        return LAMBDA_TV_TIERS[1]
    return LAMBDA_TV_TIERS[2]


def depth_fraction(proto, tensor: str) -> float:
    """Fraction of the graph's weighted nodes that feed ``tensor`` (itself included).

    Args:
        proto: the ONNX model.
        tensor: an ONNX tensor name.

    Returns:
        a number in (0, 1]; 1 when the graph has no weighted node at all.
    """
    producer = {o: n for n in proto.graph.node for o in n.output if o}
    total = sum(1 for n in proto.graph.node if n.op_type in WEIGHTED_OPS)
    if total == 0:
        return 1.0
    seen: set[int] = set()
    stack = [tensor]
    count = 0
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        count += node.op_type in WEIGHTED_OPS
        stack.extend(i for i in node.input if i)
    return max(count, 1) / total


@dataclass(frozen=True)
class Schedule:
    """Learning rate per step: piecewise constant phases (the authors' step decay).

    Attributes:
        lr: base learning rate.
        steps: total number of steps.
        phases: ``(fraction of steps, factor)`` pairs, in order.
    """

    lr: float
    steps: int
    phases: Sequence[tuple[float, float]] = LR_PHASES

    def rates(self) -> np.ndarray:
        """float64 ``[steps]``: the learning rate of every step.

        Phases get their share of the steps, rounded half up at the boundaries (400 steps:
        100 / 200 / 100); every phase gets at least one step when there are enough steps, and
        fewer steps than phases run the first phases (1 step: the base rate)."""
        k = len(self.phases)
        fractions = np.asarray([f for f, _ in self.phases], dtype=np.float64)
        ends = np.floor(np.cumsum(fractions) / fractions.sum() * self.steps + 0.5).astype(int)
        counts = np.diff(np.concatenate([[0], ends]))
        if self.steps < k:
            counts = np.asarray([1] * self.steps + [0] * (k - self.steps))
        else:
            for i in np.flatnonzero(counts == 0):  # take a step from the longest phase
                counts[int(np.argmax(counts))] -= 1
                counts[i] += 1
        return np.repeat([self.lr * factor for _, factor in self.phases], counts).astype(np.float64)


def r_alpha(x, alpha: float = ALPHA, b: float = B):
    """R_α per sample, ``Σ |x|^α / (H W B^α)``, and its gradient (closed form, no autograd).

    Args:
        x: torch ``[P, C, H, W]``, centred 0–255 pixel units.

    Returns:
        ``(value [P], gradient [P, C, H, W])``.
    """
    return alpha_norm_grad(x, alpha, b=b, per="pixel", floor=ALPHA_FLOOR)


def r_tv(x, beta: float = TV_BETA, v: float = V):
    """R_TV^β per sample, ``Σ (Δh² + Δw²)^(β/2) / (H W V^β)``, and its gradient (closed form).

    Differences past the last row / column are zero (the authors' ``tv`` in ``invert_nn.m``).

    Args:
        x: torch ``[P, C, H, W]``, centred 0–255 pixel units.

    Returns:
        ``(value [P], gradient [P, C, H, W])``.
    """
    return total_variation_grad(x, beta, v=v, boundary="zero")


def image_norm(h: int, w: int, c: int, b: float = B) -> float:
    """``x0_sigma``: the norm of a typical centred image, ``B √(H W C)``."""
    return b * math.sqrt(h * w * c)
