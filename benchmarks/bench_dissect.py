"""Network dissection speed and memory, contenders side by side in one process.

1. The tally and the thresholds: ``benchmarks/bench_tally.py`` (C++ tally against a
   NetDissect-Lite-style numpy tally, target >= 30x; exact top-k thresholds against a
   streaming sketch), run here with the same arguments.
2. End to end: dissection wall time against a bare onnxruntime forward pass over the same
   images and layer (both read and preprocess every image; the dataset's decoded-label cache
   is prepared first, as it is for every model after the first). Target: <= 1.1x (issue #16).
   Beside it, the dissection's own work timed apart (its forward replayed from memory) and the
   floor it gives where none of that work overlaps the forward.
3. Peak memory of the dissection (Python and numpy allocations, tracemalloc) for two dataset
   sizes, on the spill path (a run with a store, or maps above
   ``pipeline.in_memory_limit()``): bounded, the activations are spilled to a memory-mapped
   file, never all held. Sections 2's runs have no store and keep their maps in memory.

    python benchmarks/bench_dissect.py [--images 1000] [--layer relu6] [--skip-tally]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

import pyanalyzer as pa
from pyanalyzer.data.broden import BrodenDataset, synth_dataset
from pyanalyzer.methods.dissection import Dissection

ROOT = Path(__file__).resolve().parents[1]


def bare_forward(model, ds, layer: str, batch: int) -> float:
    t0 = time.perf_counter()
    for _ in model.forward.iter_layers(ds, [layer], batch_size=batch, progress=False):
        pass
    return time.perf_counter() - t0


def dissection(model, ds, layer: str, batch: int) -> tuple[float, object]:
    t0 = time.perf_counter()
    (r,) = Dissection(model, layers=[layer], batch_size=batch, progress=False).run(ds)
    return time.perf_counter() - t0, r


def own_work(model, ds, layer: str, batch: int) -> float:
    """The dissection's work beyond its forward pass, timed apart: the same dissection with
    its forward pass replayed from maps computed beforehand (pass 1's checks, spill writes and
    top-k merges, then pass 2: label reads, tally, top images)."""
    maps = list(model.forward.iter_layers(ds, [layer], batch_size=batch, progress=False))
    model.forward.iter_layers = lambda *a, **k: iter(maps)  # shadows the method
    try:
        return dissection(model, ds, layer, batch)[0]
    finally:
        del model.forward.iter_layers


def peak_memory(model, ds, layer: str, batch: int) -> float:
    """Peak traced memory of a dissection on the spill path (the in-memory limit set to 0)."""
    from pyanalyzer.methods.dissection import pipeline

    limit, pipeline.IN_MEMORY_MAX = pipeline.IN_MEMORY_MAX, 0
    tracemalloc.start()
    try:
        Dissection(model, layers=[layer], batch_size=batch, progress=False).run(ds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pipeline.IN_MEMORY_MAX = limit
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "default.onnx"))
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--layer", default="relu6")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-tally", action="store_true", help="skip section 1")
    args = ap.parse_args()

    if not args.skip_tally:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_tally

        print("== 1. tally and thresholds (bench_tally.py) ==")
        sys.argv = [sys.argv[0]]
        bench_tally.main()
        print()

    model = pa.load_model(args.model, check_parity=False)
    layer = model.spatial_layer(args.layer)
    with tempfile.TemporaryDirectory() as d:
        print(f"== 2. end to end: {Path(args.model).name} {layer.alias} "
              f"({layer.channels}x{layer.height}x{layer.width}), {args.images} synthetic images ==")  # fmt: skip
        ds = BrodenDataset(
            synth_dataset(Path(d) / "ds", n_images=args.images, size=max(model.preprocessing.input_size), progress=False),
            cache_dir=Path(d) / "cache",
        )  # fmt: skip
        t0 = time.perf_counter()
        ds.prepare_cache(progress=False)
        print(f"decoded-label cache prepared once: {time.perf_counter() - t0:.2f} s")
        bare, dis, own = [], [], []
        for _ in range(args.repeat):  # interleaved, best of each: the machine is shared
            bare.append(bare_forward(model, ds, layer.name, args.batch))
            t, r = dissection(model, ds, layer.name, args.batch)
            dis.append(t)
            own.append(own_work(model, ds, layer.name, args.batch))
        b, t, w = min(bare), min(dis), min(own)
        print(f"bare onnxruntime forward : {b:7.3f} s")
        print(f"dissection               : {t:7.3f} s   ({r.summary()['detectors']} detectors)")
        print(f"its own work, timed apart: {w:7.3f} s   (the forward replayed from memory)")
        print(f"floor if nothing overlaps: {(b + w) / b:7.2f}x   = (forward + own work) / forward; "
              "the dissection does its own work between forward batches")  # fmt: skip
        print(f"ratio dissection/forward : {t / b:7.2f}x   (target <= 1.1x)")
        print()
        print("== 3. peak memory of the dissection on its spill path (tracemalloc) ==")
        for n in (args.images // 4, args.images):
            sub = BrodenDataset(
                synth_dataset(Path(d) / f"m{n}", n_images=n, size=max(model.preprocessing.input_size), progress=False),
                cache_dir=Path(d) / "cache",
            )  # fmt: skip
            sub.prepare_cache(progress=False)
            mb = peak_memory(model, sub, layer.name, args.batch)
            acts = n * layer.channels * layer.height * layer.width * 4 / 2**20
            print(f"{n:6d} images: peak {mb:7.1f} MiB   (all activations would be {acts:7.1f} MiB)")
    _ = np  # numpy is imported for the benchmarks that extend this script


if __name__ == "__main__":
    main()
