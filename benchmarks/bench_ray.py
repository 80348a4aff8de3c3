"""Dissection on Ray against the local engine, side by side in one process.

The default model's relu5 + relu6 over synthetic concept scenes (the decoded-label cache is
prepared first, as it is for every model after the first): the local engine (one process,
onnxruntime with its own threads), then the same dissection sharded over a local Ray of 2
workers (one onnxruntime thread each; Ray already started, its actors already holding the
model: a cluster is started once, not per run). Results are checked to be bitwise equal.
Printed: wall times (median of the runs), the overhead ratio (target <= 1.3x on 2 cores), the
bytes that travelled between the driver and the workers per image, and the per-image costs
docs/SCALING.md extrapolates from.

    python benchmarks/bench_ray.py [--images 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import pyanalyzer as pa
from pyanalyzer.data.broden import BrodenDataset, synth_dataset
from pyanalyzer.executor import RayExecutor

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("thresholds", "intersection", "unit_area_cat", "unit_area", "concept_area",
          "top_images", "top_values")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    layers = ["relu5", "relu6"]
    with tempfile.TemporaryDirectory() as d:
        model = pa.load_model(ROOT / "models" / "default.onnx", check_parity=False)
        ds = BrodenDataset(synth_dataset(Path(d) / "ds", n_images=args.images, size=64,
                                         progress=False), cache_dir=Path(d) / "c")  # fmt: skip
        ds.prepare_cache(progress=False)
        ex = RayExecutor(cpus=2)
        try:
            ex.actors(model, ds)  # the workers start and load the model once
            warm = pa.Dissection(model, layers=layers, batch_size=args.batch_size,
                                 progress=False, executor=ex)  # fmt: skip
            warm.run(ds)
            local_t, ray_t, sent, received = [], [], [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                local = pa.Dissection(model, layers=layers, batch_size=args.batch_size,
                                      progress=False).run(ds)  # fmt: skip
                local_t.append(time.perf_counter() - t0)
                s0, r0 = ex.bytes_sent, ex.bytes_received
                a = pa.Dissection(model, layers=layers, batch_size=args.batch_size,
                                  progress=False, executor=ex)  # fmt: skip
                t0 = time.perf_counter()
                sharded = a.run(ds)
                ray_t.append(time.perf_counter() - t0)
                sent.append(ex.bytes_sent - s0)
                received.append(ex.bytes_received - r0)
                for la, lb in zip(local, sharded, strict=True):
                    for f in FIELDS:
                        assert np.array_equal(getattr(la, f), getattr(lb, f)), f
        finally:
            ex.close()
    n = args.images
    lt, rt = float(np.median(local_t)), float(np.median(ray_t))
    acts = sum(model.layer(x).channels * model.layer(x).height * model.layer(x).width * 4
               for x in layers)  # fmt: skip
    print(f"dissection of {'+'.join(layers)}, {n} images, batch {args.batch_size}; results "
          "bitwise equal in every run")  # fmt: skip
    print(f"local engine     {', '.join(f'{t:.2f}' for t in local_t)} s (median {lt:.2f})")
    print(f"Ray, 2 workers   {', '.join(f'{t:.2f}' for t in ray_t)} s (median {rt:.2f}); "
          f"{a.shards} shards, activations {a.activations}")  # fmt: skip
    print(f"per image: local {lt / n * 1e3:.2f} ms, Ray {rt / n * 1e3:.2f} ms; activations "
          f"{acts / 1024:.0f} KiB per image stay on the workers")  # fmt: skip
    print(f"bytes between driver and workers: {np.median(sent) / n:.0f} B/image sent, "
          f"{np.median(received) / n:.0f} B/image received "
          f"({(np.median(sent) + np.median(received)) / 2**20:.2f} MiB a run)")  # fmt: skip
    print(f"Ray / local: {rt / lt:.2f}x (target <= 1.3x on 2 cores)")


if __name__ == "__main__":
    main()
