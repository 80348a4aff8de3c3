"""The top-k scan of an image folder against the bare onnxruntime forward over the same images.

``TopPatches(..., projection="none")`` reads every image of a folder (PNG files written here:
synthetic scenes at the model's input size), runs the network to the layer and keeps each
unit's k strongest activations (at most one per image) plus the layer's receptive field. The
contender is ``model.forward.iter_layers`` over the same folder and layer, doing nothing with
the maps: what any scan must pay. Printed: both times (median of the runs) and the ratio,
against the issue's target (<= 1.1x).

    python benchmarks/bench_patches.py [--images 1000] [--layer relu5] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

import pyanalyzer as pa
from pyanalyzer.data import synthetic
from pyanalyzer.methods.patches import TopPatches

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--layer", default="relu5")
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    model = pa.load_model(ROOT / "models" / "default.onnx", check_parity=False)
    layer = model.spatial_layer(args.layer)
    with tempfile.TemporaryDirectory() as d:
        images, _ = synthetic.render_batch(args.images, seed=1, size=64)
        for i, img in enumerate(images):
            Image.fromarray(img).save(Path(d) / f"{i:05d}.png")
        folder = pa.ImageFolder(d)
        bare, ours = [], []
        for _ in range(args.runs + 1):  # the first round warms up (sessions, file cache)
            t0 = time.perf_counter()
            for _ in model.forward.iter_layers(
                folder, [layer.name], batch_size=args.batch, progress=False
            ):
                pass
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            TopPatches(
                model, layer=layer.name, k=args.k, projection="none", batch_size=args.batch,
                progress=False,
            ).run(folder)  # fmt: skip
            ours.append(time.perf_counter() - t0)
        b, o = statistics.median(bare[1:]), statistics.median(ours[1:])
        print(f"{layer.alias} ({layer.channels} units), {args.images} PNG images, k={args.k}, "
              f"batch {args.batch}, median of {args.runs}:")  # fmt: skip
        print(
            f"  bare onnxruntime forward : {b:7.3f} s  ({', '.join(f'{t:.3f}' for t in bare[1:])})"
        )
        print(
            f"  top-k scan (TopPatches)  : {o:7.3f} s  ({', '.join(f'{t:.3f}' for t in ours[1:])})"
        )
        print(f"ratio scan / forward      : {o / b:7.2f}x  (target <= 1.1x)")


if __name__ == "__main__":
    main()
