"""The UpconvNet decoder: its architecture, the trained network, and finding one in the store.

Dosovitskiy & Brox, "Inverting Visual Representations with Convolutional Networks", CVPR 2016.

The decoder's shape follows the layer's (:func:`architecture`): a convolution from the layer's
channels to a working width, a second one at that width, then up-convolutions (4×4 transposed
convolutions of stride 2, each followed by a leaky ReLU of slope 0.2, as in the paper) that
double the size until it reaches the input's, and a final 3×3 convolution to the image's
channels with a sigmoid, so that the output is RGB in 0..1. A size that is not the layer's
times a power of two is met by one bilinear resize before that last convolution.

A trained decoder (:class:`UpconvDecoder`) is the result of
:class:`~pyanalyzer.methods.inversion.upconv.UpconvTraining`, stored like any result;
:func:`find_decoder` finds the newest one that fits a model as it is read now. Its weights are
kept, stored and hashed from the CPU whatever device trained it; :meth:`UpconvDecoder.on` is the
decoder on another device (a copy of the network moved there).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer.analysis import Result, stored_runs
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.inversion._common import as_maps

if TYPE_CHECKING:
    import torch

    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Store

__all__ = [
    "FORMAT_VERSION",
    "DecoderMismatchError",
    "DecoderMissingError",
    "UpconvDecoder",
    "architecture",
    "build_decoder",
    "find_decoder",
]

TRAIN_METHOD = "train-upconv"
"""The analysis that trains decoders (its store method)."""

FORMAT_VERSION = 2
"""The decoders' stored-format revision (the training analysis' ``revision``): bumped when the
architecture or the training changes meaning. 2: the analysis contract's store layout."""

WIDTH_BUDGET = 1024
"""Working width at a stage of side ``s`` is ``WIDTH_BUDGET // s``, clamped to
:data:`MIN_WIDTH`..:data:`MAX_WIDTH`: wide where the maps are small, narrow where they are large,
so every stage costs about the same."""

MIN_WIDTH = 16
MAX_WIDTH = 128
LEAKY_SLOPE = 0.2
"""Leaky ReLU slope (Dosovitskiy & Brox)."""


class DecoderMismatchError(UserInputError):
    """A decoder was used with a model or layer it was not trained for."""


class DecoderMissingError(UserInputError):
    """No decoder was trained for some layers of a model.

    Attributes:
        aliases: the layers without a decoder.
    """

    def __init__(self, message: str, aliases: list[str]):
        super().__init__(message)
        self.aliases = aliases


# ---- architecture --------------------------------------------------------------------------


