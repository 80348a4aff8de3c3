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

The optimiser's state is checkpointed in the store as it runs (the image, the optimiser's
buffers, the step and the curve so far), so an interrupted inversion resumes at the step it
reached and ends with the same result.

Where it runs (``device``: ``"auto"``, ``"cpu"``, ``"cuda"``): the whole loop runs on the torch
twin on that device (:meth:`~pyanalyzer.model.gradient.GradientEngine.on`), every tensor it
makes lives there, and the per-step curve stays there until the end (or a checkpoint). The
random draws come from the same CPU-side generators whatever the device, so a CUDA run starts
from the CPU run's noise and jitter; it then differs from it by the float rounding of the GPU's
kernels. The device is not part of the result's key.
"""

from __future__ import annotations

import math
import numbers
import typing
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from pyanalyzer._backend import DEVICES
from pyanalyzer.analysis import Checked, Choice, ImageAnalysis, Int, Layers, Params, Result
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.inversion import objective as obj
from pyanalyzer.methods.inversion._common import (
    check_reachable,
    pixel_centre,
    resolve_layers,
)
from pyanalyzer.methods.inversion.result import InversionResult, feature_error, pixel_error
from pyanalyzer.methods.priors import TV_EPS

if TYPE_CHECKING:
    import torch

    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Checkpoint

__all__ = ["OPTIMIZERS", "OptimInversion", "OptimParams"]

OPTIMIZERS = ("sgd", "adam")
_CHANNELS_LAST_ROWS = 4

FUSED_STEP = True
"""On the CPU with momentum SGD, the image's way to the model's input and, after the backward
pass, the priors' gradients, the update and the clamp run as compiled passes
(:mod:`.compiled`) instead of torch ops and the optimiser; False keeps the latter everywhere
(the benchmark and the tests compare the two)."""


def _number(name: str, *, positive: bool, optional: bool) -> Checked:
    """A float field: ``> 0`` (``positive``) or ``>= 0``, finite, None allowed if optional
    (the messages name the parameter as the Python API spells it)."""
    need = "a positive number" if positive else "a number >= 0"

    def check(value: Any) -> float | None:
        if value is None and optional:
            return None
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
        if not ok:
            raise UserInputError(f"{name} must be {need}, got {value}")
        return float(value)

    schema: dict[str, Any] = {"type": "number", "exclusiveMinimum" if positive else "minimum": 0}
    return Checked(check, {"anyOf": [schema, {"type": "null"}]} if optional else schema)


class OptimParams(Params):
    """Parameters of :class:`OptimInversion` (the authors' constants by default)."""

    title: ClassVar[str] = "invert"

    layers: Layers = Field(description="Layers to invert from (aliases or ONNX names).")
    steps: Annotated[int, Int("steps", 1)] = Field(
        obj.DEFAULT_STEPS, description="Optimisation steps (the authors' schedule: 400)."
    )
    optimizer: Annotated[str, Choice("optimizer", OPTIMIZERS)] = Field(
        "sgd", description="Momentum SGD with the authors' schedule, or Adam."
    )
    lr: Annotated[float | None, _number("lr", positive=True, optional=True)] = Field(
        None, description="Base learning rate (default 0.004 for sgd, 0.02 for adam)."
    )
    lambda_alpha: Annotated[float, _number("lambda_alpha", positive=False, optional=False)] = Field(
        obj.LAMBDA_ALPHA, description="Weight of the alpha-norm prior."
    )
    lambda_tv: Annotated[float | None, _number("lambda_tv", positive=False, optional=True)] = Field(
        None, description="Weight of the TV prior (default: by the layer's depth)."
    )
    alpha: Annotated[float, _number("alpha", positive=True, optional=False)] = Field(
        obj.ALPHA, description="Exponent of the alpha-norm prior."
    )
    beta: Annotated[float, _number("beta", positive=True, optional=False)] = Field(
        obj.TV_BETA, description="Exponent of the TV prior."
    )
    jitter: Annotated[int, Int("jitter", 0)] = Field(
        0, description="Random shifts of up to this many pixels per step (0 in the paper)."
    )
    clamp: bool = Field(True, description="Keep the image in the 0..255 box after every step.")
    seed: Annotated[int, Int("seed", 0)] = Field(
        0, description="Draws the starting noise and the jitter."
    )
    images_per_batch: Annotated[int | None, Int("images per batch", 1, optional=True)] = Field(
        None,
        description="Images inverted together (each from every layer); None: all in one "
        "batch. Batches round floats their own way, so this is part of the result; with an "
        "executor the batches run on its workers.",
    )
    device: Annotated[str, Choice("device", DEVICES)] = Field(
        "auto",
        description="Where the optimisation runs (torch): auto (CUDA when torch sees a GPU, "
        "else the CPU), cpu or cuda. Not part of the result's key.",
    )


class OptimInversion(ImageAnalysis[OptimParams, InversionResult]):
    """Invert layers of a model by optimisation (Mahendran & Vedaldi, CVPR 2015).

    Every image is reconstructed from every layer, all ``N x L`` rows in one batch.

    Parameters (:class:`OptimParams`): ``layers``; ``steps`` (default 400, the authors'
    schedule); ``optimizer`` (``"sgd"``: momentum 0.9, the authors' method, or ``"adam"``);
    ``lr`` (default 0.004 for sgd, 0.02 for adam), on the image divided by ``x0_sigma``
    (:mod:`.objective`), decayed x0.1 after 25 % and x0.01 after 75 % of the steps;
    ``lambda_alpha``, ``lambda_tv`` (None: by each layer's depth,
    :func:`~.objective.lambda_tv_for_depth`), ``alpha`` and ``beta`` (6 and 2); ``jitter``
    (random shifts per step, 0 as in the paper); ``clamp`` (project the image back into the
    0..255 box after every step, so that the image optimised is the image returned; the paper
    relies on R_alpha alone, which ``clamp=False`` reproduces); ``seed`` (the starting noise
    and the jitter); ``device`` (where torch runs the loop: ``"auto"``, ``"cpu"`` or
    ``"cuda"``; not part of the key).

    :meth:`run` takes uint8 ``[N, H, W, C]`` RGB images at the model's input size (or one
    ``[H, W, C]`` image, or an image source) and returns an :class:`InversionResult` with
    ``images [N, L, H, W, C]`` and ``history``.

    Raises:
        GradientUnavailableError: the model could not be converted, or a layer cannot be
            reached by gradients (the ops are named).
        BackendUnavailableError: ``device="cuda"`` and torch sees no CUDA device (raised by
            the constructor, before anything runs).
        UserInputError: a parameter is out of range.
        ImageError: the images are not uint8 ``[N, H, W, C]`` at the input size.
    """

    method: ClassVar[str] = "invert-optim"
    missing_inputs: ClassVar[str] = "give the images to invert"
    params_type: ClassVar[type[Params]] = OptimParams
    result_type: ClassVar[type[Result]] = InversionResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"device"})
    summary_line: ClassVar[str] = (
        "Network inversion by regularised optimisation: an image whose features at a layer "
        "match the original's (Mahendran & Vedaldi, CVPR 2015)."
    )

    def check(self) -> None:
        # the torch twin where the loop runs (raises now when CUDA is asked for and missing)
        self.engine = self.model.gradient.on(self.params.device)
        self.infos = resolve_layers(self.model, self.params.layers)
        p = self.params
        self.lr = p.lr if p.lr is not None else (obj.LR if p.optimizer == "sgd" else obj.ADAM_LR)
        self.check_images(1)  # one image now; prepare() checks the images given

    def check_images(self, images: int) -> None:
        """Refuse ``images x layers`` rows whose optimisation exceeds the memory budget
        (:func:`pyanalyzer.budget.inversion_bytes`), before anything runs."""
        from pyanalyzer import budget

        rows = images * len(self.infos)
        budget.check(
            f"inverting {images} image(s) from {len(self.infos)} layer(s) ({rows} rows "
            f"optimised together, {self.params.steps} steps)",
            budget.inversion_bytes(self.model, self.infos, images=images, steps=self.params.steps),
            advice="invert fewer images or layers at once",
        )

    def lambda_tv_for(self, layer: LayerInfo) -> float:
        """λ_TV used for ``layer``: the given one, else by depth (the authors' tiers)."""
        if self.params.lambda_tv is not None:
            return self.params.lambda_tv
        return obj.lambda_tv_for_depth(obj.depth_fraction(self.model.proto, layer.name))

    def resolved(self) -> dict[str, Any]:
        """The settings, as recorded in the result (and hashed into the store key)."""
        p = self.params
        return {
            "layers": [i.name for i in self.infos],
            "steps": p.steps,
            "optimizer": p.optimizer,
            "lr": self.lr,
            "lr_phases": [list(ph) for ph in obj.LR_PHASES],
            "momentum": obj.MOMENTUM if p.optimizer == "sgd" else None,
            "lambda_alpha": p.lambda_alpha,
            "lambda_tv": p.lambda_tv,
            "lambda_tv_per_layer": [self.lambda_tv_for(i) for i in self.infos],
            "alpha": p.alpha,
            "beta": p.beta,
            "B": obj.B,
            "V": obj.V,
            "jitter": p.jitter,
            "clamp": p.clamp,
            "seed": p.seed,
            # only when set: the key of an all-in-one-batch run stays what it was
            **({} if p.images_per_batch is None else {"images_per_batch": p.images_per_batch}),
        }

    # ---- the verb ------------------------------------------------------------------------
    def compute(self, inputs: np.ndarray, checkpoint: Checkpoint) -> InversionResult:
        import torch

        per = self.params.images_per_batch
        if (per is not None and len(inputs) > per) or self.executor is not None:
            return self._compute_batches(inputs, per or len(inputs), checkpoint)
        originals, infos = inputs, self.infos
        check_reachable(self.model, infos)
        with torch.no_grad():
            x_hist, hist = self._optimise(originals, infos, checkpoint)
        n, nl = len(originals), len(infos)
        recon = x_hist.reshape(n, nl, *x_hist.shape[1:])
        fe, pe = _errors(self.model, originals, recon, infos)
        return InversionResult(
            method="optim",
            layers=tuple(i.name for i in infos),
            aliases=tuple(i.alias for i in infos),
            originals=originals,
            images=recon,
            feature_error=fe,
            pixel_error=pe,
            history=hist.reshape(self.params.steps, n, nl).astype(np.float32),
            params=self.resolved(),
        )

    def _compute_batches(
        self, images: np.ndarray, per: int, checkpoint: Checkpoint
    ) -> InversionResult:
        """The images in batches of ``per``, each inverted as a run of its own (the same
        starting noise and jitter, from ``seed``), on :attr:`executor` or here; the results
        joined in image order. Finished batches are checkpointed: a run started again
        inverts only the others."""
        from pyanalyzer.executor import LocalExecutor

        single = self.params.replace(images_per_batch=None)
        jobs = [(single, images[s : s + per]) for s in range(0, len(images), per)]
        parts: list[Any] = [None] * len(jobs)
        fields = ("originals", "images", "feature_error", "pixel_error", "history")
        state, meta = checkpoint.state, checkpoint.meta
        if state is not None and meta.get("batches") == len(jobs):
            for i in meta.get("done", []):
                a = {f: np.asarray(state[f"{i}/{f}"]) for f in fields}
                parts[i] = InversionResult(
                    method="optim", layers=tuple(meta["layers"]), aliases=tuple(meta["aliases"]),
                    originals=a["originals"], images=a["images"],
                    feature_error=a["feature_error"], pixel_error=a["pixel_error"],
                    history=a["history"],
                )  # fmt: skip
        left = [i for i, part in enumerate(parts) if part is None]

        def done(k: int, result: InversionResult) -> None:
            parts[left[k]] = result
            finished = [i for i, part in enumerate(parts) if part is not None]
            if len(finished) < len(jobs):
                arrays = {f"{i}/{f}": getattr(parts[i], f) for i in finished for f in fields}
                checkpoint.save(arrays, {"batches": len(jobs), "done": finished,
                                         "layers": list(result.layers),
                                         "aliases": list(result.aliases)})  # fmt: skip

        executor = self.executor if self.executor is not None else LocalExecutor()
        executor.map(invert_shard, self.model, None, [jobs[i] for i in left], done,
                     label="invert", progress=self.progress)  # fmt: skip
        first = parts[0]
        return InversionResult(
            method="optim",
            layers=first.layers,
            aliases=first.aliases,
            originals=np.concatenate([r.originals for r in parts]),
            images=np.concatenate([r.images for r in parts]),
            feature_error=np.concatenate([r.feature_error for r in parts]),
            pixel_error=np.concatenate([r.pixel_error for r in parts]),
            history=np.concatenate([r.history for r in parts], axis=1),
            params=self.resolved(),
        )

    # ---- the loop ------------------------------------------------------------------------
    def _optimise(
        self, originals: np.ndarray, infos: list[LayerInfo], checkpoint: Checkpoint
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(images float32 [N·L, H, W, C] in 0..1, history [steps, N·L])``.

        Runs on :attr:`engine`'s device: every tensor is made there (the random draws on the
        CPU, then moved), and the curve is kept there and copied back once at the end.
        """
        import torch

        from pyanalyzer._progress import progress_bar
        from pyanalyzer.methods.inversion.loss import row_distance
        from pyanalyzer.model.layout import take_rows

        p, model, spec, eng = self.params, self.model, self.model.preprocessing, self.engine
        dev = eng.device
        n, nl = len(originals), len(infos)
        rows = n * nl
        c, (h, w) = spec.channels, spec.input_size
        names = [i.name for i in infos]
        centre = torch.from_numpy(pixel_centre(model)).view(1, c, 1, 1).to(dev)
        x0 = obj.image_norm(h, w, c)
        lo, hi = -centre / x0, (255.0 - centre) / x0  # the 0..255 pixel box, in u units

        # Targets: each original's features at each layer, from the same torch engine. Row r
        # of the batch is the pair (image r // L, layer r % L): rows j, j + L, ... hold layer
        # j, so its features are the slice [j::L] of the batch.
        # mkldnn convolutions run ~1.5x faster on channels-last batches (not on one row); the
        # targets take the same layout, or every elementwise op against them is a slow gather.
        fast = rows >= _CHANNELS_LAST_ROWS and spec.layout == "nchw"
        fmt = torch.channels_last if fast else torch.contiguous_format
        rgb = torch.from_numpy(originals).to(dev).permute(0, 3, 1, 2).float() / 255.0
        phi0 = eng.features(spec.normalize_torch(rgb), names)
        targets = [
            t.detach().contiguous(memory_format=fmt) if t.ndim == 4 else t.detach()
            for t in (phi0[name] for name in names)
        ]
        # ‖Φ0‖² per image, [N] for each layer
        layer_norms = [t.pow(2).flatten(1).sum(1).clamp_min(1e-12) for t in targets]
        lam_tv = torch.tensor([self.lambda_tv_for(i) for i in infos], device=dev)
        lam_tv = lam_tv.repeat(n).view(-1, 1, 1, 1)

        # The draws come from CPU-side generators whatever the device: a CUDA run starts from
        # the CPU run's noise and takes its jitter offsets.
        rng = np.random.default_rng(p.seed)
        noise = rng.standard_normal((c, h, w)).astype(np.float32)
        noise /= np.linalg.norm(noise)  # the code's x = randn / norm(randn) * x0_sigma
        u = torch.from_numpy(noise).to(dev)[None].repeat(rows, 1, 1, 1)
        if p.clamp:  # the box holds from the start; without it, the paper's raw noise
            u = u.clamp(lo, hi)
        u.requires_grad_(True)
        shifts = rng.integers(-p.jitter, p.jitter + 1, size=(p.steps, 2))
        rates = obj.Schedule(self.lr, p.steps).rates()
        opt: torch.optim.Optimizer
        if p.optimizer == "sgd":
            opt = torch.optim.SGD([u], lr=self.lr, momentum=obj.MOMENTUM)
        else:
            opt = torch.optim.Adam([u], lr=self.lr)

        fused = FUSED_STEP and dev.type == "cpu" and p.optimizer == "sgd"
        if fused:
            from pyanalyzer.methods.inversion import compiled

            to_input = compiled.RollInput(spec, pixel_centre(model), x0, fast)
            inf = np.full(c, np.inf, np.float32)
            box = (
                (lo.flatten().float().numpy(), hi.flatten().float().numpy())
                if p.clamp else (-inf, inf)
            )  # fmt: skip
            step_args = dict(
                lam_tv=lam_tv.flatten().float().numpy(), lo=box[0], hi=box[1], x0=x0,
                alpha=p.alpha, lambda_alpha=p.lambda_alpha, b=obj.B, floor=obj.ALPHA_FLOOR,
                beta=p.beta, v=obj.V, eps=TV_EPS, momentum=obj.MOMENTUM,
            )  # fmt: skip

        # The curve stays on the device (no host sync per step); float32, as it is returned.
        hist = torch.empty((p.steps, rows), dtype=torch.float32, device=dev)
        prev: float | None = None
        first = _resume(checkpoint, u, opt, hist)
        if first:
            prev = checkpoint.meta.get("rate")
            for g in opt.param_groups:
                g["lr"] = float(rates[first - 1])
        with (
            progress_bar(p.steps, label="invert", enabled=self.progress) as bar,
            torch.enable_grad(),
        ):
            bar.update(first)
            for t in range(first, p.steps):
                if rates[t] != prev:
                    for g in opt.param_groups:
                        g["lr"] = float(rates[t])
                    if p.optimizer == "sgd":  # the code resets the momentum at a switch
                        opt.state.clear()
                    prev = float(rates[t])
                if fused:
                    x = to_input(u, (int(shifts[t, 0]), int(shifts[t, 1])))
                else:
                    img = u * (x0 / 255.0) + centre / 255.0  # RGB 0..1 (x = u * x0 + centre)
                    if p.jitter:
                        img = torch.roll(img, (int(shifts[t, 0]), int(shifts[t, 1])), dims=(2, 3))
                    x = spec.normalize_torch(img).contiguous(memory_format=fmt)
                feats = eng.features(x, names)
                # per layer, one node (loss.row_distance) summed over the maps' own axes;
                # take_rows: a slice whose gradient keeps the maps' channels-last layout
                data = torch.stack(
                    [
                        row_distance(take_rows(feats[name], j, nl), targets[j], layer_norms[j])
                        for j, name in enumerate(names)
                    ],
                    1,
                ).flatten()
                hist[t] = data.detach().sqrt()
                opt.zero_grad(set_to_none=True)
                data.sum().backward()
                if fused:
                    compiled.step(u, opt, step_args)
                else:
                    # The priors' gradients in closed form (as in the authors' code): cheaper
                    # than autograd through them, and the same numbers.
                    with torch.no_grad():
                        xc = u.detach() * x0  # centred 0-255 pixels
                        gr = obj.r_alpha(xc, p.alpha)[1].mul_(p.lambda_alpha)
                        gr.addcmul_(obj.r_tv(xc, p.beta)[1], lam_tv)
                        typing.cast(torch.Tensor, u.grad).add_(gr, alpha=x0)
                    opt.step()
                    if p.clamp:
                        with torch.no_grad():
                            u.clamp_(lo, hi)
                bar.update(1)
                # the state is copied to the host only when a checkpoint is written
                if t + 1 < p.steps and checkpoint.due():
                    checkpoint.save(_state(u, opt, hist, t + 1), {"step": t + 1, "rate": prev})
        with torch.no_grad():
            out = ((u * x0 + centre) / 255.0).clamp(0.0, 1.0)
        images = out.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return images, hist.cpu().numpy().astype(np.float64)


def _state(
    u: torch.Tensor, opt: torch.optim.Optimizer, hist: torch.Tensor, step: int
) -> dict[str, np.ndarray]:
    """Checkpoint arrays (on the host, whatever the device): the image variable, the
    optimiser's buffers and the curve so far (float64, as checkpoints always kept it)."""
    arrays = {
        "u": u.detach().cpu().numpy(),
        "history": hist[:step].cpu().numpy().astype(np.float64),
    }
    for name, value in opt.state.get(u, {}).items():
        if value is not None:  # tensors (buffers, Adam's step); SGD's cleared buffer is None
            arrays[f"opt/{name}"] = np.asarray(value.detach().cpu().numpy())
    return arrays


