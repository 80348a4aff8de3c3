"""Image parametrizations: what the optimiser changes, and how it becomes an image.

Every parametrization produces a batch of images in RGB (or gray) 0..1, ``[N, C, H, W]``; the
render loop maps them into the model's input range with ``model.preprocessing.normalize_torch``
(scale, mean, std, BGR order, NHWC layout), so the same code serves ImageNet-style,
caffe-style (0–255 BGR) and grayscale models.

* :class:`PixelParam`: the pixels themselves, as an offset ``delta`` from the model's mean
  image, kept inside 0..1 by projection after every step. This is the space of Erhan et al.
  (2009), Simonyan et al. (2013) and Yosinski et al. (2015), whose regularizers edit ``delta``
  between steps (:mod:`.regularizers`).
* :class:`FFTParam`: lucid's parametrization (Olah et al., "Feature Visualization", 2017): the
  image's 2-D Fourier spectrum scaled by 1/f (so that every frequency starts with the same
  energy as in natural images), a colour decorrelation (the square root of the RGB covariance,
  :data:`IMAGENET_COLOR_SQRT` by default or :func:`color_correlation_from_images`), and a
  sigmoid into 0..1. One-channel models get no colour decorrelation.

The *centre* of both is the model's mean image (:func:`mean_color`): the pixel values that the
model's preprocessing maps to 0, so that ``start="mean"`` starts where the model's input is
zero; a preprocessing that subtracts nothing (whose zero input is black) gets mid-grey
instead, and every value is kept within [0.01, 0.99], where the FFT sigmoid can reach it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = [
    "IMAGENET_COLOR_SQRT",
    "PARAMS",
    "STARTS",
    "FFTParam",
    "ImageParam",
    "PixelParam",
    "color_correlation_from_images",
    "make_param",
    "mean_color",
]

PARAMS = ("fft", "pixel")
"""Parametrization names accepted by :func:`make_param`."""

STARTS = ("mean", "noise")
"""``mean``: the model's mean image; ``noise``: the mean image plus a little noise."""

IMAGENET_COLOR_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
"""lucid's square root of the ImageNet RGB covariance (its ``color_correlation_svd_sqrt``):
columns are the principal colour directions scaled by the square root of their variance."""

PIXEL_NOISE_SD = 10.0 / 255.0
"""Noise of :class:`PixelParam`'s ``start="noise"``: Yosinski's toolbox ``mean_plus_rand``
(N(0, 10) on 0–255 pixels)."""


