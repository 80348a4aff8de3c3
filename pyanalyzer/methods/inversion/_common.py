"""Checks and plumbing shared by both inversion methods."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer.errors import GradientUnavailableError, ImageError, UserInputError

if TYPE_CHECKING:
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model


def load_images(model: Model, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Read image files as the model sees them.

    Returns:
        uint8 ``[N, H, W, C]`` RGB (or grey), resized/cropped by the preprocessing spec.

    Raises:
        ImageError: a file is missing or not a readable image (named).
    """
    from pyanalyzer import budget
    from pyanalyzer.data.images import load_image

    if not paths:
        raise ImageError("give at least one image")
    spec = model.preprocessing
    h, w = spec.input_size
    budget.check(
        f"holding {len(paths)} images of {h}x{w} in memory",
        2 * budget.images_bytes(len(paths), h, w, spec.channels),
        advice="give fewer images",
    )
    return np.stack([spec.prepare_image(load_image(p)) for p in paths])


def resolve_layers(model: Model, layers: Sequence[str] | str) -> list[LayerInfo]:
    """Layer infos by alias or ONNX name; refuses an empty list, duplicates, and tensors that
    are neither ``[N, C, H, W]`` maps nor ``[N, K]`` vectors."""
    if isinstance(layers, str):
        layers = [layers]
    infos = [model.layer(n) for n in layers]
    if not infos:
        raise UserInputError("give at least one layer to invert")
    for info in infos:
        if not info.is_spatial and len(info.shape) != 2:
            raise UserInputError(
                f"layer {info.alias} has shape {list(info.shape)}: inversion reads [N, C, H, W] "
                "maps or [N, K] vectors"
            )
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        raise UserInputError("a layer was given twice")
    return infos


def pixel_centre(model: Model) -> np.ndarray:
    """float32 ``[C]``: the 0–255 RGB pixel value the model's preprocessing maps to 0.

    The paper inverts mean-subtracted images; the model's own mean is that reference when it
    has one inside the pixel range (caffe, imagenet, the default model), else mid-grey.
    """
    spec = model.preprocessing
    c = spec.channels
    mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (c,)) / spec.scale
    if c == 3 and spec.channel_order == "bgr":
        mean = mean[::-1]
    if np.all((mean > 0) & (mean < 255)):
        return mean.astype(np.float32)
    return np.full(c, 127.5, np.float32)


def as_maps(t: Any, layer: LayerInfo) -> Any:
    """Features as the engines hand them out (spatial maps ``[N, C, h, w]``, vectors
    ``[N, K]``) as maps: vectors become ``[N, K, 1, 1]``."""
    if t.ndim == 2:
        return t[:, :, None, None]
    if t.ndim != 4:
        raise UserInputError(
            f"layer {layer.alias} has rank {t.ndim}; only [N, C, H, W] maps and [N, K] "
            "vectors can be inverted"
        )
    return t


def check_reachable(model: Model, layers: Sequence[LayerInfo]) -> None:
    """Raise GradientUnavailableError unless every layer depends differentiably on the input.

    The torch twin runs once on a small input with every node's output recorded; a layer that
    does not require grad is cut off by the nodes whose inputs carry a gradient but whose
    output does not (an ``ArgMax``, a ``Cast`` to integers...): those ops are named.
    """
    import torch
    import torch.fx

    eng = model.gradient  # raises, naming the ops, when the model did not convert
    missing = [layer.alias for layer in layers if not eng.has_tensor(layer.name)]
    if missing:
        raise GradientUnavailableError(
            f"layer(s) {', '.join(missing)} are not computed by the torch engine"
        )
    spec = model.preprocessing
    h, w = spec.input_size
    x = spec.normalize_torch(torch.full((1, spec.channels, h, w), 0.5, requires_grad=True))
    names = [layer.name for layer in layers]
    try:
        with torch.enable_grad():
            rec = eng.record(x, names)
    except Exception:  # a model that cannot run a batch of one here is reported elsewhere
        return

    def needs_grad(value: Any) -> bool:
        vals = value if isinstance(value, tuple | list) else (value,)
        return any(isinstance(v, torch.Tensor) and v.requires_grad for v in vals)

    needs = {name: needs_grad(v) for name, v in rec.values.items()}
    got = {name: rec.values[node.name] for name, node in rec.nodes.items()}
    cut = [layer for layer in layers if not needs_grad(got[layer.name])]
    if not cut:
        return
    blockers: dict[str, None] = {}
    for n in rec.module.graph.nodes:
        if n.op != "call_module" or needs.get(n.name, False):
            continue
        if any(needs.get(a.name, False) for a in n.all_input_nodes):
            onnx_node = eng.onnx_nodes.get(str(n.target))
            blockers[onnx_node.op_type if onnx_node is not None else str(n.target)] = None
    ops = ", ".join(blockers) or "unknown"
    raise GradientUnavailableError(
        f"layer(s) {', '.join(layer.alias for layer in cut)} cannot be reached by gradients "
        f"from the input: the path goes through op(s) without a gradient: {ops}"
    )
