"""Network-dissection tally and thresholds: numpy (NetDissect-Lite style) vs pyanalyzer's core.

Side by side in one process, on the same random data:

1. the tally of one layer: N images, U units, 7x7 maps upsampled to 112x112, K = 2 label
   channels, 50 concepts, one image-level label, thresholds at the 99.5% quantile. The
   contender works like NetDissect-Lite's tally (Bau et al. 2017; Zhou's NetDissect-Lite):
   per image and per unit, upsample the map (an efficient numpy bilinear with precomputed
   indices and weights, in the same float32 order as the core so that the counts can be
   compared exactly), threshold it and np.bincount the labels under the mask. A second
   contender row adds NetDissect-style skipping of maps whose peak is below the threshold.
   Target: the core >= 30x faster than the first contender, with identical counts.
2. the thresholds: exact top-0.5% quantiles by mergeable top-k (the core's topk_merge) against
   a fixed-size streaming sketch (a per-unit reservoir sample of 1024 values), with the
   sketch's error.

    python benchmarks/bench_tally.py [--n 500] [--units 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np

from pyanalyzer import _backend

QUANTILE = 0.995


def bilinear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, ...]:
    """(lo, hi, w_lo, w_hi) per output index, as csrc/include/pyanalyzer/tally.h defines them."""
    d = np.arange(size_out, dtype=np.float64)
    src = np.maximum((d + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    w_hi = (src - lo).astype(np.float32)
    return lo, hi, np.float32(1.0) - w_hi, w_hi


def numpy_tally(
    acts: np.ndarray,
    thresholds: np.ndarray,
    seg: np.ndarray,
    image_labels: np.ndarray,
    concepts: int,
    image_categories: np.ndarray,
    skip_silent: bool,
) -> _backend.TallyCounts:
    """NetDissect-Lite-style tally: a Python loop over images and units, numpy inside."""
    n_images, units, h, w = acts.shape
    size = seg.shape[-1]
    y_lo, y_hi, wy_lo, wy_hi = bilinear_axis(h, size)
    x_lo, x_hi, wx_lo, wx_hi = bilinear_axis(w, size)
    wy_lo, wy_hi = wy_lo[:, None], wy_hi[:, None]
    counts = _backend.TallyCounts.zeros(units, concepts, image_categories.shape[1])
    peak = acts.reshape(n_images, units, -1).max(axis=2)
    absmax = np.abs(acts).reshape(n_images, units, -1).max(axis=2).astype(np.float64)
    for n in range(n_images):
        seg_n = seg[n].reshape(seg.shape[1], -1)  # [K, S*S]
        labels = image_labels[n][image_labels[n] != 0]
        cats = np.flatnonzero(image_categories[n])
        counts.concept_area += np.bincount(seg_n.ravel(), minlength=concepts)
        counts.concept_area[labels] += size * size
        for u in range(units):
            t = thresholds[u]
            # Exact skip: no upsampled value exceeds the peak by more than float rounding.
            if skip_silent and peak[n, u] < float(t) - (1e-6 * absmax[n, u] + 1e-30):
                continue
            fmap = acts[n, u]
            rows = wx_lo * fmap[:, x_lo] + wx_hi * fmap[:, x_hi]  # [h, S]: along x first
            up = wy_lo * rows[y_lo] + wy_hi * rows[y_hi]  # [S, S]
            fired = np.flatnonzero(up.ravel() > t)
            if fired.size == 0:
                continue
            counts.unit_area[u] += fired.size
            counts.unit_area_cat[u, cats] += fired.size
            counts.intersection[u] += np.bincount(seg_n[:, fired].ravel(), minlength=concepts)
            counts.intersection[u, labels] += fired.size
    counts.intersection[:, 0] = 0
    counts.concept_area[0] = 0
    return counts


def same_counts(a: _backend.TallyCounts, b: _backend.TallyCounts) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("intersection", "unit_area_cat", "unit_area", "concept_area")
    )


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def make_layer(rng: np.random.Generator, n: int, units: int, concepts: int, categories: int):
    """Random activations, seg with blobs of concepts, one image label, per-unit thresholds."""
    acts = rng.standard_normal((n, units, 7, 7), dtype=np.float32)
    # Concept regions: 8x8 blocks of 14x14 pixels, one random concept per block and channel.
    blocks = rng.integers(1, concepts, size=(n, 2, 8, 8), dtype=np.int32)
    seg = np.repeat(np.repeat(blocks, 14, axis=2), 14, axis=3)
    seg[:, 1][rng.random((n, 112, 112)) < 0.5] = 0  # the second channel is half unlabelled
    image_labels = rng.integers(0, concepts, size=(n, 1), dtype=np.int32)
    concept_category = rng.integers(0, categories, size=concepts, dtype=np.int32)
    image_categories = (rng.random((n, categories)) < 0.7).astype(np.uint8)
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), QUANTILE, axis=1)
    return (
        acts,
        thresholds.astype(np.float32),
        seg,
        image_labels,
        concept_category,
        image_categories,
    )


def bench_tally(args: argparse.Namespace, rng: np.random.Generator) -> None:
    concepts, categories = 50, 4
    acts, thr, seg, labels, ccat, icat = make_layer(rng, args.n, args.units, concepts, categories)
    print(
        f"\n1. tally: N={args.n} images, U={args.units} units, 7x7 -> 112x112, K=2, L=1, "
        f"C={concepts}, thresholds at the {QUANTILE:.1%} quantile"
    )

    def core() -> _backend.TallyCounts:
        counts = _backend.TallyCounts.zeros(args.units, concepts, categories)
        return _backend.tally(acts, thr, seg, labels, ccat, icat, counts, device="cpu")

    t_core, c_core = best_of(core, args.repeat)
    t_np, c_np = best_of(
        lambda: numpy_tally(acts, thr, seg, labels, concepts, icat, skip_silent=False), 1
    )
    t_skip, c_skip = best_of(
        lambda: numpy_tally(acts, thr, seg, labels, concepts, icat, skip_silent=True), 1
    )
    info = _backend.info()
    fired = int(c_core.unit_area.sum())
    print(f"   fired pixels: {fired:,} ({fired / (args.n * args.units * 112 * 112):.3%})")
    rows = [
        ("numpy, every map upsampled (NetDissect-Lite)", t_np, same_counts(c_np, c_core)),
        ("numpy, silent maps skipped", t_skip, same_counts(c_skip, c_core)),
        (f"pyanalyzer core, CPU ({info['omp_max_threads']} OpenMP threads)", t_core, True),
    ]
    print(f"   {'implementation':48s} {'time':>10s} {'vs core':>9s}  counts")
    for name, t, same in rows:
        print(f"   {name:48s} {t:9.3f}s {t / t_core:8.1f}x  {'identical' if same else 'DIFFER'}")
    ratio = t_np / t_core
    verdict = "PASS" if ratio >= 30 and all(r[2] for r in rows) else "FAIL"
    print(f"   target: core >= 30x faster than numpy, identical counts -> {ratio:.0f}x: {verdict}")


def reservoir_thresholds(batches: list[np.ndarray], size: int, rng: np.random.Generator):
    """Per-unit reservoir sample (Algorithm R) of `size` values, then its 99.5% quantile."""
    units = batches[0].shape[1]
    reservoir = np.empty((units, size), np.float32)
    seen = 0
    rows = np.arange(units)[:, None]
    for batch in batches:
        values = batch.transpose(1, 0, 2, 3).reshape(units, -1)
        m = values.shape[1]
        fill = max(0, min(size - seen, m))
        reservoir[:, seen : seen + fill] = values[:, :fill]
        if fill < m:  # value j (global index seen + j) replaces a random slot with p = size/(i+1)
            index = seen + np.arange(fill, m)
            slot = (rng.random((units, m - fill)) * (index + 1)).astype(np.int64)
            keep = slot < size
            r, j = np.nonzero(keep)
            reservoir[rows[r, 0], slot[r, j]] = values[r, fill + j]
        seen += m
    return np.quantile(reservoir[:, : min(seen, size)], QUANTILE, axis=1)


def bench_thresholds(args: argparse.Namespace, rng: np.random.Generator) -> None:
    units, batch = args.units, 100
    batches = [
        rng.standard_normal((min(batch, args.n - s), units, 7, 7), dtype=np.float32)
        for s in range(0, args.n, batch)
    ]
    total = args.n * 49
    k = math.ceil((1 - QUANTILE) * total)
    print(
        f"\n2. thresholds: top {1 - QUANTILE:.1%} of {total:,} values per unit, U={units}, "
        f"batches of {batch} images (k = {k})"
    )

    def exact() -> np.ndarray:
        state = _backend.topk_empty(units, k)
        for b in batches:
            state = _backend.topk_merge(state, b, device="cpu")
        return state[:, k - 1]

    t_exact, t_e = best_of(exact, args.repeat)
    t_sketch, t_s = best_of(lambda: reservoir_thresholds(batches, 1024, rng), args.repeat)
    values = np.concatenate([b.transpose(1, 0, 2, 3).reshape(units, -1) for b in batches], axis=1)
    above_exact = (values > t_e[:, None]).mean(axis=1)
    above_sketch = (values > t_s[:, None]).mean(axis=1)
    rel = np.abs(t_s - t_e) / np.abs(t_e)
    print(f"   {'method':40s} {'time':>9s}  threshold error     fraction above (target 0.5%)")
    print(
        f"   {'exact: topk_merge (core, CPU)':40s} {t_exact:8.3f}s  {'0':19s} "
        f"{above_exact.mean():.3%} (max {above_exact.max():.3%})"
    )
    print(
        f"   {'sketch: reservoir of 1024 per unit':40s} {t_sketch:8.3f}s  "
        f"median {np.median(rel):6.2%} max {rel.max():6.2%}  "
        f"{above_sketch.mean():.3%} (range {above_sketch.min():.3%} .. {above_sketch.max():.3%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images (default 500)")
    parser.add_argument("--units", type=int, default=256, help="units (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many core runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    info = _backend.info()
    print(f"pyanalyzer core: OpenMP {info['openmp']}, {info['omp_max_threads']} threads")
    rng = np.random.default_rng(args.seed)
    bench_tally(args, rng)
    bench_thresholds(args, rng)


if __name__ == "__main__":
    main()
