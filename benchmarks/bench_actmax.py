"""Activation maximization of a whole layer: one batch for all units against one unit at a time.

Renders every channel of one layer of the default model (relu5: 64 channels, 16x16, at the
model's 64 px input) for the same number of steps, first all units in one batch (what
``ActivationMaximization`` does by default), then one optimisation per unit (``batch=False``), and prints
both times, their ratio (target: batched >= 8x faster) and the mean activation each reached
(they should be similar: every unit draws its noise and transforms from its own generator, so
the two runs differ only by float rounding of batched kernels). The batched run alternates
with the same run whose transforms and normalisation are torch ops instead of the compiled
pass of :mod:`pyanalyzer.methods.actmax.fused`, and prints that ratio too, and for each round
the batched run's cost over the network alone timed just before it (both in the same state of
a shared machine). The network alone is the whole layer's forward + backward; the render loop
computes each image's own unit alone where the layer is a convolution's
(:mod:`pyanalyzer.methods.actmax.selected`), and the report prints that network's cost too.
Last, one more batched run with the network alone timed after each of its steps, and the
overhead: the run's time per image and step (the passes taken out) over the mean pass.

    python benchmarks/bench_actmax.py                        # 64 units, 128 steps
    python benchmarks/bench_actmax.py --units 8 --steps 16   # a quick run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pyanalyzer as pa
from pyanalyzer.methods.actmax import ActivationMaximization, fused
from pyanalyzer.methods.actmax.objectives import channel, resolve
from pyanalyzer.methods.actmax.render import Net
from pyanalyzer.methods.actmax.selected import selected_units

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import (  # noqa: E402
    alternate,
    interleaved,
    network_ms_per_image,
    print_paired,
    report,
    trivial_model,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "default.onnx"))
    ap.add_argument("--layer", default="relu5")
    ap.add_argument("--units", type=int, default=64, help="the first N units of the layer")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--param", default="fft", choices=["fft", "pixel"])
    ap.add_argument("--regularizers", default="lucid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="batched runs timed each way")
    ap.add_argument("--target", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    model = pa.load_model(args.model, check_parity=False)
    info = model.spatial_layer(args.layer)
    units = list(range(min(args.units, info.channels)))
    kw = dict(
        steps=args.steps, param=args.param, regularizers=args.regularizers, seed=args.seed,
        progress=False, device="cpu",  # the CPU's cost (benchmarks/gpu_check.py times CUDA)
    )  # fmt: skip
    print(
        f"{model.path.name} {info.alias} ({info.channels}x{info.height}x{info.width}), "
        f"{len(units)} units, {args.steps} steps, {args.param}/{args.regularizers}, "
        f"{torch.get_num_threads()} threads"
    )

    def run_actmax(
        layer: str, chosen: list[int], on: pa.Model = model, **options: object
    ) -> pa.ActmaxResult:
        return ActivationMaximization(on, layer=layer, units=chosen, **options).run()

    run_actmax(info.name, units[:2], **{**kw, "steps": 2})  # warm-up (oneDNN, fx)

    # The batched run, alternated with the same run whose transforms and normalisation are
    # torch ops instead of the compiled pass (the lever of pyanalyzer.methods.actmax.fused),
    # in swapped order each round so that a slow spell hits both; medians.
    # Before each compiled run the network alone is timed again (paired, below).
    net = Net(model, {info.name: resolve(model, info.name)}, "cpu")
    shape = (model.preprocessing.channels, *model.preprocessing.input_size)

    def switch(on: bool) -> None:
        fused.ENABLED = on

    times, net_ms, together = alternate(
        args.rounds, lambda: run_actmax(info.name, units, batch=True, **kw), switch,
        lambda x: net(x)(info.name), shape, len(units),
    )  # fmt: skip
    assert isinstance(together, pa.ActmaxResult)
    t_batch, t_torch = statistics.median(times[True]), statistics.median(times[False])
    t0 = time.perf_counter()
    apart = run_actmax(info.name, units, batch=False, **kw)
    t_single = time.perf_counter() - t0

    ratio = t_single / t_batch
    diff = np.abs(together.images.astype(np.int16) - apart.images.astype(np.int16)).mean()
    print(
        f"batched     {t_batch:8.2f} s   mean activation reached {together.reached.mean():.3f}"
        f" (start {together.start.mean():.3f}; median of {args.rounds} runs)"
    )
    print(
        f"one by one  {t_single:8.2f} s   mean activation reached {apart.reached.mean():.3f}"
        f" (start {apart.start.mean():.3f})"
    )
    print(f"ratio       {ratio:8.2f}x  (target >= {args.target:g}x); mean |image difference| "
          f"{diff:.2f} / 255")  # fmt: skip
    print(
        f"torch ops   {t_torch:8.2f} s   the batched run with the transforms and the "
        f"normalisation as torch ops (median of {args.rounds}, alternated): the compiled pass "
        f"is {t_torch / t_batch:.2f}x faster"
    )
    per_step = len(units) * args.steps
    print_paired(times[True], net_ms, per_step, "the batched run")
    # The method's own work: the same batched run on a network that costs next to nothing.
    with tempfile.TemporaryDirectory() as tmp:
        trivial = trivial_model(model, len(units), tmp)
        layer = trivial.spatial_layer("relu1").name
        run_actmax(layer, units[:2], trivial, **{**kw, "steps": 2})  # warm-up
        t0 = time.perf_counter()
        run_actmax(layer, units, trivial, batch=True, **kw)
        t_trivial = time.perf_counter() - t0
        tnet = Net(trivial, {layer: resolve(trivial, layer)}, "cpu")
        trivial_net = network_ms_per_image(
            lambda x: tnet(x)(layer), (model.preprocessing.channels, *model.preprocessing.input_size),
            len(units),
        )[0]  # fmt: skip
    own_ms = t_trivial * 1e3 / (len(units) * args.steps) - trivial_net
    # The render loop's network (net, above): RGB 0..1 -> preprocessing -> the torch twin cut
    # after the layer.
    # The network as the render loop runs it: each image's own unit alone where it can
    select = selected_units(net, channel(info.name, units), len(units))
    report(
        f"to {info.alias}",
        lambda x: net(x)(info.name),
        shape,
        len(units),
        t_single * 1e3 / per_step,
        args.target,
        batched_ms=t_batch * 1e3 / per_step,
        own_ms=own_ms,
        method_fn=None if select is None else (lambda x: select(net.prepare(x))),
    )
    # Last: the batched run once more, the network alone timed between its steps.
    interleaved(
        lambda: run_actmax(info.name, units, batch=True, **kw),
        lambda x: net(x)(info.name),
        shape,
        len(units),
        f"actmax {info.alias}",
    )
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
