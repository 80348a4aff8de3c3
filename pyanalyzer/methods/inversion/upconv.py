"""UpconvNet: a decoder trained to map a layer's features back to the image.

Dosovitskiy & Brox, "Inverting Visual Representations with Convolutional Networks", CVPR 2016.

The decoder's shape follows the layer's (:func:`architecture`): a convolution from the layer's
channels to a working width, a second one at that width, then up-convolutions (4×4 transposed
convolutions of stride 2, each followed by a leaky ReLU of slope 0.2, as in the paper) that
double the size until it reaches the input's, and a final 3×3 convolution to the image's
channels with a sigmoid, so that the output is RGB in 0..1. A size that is not the layer's
times a power of two is met by one bilinear resize before that last convolution.

Training minimises the pixel-space mean squared error over an image source (default: the
synthetic concept scenes of :mod:`pyanalyzer.data.synthetic`). The features are computed once,
by onnxruntime through ``model.forward``, divided by their RMS over the first batch (kept with
the decoder) and held as float16. Adam, a cosine-decayed learning rate. The trained decoder is
stored (``state_dict`` arrays, training curve; the layer and the model's sha256 in the
parameters) and a later call with the same parameters loads it instead of training. Inverting is
then one forward pass.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._checks import check_int
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.inversion._common import check_images, to_nchw_features
from pyanalyzer.methods.inversion.result import InversionResult, feature_error, pixel_error

if TYPE_CHECKING:
    from pyanalyzer.data.images import ImageSource
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Store

METHOD = "inversion/upconv"
"""Store method name of trained decoders."""

FORMAT_VERSION = 1
"""Bumped when the architecture or the training changes meaning (part of the store key)."""

WIDTH_BUDGET = 1024
"""Working width at a stage of side ``s`` is ``WIDTH_BUDGET // s``, clamped to
:data:`MIN_WIDTH`..:data:`MAX_WIDTH`: wide where the maps are small, narrow where they are large,
so every stage costs about the same."""

MIN_WIDTH = 16
MAX_WIDTH = 128
LEAKY_SLOPE = 0.2
"""Leaky ReLU slope (Dosovitskiy & Brox)."""

DEFAULT_IMAGES = 3000
"""Synthetic training scenes when no source is given."""

DEFAULT_EPOCHS = 10


class DecoderMismatchError(UserInputError):
    """A decoder was used with a model or layer it was not trained for."""


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
        cin, h, w = int(layer.channels), int(layer.height), int(layer.width)
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
                nn.init.zeros_(mod.bias)

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            y = self.body(f)
            if tuple(y.shape[-2:]) != self.out_size:
                y = F.interpolate(y, size=self.out_size, mode="bilinear", align_corners=False)
            return torch.sigmoid(self.head(y))

    return UpconvNet()


# ---- the decoder -----------------------------------------------------------------------------


@dataclass
class UpconvDecoder:
    """A trained UpconvNet for one layer of one model.

    Attributes:
        net: the torch module (``[N, C, h, w]`` scaled features → ``[N, C_img, H, W]`` 0..1).
        arch: its :func:`architecture`.
        layer, alias: the layer it inverts (ONNX name, alias).
        model_sha256, model_file: the model it was trained on.
        feature_scale: features are divided by this before the decoder.
        curve: float32 ``[epochs]``, mean training loss (pixel MSE, 0..1 RGB) per epoch.
        params: the training parameters (the store key's).
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

    def decode(self, features: np.ndarray, layer: LayerInfo) -> np.ndarray:
        """Images from raw layer features (as onnxruntime returns them).

        Returns:
            float32 ``[N, H, W, C]`` in 0..1.
        """
        import torch

        f = to_nchw_features(np.asarray(features, np.float32), layer) / self.feature_scale
        self.net.eval()
        with torch.no_grad():
            y = self.net(torch.from_numpy(np.ascontiguousarray(f, np.float32)))
        return y.permute(0, 2, 3, 1).contiguous().numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        """What the store keeps: ``state/<name>`` weights, ``curve``, ``feature_scale``."""
        out = {f"state/{k}": v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        out["curve"] = np.asarray(self.curve, np.float32)
        out["feature_scale"] = np.asarray(self.feature_scale, np.float64)
        return out

    @classmethod
    def from_entry(cls, entry) -> UpconvDecoder:
        """Rebuild a decoder from its store :class:`~pyanalyzer.store.Entry`."""
        import torch

        p = entry.params
        net = build_decoder(p["arch"])
        state = {k[len("state/") :]: torch.from_numpy(np.array(v)) for k, v in entry.items()
                 if k.startswith("state/")}  # fmt: skip
        net.load_state_dict(state)
        net.eval()
        return cls(
            net=net,
            arch=p["arch"],
            layer=p["layer"],
            alias=p["alias"],
            model_sha256=p["model_sha256"],
            model_file=entry.model_file,
            feature_scale=float(entry["feature_scale"]),
            curve=np.asarray(entry["curve"], np.float32),
            params=p,
            from_store=True,
            train_seconds=float(entry.extra.get("train_seconds", 0.0)),
        )


# ---- training --------------------------------------------------------------------------------


def _source_digest(source) -> dict[str, Any]:
    """What identifies an image source in the store key."""
    from pyanalyzer.data.images import ArraySource, ImageFiles, files_digest

    h = hashlib.sha256()
    if isinstance(source, _SyntheticSource):
        return {"kind": "synthetic", "n": source.n, "seed": source.seed, "size": source.size}
    if isinstance(source, _Head):
        return {"kind": "head", "n": source.n, "of": _source_digest(source.source)}
    if isinstance(source, ArraySource):
        h.update(repr(source.images.shape).encode())
        h.update(np.ascontiguousarray(source.images).tobytes())
        return {"kind": "array", "n": len(source), "sha256": h.hexdigest()}
    if isinstance(source, ImageFiles):
        return {"kind": "files", "n": len(source), "sha256": files_digest(source.paths)}
    for i in range(len(source)):
        h.update(f"{source.name(i)}\n".encode())
    return {"kind": type(source).__name__, "n": len(source), "sha256": h.hexdigest()}


class _SyntheticSource:
    """The default training images: synthetic concept scenes rendered at the input size."""

    def __init__(self, n: int, seed: int, size: int):
        self.n, self.seed, self.size = n, seed, size
        self._images: np.ndarray | None = None  # rendered on first use: a store hit needs none

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            from pyanalyzer.data import synthetic

            self._images = synthetic.render_batch(self.n, seed=self.seed, size=self.size)[0]
        return self._images

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return f"synthetic:{self.seed}:{index}"

    def pixels(self, index: int, spec) -> np.ndarray:
        from pyanalyzer.data.images import ArraySource

        return ArraySource(self.images[index : index + 1]).pixels(0, spec)


def synthetic_source(model: Model, n: int = DEFAULT_IMAGES, seed: int = 0) -> ImageSource:
    """``n`` synthetic scenes of ``seed`` at the model's input size (square inputs; else 64 px,
    resized), as an image source."""
    from pyanalyzer.data.synthetic import MIN_SIZE

    h, w = model.preprocessing.input_size
    size = h if h == w and h >= MIN_SIZE else 64
    return _SyntheticSource(check_int("n_images", n, 1), check_int("seed", seed, 0), size)


def _features(model: Model, layer: LayerInfo, source, batch_size: int, progress: bool):
    """Features (float16, scaled) and pixels of the whole source, one onnxruntime pass."""
    from pyanalyzer._progress import progress_bar

    spec = model.preprocessing
    n = len(source)
    h, w = spec.input_size
    pix = np.empty((n, h, w, spec.channels), np.uint8)
    feats: np.ndarray | None = None
    scale = 1.0
    starts = range(0, n, batch_size)
    with progress_bar(len(starts), label=f"features {layer.alias}", enabled=progress) as bar:
        for s in starts:
            idx = range(s, min(n, s + batch_size))
            batch = np.stack([source.pixels(i, spec) for i in idx])
            pix[s : idx.stop] = batch
            f = model.forward.run(spec.normalize(batch), [layer.name])[layer.name]
            f = to_nchw_features(np.asarray(f, np.float32), layer)
            if feats is None:
                scale = float(np.sqrt(np.mean(np.square(f, dtype=np.float64)))) or 1.0
                feats = np.empty((n, *f.shape[1:]), np.float16)
            feats[s : idx.stop] = f / scale
            bar.update(1)
    assert feats is not None  # n >= 1
    return feats, pix, scale


def train_upconv(
    model: Model,
    layer: str,
    source: ImageSource | None = None,
    *,
    n_images: int | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    store: Store | None = None,
    progress: bool = True,
) -> UpconvDecoder:
    """Train (or load from the store) an UpconvNet that inverts ``layer``.

    Dosovitskiy & Brox, CVPR 2016.

    Args:
        model: a loaded :class:`~pyanalyzer.model.model.Model`.
        layer: alias or ONNX name of a spatial map or a vector output.
        source: training images; default: :data:`DEFAULT_IMAGES` synthetic scenes
            (:func:`synthetic_source`, seed 0).
        n_images: for the default source, how many scenes; for a given source, use only its
            first ``n_images`` images (default: all).
        epochs: passes over the images.
        batch_size: images per optimisation step.
        lr: Adam's initial learning rate (cosine-decayed to 0 over the training).
        seed: weight initialisation and batch order.
        store: where trained decoders are kept; a decoder stored under the same parameters
            (model, layer, source, training settings) is loaded instead of trained.
        progress: show progress bars.

    Returns:
        the :class:`UpconvDecoder` (``from_store`` tells whether it was loaded).
    """
    from pyanalyzer.store import Key

    info = model.layer(layer)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    if not (math.isfinite(lr) and lr > 0):
        raise UserInputError(f"lr must be a positive number, got {lr}")
    if source is None:
        source = synthetic_source(model, DEFAULT_IMAGES if n_images is None else n_images)
    elif n_images is not None:
        source = _Head(source, check_int("n_images", n_images, 1))
    if len(source) == 0:
        raise UserInputError("the training source holds no images")
    arch = architecture(model, info)
    params = {
        "format": FORMAT_VERSION,
        "model_sha256": model.sha256,
        "layer": info.name,
        "alias": info.alias,
        "arch": arch,
        "source": _source_digest(source),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": float(lr),
        "seed": seed,
        "preprocessing": model.preprocessing.to_dict(),
    }
    key = Key.make(model.sha256, METHOD, params)
    if store is not None:
        entry = store.get(key)
        if entry is not None:
            return UpconvDecoder.from_entry(entry)

    t0 = time.perf_counter()
    feats, pix, scale = _features(model, info, source, 64, progress)
    net, curve = _fit(arch, feats, pix, epochs, batch_size, lr, seed, info.alias, progress)
    decoder = UpconvDecoder(
        net=net, arch=arch, layer=info.name, alias=info.alias, model_sha256=model.sha256,
        model_file=model.path.name, feature_scale=scale, curve=curve, params=params,
        train_seconds=time.perf_counter() - t0,
    )  # fmt: skip
    if store is not None:
        store.put(
            key,
            decoder.arrays(),
            params=params,
            model_file=model.path.name,
            preprocessing=model.preprocessing,
            extra_attrs={"train_seconds": decoder.train_seconds},
        )
    return decoder


class _Head:
    """The first ``n`` images of a source."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(n, len(source))

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return self.source.name(index)

    def pixels(self, index: int, spec) -> np.ndarray:
        return self.source.pixels(index, spec)


def _fit(arch, feats, pix, epochs, batch_size, lr, seed, alias, progress):
    """Adam on pixel MSE. Returns ``(net, curve [epochs])``; weights and order from ``seed``."""
    import torch
    from torch.nn import functional as F

    from pyanalyzer._progress import progress_bar

    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(seed)
        net = build_decoder(arch)
    # Channels-last batches make mkldnn's (transposed) convolutions ~25 % faster here.
    cl = torch.channels_last
    net = net.to(memory_format=cl).train()
    rng = np.random.default_rng(seed)
    n = len(feats)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
    )
    curve = np.empty(epochs, np.float32)
    with (
        torch.enable_grad(),
        progress_bar(total, label=f"train upconv {alias}", enabled=progress) as bar,
    ):
        for e in range(epochs):
            order = rng.permutation(n)
            acc = 0.0
            for b in range(per_epoch):
                idx = np.sort(order[b * batch_size : (b + 1) * batch_size])
                f = torch.from_numpy(feats[idx].astype(np.float32)).contiguous(memory_format=cl)
                y = torch.from_numpy(pix[idx]).permute(0, 3, 1, 2).float() / 255.0  # NHWC already
                loss = F.mse_loss(net(f), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                acc += float(loss.detach()) * len(idx)
                bar.update(1)
            curve[e] = acc / n
    return net.to(memory_format=torch.contiguous_format).eval(), curve


def _reading_mismatch(params: Mapping[str, Any], model: Model) -> DecoderMismatchError | None:
    """Why a decoder with these training ``params`` does not fit ``model`` as it is read now
    (storage format, preprocessing, the layer's shape at this input size), or None. Its model
    and layer are assumed to be ``model``'s; only the parameters are read (no weights)."""
    alias = params.get("alias", params.get("layer"))
    fmt = params.get("format")
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
    found = sorted(
        (
            e
            for e in store.entries()
            if e.key.model_sha256 == model.sha256
            and e.key.method == METHOD
            and isinstance(e.params, dict)
            and e.params.get("layer") == info.name
        ),
        key=lambda e: e.created,
        reverse=True,
    )
    first_error: DecoderMismatchError | None = None
    for info_entry in found:  # the parameters decide; only a fitting decoder's weights are read
        error = _reading_mismatch(info_entry.params, model)
        if error is not None:
            first_error = first_error or error
            continue
        entry = store.get(info_entry.key)
        if entry is not None:
            return UpconvDecoder.from_entry(entry)
    if first_error is not None:
        raise first_error
    return None


# ---- inverting -------------------------------------------------------------------------------


def invert_upconv(
    model: Model,
    decoder: UpconvDecoder,
    images: np.ndarray,
    *,
    layer: str | None = None,
    batch_size: int = 64,
) -> InversionResult:
    """Reconstruct images from their features with a trained decoder: one forward pass.

    Args:
        model: the model the decoder was trained on.
        decoder: from :func:`train_upconv` (or :func:`find_decoder`).
        images: uint8 ``[N, H, W, C]`` RGB at the model's input size.
        layer: the layer the caller means to invert; checked against the decoder's.
        batch_size: images per forward pass.

    Returns:
        :class:`~.result.InversionResult` with ``L = 1`` (the decoder's layer).

    Raises:
        DecoderMismatchError: the decoder was trained for another model or layer.
        ImageError: the images are not uint8 ``[N, H, W, C]`` at the input size.
    """
    decoder.check(model, layer)
    batch_size = check_int("batch_size", batch_size, 1)
    originals = check_images(model, images)
    info = model.layer(decoder.layer)
    spec = model.preprocessing
    n = len(originals)
    recon = np.empty((n, *originals.shape[1:]), np.float32)
    refs = []
    for s in range(0, n, batch_size):
        batch = originals[s : s + batch_size]
        f = model.forward.run(spec.normalize(batch), [info.name])[info.name]
        refs.append(f)
        recon[s : s + len(batch)] = decoder.decode(f, info)
    ref = np.concatenate(refs)
    got = np.concatenate(
        [
            model.forward.run(spec.normalize(recon[s : s + batch_size] * 255.0), [info.name])[
                info.name
            ]
            for s in range(0, n, batch_size)
        ]
    )
    return InversionResult(
        method="upconv",
        layers=(info.name,),
        aliases=(info.alias,),
        originals=originals,
        images=recon[:, None],
        feature_error=feature_error(got, ref)[:, None],
        pixel_error=pixel_error(recon, originals)[:, None],
        history=None,
        params={"decoder": dict(decoder.params)},
    )
