"""Preprocessing: how an RGB image of 0–255 pixels becomes the tensor a model takes.

Third-party ONNX files carry no preprocessing, so pyanalyzer keeps an explicit spec for every
model. The spec is layered, each layer overriding the one before:

1. a default guessed from the model's input (layout and size from its shape; ``imagenet`` for
   three channels, ``unit`` for one);
2. the JSON in the model's ``metadata_props`` under :data:`METADATA_KEY`;
3. a JSON sidecar next to the model, named ``<model file name>.json`` (``net.onnx.json``);
4. what the caller passes (``load_model(..., preprocessing=...)`` or the CLI flags).

Each layer is a partial dict; a ``"preset"`` key in it first resets the spec to that preset.
The transform, with ``pixel`` in 0..255 in the spec's channel order, is::

    x = (pixel * scale - mean) / std

``mean`` and ``std`` are given in the model's channel order (BGR for ``caffe``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from pyanalyzer.errors import PreprocessingError

METADATA_KEY = "pyanalyzer.preprocessing"
"""Key of the preprocessing JSON in an ONNX model's ``metadata_props``."""

RESIZE_MODES = ("stretch", "crop")
"""``stretch``: resize to the input size; ``crop``: resize the shorter side, centre-crop."""

PRESETS: dict[str, dict[str, Any]] = {
    # torchvision / timm models: RGB, 0-1, ImageNet statistics.
    "imagenet": {
        "scale": 1.0 / 255.0,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "channel_order": "rgb",
    },
    # Caffe models (VGG, the original AlexNet/ZFNet ports): BGR, 0-255, mean subtracted.
    "caffe": {
        "scale": 1.0,
        "mean": (103.939, 116.779, 123.68),
        "std": (1.0, 1.0, 1.0),
        "channel_order": "bgr",
    },
    "unit": {"scale": 1.0 / 255.0, "mean": (0.0,), "std": (1.0,), "channel_order": "rgb"},
    "raw": {"scale": 1.0, "mean": (0.0,), "std": (1.0,), "channel_order": "rgb"},
}

_FIELDS = ("input_size", "resize", "scale", "mean", "std", "channel_order", "layout")


