"""Optimisation-based inversion: Mahendran & Vedaldi, "Understanding Deep Image Representations
by Inverting Them", CVPR 2015.

From noise, gradient descent finds an image whose features at a layer match the original's,
under the α-norm and total-variation priors (:mod:`.objective`). Every (image, layer) pair is
one row of the batch, so several images and layers are inverted by one forward and one backward
pass per step; each row's loss depends on its own image only, so a batch gives what the rows
would give one by one (up to float rounding in batched convolutions).

Random state, per call: the starting noise is one image drawn from ``seed`` and shared by every
row, and so are the jitter offsets (one per step). A row therefore starts and moves as it
would alone with the same seed, up to the float rounding of batched kernels (which momentum
SGD under jitter amplifies over hundreds of steps: pixels can then drift apart by a few
percent, as they do for a relative change of 1e-6 in the learning rate of a single run).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._checks import check_int
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.inversion import objective as obj
from pyanalyzer.methods.inversion._common import (
    check_images,
    check_reachable,
    pixel_centre,
    resolve_layers,
)
from pyanalyzer.methods.inversion.result import InversionResult, feature_error, pixel_error

if TYPE_CHECKING:
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model

OPTIMIZERS = ("sgd", "adam")
_CHANNELS_LAST_ROWS = 4


class _Stop(Exception):
    """Raised by a hook once the deepest tapped layer is computed: the rest is not needed."""


@contextlib.contextmanager
def _stop_after(engine, names: Sequence[str]) -> Iterator[None]:
    """Abort forward passes (with :class:`_Stop`) right after the last of ``names`` is made."""
    order = {str(n.target): i for i, n in enumerate(engine.module.graph.nodes)}
    mods = [engine._producer[name][0] for name in names]
    last = max(mods, key=lambda m: order.get(m, -1))

    def hook(_m, _i, _o):
        raise _Stop

    handle = engine.module.get_submodule(last).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class OptimInversion:
    """Invert layers of a model by optimisation (one verb: :meth:`run`).

    Args:
        model: a loaded model whose graph converted to torch.
        steps: optimisation steps (default 400, the authors' schedule).
        optimizer: ``"sgd"`` (momentum 0.9, the authors' method) or ``"adam"``.
        lr: base learning rate (default 0.004 for sgd, 0.02 for adam), on the image divided
            by ``x0_sigma`` (:mod:`.objective`); decayed ×0.1 after 25 % and ×0.01 after 75 %
            of the steps.
        lambda_alpha: weight of R_α (default :data:`~.objective.LAMBDA_ALPHA`).
        lambda_tv: weight of R_TV; None picks it by each layer's depth
            (:func:`~.objective.lambda_tv_for_depth`).
        alpha, beta: exponents of R_α and R_TV (6 and 2).
        jitter: shift the image by up to this many pixels (random, per step) before the
            model sees it; 0 (default) as in the paper.
        clamp: project the image back into the 0..255 pixel box after every step (default),
            so that the image optimised is the image returned; the paper relies on R_α alone
            to keep the range, which ``clamp=False`` reproduces (the result is then clipped).
        seed: draws the starting noise and the jitter.
        progress: show a progress bar.

    Raises:
        GradientUnavailableError: the model could not be converted (names the ops).
        UserInputError: a parameter is out of range.
    """

    def __init__(
        self,
        model: Model,
        *,
        steps: int = obj.DEFAULT_STEPS,
        optimizer: str = "sgd",
        lr: float | None = None,
        lambda_alpha: float = obj.LAMBDA_ALPHA,
        lambda_tv: float | None = None,
        alpha: float = obj.ALPHA,
        beta: float = obj.TV_BETA,
        jitter: int = 0,
        clamp: bool = True,
        seed: int = 0,
        progress: bool = True,
    ):
        if optimizer not in OPTIMIZERS:
            raise UserInputError(
                f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        self.model = model
        self.engine = model.gradient
        self.steps = check_int("steps", steps, 1)
        self.optimizer = optimizer
        self.lr = float(lr) if lr is not None else (obj.LR if optimizer == "sgd" else obj.ADAM_LR)
        for name, value in (("lr", self.lr), ("alpha", alpha), ("beta", beta)):
            if not (math.isfinite(value) and value > 0):
                raise UserInputError(f"{name} must be a positive number, got {value}")
        for name, value in (("lambda_alpha", lambda_alpha), ("lambda_tv", lambda_tv)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserInputError(f"{name} must be a number >= 0, got {value}")
        self.lambda_alpha = float(lambda_alpha)
        self.lambda_tv = None if lambda_tv is None else float(lambda_tv)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.jitter = check_int("jitter", jitter, 0)
        self.clamp = bool(clamp)
        self.seed = check_int("seed", seed, 0)
        self.progress = progress

    def lambda_tv_for(self, layer: LayerInfo) -> float:
        """λ_TV used for ``layer``: the given one, else by depth (the authors' tiers)."""
        if self.lambda_tv is not None:
            return self.lambda_tv
        return obj.lambda_tv_for_depth(obj.depth_fraction(self.model.proto, layer.name))

    def params(self) -> dict[str, Any]:
        """The settings, as recorded in the result."""
        return {
            "steps": self.steps,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "lr_phases": [list(p) for p in obj.LR_PHASES],
            "momentum": obj.MOMENTUM if self.optimizer == "sgd" else None,
            "lambda_alpha": self.lambda_alpha,
            "lambda_tv": self.lambda_tv,
            "alpha": self.alpha,
            "beta": self.beta,
            "B": obj.B,
            "V": obj.V,
            "jitter": self.jitter,
            "clamp": self.clamp,
            "seed": self.seed,
        }

    # ---- public --------------------------------------------------------------------------
    def run(self, images: np.ndarray, layers: Sequence[str] | str) -> InversionResult:
        """Reconstruct every image from every layer.

        Args:
            images: uint8 ``[N, H, W, C]`` RGB at the model's input size (or one ``[H, W, C]``).
            layers: aliases or ONNX names (any tensor of the catalogue).

        Returns:
            an :class:`InversionResult` with ``images [N, L, H, W, C]`` and ``history``.

        Raises:
            ImageError: the images are not uint8 ``[N, H, W, C]`` at the input size.
            GradientUnavailableError: a layer cannot be reached by gradients (names the ops).
        """
        import torch

        originals = check_images(self.model, images)
        infos = resolve_layers(self.model, layers)
        check_reachable(self.model, infos)
        with torch.no_grad():
            x_hist, hist = self._optimise(originals, infos)
        n, nl = len(originals), len(infos)
        recon = x_hist.reshape(n, nl, *x_hist.shape[1:])
        fe, pe = _errors(self.model, originals, recon, infos)
        params = self.params()
        params["lambda_tv_per_layer"] = [self.lambda_tv_for(i) for i in infos]
        return InversionResult(
            method="optim",
            layers=tuple(i.name for i in infos),
            aliases=tuple(i.alias for i in infos),
            originals=originals,
            images=recon,
            feature_error=fe,
            pixel_error=pe,
            history=hist.reshape(self.steps, n, nl).astype(np.float32),
            params=params,
        )

    # ---- the loop ------------------------------------------------------------------------
    def _optimise(self, originals: np.ndarray, infos: list[LayerInfo]):
        """Returns ``(images float32 [N·L, H, W, C] in 0..1, history [steps, N·L])``."""
        import torch

        from pyanalyzer._progress import progress_bar

        model, spec = self.model, self.model.preprocessing
        n, nl = len(originals), len(infos)
        rows = n * nl
        c, (h, w) = spec.channels, spec.input_size
        names = [i.name for i in infos]
        centre = torch.from_numpy(pixel_centre(model)).view(1, c, 1, 1)
        x0 = obj.image_norm(h, w, c)
        lo, hi = -centre / x0, (255.0 - centre) / x0  # the 0..255 pixel box, in u units

        # Targets: each original's features at each layer, from the same torch engine. Row r
        # of the batch is the pair (image r // L, layer r % L): rows j, j + L, ... hold layer
        # j, so its features are the slice [j::L] of the batch.
        # mkldnn convolutions run ~1.5x faster on channels-last batches (not on one row); the
        # targets take the same layout, or every elementwise op against them is a slow gather.
        fast = rows >= _CHANNELS_LAST_ROWS and spec.layout == "nchw"
        fmt = torch.channels_last if fast else torch.contiguous_format
        rgb = torch.from_numpy(originals).permute(0, 3, 1, 2).float() / 255.0
        phi0 = self._features(spec.normalize_torch(rgb), names)
        targets = [
            t.detach().contiguous(memory_format=fmt) if t.ndim == 4 else t.detach()
            for t in (phi0[name] for name in names)
        ]
        norms = torch.stack([t.pow(2).flatten(1).sum(1) for t in targets], 1).clamp_min(1e-12)
        norms = norms.flatten()
        lam_tv = torch.tensor([self.lambda_tv_for(i) for i in infos]).repeat(n).view(-1, 1, 1, 1)

        rng = np.random.default_rng(self.seed)
        noise = rng.standard_normal((c, h, w)).astype(np.float32)
        noise /= np.linalg.norm(noise)  # the code's x = randn / norm(randn) * x0_sigma
        u = torch.from_numpy(noise)[None].repeat(rows, 1, 1, 1)
        if self.clamp:  # the box holds from the start; without it, the paper's raw noise
            u = u.clamp(lo, hi)
        u.requires_grad_(True)
        shifts = rng.integers(-self.jitter, self.jitter + 1, size=(self.steps, 2))
        rates = obj.Schedule(self.lr, self.steps).rates()
        if self.optimizer == "sgd":
            opt = torch.optim.SGD([u], lr=self.lr, momentum=obj.MOMENTUM)
        else:
            opt = torch.optim.Adam([u], lr=self.lr)

        hist = np.empty((self.steps, rows), np.float64)
        prev = None
        with (
            progress_bar(self.steps, label="invert", enabled=self.progress) as bar,
            torch.enable_grad(),
        ):
            for t in range(self.steps):
                if rates[t] != prev:
                    for g in opt.param_groups:
                        g["lr"] = float(rates[t])
                    if self.optimizer == "sgd":  # the code resets the momentum at a switch
                        opt.state.clear()
                    prev = rates[t]
                img = u * (x0 / 255.0) + centre / 255.0  # RGB 0..1 (x = u * x0 + centre)
                if self.jitter:
                    img = torch.roll(img, (int(shifts[t, 0]), int(shifts[t, 1])), dims=(2, 3))
                feats = self._features(
                    spec.normalize_torch(img).contiguous(memory_format=fmt), names
                )
                diffs = [feats[name][j::nl] - targets[j] for j, name in enumerate(names)]
                data = torch.stack([(d * d).flatten(1).sum(1) for d in diffs], 1).flatten() / norms
                hist[t] = data.detach().sqrt().numpy()
                opt.zero_grad(set_to_none=True)
                data.sum().backward()
                # The priors' gradients in closed form (as in the authors' code): cheaper than
                # autograd through them, and the same numbers.
                with torch.no_grad():
                    x = u.detach() * x0  # centred 0-255 pixels
                    g = obj.r_alpha(x, self.alpha)[1].mul_(self.lambda_alpha)
                    g.addcmul_(obj.r_tv(x, self.beta)[1], lam_tv)
                    u.grad.add_(g, alpha=x0)
                opt.step()
                if self.clamp:
                    with torch.no_grad():
                        u.clamp_(lo, hi)
                bar.update(1)
        with torch.no_grad():
            img = ((u * x0 + centre) / 255.0).clamp(0.0, 1.0)
        return img.permute(0, 2, 3, 1).contiguous().numpy(), hist

    def _features(self, x, names: list[str]) -> dict[str, Any]:
        """``{name: [P, C, h, w] or [P, K]}`` from one forward pass cut after the last layer."""
        eng = self.engine
        with eng.taps(names) as got, _stop_after(eng, names):
            try:
                eng(x)
            except _Stop:
                pass
        return dict(got)


def _errors(model: Model, originals: np.ndarray, recon: np.ndarray, infos: list[LayerInfo]):
    """Feature error (onnxruntime) and pixel error of ``recon [N, L, H, W, C]``, each [N, L]."""
    spec = model.preprocessing
    n, nl = recon.shape[:2]
    names = [i.name for i in infos]
    ref = model.forward.run(spec.normalize(originals), names)
    flat = recon.reshape(n * nl, *recon.shape[2:]) * np.float32(255.0)
    got = model.forward.run(spec.normalize(flat), names)
    fe = np.empty((n, nl), np.float64)
    for j, name in enumerate(names):
        rows = got[name].reshape(n, nl, *got[name].shape[1:])[:, j]
        fe[:, j] = feature_error(rows, ref[name])
    pe = pixel_error(flat.reshape(n * nl, *recon.shape[2:]) / 255.0, np.repeat(originals, nl, 0))
    return fe, pe.reshape(n, nl)


def invert_optim(
    model: Model,
    images: np.ndarray,
    layers: Sequence[str] | str,
    *,
    steps: int = obj.DEFAULT_STEPS,
    optimizer: str = "sgd",
    lr: float | None = None,
    lambda_alpha: float = obj.LAMBDA_ALPHA,
    lambda_tv: float | None = None,
    jitter: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> InversionResult:
    """Reconstruct images from their features by optimisation (Mahendran & Vedaldi, CVPR 2015).

    Args:
        model: a loaded :class:`~pyanalyzer.model.model.Model`.
        images: uint8 ``[N, H, W, C]`` RGB pixels at the model's input size.
        layers: layer aliases or ONNX names; all images are inverted from all layers in one
            batch of ``N × L`` rows.
        steps, optimizer, lr, lambda_alpha, lambda_tv, jitter, seed, progress: see
            :class:`OptimInversion`.

    Returns:
        :class:`~.result.InversionResult` (``images [N, L, H, W, C]`` in 0..1, feature and
        pixel errors ``[N, L]``, ``history [steps, N, L]``).
    """
    return OptimInversion(
        model, steps=steps, optimizer=optimizer, lr=lr, lambda_alpha=lambda_alpha,
        lambda_tv=lambda_tv, jitter=jitter, seed=seed, progress=progress,
    ).run(images, layers)  # fmt: skip
