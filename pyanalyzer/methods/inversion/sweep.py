"""One image reconstructed from each of several layers, side by side (the survey's figure).

Qin et al., "How convolutional neural networks see the world", 2018, after Mahendran & Vedaldi
(CVPR 2015, Fig. 6) and Dosovitskiy & Brox (CVPR 2016, Fig. 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.inversion import objective as obj
from pyanalyzer.methods.inversion._common import check_images, resolve_layers
from pyanalyzer.methods.inversion.result import InversionResult

if TYPE_CHECKING:
    from pyanalyzer.data.images import ImageSource
    from pyanalyzer.methods.inversion.upconv import UpconvDecoder
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Store

METHODS = ("optim", "upconv")


@dataclass(frozen=True)
class LayerSweep:
    """The strip and what it shows.

    Attributes:
        strip: uint8 ``[h, w, 3]``: one row per method, the original first, then the
            reconstruction from each layer, captioned with the layer's alias.
        results: method → its :class:`InversionResult` for the one image (``N = 1``, the
            sweep's ``L`` layers, in order).
    """

    strip: np.ndarray
    results: dict[str, InversionResult]

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """method → layer alias → mean feature and pixel error."""
        return {m: r.summary() for m, r in self.results.items()}


def strip(
    original: np.ndarray,
    rows: Sequence[tuple[str, InversionResult]],
    *,
    image: int = 0,
    min_side: int = 128,
) -> np.ndarray:
    """Draw the sweep: per row ``(method, result)``, the original then each layer's image.

    Args:
        original: uint8 ``[H, W, C]``.
        rows: results whose layers are the columns (all with the same layers).
        image: which image of the results to show.
        min_side: tiles are enlarged (nearest neighbour) to at least this side.

    Returns:
        uint8 ``[h, w, 3]``.
    """
    from pyanalyzer.report.montage import grid, upscale

    def tile(a: np.ndarray) -> np.ndarray:
        a = a[..., 0] if a.shape[-1] == 1 else a
        return upscale(a, min_side)

    tiles: list[np.ndarray] = []
    labels: list[str] = []
    cols = 1 + max(len(r.aliases) for _, r in rows)
    several = len(rows) > 1
    for method, result in rows:
        tiles.append(tile(original))
        labels.append(f"original ({method})" if several else "original")
        recon = result.uint8()[image]
        for j, alias in enumerate(result.aliases):
            tiles.append(tile(recon[j]))
            labels.append(alias)
        for _ in range(cols - 1 - len(result.aliases)):  # keep the rows aligned
            tiles.append(np.full_like(tiles[-1], 255))
            labels.append("")
    return grid(tiles, cols=cols, labels=labels)


def layer_sweep(
    model: Model,
    image: np.ndarray,
    layers: Sequence[str],
    *,
    methods: Sequence[str] = ("optim",),
    steps: int = obj.DEFAULT_STEPS,
    optimizer: str = "sgd",
    seed: int = 0,
    jitter: int = 0,
    decoders: Mapping[str, UpconvDecoder] | None = None,
    source: ImageSource | None = None,
    store: Store | None = None,
    upconv_options: Mapping[str, Any] | None = None,
    min_side: int = 128,
    progress: bool = True,
) -> LayerSweep:
    """Reconstruct one image from each layer with each method and draw the strip.

    Args:
        model: a loaded model.
        image: uint8 ``[H, W, C]`` (or ``[1, H, W, C]``) at the model's input size.
        layers: aliases or ONNX names, shallow to deep.
        methods: ``"optim"`` and/or ``"upconv"`` (one strip row each, in this order).
        steps, optimizer, seed, jitter: for ``optim`` (:func:`~.optim.invert_optim`); all
            layers are inverted in one batch.
        decoders: for ``upconv``, layer (alias or name) → trained decoder; a layer without one
            gets :func:`~.upconv.train_upconv` (``source``, ``store``, ``upconv_options``),
            which loads it from the store when it was trained before.
        min_side: tile size in the strip.
        progress: show progress bars.

    Returns:
        :class:`LayerSweep` (``strip`` uint8 ``[h, w, 3]`` and the results).
    """
    from pyanalyzer.methods.inversion.optim import invert_optim
    from pyanalyzer.methods.inversion.upconv import invert_upconv, train_upconv

    if not methods:
        raise UserInputError("give at least one method")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UserInputError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    img = check_images(model, image)
    if len(img) != 1:
        raise UserInputError(f"a layer sweep takes one image, got {len(img)}")
    infos = resolve_layers(model, layers)
    given = {model.layer(k).name: v for k, v in (decoders or {}).items()}
    results: dict[str, InversionResult] = {}
    for method in dict.fromkeys(methods):
        if method == "optim":
            results[method] = invert_optim(
                model, img, [i.name for i in infos], steps=steps, optimizer=optimizer,
                seed=seed, jitter=jitter, progress=progress,
            )  # fmt: skip
            continue
        parts = []
        for info in infos:
            dec = given.get(info.name)
            if dec is None:
                dec = train_upconv(
                    model, info.name, source, store=store, progress=progress,
                    **dict(upconv_options or {}),
                )  # fmt: skip
            parts.append(invert_upconv(model, dec, img, layer=info.name))
        results[method] = InversionResult(
            method="upconv",
            layers=tuple(i.name for i in infos),
            aliases=tuple(i.alias for i in infos),
            originals=img,
            images=np.concatenate([p.images for p in parts], axis=1),
            feature_error=np.concatenate([p.feature_error for p in parts], axis=1),
            pixel_error=np.concatenate([p.pixel_error for p in parts], axis=1),
            params={"decoders": [p.params["decoder"] for p in parts]},
        )
    rows = list(results.items())
    return LayerSweep(strip=strip(img[0], rows, min_side=min_side), results=results)