@dataclass(frozen=True)
class PreprocessSpec:
    """A complete preprocessing spec.

    Attributes:
        input_size: ``(height, width)`` the image is brought to before the model.
        resize: one of :data:`RESIZE_MODES`.
        scale: factor applied to 0–255 pixels.
        mean: per-channel (or one shared) value subtracted after scaling, model channel order.
        std: per-channel (or one shared) divisor, model channel order.
        channel_order: ``"rgb"`` or ``"bgr"`` (ignored for one-channel models).
        layout: ``"nchw"`` or ``"nhwc"``, the model input's layout.
        channels: 1 or 3, from the model input (not settable).
        source: where each field came from, for reports (not part of the spec's identity).
    """

    input_size: tuple[int, int]
    resize: str = "stretch"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "rgb"
    layout: str = "nchw"
    channels: int = 3
    source: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data (what the store keeps with every result)."""
        d = asdict(self)
        d.pop("source")
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """The inverse of :meth:`to_dict` (a stored spec; not validated again)."""
        d = dict(data)
        return cls(
            input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
            resize=str(d["resize"]),
            scale=float(d["scale"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            channel_order=str(d["channel_order"]),
            layout=str(d["layout"]),
            channels=int(d["channels"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> str:
        """One line for humans, e.g. ``64x64 stretch, rgb, x*0.00392 - [0.5] / [0.25], nchw``."""
        order = self.channel_order if self.channels == 3 else "gray"

        def fmt(v: tuple[float, ...]) -> str:
            return "[" + ", ".join(f"{x:g}" for x in v) + "]"

        return (
            f"{self.input_size[0]}x{self.input_size[1]} {self.resize}, {order}, "
            f"(x*{self.scale:.6g} - {fmt(self.mean)}) / {fmt(self.std)}, {self.layout}"
        )

    # ---- application ---------------------------------------------------------------------
    def _stats(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.channels
        mean = np.broadcast_to(np.asarray(self.mean, np.float32), (c,))
        std = np.broadcast_to(np.asarray(self.std, np.float32), (c,))
        return mean, std

    def prepare_image(self, image: Any) -> np.ndarray:
        """Resize/crop a PIL image and convert it to the model's channel count.

        Args:
            image: a ``PIL.Image.Image`` of any mode.

        Returns:
            ``uint8 [H, W, C]`` RGB (or gray) pixels at :attr:`input_size`; channel order is
            still RGB: :meth:`normalize` applies the model's order.
        """
        from PIL import Image

        img = _to_8bit(image).convert("L" if self.channels == 1 else "RGB")
        h, w = self.input_size
        if self.resize == "crop":
            s = max(h / img.height, w / img.width)
            rw, rh = max(w, round(img.width * s)), max(h, round(img.height * s))
            img = img.resize((rw, rh), Image.Resampling.BILINEAR)
            left, top = (rw - w) // 2, (rh - h) // 2
            img = img.crop((left, top, left + w, top + h))
        elif img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Map a batch of 0–255 pixels to the model input.

        Args:
            pixels: ``[N, H, W, C]`` RGB (or gray) values in 0..255, any real dtype.

        Returns:
            float32 ``[N, C, H, W]`` (or ``[N, H, W, C]`` for ``nhwc``) in the model's
            channel order and range.
        """
        x = np.asarray(pixels)
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise PreprocessingError(
                f"expected pixels of shape [N, H, W, {self.channels}], got {list(x.shape)}"
            )
        if self.channels == 3 and self.channel_order == "bgr":
            x = x[..., ::-1]
        mean, std = self._stats()
        if self.layout == "nchw":  # reordered before the conversion, on the narrow pixels
            x = x.transpose(0, 3, 1, 2)
            mean, std = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
        # One conversion into the output, then the same float32 operations in the same order
        # as (x * scale - mean) / std, in place: the same values, bit for bit.
        out = np.array(x, dtype=np.float32, order="C")
        np.multiply(out, np.float32(self.scale), out=out)
        np.subtract(out, mean, out=out)
        np.divide(out, std, out=out)
        return out

    def normalize_torch(self, rgb01: Any) -> Any:
        """Differentiable twin of :meth:`normalize` for gradient methods.

        Args:
            rgb01: torch tensor ``[N, C, H, W]``, RGB (or gray) in 0..1.

        Returns:
            torch tensor in the model's layout, channel order and range.
        """
        import torch

        x = rgb01 * 255.0
        if self.channels == 3 and self.channel_order == "bgr":
            x = x.flip(1)
        mean, std = self._stats()
        m = torch.as_tensor(mean.copy(), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std.copy(), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x * self.scale - m) / s
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return x

    def affine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`normalize_torch` per channel as ``(scale, shift, source)``: model channel
        ``k`` is ``scale[k] * rgb01[source[k]] + shift[k]`` (float32, float32, int64, each
        ``[C]``; ``source`` reverses RGB for a BGR model), for kernels that fuse it."""
        c = self.channels
        mean, std = self._stats()
        scale = np.float32(255.0 * self.scale) / std
        source = np.arange(c, dtype=np.int64)
        if c == 3 and self.channel_order == "bgr":
            source = source[::-1]
        return (
            np.ascontiguousarray(scale, np.float32),
            np.ascontiguousarray(-mean / std, np.float32),
            np.ascontiguousarray(source),
        )

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize`: model input back to ``[N, H, W, C]`` 0–255 floats."""
        x = np.asarray(x, dtype=np.float32)
        if self.layout == "nchw":
            x = x.transpose(0, 2, 3, 1)
        mean, std = self._stats()
        x = (x * std + mean) / np.float32(self.scale)
        if self.channels == 3 and self.channel_order == "bgr":
            x = x[..., ::-1]
        return np.ascontiguousarray(x)


# ---- parsing and layering ----------------------------------------------------------------


def _to_8bit(image: Any) -> Any:
    """A PIL image of more than 8 bits per pixel (16-bit PNGs load as ``I;16`` or ``I``, float
    TIFFs as ``F``) rescaled to 8-bit grey; Pillow's own conversion to ``L`` clips them at 255,
    which turns most of a 16-bit image white. Other modes are returned as they are."""
    from PIL import Image

    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    arr = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and arr.size and arr.max() > 255):
        arr = arr / 257.0  # 0..65535 onto 0..255
    elif image.mode == "F" and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
        arr = arr * 255.0  # a float image in 0..1
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"224"`` or ``"224x192"`` (height x width)."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise PreprocessingError(
            f"input size {text!r} is not HxW (e.g. 224x224) or a single integer"
        ) from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2:
        raise PreprocessingError(f"input size {text!r} is not HxW (e.g. 224x224)")
    return nums[0], nums[1]


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """Parse ``"0.485,0.456,0.406"``."""
    try:
        vals = tuple(float(p) for p in str(text).split(",") if p.strip() != "")
    except ValueError:
        raise PreprocessingError(
            f"{what} {text!r} is not a comma-separated list of numbers"
        ) from None
    if not vals:
        raise PreprocessingError(f"{what} is empty")
    return vals


