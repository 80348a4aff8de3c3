"""Optimisation-based inversion: eight images in one batch against one image at a time.

Inverts N synthetic scenes from one layer of the default model with the authors' schedule
(Mahendran & Vedaldi: momentum SGD, 400 steps), first all images in one batch (what
``OptimInversion`` does with several images), then one run per image, and prints
both times, their ratio (target: batched >= 4x faster) and how far apart the results are (a
batch moves every row as it would move alone, so they differ only by float rounding). With SGD
it then alternates the batched run with and without the compiled parts of its step
(:mod:`pyanalyzer.methods.inversion.compiled`: the image's way to the model's input, and the
priors, update and clamp, each in one pass) and prints that
ratio, and for each round the batched run's cost over the network alone timed just before it
(both in the same state of a shared machine), and the batched cost (the median of every
batched run with the compiled step) over the network's fastest pass. Last, one more batched run
with the network alone timed after each of its steps, and the overhead: the run's time per image
and step (the passes taken out) over the mean pass.

    python benchmarks/bench_invert.py                      # 8 images, relu4, 400 steps
    python benchmarks/bench_invert.py --steps 50           # a quick run
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
from pyanalyzer.data import synthetic
from pyanalyzer.methods.inversion import OptimInversion, optim

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
    ap.add_argument("--layer", action="append", help="layer(s) to invert (default: relu4)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--repeat", type=int, default=1, help="timed rounds (median reported)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="batched runs timed each way: compiled step against torch ops")  # fmt: skip
    ap.add_argument("--target", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    model = pa.load_model(args.model, check_parity=False)
    layers = args.layer or ["relu4"]
    images = synthetic.render_batch(args.images, seed=0)[0]
    # the CPU's cost, as the network alone below (benchmarks/gpu_check.py times CUDA)
    kw = dict(steps=args.steps, optimizer=args.optimizer, seed=0, progress=False, device="cpu")
    print(
        f"{model.path.name} {', '.join(layers)}, {args.images} images, {args.steps} steps "
        f"({args.optimizer}), {torch.get_num_threads()} threads"
    )

    def invert_optim(
        batch: np.ndarray, on: pa.Model = model, at: list[str] = layers, **options: object
    ) -> pa.InversionResult:
        return OptimInversion(on, layers=at, **options).run(batch)

    invert_optim(images[:2], **{**kw, "steps": 2})  # warm-up (oneDNN, sessions)
    # The loop's network: preprocessing -> the torch twin, cut after the deepest layer;
    # channels-last from 4 rows on, as the loop runs it.
    engine, spec = model.gradient, model.preprocessing
    names = [model.layer(name).name for name in layers]
    shape = (spec.channels, *spec.input_size)
    rows, per_step = args.images * len(layers), args.images * len(layers) * args.steps

    def net(x):
        fmt = torch.channels_last if len(x) >= 4 else torch.contiguous_format
        feats = engine.features(spec.normalize_torch(x).contiguous(memory_format=fmt), names)
        return sum(feats[n].sum() for n in names)

    t_batch, t_single = [], []
    for _ in range(args.repeat):  # interleaved, so that a slow spell hits both
        t0 = time.perf_counter()
        together = invert_optim(images, **kw)
        t_batch.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        apart = [invert_optim(images[i : i + 1], **kw) for i in range(len(images))]
        t_single.append(time.perf_counter() - t0)
    tb, ts = statistics.median(t_batch), statistics.median(t_single)

    alone = np.concatenate([r.images for r in apart])
    diff = np.abs(together.images - alone).mean() * 255
    pe_b = together.pixel_error.mean()
    pe_s = np.concatenate([r.pixel_error for r in apart]).mean()
    print(f"batched     {tb:8.2f} s   mean pixel error {pe_b:.4f}")
    print(f"one by one  {ts:8.2f} s   mean pixel error {pe_s:.4f}")
    print(f"ratio       {ts / tb:8.2f}x  (target >= {args.target:g}x); mean |image difference| "
          f"{diff:.3f} / 255")  # fmt: skip
    batched = list(t_batch)  # every timed batched run with the default (compiled) step
    if args.optimizer == "sgd":
        # The lever of optim.FUSED_STEP: the batched run alternated with the same run whose
        # input map, priors, update and clamp are torch ops and torch.optim.SGD, order swapped
        # each round.
        # Before each compiled run the network alone is timed again, so that each round gives
        # an overhead whose two terms met the same state of the (shared, noisy) machine.

        def switch(on: bool) -> None:
            optim.FUSED_STEP = on

        times, net_ms, _ = alternate(
            args.rounds, lambda: invert_optim(images, **kw), switch, net, shape, rows
        )
        batched += times[True]
        tf, tt = statistics.median(times[True]), statistics.median(times[False])
        print(f"torch ops   {tt:8.2f} s   the batched run with the input map, the priors, the "
              f"update and the clamp as torch ops (median of {args.rounds}, alternated): "
              f"the compiled parts {tf:.2f} s, {tt / tf:.2f}x faster")  # fmt: skip
        print_paired(times[True], net_ms, per_step, "the compiled batched run")
    # The method's own work: the same batched run on a network that costs next to nothing.
    with tempfile.TemporaryDirectory() as tmp:
        trivial = trivial_model(model, 64, tmp)
        invert_optim(images[:2], trivial, ["relu1"], **{**kw, "steps": 2})  # warm-up
        t0 = time.perf_counter()
        invert_optim(images, trivial, ["relu1"], **kw)  # one row per image
        t_trivial = time.perf_counter() - t0
        tname = trivial.layer("relu1").name

        def trivial_net(x):
            fmt = torch.channels_last if len(x) >= 4 else torch.contiguous_format
            x = trivial.preprocessing.normalize_torch(x).contiguous(memory_format=fmt)
            return trivial.gradient.features(x, [tname])[tname]

        trivial_ms = network_ms_per_image(trivial_net, shape, args.images)[0]
    own_ms = t_trivial * 1e3 / (args.images * args.steps) - trivial_ms
    report(
        ", ".join(layers),
        net,
        (spec.channels, *spec.input_size),
        rows,
        ts * 1e3 / per_step,
        args.target,
        batched_ms=statistics.median(batched) * 1e3 / per_step,
        own_ms=own_ms,
    )
    # Last: the batched run once more, the network alone timed between its steps.
    interleaved(lambda: invert_optim(images, **kw), net, shape, rows, "invert")
    return 0 if ts / tb >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
