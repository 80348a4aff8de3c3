"""The preprocessing transform against its plain out-of-place formula, side by side.

Every forward method (dissection, top-k scans, ablation, comparison) maps each batch of 0-255
pixels to the model input with ``PreprocessSpec.normalize``. The contender is the formula
written plainly, ``(float32(x)[order] * scale - mean) / std`` then the NCHW transpose (what
``normalize`` computed before it reordered the pixels first and worked in place). Both must
give the same floats bit for bit; the script checks that and prints both times (the fastest
of the runs) and their ratio.

    python benchmarks/bench_normalize.py [--batch 64] [--size 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import pyanalyzer as pa

ROOT = Path(__file__).resolve().parents[1]


def plain(spec, pixels: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = np.asarray(pixels, dtype=np.float32)
    if spec.channels == 3 and spec.channel_order == "bgr":
        x = x[..., ::-1]
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    x = (x * np.float32(spec.scale) - mean) / std
    if spec.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def fastest(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    spec = pa.load_model(ROOT / "models" / "default.onnx", check_parity=False).preprocessing
    pixels = np.random.default_rng(0).integers(
        0, 256, (args.batch, args.size, args.size, spec.channels), dtype=np.uint8
    )
    same = np.array_equal(
        plain(spec, pixels).view(np.uint32), spec.normalize(pixels).view(np.uint32)
    )
    t_plain = fastest(lambda: plain(spec, pixels), args.runs)
    t_ours = fastest(lambda: spec.normalize(pixels), args.runs)
    print(f"{args.batch} images of {args.size}x{args.size}x{spec.channels}, {spec.describe()}")
    print(f"  plain formula      : {t_plain:7.3f} ms")
    print(f"  normalize          : {t_ours:7.3f} ms   ({'bitwise equal' if same else 'DIFFERENT'})")
    print(f"ratio plain / ours  : {t_plain / t_ours:7.2f}x")


if __name__ == "__main__":
    main()