def _resume(
    checkpoint: Checkpoint, u: torch.Tensor, opt: torch.optim.Optimizer, hist: torch.Tensor
) -> int:
    """Restore a checkpoint of the same run into ``u``, ``opt`` and ``hist`` (on their device,
    whichever device wrote the checkpoint); the step to go on from (0 when there is none, or
    it does not fit)."""
    import torch

    state, step = checkpoint.state, int(checkpoint.meta.get("step", 0))
    if state is None or not 0 < step <= len(hist) or tuple(state["u"].shape) != tuple(u.shape):
        return 0
    dev = u.device
    with torch.no_grad():
        u.copy_(torch.from_numpy(np.asarray(state["u"])).to(dev))
        hist[:step] = torch.from_numpy(np.asarray(state["history"], np.float32)).to(dev)
    buffers = {k[len("opt/") :]: v for k, v in state.items() if k.startswith("opt/")}
    if buffers:
        # buffers on the image's device; Adam's step count stays a CPU scalar, as torch keeps
        # it (and as Optimizer.load_state_dict places it) unless the optimiser is capturable
        restored = {k: torch.from_numpy(np.array(v)) for k, v in buffers.items()}
        opt.state[u] = {k: v if k == "step" else v.to(dev) for k, v in restored.items()}
    return step


def _errors(
    model: Model, originals: np.ndarray, recon: np.ndarray, infos: list[LayerInfo]
) -> tuple[np.ndarray, np.ndarray]:
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


def invert_shard(model: Model, data: Any, job: tuple[OptimParams, np.ndarray]) -> InversionResult:
    """A worker's shard: one batch of images inverted (:meth:`OptimInversion._compute_batches`)."""
    import torch

    params, images = job
    torch.set_num_threads(max(1, int(model.forward.threads or torch.get_num_threads())))
    return OptimInversion(model, params, progress=False).run(images)
