"""What an inversion returns, and the two error measures it is judged by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyanalyzer.analysis import Result


def feature_error(phi: np.ndarray, phi0: np.ndarray) -> np.ndarray:
    """The paper's normalised reconstruction error ``‖Φ(x̂) − Φ0‖ / ‖Φ0‖`` per sample.

    Args:
        phi, phi0: ``[N, ...]`` features of the reconstructions and of the originals.

    Returns:
        float64 ``[N]`` (0 is a perfect match; ``‖Φ0‖ = 0`` gives ``‖Φ(x̂)‖ / 1e-12``).
    """
    a = np.asarray(phi, np.float64).reshape(len(phi), -1)
    b = np.asarray(phi0, np.float64).reshape(len(phi0), -1)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


def pixel_error(images: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """Root mean square difference in 0..1 RGB per sample.

    Args:
        images: float ``[N, H, W, C]`` in 0..1.
        originals: uint8 ``[N, H, W, C]``.

    Returns:
        float64 ``[N]``.
    """
    a = np.asarray(images, np.float64)
    b = np.asarray(originals, np.float64) / 255.0
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """0..1 floats to uint8 pixels (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class InversionResult(Result):
    """Reconstructions of ``N`` images from ``L`` layers, with their errors.

    Attributes:
        method: ``"optim"`` (Mahendran & Vedaldi) or ``"upconv"`` (Dosovitskiy & Brox).
        layers: ONNX tensor names of the ``L`` layers, in order.
        aliases: their short aliases.
        originals: uint8 ``[N, H, W, C]``, the images inverted (RGB, model input size).
        images: float32 ``[N, L, H, W, C]`` in 0..1, RGB: image ``n`` reconstructed from
            layer ``l``.
        feature_error: float64 ``[N, L]``: ``‖Φ(x̂) − Φ0‖ / ‖Φ0‖`` on the reconstruction as
            returned (clipped to 0..1), both features computed by onnxruntime.
        pixel_error: float64 ``[N, L]``: RMS difference from the original in 0..1 RGB.
        history: float32 ``[steps, N, L]``: the optimiser's feature error at every step
            (before the step; torch engine, unclipped image), or None for ``upconv``.
        params: the settings used (JSON-able).
    """

    method: str
    layers: tuple[str, ...]
    aliases: tuple[str, ...]
    originals: np.ndarray
    images: np.ndarray
    feature_error: np.ndarray
    pixel_error: np.ndarray
    history: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def uint8(self) -> np.ndarray:
        """uint8 ``[N, L, H, W, C]`` reconstructions."""
        return to_uint8(self.images)

    def errors(self) -> dict[str, dict[str, float]]:
        """Per layer alias: mean feature and pixel error over the images."""
        return {
            alias: {
                "feature_error": float(self.feature_error[:, i].mean()),
                "pixel_error": float(self.pixel_error[:, i].mean()),
            }
            for i, alias in enumerate(self.aliases)
        }

    def summary(self) -> dict[str, Any]:
        """The method, the number of images and the mean errors per layer alias."""
        return {"method": self.method, "images": len(self.originals), "layers": self.errors()}