def _coerce(layer: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Check the keys and value types of one partial spec (from JSON, flags or a dict)."""
    if not isinstance(layer, Mapping):
        raise PreprocessingError(f"preprocessing from {origin} must be a JSON object")
    unknown = set(layer) - set(_FIELDS) - {"preset"}
    if unknown:
        raise PreprocessingError(
            f"unknown preprocessing key(s) {sorted(unknown)} in {origin}; "
            f"allowed: preset, {', '.join(_FIELDS)}"
        )
    out: dict[str, Any] = {}
    for k, v in layer.items():
        if v is None:
            continue
        try:
            if k == "input_size":
                out[k] = (
                    parse_size(str(v)) if isinstance(v, str | int) else tuple(int(x) for x in v)
                )
                if len(out[k]) != 2:
                    raise ValueError
            elif k in ("mean", "std"):
                if isinstance(v, str):
                    out[k] = parse_floats(v, k)
                elif isinstance(v, int | float):
                    out[k] = (float(v),)
                else:
                    out[k] = tuple(float(x) for x in v)
            elif k == "scale":
                out[k] = float(v)
            else:  # preset, resize, channel_order, layout
                out[k] = str(v).lower()
        except PreprocessingError:
            raise
        except (TypeError, ValueError):
            raise PreprocessingError(
                f"preprocessing {k}={v!r} from {origin} is malformed"
            ) from None
    return out


def build_spec(
    *,
    channels: int,
    layout: str,
    model_size: tuple[int | None, int | None],
    layers: Sequence[tuple[str, Mapping[str, Any] | None]],
) -> PreprocessSpec:
    """Merge partial specs over the model-derived defaults and validate the result.

    Args:
        channels: the model input's channel count (1 or 3).
        layout: the layout detected from the model input.
        model_size: the input's fixed ``(height, width)``; ``None`` where dynamic.
        layers: ``(origin, partial dict)`` pairs in increasing priority.

    Raises:
        PreprocessingError: an unknown preset or key, or a spec the model cannot take.
    """
    default_preset = "imagenet" if channels == 3 else "unit"
    fixed = model_size[0] is not None and model_size[1] is not None
    values: dict[str, Any] = dict(PRESETS[default_preset])
    values.update(
        layout=layout,
        resize="stretch",
        input_size=(model_size[0], model_size[1]) if fixed else (224, 224),
    )
    source = {k: "default" for k in _FIELDS}
    source.update(
        {k: f"preset {default_preset} (default)" for k in PRESETS[default_preset]},
        layout="model input",
    )
    if fixed:
        source["input_size"] = "model input"
    for origin, layer in layers:
        if not layer:
            continue
        part = _coerce(layer, origin)
        preset = part.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise PreprocessingError(
                    f"unknown preprocessing preset {preset!r} (from {origin}); "
                    f"choose one of {', '.join(PRESETS)}"
                )
            values.update(PRESETS[preset])
            source.update({k: f"preset {preset} ({origin})" for k in PRESETS[preset]})
        values.update(part)
        source.update({k: origin for k in part})
    spec = PreprocessSpec(channels=channels, source=source, **values)
    validate_spec(spec, layout=layout, model_size=model_size)
    return spec


def validate_spec(
    spec: PreprocessSpec, *, layout: str, model_size: tuple[int | None, int | None]
) -> None:
    """Raise :class:`PreprocessingError` for a spec the model cannot take."""
    c = spec.channels
    if spec.resize not in RESIZE_MODES:
        raise PreprocessingError(f"resize must be one of {RESIZE_MODES}, got {spec.resize!r}")
    if spec.channel_order not in ("rgb", "bgr"):
        raise PreprocessingError(f"channel order must be rgb or bgr, got {spec.channel_order!r}")
    if spec.channel_order == "bgr" and c != 3:
        raise PreprocessingError("channel order bgr needs a 3-channel model; this one has 1")
    if spec.layout not in ("nchw", "nhwc"):
        raise PreprocessingError(f"layout must be nchw or nhwc, got {spec.layout!r}")
    if spec.layout != layout:
        raise PreprocessingError(
            f"layout {spec.layout} contradicts the model input, which is {layout}"
        )
    if not (math.isfinite(spec.scale) and spec.scale > 0):
        raise PreprocessingError(f"scale must be a positive finite number, got {spec.scale}")
    for name, vals in (("mean", spec.mean), ("std", spec.std)):
        if len(vals) not in (1, c):
            raise PreprocessingError(
                f"{name} has {len(vals)} values but the model takes {c} channel(s)"
            )
        if not all(math.isfinite(v) for v in vals):
            raise PreprocessingError(f"{name} must be finite, got {list(vals)}")
    if any(v <= 0 for v in spec.std):
        raise PreprocessingError(f"std must be positive, got {list(spec.std)}")
    h, w = spec.input_size
    if not (1 <= h <= 16384 and 1 <= w <= 16384):
        raise PreprocessingError(f"input size {h}x{w} is out of range (1..16384)")
    mh, mw = model_size
    if (mh is not None and mh != h) or (mw is not None and mw != w):
        raise PreprocessingError(
            f"input size {h}x{w} contradicts the model input, fixed to "
            f"{mh if mh is not None else '?'}x{mw if mw is not None else '?'}"
        )


def with_overrides(spec: PreprocessSpec, **changes: Any) -> PreprocessSpec:
    """A copy of ``spec`` with fields replaced (validated against itself)."""
    new = replace(spec, **changes)
    validate_spec(new, layout=new.layout, model_size=(None, None))
    return new
