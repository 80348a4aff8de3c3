"""A DeconvNet projection: pyanalyzer's graph walk against its autograd-based equivalent.

The walker (pyanalyzer.methods.deconvnet) runs the torch twin forward once with every value
recorded, then walks the ONNX graph backwards with the unpooling kernel at max-pools, each
transposed convolution over the filters of the channels the signal reaches and over the windows
of the maps it lies in (a unit's walk starts at one position of one channel). The
autograd contender is the same torch twin with ReLUs whose backward rectifies the signal
(Zeiler & Fergus's rule) and torch's own max-pool backward. Both give the same pixels; this
prints both times and the ratio, on an AlexNet-shaped network (227x227, overlapping 3x3/2
pools, random weights, exported to ONNX here).

Then the same for several units of the layer (``--units 8``): pyanalyzer's
``Projector.project_units`` (one forward pass, then walks of the images repeated once per unit,
``WALK_ROWS`` rows a walk) against one autograd call
per unit, and against autograd sharing its forward pass (one forward, then one backward per
unit with ``retain_graph``). The ceiling line is what sharing the forward alone can give:
``units x (forward + backward) / (forward + units x backward)`` from autograd's own times, the
bound of a walk whose backward per unit costs what autograd's does (the windowed walk's costs
less, and goes past it).

    python benchmarks/bench_deconv.py [--batch 8] [--repeat 5] [--units 8]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import pyanalyzer as pa
from pyanalyzer.methods.deconvnet import Projector


def alexnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2),
    ).eval()  # fmt: skip


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp_min(0)


class _R(nn.Module):
    def forward(self, x):
        return _DeconvReLU.apply(x)


def _deconv_module(model):
    gm = copy.deepcopy(model.gradient.module)
    for name, mod in list(gm.named_children()):
        if isinstance(mod, nn.ReLU):
            setattr(gm, name, _R())
    return gm


def autograd_projection(model, gm, x: np.ndarray, tensor: str, unit: int) -> np.ndarray:
    """One unit projected by autograd through ``gm`` (:func:`_deconv_module`, made once)."""
    node, _ = model.gradient._producer[tensor]
    got = {}
    h = gm.get_submodule(node).register_forward_hook(lambda m, i, o: got.__setitem__("a", o))
    xt = torch.from_numpy(x).requires_grad_(True)
    gm(xt)
    h.remove()
    flat = got["a"][:, unit].reshape(len(x), -1)
    sel = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0)
    (flat * (flat * sel).detach()).sum().backward()
    return xt.grad.numpy()


def shared_forward(model, gm, x: np.ndarray, tensor: str, units: list[int]) -> tuple[float, float]:
    """Autograd with the forward shared: ``(forward seconds, backward seconds per unit)``."""
    node, _ = model.gradient._producer[tensor]
    gc.collect()
    got = {}
    h = gm.get_submodule(node).register_forward_hook(lambda m, i, o: got.__setitem__("a", o))
    xt = torch.from_numpy(x).requires_grad_(True)
    t0 = time.perf_counter()
    gm(xt)
    t_fwd = time.perf_counter() - t0
    h.remove()
    t0 = time.perf_counter()
    for u in units:
        flat = got["a"][:, u].reshape(len(x), -1)
        sel = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0)
        xt.grad = None
        (flat * (flat * sel).detach()).sum().backward(retain_graph=True)
    return t_fwd, (time.perf_counter() - t0) / len(units)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--units", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "alexnet.onnx"
        torch.onnx.export(alexnet(), torch.zeros(1, 3, 227, 227), path, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "N"}})  # fmt: skip
        model = pa.load_model(path, check_parity=False)
        layer = [x for x in model.layers if x.op == "Relu"][-1]
        x = np.random.default_rng(0).normal(size=(args.batch, 3, 227, 227)).astype(np.float32)
        walker = Projector(model, "deconv", device="cpu")
        # The autograd contender's module, made once (a copy per call would be timed and would
        # leave cyclic garbage); every timed call starts after a collection, so that no
        # contender pays for another's garbage.
        gm = _deconv_module(model)
        ours, theirs = [], []
        for _ in range(args.repeat + 1):  # interleaved; the first round warms up
            gc.collect()
            t0 = time.perf_counter()
            a = walker.project(x, layer.name, 7).pixels
            ours.append(time.perf_counter() - t0)
            gc.collect()
            t0 = time.perf_counter()
            b = autograd_projection(model, gm, x, layer.name, 7)
            theirs.append(time.perf_counter() - t0)
        o, t = statistics.median(ours[1:]), statistics.median(theirs[1:])
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
        print(f"AlexNet-shaped, {layer.alias} unit 7, batch {args.batch}, median of {args.repeat}:")
        print(f"  pyanalyzer walk (unpool kernel) : {o * 1e3:8.1f} ms")
        print(f"  autograd with deconv ReLUs      : {t * 1e3:8.1f} ms")
        print(f"  ratio autograd / walk           : {t / o:8.2f}x   (max rel diff {err:.1e})")
        # several units of the layer: project_units against one autograd call per unit
        units = list(range(args.units))
        ours, theirs, shared = [], [], []
        for _ in range(args.repeat + 1):  # interleaved; the first round warms up
            gc.collect()
            t0 = time.perf_counter()
            many = walker.project_units(x, layer.name, units)
            ours.append(time.perf_counter() - t0)
            gc.collect()
            t0 = time.perf_counter()
            refs = [autograd_projection(model, gm, x, layer.name, u) for u in units]
            theirs.append(time.perf_counter() - t0)
            shared.append(shared_forward(model, gm, x, layer.name, units))
        o, t = statistics.median(ours[1:]), statistics.median(theirs[1:])
        fwd = statistics.median(f for f, _ in shared[1:])
        bwd = statistics.median(b for _, b in shared[1:])
        n = len(units)
        ceiling = n * (fwd + bwd) / (fwd + n * bwd)
        err = max(
            float(np.abs(p.pixels - r).max() / max(np.abs(r).max(), 1e-12))
            for p, r in zip(many, refs, strict=True)
        )
        print(f"{len(units)} units of {layer.alias}, batch {args.batch} images each:")
        print(f"  pyanalyzer, forward shared      : {o * 1e3:8.1f} ms")
        print(f"  autograd, one call per unit     : {t * 1e3:8.1f} ms")
        print(
            f"  ratio autograd / walk           : {t / o:8.2f}x   (target >= 1.5x; max rel "
            f"diff {err:.1e})"
        )
        print(f"  autograd, forward shared        : {(fwd + n * bwd) * 1e3:8.1f} ms   "
              f"(forward {fwd * 1e3:.1f} ms, backward {bwd * 1e3:.1f} ms per unit)")  # fmt: skip
        print(f"  ratio forward-shared / walk     : {(fwd + n * bwd) / o:8.2f}x")
        print(f"  ceiling                         : {ceiling:8.2f}x  = {n} x (forward + backward) "
              f"/ (forward + {n} x backward), autograd's own times: sharing the forward alone "
              f"(the windowed walk's backward costs less than autograd's)")  # fmt: skip


if __name__ == "__main__":
    main()
