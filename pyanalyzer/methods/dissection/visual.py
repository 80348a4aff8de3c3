"""Each unit's top images with the unit's mask, for the dissection report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pyanalyzer.methods.dissection.result import LayerDissection


def unit_image_provider(
    model, dataset, result: LayerDissection, shown: int = 5, batch_size: int = 64
) -> Callable[[int], list[tuple[np.ndarray, np.ndarray, float]]]:
    """A function ``unit -> [(rgb uint8 [H, W, 3], mask bool [H, W], peak activation)]``.

    The images are those the model saw (the dataset images at the model's input size); each
    mask is the unit's map upsampled bilinearly to that size (half-pixel centres, as the
    tally, by the tally's own kernel, so no torch is imported) and thresholded at the unit's dissection threshold. One forward pass over the union of the
    units' top images computes every map up front.
    """
    from pyanalyzer import _backend

    spec = model.preprocessing
    top = result.top_images[:, :shown]
    wanted = sorted({int(i) for i in top.ravel() if i >= 0})
    pixels = {i: dataset.pixels(i, spec) for i in wanted}
    maps: dict[int, np.ndarray] = {}
    for s in range(0, len(wanted), batch_size):
        ids = wanted[s : s + batch_size]
        x = spec.normalize(np.stack([pixels[i] for i in ids]))
        acts = model.forward.run(x, [result.layer])[result.layer]  # [B, U, h, w]
        for i, a in zip(ids, acts, strict=True):
            maps[i] = a
    h, w = spec.input_size
    thr = np.asarray(result.thresholds, np.float32)

    def images(unit: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
        out = []
        for i in top[unit]:
            if i < 0:
                continue
            a = np.ascontiguousarray(maps[int(i)][unit][None, None], dtype=np.float32)
            up = _backend.upsample_bilinear(a, (h, w), device="cpu")[0, 0]
            rgb = pixels[int(i)]
            if rgb.shape[-1] == 1:
                rgb = np.repeat(rgb, 3, axis=-1)
            out.append((rgb, up > thr[unit], float(maps[int(i)][unit].max())))
        return out

    return images