def _normalized_color(matrix: np.ndarray) -> np.ndarray:
    """Scale a colour square root so that its largest column has norm 1 (as lucid does)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise UserInputError(f"a colour correlation matrix must be finite 3x3, got {m.shape}")
    top = float(np.max(np.linalg.norm(m, axis=0)))
    if top <= 0:
        raise UserInputError("the colour correlation matrix is zero")
    return (m / top).astype(np.float32)


def mean_color(spec: PreprocessSpec) -> tuple[float, ...]:
    """The RGB (or gray) 0..1 colour that the preprocessing maps to 0, per channel.

    ``x = (pixel * scale - mean) / std`` is 0 at ``pixel = mean / scale``. A spec that subtracts
    nothing (``unit``, ``raw``) gives mid-grey 0.5. Values are clipped to [0.01, 0.99] so that
    the sigmoid of :class:`FFTParam` can reach them.
    """
    c = spec.channels
    mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (c,)) / (spec.scale * 255.0)
    if c == 3 and spec.channel_order == "bgr":
        mean = mean[::-1]
    if np.allclose(mean, 0.0):
        mean = np.full(c, 0.5)
    return tuple(float(v) for v in np.clip(mean, 0.01, 0.99))


def _image_normal(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal ``[len(generators), *shape]``, image ``i`` from ``generators[i]``."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


class ImageParam:
    """Base class: a batch of images made from trainable tensors.

    Attributes:
        n: images in the batch.
        channels: 3 (RGB) or 1 (gray).
        size: ``(height, width)``.
        pixel_space: True when :attr:`delta` is the image itself (minus its centre), so that
            regularizers may edit it between steps.
    """

    pixel_space = False

    def __init__(
        self, n: int, channels: int, size: tuple[int, int], device: torch.device | None = None
    ):
        self.n, self.channels, self.size = int(n), int(channels), (int(size[0]), int(size[1]))
        self.device = torch.device("cpu") if device is None else device

    def parameters(self) -> list[torch.Tensor]:
        """The tensors the optimiser updates."""
        raise NotImplementedError

    def __call__(self) -> torch.Tensor:
        """The images: float32 ``[N, C, H, W]`` in 0..1, RGB (or gray)."""
        raise NotImplementedError

    def project(self) -> None:
        """Bring the parameters back to their valid set after an optimiser step."""


class PixelParam(ImageParam):
    """The image as pixels: ``image = centre + delta``, ``delta`` projected so that the image
    stays in 0..1 (Yosinski's toolbox clips the pixels the same way before every step).

    Args:
        n: images.
        size: ``(height, width)``.
        centre: per-channel 0..1 colour of the mean image (:func:`mean_color`).
        start: ``"mean"`` (``delta = 0``) or ``"noise"`` (N(0, 10/255) per pixel).
        generators: one per image, for the noise (drawn on the CPU whatever the device, so
            that every device starts from the same images).
        device: where the parameters live (default the CPU).
    """

    pixel_space = True

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        centre: Sequence[float],
        *,
        start: str = "noise",
        generators: Sequence[torch.Generator] = (),
        device: torch.device | None = None,
    ):
        super().__init__(n, len(centre), size, device)
        h, w = self.size
        dev = self.device
        self.centre = torch.tensor(centre, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        if start == "noise":
            delta = (_image_normal(generators, (self.channels, h, w)) * PIXEL_NOISE_SD).to(dev)
        else:
            delta = torch.zeros(self.n, self.channels, h, w, device=dev)
        self.delta = delta.requires_grad_(True)
        self.project()

    def parameters(self) -> list[torch.Tensor]:
        return [self.delta]

    def __call__(self) -> torch.Tensor:
        return self.centre + self.delta

    @torch.no_grad()
    def project(self) -> None:
        self.delta.copy_(torch.minimum(torch.maximum(self.delta, -self.centre), 1 - self.centre))


def _rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitude of every coefficient of a real 2-D FFT, ``[h, w // 2 + 1]``."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class FFTParam(ImageParam):
    """lucid's Fourier parametrization with 1/f scaling, colour decorrelation and a sigmoid.

    ``image = sigmoid(C @ irfft2(spectrum / max(f, 1/max(H, W))**decay_power) / 4
    + logit(centre))`` with an orthonormal inverse FFT and ``C`` the normalised colour square
    root (per pixel, applied to the three channels); lucid's ``/ 4`` keeps the sigmoid out of
    saturation early on.

    Args:
        n: images.
        size: ``(height, width)``.
        centre: per-channel 0..1 colour of the mean image (:func:`mean_color`); the image at a
            zero spectrum.
        start: ``"noise"`` (spectrum N(0, sd²), lucid's) or ``"mean"`` (zero spectrum).
        generators: one per image, for the noise.
        color: 3x3 colour square root (normalised here), ``None`` for
            :data:`IMAGENET_COLOR_SQRT`, or ``False`` for no decorrelation; ignored (none) for
            one-channel images.
        sd: the noise of ``start="noise"`` (lucid: 0.01).
        decay_power: the exponent of the 1/f scaling (lucid: 1).
        device: where the parameters live (default the CPU); the noise is drawn on the CPU.
    """

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        centre: Sequence[float],
        *,
        start: str = "noise",
        generators: Sequence[torch.Generator] = (),
        color: np.ndarray | None | bool = None,
        sd: float = 0.01,
        decay_power: float = 1.0,
        device: torch.device | None = None,
    ):
        super().__init__(n, len(centre), size, device)
        h, w = self.size
        dev = self.device
        freqs = _rfft2d_freqs(h, w)
        # lucid's "/ 4" is folded into the scale (one pass less over the batch).
        scale = 0.25 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
        # [1, 1, H, W // 2 + 1, 2]: the real and imaginary parts' factor side by side, so that
        # the product with the spectrum runs over contiguous memory (a broadcast over the last
        # axis of two was 2x slower)
        factor = torch.tensor(scale, dtype=torch.float32, device=dev)[None, None, :, :, None]
        self.scale = factor.expand(1, 1, *freqs.shape, 2).contiguous()
        shape = (self.channels, *freqs.shape, 2)  # real and imaginary parts
        if start == "noise":
            spectrum = (_image_normal(generators, shape) * sd).to(dev)
        else:
            spectrum = torch.zeros(self.n, *shape, device=dev)
        self.spectrum = spectrum.requires_grad_(True)
        c = torch.tensor(centre, dtype=torch.float64)
        self.offset = torch.log(c / (1 - c)).to(dev, torch.float32).view(1, -1, 1, 1)
        self.color: torch.Tensor | None = None
        if self.channels == 3 and color is not False:
            m = IMAGENET_COLOR_SQRT if color is None or color is True else color
            self.color = torch.from_numpy(_normalized_color(np.asarray(m))).to(dev)

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def __call__(self) -> torch.Tensor:
        h, w = self.size
        spec = torch.view_as_complex(self.scale * self.spectrum)
        img = torch.fft.irfftn(spec, s=(h, w), dim=(-2, -1), norm="ortho")
        if self.color is not None:  # one batched matrix product per image (einsum copied)
            n, c = img.shape[:2]
            img = torch.matmul(self.color, img.reshape(n, c, h * w)).view(n, c, h, w)
        return torch.sigmoid(img + self.offset)


def make_param(
    name: str,
    n: int,
    size: tuple[int, int],
    centre: Sequence[float],
    *,
    start: str,
    generators: Sequence[torch.Generator],
    color: np.ndarray | None | bool = None,
    device: torch.device | None = None,
) -> ImageParam:
    """Build a parametrization by name (:data:`PARAMS`), its parameters on ``device``
    (default the CPU).

    Raises:
        UserInputError: an unknown name or start.
    """
    if start not in STARTS:
        raise UserInputError(f"unknown start {start!r}; choose one of {', '.join(STARTS)}")
    if name == "pixel":
        return PixelParam(n, size, centre, start=start, generators=generators, device=device)
    if name == "fft":
        return FFTParam(
            n, size, centre, start=start, generators=generators, color=color, device=device
        )
    raise UserInputError(f"unknown parametrization {name!r}; choose one of {', '.join(PARAMS)}")


def color_correlation_from_images(
    source: ImageSource, spec: PreprocessSpec, *, max_images: int | None = None
) -> np.ndarray:
    """The colour square root of an image set, for :class:`FFTParam`'s ``color``.

    Accumulates the 3x3 covariance of the RGB pixels (0..1) over the images, then takes its
    square root through the SVD, ``U diag(sqrt(s))`` (lucid's ``color_correlation_svd_sqrt``
    is this matrix for ImageNet), each column signed so that its largest entry is positive,
    and normalised so that the largest column has norm 1.

    Args:
        source: images (any :class:`~pyanalyzer.data.images.ImageSource`).
        spec: the model's preprocessing (for the image size; must have 3 channels).
        max_images: read at most this many images (default: all).

    Returns:
        float32 ``[3, 3]``.

    Raises:
        UserInputError: a one-channel model, an empty source, or images without colour
            variation.
    """
    if spec.channels != 3:
        raise UserInputError("colour correlation needs a 3-channel model; this one is gray")
    count = len(source) if max_images is None else min(len(source), int(max_images))
    if count < 1:
        raise UserInputError("colour correlation needs at least one image")
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    pixels = 0
    for i in range(count):
        px = source.pixels(i, spec).reshape(-1, 3).astype(np.float64) / 255.0
        total += px.sum(0)
        outer += px.T @ px
        pixels += len(px)
    mean = total / pixels
    cov = outer / pixels - np.outer(mean, mean)
    u, s, _ = np.linalg.svd(cov)
    if not math.isfinite(float(s[0])) or s[0] <= 1e-12:
        raise UserInputError("the images have no colour variation to estimate a correlation")
    sqrt = u * np.sqrt(np.maximum(s, 0.0))[None, :]
    signs = np.sign(sqrt[np.argmax(np.abs(sqrt), axis=0), np.arange(3)])
    return _normalized_color(sqrt * np.where(signs == 0, 1.0, signs)[None, :])
