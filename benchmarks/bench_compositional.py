"""Compositional explanations (Mu & Andreas 2020): the whole search, and the compose kernel
against numpy, side by side in one process.

1. The search on the default model's relu6 (128 units, 8x8 maps) over the default concept
   dataset of the CLI (1000 synthetic scenes, 32x32 label maps, 37 concept ids): formulas of
   up to 3 concepts, beam 5, as ``pyanalyzer dissect --compositional`` runs it. Timed: the
   dissection that gives the thresholds, each pass over the dataset (forward pass + counts +
   beam step), and a bare forward pass of the layer over the same images for scale. Target: a
   few minutes at most on a laptop-class CPU.
2. The counts of one batch (64 images, the 128 units, each unit's final beam of 5 formulas)
   by the C++ kernel against two numpy contenders with the same inputs: a vectorised numpy
   (per image, every formula's mask as one boolean array, concept overlaps as a matrix
   product) and the plain reference of the tests (``tests/core/reference_compose.py``: boolean
   masks, loops over images, units and formulas). Counts must be identical.

    python benchmarks/bench_compositional.py [--images 1000] [--batch 64] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pyanalyzer as pa
from pyanalyzer import _backend
from pyanalyzer.data.defaults import concept_dataset, scene_size
from pyanalyzer.methods.dissection import Compositional

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("f_concept", "mf_concept", "f_area", "mf_area")


def numpy_compose(acts, thresholds, seg, image_labels, formulas, ops, concepts):
    """Vectorised numpy: per image, presence [C, P] once, every formula's mask [U*B, P] from
    it, the overlaps with every concept by a float32 matrix product (exact below 2^24)."""
    from reference_tally import upsample  # the kernels' bilinear values, bit for bit

    n, units = acts.shape[:2]
    beam, terms = formulas.shape[1:]
    sh, sw = seg.shape[2:]
    counts = _backend.ComposeCounts.zeros(units, beam, concepts)
    ids = np.arange(concepts)
    for i in range(n):
        present = (seg[i].reshape(seg.shape[1], -1)[:, None, :] == ids[None, :, None]).any(0)
        present[np.isin(ids, image_labels[i])] = True
        present[0] = False  # [C, P]
        unit = (upsample(acts[i], sh, sw) > thresholds[:, None, None]).reshape(units, -1)
        f = np.where((formulas[:, :, :1] == 0), True, present[formulas[:, :, 0]])  # [U, B, P]
        live = formulas[:, :, 0] != 0
        for t in range(1, terms):
            live &= formulas[:, :, t] != 0
            c = present[formulas[:, :, t]]
            op = np.where(live, ops[:, :, t], 0)[..., None]
            f = np.where(op == 1, f & c, np.where(op == 2, f | c, np.where(op == 3, f & ~c, f)))
        mf = f & unit[:, None, :]
        p32 = present.T.astype(np.float32)  # [P, C]
        counts.f_area += f.sum(axis=2)
        counts.mf_area += mf.sum(axis=2)
        counts.f_concept += (
            (f.reshape(-1, sh * sw).astype(np.float32) @ p32)
            .reshape(units, beam, concepts)
            .astype(np.int64)
        )
        counts.mf_concept += (
            (mf.reshape(-1, sh * sw).astype(np.float32) @ p32)
            .reshape(units, beam, concepts)
            .astype(np.int64)
        )
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "default.onnx"))
    ap.add_argument("--layer", default="relu6")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--data", default=None, help="folder of the synthetic dataset (temp)")
    ap.add_argument("--skip-reference", action="store_true", help="skip the tests' reference")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "core"))

    info = _backend.info()
    print(f"pyanalyzer core: OpenMP {info['openmp']}, {info['omp_max_threads']} threads")
    model = pa.load_model(args.model, check_parity=False)
    data = Path(args.data or tempfile.mkdtemp(prefix="bench-compose-"))
    t0 = time.perf_counter()
    ds = concept_dataset(data, args.images, scene_size(model.preprocessing), 0, progress=False)
    ds.prepare_cache(progress=False)
    print(f"dataset: {len(ds)} scenes, labels {ds.seg_size}, K={ds.max_channels}, "
          f"L={ds.max_image_labels}, C={len(ds.names)} ({time.perf_counter() - t0:.1f}s to "
          "make or open)")  # fmt: skip

    # 1. the whole search
    layer = model.spatial_layer(args.layer)
    t0 = time.perf_counter()
    for _ in model.forward.iter_layers(ds, [layer.name], batch_size=args.batch, progress=False):
        pass
    bare = time.perf_counter() - t0
    search = Compositional(model, layers=[args.layer], max_length=args.length, beam=args.beam,
                           batch_size=args.batch, device="cpu", progress=False)  # fmt: skip
    t0 = time.perf_counter()
    result = search.run(ds)
    (r,) = result
    total = time.perf_counter() - t0
    print(f"\n1. search: {layer.alias} ({r.units.size} units, {layer.height}x{layer.width}), "
          f"formulas of up to {args.length} concepts, beam {args.beam}, {len(ds)} images")  # fmt: skip
    print(f"   bare forward pass of {layer.alias}: {bare:7.2f}s")
    for stage, seconds in result.timings.items():
        print(f"   {stage:32s} {seconds:7.2f}s")
    print(f"   {'total':32s} {total:7.2f}s  ({total / 60:.2f} min)")
    s = r.summary()
    print(f"   mean IoU: formula {s['mean_iou']:.4f}, best single concept "
          f"{s['mean_single_iou']:.4f}; {s['compositional_units']}/{s['units']} units explained "
          "better by a longer formula")  # fmt: skip
    for i in np.argsort(-r.iou, kind="stable")[:5]:
        single = r.concept_names[r.single_concept[i]] or "-"
        print(f"   unit {int(r.units[i]):3d}: {r.text(i):45s} IoU {r.iou[i]:.3f}   "
              f"(single: {single} {r.single_iou[i]:.3f})")  # fmt: skip
    print(f"   target: the search in minutes -> {'PASS' if total < 600 else 'FAIL'}")

    # 2. the kernel on one batch, against numpy
    idx = np.arange(min(args.batch, len(ds)))
    spec = model.preprocessing
    x = spec.normalize(np.stack([ds.pixels(int(i), spec) for i in idx]))
    acts = np.ascontiguousarray(model.forward.run(x, [layer.name])[layer.name], np.float32)
    seg, image_labels, _ = ds.segmentation_batch(idx)
    formulas, ops = r.beam_formulas, r.beam_ops
    concepts = len(ds.names)
    units, beam, terms = formulas.shape
    print(f"\n2. counts of one batch: N={len(idx)}, U={units}, B={beam}, T={terms}, "
          f"{ds.seg_size[0]}x{ds.seg_size[1]} labels, C={concepts}")  # fmt: skip

    def kernel() -> _backend.ComposeCounts:
        counts = _backend.ComposeCounts.zeros(units, beam, concepts)
        return _backend.compose(acts, r.thresholds, seg, image_labels, formulas, ops, counts,
                                device="cpu")  # fmt: skip

    t_core = min(_timed(kernel)[0] for _ in range(3))
    got = kernel()
    rows = [(f"pyanalyzer core, CPU ({info['omp_max_threads']} OpenMP threads)", t_core, True)]
    t_np, c_np = _timed(
        lambda: numpy_compose(acts, r.thresholds, seg, image_labels, formulas, ops, concepts)
    )
    rows.append(("numpy, vectorised per image", t_np, _same(c_np, got)))
    if not args.skip_reference:
        from reference_compose import reference_compose

        t_ref, c_ref = _timed(lambda: reference_compose(
            acts, r.thresholds, seg, image_labels, formulas, ops, concepts))  # fmt: skip
        rows.append(("numpy reference of the tests (loops)", t_ref, _same(c_ref, got)))
    print(f"   {'implementation':48s} {'time':>9s} {'vs core':>9s}  counts")
    for name, t, same in rows:
        print(f"   {name:48s} {t:8.3f}s {t / t_core:8.1f}x  {'identical' if same else 'DIFFER'}")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _same(a, b: _backend.ComposeCounts) -> bool:
    get = (lambda f: a[f]) if isinstance(a, dict) else (lambda f: getattr(a, f))
    return all(np.array_equal(get(f), getattr(b, f)) for f in FIELDS)


if __name__ == "__main__":
    main()
