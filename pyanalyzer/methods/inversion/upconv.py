"""UpconvNet inversion: train a decoder for a layer, then reconstruct images with it.

Dosovitskiy & Brox, "Inverting Visual Representations with Convolutional Networks", CVPR 2016.

:class:`UpconvTraining` trains a decoder (:mod:`.decoder`) on an image source (default: the
synthetic concept scenes of :mod:`pyanalyzer.data.defaults`) by minimising the pixel-space mean
squared error. The features are computed once, by onnxruntime through ``model.forward``,
divided by their RMS over the first batch (kept with the decoder) and held as float16. Adam, a
cosine-decayed learning rate. The trained decoder is a stored result like any other: the same
parameters load it instead of training.

:class:`UpconvInversion` reconstructs images from a layer's features with a trained decoder
(given, or the newest fitting one in the store): one forward pass.

Both take ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``; not part of the result's key): the
decoder and its batches run there, fed from onnxruntime's features moved to it. The weights'
initialisation and the batch order are drawn on the CPU whatever the device, and a trained
decoder is handed back (and stored) with its weights on the CPU, so that a decoder trained on a
GPU loads and decodes on a machine without one, and the other way round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from pyanalyzer import budget
from pyanalyzer._backend import DEVICES
from pyanalyzer.analysis import (
    Analysis,
    Choice,
    Float,
    ImageAnalysis,
    Int,
    Layers,
    Params,
    Result,
)
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.inversion._common import as_maps, resolve_layers
from pyanalyzer.methods.inversion.decoder import (
    FORMAT_VERSION,
    TRAIN_METHOD,
    DecoderMissingError,
    UpconvDecoder,
    architecture,
    build_decoder,
    decoder_params,
    find_decoder,
)
from pyanalyzer.methods.inversion.result import InversionResult, feature_error, pixel_error

if TYPE_CHECKING:
    import torch

    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.model.preprocessing import PreprocessSpec
    from pyanalyzer.store import Checkpoint

__all__ = ["TrainParams", "UpconvInversion", "UpconvParams", "UpconvTraining"]

DEFAULT_EPOCHS = 10


# ---- training --------------------------------------------------------------------------------


class TrainParams(Params):
    """Parameters of :class:`UpconvTraining`."""

    title: ClassVar[str] = "invert train"

    layer: str = Field(description="The layer whose features the decoder inverts.")
    n_images: Annotated[int | None, Int("n_images", 1, optional=True)] = Field(
        None,
        description="Images to train on: for the default synthetic scenes how many (3000); "
        "for a given source its first n (default: all).",
    )
    epochs: Annotated[int, Int("epochs", 1)] = Field(
        DEFAULT_EPOCHS, description="Passes over the images."
    )
    batch_size: Annotated[int, Int("batch_size", 1)] = Field(64, description="Images per step.")
    lr: Annotated[float, Float("lr", low=0.0, low_open=True, message="a positive number")] = Field(
        2e-3, description="Adam's initial learning rate (cosine-decayed to 0)."
    )
    seed: Annotated[int, Int("seed", 0)] = Field(
        0, description="Weight initialisation and batch order."
    )
    device: Annotated[str, Choice("device", DEVICES)] = Field(
        "auto",
        description="Where the decoder trains (torch): auto (CUDA when torch sees a GPU, else "
        "the CPU), cpu or cuda. Not part of the decoder's key.",
    )


class UpconvTraining(Analysis[TrainParams, UpconvDecoder]):
    """Train an UpconvNet decoder that inverts ``layer`` (Dosovitskiy & Brox, CVPR 2016).

    Parameters (:class:`TrainParams`): ``layer`` (a spatial map or a vector output),
    ``n_images``, ``epochs``, ``batch_size``, ``lr``, ``seed``, ``device`` (where torch trains
    it; not part of the key). :meth:`run` takes the training images (an image source; default:
    synthetic scenes) and returns the :class:`~.decoder.UpconvDecoder` (its weights on the
    CPU), loaded from the store when it was trained before with the same parameters and
    images.

    Raises:
        BackendUnavailableError: ``device="cuda"`` and torch sees no CUDA device (raised by
            the constructor, before anything runs).
    """

    method: ClassVar[str] = TRAIN_METHOD
    inputs: ClassVar[str] = "image-source"
    params_type: ClassVar[type[Params]] = TrainParams
    result_type: ClassVar[type[Result]] = UpconvDecoder
    revision: ClassVar[int] = FORMAT_VERSION
    key_excludes: ClassVar[frozenset[str]] = frozenset({"device"})
    summary_line: ClassVar[str] = (
        "Train an UpconvNet decoder from a layer's features back to the image "
        "(Dosovitskiy & Brox, CVPR 2016)."
    )

    def check(self) -> None:
        from pyanalyzer.model.gradient import torch_device

        self.info = self.model.layer(self.params.layer)
        self.arch = architecture(self.model, self.info)
        self.device = torch_device(self.params.device)  # CUDA asked for and missing: now

    def resolved(self) -> dict[str, Any]:
        p = self.params
        return {
            "layer": self.info.name,
            "alias": self.info.alias,
            "arch": self.arch,
            "epochs": p.epochs,
            "batch_size": p.batch_size,
            "lr": p.lr,
            "seed": p.seed,
        }

    def prepare(self, inputs: ImageSource | None) -> ImageSource:
        from pyanalyzer.data.defaults import TRAINING_IMAGES, SyntheticImages

        n = self.params.n_images
        if inputs is None:
            source: ImageSource = SyntheticImages.for_model(
                self.model.preprocessing, n or TRAINING_IMAGES
            )
        elif len(inputs) == 0:
            raise UserInputError("the training source holds no images")
        else:
            source = inputs if n is None else _Head(inputs, n)
        budget.check(
            f"training a decoder for {self.info.alias} on {len(source)} images held in memory",
            budget.upconv_training_bytes(
                self.model, self.info, images=len(source), batch=self.params.batch_size
            ),
            advice="train on fewer images (n_images) or with a smaller batch size",
        )
        return source

    def identify(self, inputs: ImageSource) -> Any:
        from pyanalyzer.data.images import source_identity

        return source_identity(inputs)

    def compute(self, inputs: ImageSource, checkpoint: Checkpoint) -> UpconvDecoder:
        p, info, model = self.params, self.info, self.model
        t0 = time.perf_counter()
        feats, pix, scale = _features(model, info, inputs, 64, self.progress)
        net, curve = _fit(self.arch, feats, pix, p.epochs, p.batch_size, p.lr, p.seed,
                          info.alias, self.progress, self.device)  # fmt: skip
        params = decoder_params(
            self.resolved(), self.identify(inputs), model.preprocessing.to_dict(), self.revision
        )
        return UpconvDecoder(
            net=net, arch=self.arch, layer=info.name, alias=info.alias,
            model_sha256=model.sha256, model_file=model.path.name, feature_scale=scale,
            curve=curve, params=params, train_seconds=time.perf_counter() - t0,
        )  # fmt: skip


def _features(
    model: Model, layer: LayerInfo, source: ImageSource, batch_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, float]:
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
            f = as_maps(np.asarray(f, np.float32), layer)
            if feats is None:
                scale = float(np.sqrt(np.mean(np.square(f, dtype=np.float64)))) or 1.0
                feats = np.empty((n, *f.shape[1:]), np.float16)
            feats[s : idx.stop] = f / scale
            bar.update(1)
    if feats is None:  # pragma: no cover - the source was checked to be non-empty
        raise UserInputError("the training source holds no images")
    return feats, pix, scale


class _Head:
    """The first ``n`` images of a source."""

    def __init__(self, source: ImageSource, n: int):
        self.source, self.n = source, min(n, len(source))

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return self.source.name(index)

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        return self.source.pixels(index, spec)

    def identity(self) -> dict[str, Any]:
        from pyanalyzer.data.images import source_identity

        return {"kind": "head", "n": self.n, "of": source_identity(self.source)}


def _fit(
    arch: Mapping[str, Any],
    feats: np.ndarray,
    pix: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    alias: str,
    progress: bool,
    device: torch.device | None = None,
) -> tuple[Any, np.ndarray]:
    """Adam on pixel MSE. Returns ``(net, curve [epochs])``; weights and order from ``seed``.

    The network and every batch live on ``device`` (default: the CPU); the weights are drawn on
    the CPU first and the returned network is back on the CPU. The loss is summed on the device
    and read back once, at the end.
    """
    import torch
    from torch.nn import functional as F

    from pyanalyzer._memory import keep_freed_buffers
    from pyanalyzer._progress import progress_bar

    keep_freed_buffers()  # every batch reallocates the decoder's activations and gradients
    dev = torch.device("cpu") if device is None else device
    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(seed)
        net = build_decoder(arch)
    # Channels-last batches make mkldnn's (transposed) convolutions ~25 % faster here.
    cl = torch.channels_last
    net = net.to(dev).to(memory_format=cl).train()
    rng = np.random.default_rng(seed)
    n = len(feats)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
    )
    sums = torch.zeros(epochs, dtype=torch.float64, device=dev)  # sum of loss x batch size
    with (
        torch.enable_grad(),
        progress_bar(total, label=f"train upconv {alias}", enabled=progress) as bar,
    ):
        for e in range(epochs):
            order = rng.permutation(n)
            for b in range(per_epoch):
                idx = np.sort(order[b * batch_size : (b + 1) * batch_size])
                # float16 and uint8 cross to the device (without waiting for it: the host
                # arrays are staged as the copy is queued), widened there exactly
                f = torch.from_numpy(feats[idx]).to(dev, non_blocking=True)
                f = f.float().contiguous(memory_format=cl)
                y = torch.from_numpy(pix[idx]).to(dev, non_blocking=True)
                y = y.permute(0, 3, 1, 2).float() / 255.0  # NHWC already
                loss = F.mse_loss(net(f), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums[e] += loss.detach().double() * len(idx)
                bar.update(1)
    curve = (sums.cpu().numpy() / n).astype(np.float32)
    net = net.to(memory_format=torch.contiguous_format).cpu()
    return net.eval(), curve


# ---- inverting -------------------------------------------------------------------------------


class UpconvParams(Params):
    """Parameters of :class:`UpconvInversion`."""

    title: ClassVar[str] = "invert upconv"

    layers: Layers = Field(description="Layers to invert from; each needs a trained decoder.")
    batch_size: Annotated[int, Int("batch_size", 1)] = Field(
        64, description="Images per forward pass."
    )
    device: Annotated[str, Choice("device", DEVICES)] = Field(
        "auto",
        description="Where the decoders run (torch): auto (CUDA when torch sees a GPU, else "
        "the CPU), cpu or cuda. Not part of the result's key.",
    )


class UpconvInversion(ImageAnalysis[UpconvParams, InversionResult]):
    """Reconstruct images from their features with trained decoders: one forward pass each.

    Args:
        decoders: the decoders to use, one per layer in order (a sequence) or by layer (a
            mapping); a layer without one takes the newest fitting decoder in the store
            (:func:`~.decoder.find_decoder`).
        model, params, store, progress, options: as for every :class:`Analysis`.

    Parameters (:class:`UpconvParams`): ``layers``, ``batch_size`` and ``device`` (where the
    decoders run; the features come from onnxruntime and are moved there); neither of the last
    two is part of the key.

    :meth:`run` takes uint8 ``[N, H, W, C]`` images at the model's input size (or an image
    source) and returns an :class:`InversionResult`.

    Raises:
        BackendUnavailableError: ``device="cuda"`` and torch sees no CUDA device.
        DecoderMismatchError: a decoder was trained for another model, layer, preprocessing or
            input size.
        DecoderMissingError: a layer without any decoder.
    """

    method: ClassVar[str] = "invert-upconv"
    missing_inputs: ClassVar[str] = "give the images to invert"
    params_type: ClassVar[type[Params]] = UpconvParams
    result_type: ClassVar[type[Result]] = InversionResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})
    summary_line: ClassVar[str] = (
        "Network inversion with a trained up-convolutional decoder (Dosovitskiy & Brox, CVPR 2016)."
    )

    def __init__(
        self,
        model: Model,
        params: UpconvParams | Mapping[str, Any] | None = None,
        *,
        decoders: Sequence[UpconvDecoder] | Mapping[str, UpconvDecoder] | None = None,
        **kwargs: Any,
    ):
        self._given = decoders
        super().__init__(model, params, **kwargs)

    def check(self) -> None:
        from pyanalyzer.model.gradient import torch_device

        self.device = torch_device(self.params.device)  # CUDA asked for and missing: now
        given: dict[str, UpconvDecoder] = {}
        names = list(self.params.layers)
        if isinstance(self._given, Mapping):
            for dec in self._given.values():
                dec.check(self.model)
            given = {self.model.layer(k).name: v for k, v in self._given.items()}
        elif self._given is not None:
            decs = list(self._given)
            if len(decs) != len(names):
                raise UserInputError(f"got {len(decs)} decoders for {len(names)} layers")
            for dec in decs:
                dec.check(self.model)  # the model first: its layers may not exist here
            given = {self.model.layer(n).name: d for n, d in zip(names, decs, strict=True)}
        self.infos = resolve_layers(self.model, names)
        self.decoders: list[UpconvDecoder] = []
        missing: list[str] = []
        for info in self.infos:
            found = given.get(info.name)
            if found is None and self.store is not None:
                found = find_decoder(self.store, self.model, info.name)
            if found is None:
                missing.append(info.alias)
                continue
            found.check(self.model, info.name)
            self.decoders.append(found)
        if missing:
            where = f"in {self.store.path}" if self.store is not None else "(no store given)"
            raise DecoderMissingError(
                f"no decoder trained for {', '.join(missing)} of this model {where}: train "
                "one first (UpconvTraining)",
                missing,
            )
        self.check_images(1)  # one image now; prepare() checks the images given

    def check_images(self, images: int) -> None:
        """Refuse a reconstruction whose batches and results exceed the memory budget
        (:func:`pyanalyzer.budget.upconv_bytes`)."""
        budget.check(
            f"reconstructing {images} image(s) from {len(self.infos)} layer(s)",
            budget.upconv_bytes(
                self.model, self.infos, images=images, batch=self.params.batch_size
            ),
            advice="give fewer images or use a smaller batch size",
        )

    def resolved(self) -> dict[str, Any]:
        return {
            "layers": [i.name for i in self.infos],
            "decoders": [d.digest() for d in self.decoders],
        }

    def compute(self, inputs: np.ndarray, checkpoint: Checkpoint) -> InversionResult:
        parts = [
            _decode(self.model, dec.on(self.device), info, inputs, self.params.batch_size)
            for dec, info in zip(self.decoders, self.infos, strict=True)
        ]
        return InversionResult(
            method="upconv",
            layers=tuple(i.name for i in self.infos),
            aliases=tuple(i.alias for i in self.infos),
            originals=inputs,
            images=np.stack([p[0] for p in parts], axis=1),
            feature_error=np.stack([p[1] for p in parts], axis=1),
            pixel_error=np.stack([p[2] for p in parts], axis=1),
            history=None,
            params={"decoders": [dict(d.params) for d in self.decoders]},
        )


def _decode(
    model: Model, decoder: UpconvDecoder, info: LayerInfo, originals: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images [N, H, W, C] 0..1, feature error [N], pixel error [N])`` of one layer, decoded
    where the decoder's network lives (:meth:`UpconvDecoder.on`)."""
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
    return recon, feature_error(got, ref), pixel_error(recon, originals)