def _width(side: int) -> int:
    return int(min(MAX_WIDTH, max(MIN_WIDTH, WIDTH_BUDGET // max(side, 1))))


def architecture(model: Model, layer: LayerInfo) -> dict[str, Any]:
    """The decoder's shape for ``layer`` (JSON-able; part of the store key).

    Returns:
        ``{"in_channels", "in_size": [h, w], "out_channels", "out_size": [H, W], "widths"}``,
        ``widths[0]`` the width of the input convolutions and ``widths[k]`` the width after
        the ``k``-th up-convolution.
    """
    spec = model.preprocessing
    out_h, out_w = spec.input_size
    if layer.is_spatial:
        cin, h, w = int(layer.channels or 0), int(layer.height or 0), int(layer.width or 0)
    elif len(layer.shape) == 2:
        cin, h, w = int(layer.shape[1]), 1, 1
    else:
        raise UserInputError(
            f"layer {layer.alias} has shape {list(layer.shape)}; UpconvNet inverts [N, C, H, W] "
            "maps and [N, K] vectors"
        )
    ups = max(0, math.ceil(math.log2(max(out_h / h, out_w / w))))
    sides = [max(h, w) * 2**k for k in range(ups + 1)]
    return {
        "in_channels": cin,
        "in_size": [h, w],
        "out_channels": spec.channels,
        "out_size": [out_h, out_w],
        "widths": [_width(s) for s in sides],
    }


def build_decoder(arch: Mapping[str, Any]):
    """The torch module for an :func:`architecture` (weights from torch's default init)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class UpconvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = list(arch["widths"])
            k = 3 if min(arch["in_size"]) >= 3 else 1
            layers: list[nn.Module] = [
                nn.Conv2d(arch["in_channels"], widths[0], k, padding=k // 2),
                nn.LeakyReLU(LEAKY_SLOPE),
                nn.Conv2d(widths[0], widths[0], k, padding=k // 2),
                nn.LeakyReLU(LEAKY_SLOPE),
            ]
            for a, b in zip(widths, widths[1:], strict=False):
                layers += [
                    nn.ConvTranspose2d(a, b, 4, stride=2, padding=1),
                    nn.LeakyReLU(LEAKY_SLOPE),
                ]
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv2d(widths[-1], arch["out_channels"], 3, padding=1)
            self.out_size = tuple(arch["out_size"])
            # He initialisation for leaky ReLUs, counting the taps that really meet at an
            # output (4 of a 4x4 stride-2 up-convolution's 16): torch's default shrinks the
            # signal at every layer, and a deep decoder then starts at the mean image and
            # learns slowly.
            gain = math.sqrt(2.0 / (1.0 + LEAKY_SLOPE**2))
            for mod in self.modules():
                if isinstance(mod, nn.ConvTranspose2d):
                    fan = mod.in_channels * 4
                elif isinstance(mod, nn.Conv2d):
                    fan = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
                else:
                    continue
                nn.init.normal_(
                    mod.weight, 0.0, (gain if mod is not self.head else 1.0) / math.sqrt(fan)
                )
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            y = self.body(f)
            if tuple(y.shape[-2:]) != self.out_size:
                y = F.interpolate(y, size=self.out_size, mode="bilinear", align_corners=False)
            return torch.sigmoid(self.head(y))

    return UpconvNet()


# ---- the decoder -----------------------------------------------------------------------------


@dataclass
class UpconvDecoder(Result):
    """A trained UpconvNet for one layer of one model.

    Attributes:
        net: the torch module (``[N, C, h, w]`` scaled features → ``[N, C_img, H, W]`` 0..1);
            on the CPU as training and the store hand it out (:meth:`on`: on another device).
        arch: its :func:`architecture`.
        layer, alias: the layer it inverts (ONNX name, alias).
        model_sha256, model_file: the model it was trained on.
        feature_scale: features are divided by this before the decoder.
        curve: float32 ``[epochs]``, mean training loss (pixel MSE, 0..1 RGB) per epoch.
        params: the training parameters, resolved (layer, architecture, epochs...), with the
            identity of the training images (``source``), the preprocessing and the format.
        from_store: loaded from the store rather than trained by this call.
        train_seconds: wall time of the training that produced it.
    """

    net: Any
    arch: dict[str, Any]
    layer: str
    alias: str
    model_sha256: str
    model_file: str
    feature_scale: float
    curve: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    from_store: bool = False
    train_seconds: float = 0.0

    def describe(self) -> str:
        """One line: what it inverts, how it was trained, its final loss, where it came from."""
        src = self.params.get("source", {})
        kind = src.get("kind", "")
        what = "synthetic scenes" if kind == "synthetic" else f"images ({kind})"
        epochs = len(self.curve)
        final = math.sqrt(max(float(self.curve[-1]), 0.0)) if epochs else float("nan")
        how = (
            "loaded from the store" if self.from_store else f"trained in {self.train_seconds:.0f} s"
        )
        return (
            f"UpconvNet for {self.model_file}/{self.alias}: {src.get('n', '?')} {what}, "
            f"{epochs} epoch{'s' if epochs != 1 else ''}, final pixel RMSE {final:.4f}, {how}"
        )

    def check(self, model: Model, layer: str | None = None) -> None:
        """Raise :class:`DecoderMismatchError` unless this decoder fits ``model`` (and ``layer``)
        as the model is read now: the same weights and layer, the same preprocessing (the
        decoder learned the features of images normalised one way and answers in that input
        range), the same shapes (input size, feature map) and the current storage format.

        Raises:
            DecoderMismatchError: one line naming what differs.
            LayerNotFoundError: ``layer`` is not in the model.
        """
        want = model.layer(layer) if layer is not None else None
        same_model = model.sha256 == self.model_sha256
        same_layer = want is None or want.name == self.layer
        if same_model and same_layer:
            self._check_reading(model)
            return
        theirs, ours = self.model_file or self.model_sha256[:12], model.path.name
        if theirs == ours and not same_model:  # same file name, other weights: show digests
            theirs = f"{theirs} (sha256 {self.model_sha256[:12]})"
            ours = f"{ours} (sha256 {model.sha256[:12]})"
        requested = f"{ours}/{want.alias}" if want is not None else ours
        raise DecoderMismatchError(
            f"the decoder was trained for {theirs}/{self.alias}, not {requested}"
        )

    def _check_reading(self, model: Model) -> None:
        """The model is the decoder's; refuse it when it is read differently now."""
        error = _reading_mismatch(self.params, model)
        if error is not None:
            raise error

    @property
    def device(self) -> torch.device:
        """Where :attr:`net`'s weights live."""
        import torch

        first = next(iter(self.net.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    def on(self, device: str | torch.device = "auto") -> UpconvDecoder:
        """This decoder on ``device`` (:func:`~pyanalyzer.model.gradient.torch_device`): itself
        where its network already lives, else a copy with a copy of the network moved there
        (this one is left as it is). :meth:`decode` runs where the network lives.

        Raises:
            BackendUnavailableError: CUDA was asked for and is unavailable.
        """
        from pyanalyzer.model.gradient import torch_device

        dev = torch_device(device)
        if self.device == dev:
            return self
        return dataclasses.replace(self, net=copy.deepcopy(self.net).to(dev))

    def decode(self, features: np.ndarray, layer: LayerInfo) -> np.ndarray:
        """Images from layer features (as the engines hand them out: maps ``[N, C, h, w]``,
        vectors ``[N, K]``), decoded where :attr:`net` lives (the features are moved there).

        Returns:
            float32 ``[N, H, W, C]`` in 0..1, on the host.
        """
        import torch

        f = as_maps(np.asarray(features, np.float32), layer) / self.feature_scale
        self.net.eval()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(f, np.float32)).to(self.device)
            y = self.net(x)
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What the store keeps: ``state/<name>`` weights (copied from wherever they live to
        the host, so that any machine loads them), ``curve``, ``feature_scale``."""
        out = {
            f"state/{k}": v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()
        }
        out["curve"] = np.asarray(self.curve, np.float32)
        out["feature_scale"] = np.asarray(self.feature_scale, np.float64)
        return out

    def to_meta(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "layer": self.layer,
            "alias": self.alias,
            "model_sha256": self.model_sha256,
            "model_file": self.model_file,
            "params": self.params,
            "train_seconds": self.train_seconds,
        }

    @classmethod
    def from_stored(
        cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> UpconvDecoder:
        """Rebuild a decoder from the store (:meth:`to_arrays`, :meth:`to_meta`), its network on
        the CPU whichever device trained it (the arrays are host copies)."""
        import torch

        net = build_decoder(meta["arch"])  # on the CPU
        state = {k[len("state/") :]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                 if k.startswith("state/")}  # fmt: skip
        net.load_state_dict(state)
        net.eval()
        return cls(
            net=net,
            arch=meta["arch"],
            layer=meta["layer"],
            alias=meta["alias"],
            model_sha256=meta["model_sha256"],
            model_file=meta["model_file"],
            feature_scale=float(np.asarray(arrays["feature_scale"])),
            curve=np.asarray(arrays["curve"], np.float32),
            params=dict(meta["params"]),
            from_store=True,
            train_seconds=float(meta.get("train_seconds", 0.0)),
        )

    def digest(self) -> str:
        """sha256 of the decoder's weights and feature scale: its identity in store keys."""
        h = hashlib.sha256(repr(self.feature_scale).encode())
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v.detach().cpu().numpy()).tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """What was trained, how, and the final training loss."""
        return {
            "layer": self.layer,
            "alias": self.alias,
            "model_file": self.model_file,
            "epochs": len(self.curve),
            "final_pixel_rmse": math.sqrt(max(float(self.curve[-1]), 0.0))
            if len(self.curve)
            else None,
            "train_seconds": self.train_seconds,
            "source": self.params.get("source"),
        }


def _reading_mismatch(params: Mapping[str, Any], model: Model) -> DecoderMismatchError | None:
    """Why a decoder with these training ``params`` does not fit ``model`` as it is read now
    (storage format, preprocessing, the layer's shape at this input size), or None. Its model
    and layer are assumed to be ``model``'s; only the parameters are read (no weights)."""
    alias = params.get("alias", params.get("layer"))
    fmt = params.get("format")  # read at call time: tests pretend to be a newer version
    if fmt != FORMAT_VERSION:
        return DecoderMismatchError(
            f"the decoder for {alias} was stored in format {fmt}, this version reads "
            f"format {FORMAT_VERSION}: train it again"
        )
    theirs = params.get("preprocessing") or {}
    ours = model.preprocessing.to_dict()
    differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if differ:
        what = ", ".join(f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in differ)
        return DecoderMismatchError(
            f"the decoder for {alias} was trained with other preprocessing ({what}, "
            "trained vs now): train one with the same preprocessing flags"
        )
    arch = architecture(model, model.layer(params["layer"]))
    if arch != params.get("arch"):
        return DecoderMismatchError(
            f"the decoder for {alias} maps {_shape_text(params.get('arch') or {})}; with this "
            f"input size the layer needs {_shape_text(arch)}: train one at this size"
        )
    return None


def _shape_text(arch: Mapping[str, Any]) -> str:
    """``"32x32x32 features to a 64x64 image"`` from an :func:`architecture`."""
    h, w = arch.get("in_size", ["?", "?"])
    oh, ow = arch.get("out_size", ["?", "?"])
    return f"{arch.get('in_channels', '?')}x{h}x{w} features to a {oh}x{ow} image"


def find_decoder(store: Store, model: Model, layer: str) -> UpconvDecoder | None:
    """The most recently trained decoder in ``store`` that fits ``layer`` of ``model`` as the
    model is read now (:meth:`UpconvDecoder.check`), or None when none was trained for it.

    Raises:
        DecoderMismatchError: decoders exist for this model and layer, but none fits (another
            preprocessing, input size or storage format); the newest one's reason is given.
    """
    info = model.layer(layer)
    first_error: DecoderMismatchError | None = None
    for run in stored_runs(store, TRAIN_METHOD, model.sha256):
        if run.params.get("layer") != info.name:
            continue
        params = decoder_params(run.params, run.inputs, run.preprocessing, run.revision)
        error = _reading_mismatch(params, model)  # only a fitting decoder's weights are read
        if error is not None:
            first_error = first_error or error
            continue
        entry = store.get(run.info.key)
        if entry is not None:
            return UpconvDecoder.from_stored(entry.arrays, entry.extra["result"])
    if first_error is not None:
        raise first_error
    return None


def decoder_params(
    resolved: Mapping[str, Any], source: Any, preprocessing: Any, revision: int | None
) -> dict[str, Any]:
    """A decoder's :attr:`UpconvDecoder.params`: the training's resolved parameters with the
    identity of its images, the preprocessing and the format it was stored in."""
    return {**resolved, "source": source, "preprocessing": preprocessing, "format": revision}
