"""Models exported with a batch dimension fixed to 1: rewrite the dimension, or loop?

pyanalyzer rewrites a fixed batch of 1 to a symbolic one when a batch of two then gives the
same results as two single runs, and otherwise runs batches one image at a time. This script
measures both strategies side by side on the same model and images and prints the ratio.

    python benchmarks/bench_batch1.py [--model models/default.onnx] [--images 256] [--batch 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import pyanalyzer as pa


def fixed_batch_copy(src: Path, dst: Path) -> Path:
    m = onnx.load(src)
    for vi in list(m.graph.input) + list(m.graph.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = 1
    onnx.save(m, dst)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path(__file__).parents[1] / "models" / "default.onnx"))
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        path = fixed_batch_copy(Path(args.model), Path(d) / "batch1.onnx")
        model = pa.load_model(path, check_parity=False)
        eng = model.forward
        print(f"model: {args.model} with its batch fixed to 1; engine chose: {eng.batch_mode}")
        layer = [x for x in model.layers if x.is_spatial][-1].name
        h, w = model.preprocessing.input_size
        rng = np.random.default_rng(0)
        pix = rng.integers(0, 256, size=(args.images, h, w, model.input.channels), dtype=np.uint8)
        x = model.preprocessing.normalize(pix)

        def timed(mode: str) -> tuple[float, np.ndarray]:
            proto = eng.graph if mode == "rewritten" else model.proto
            sess = eng._make_session(proto, [layer])
            best, out = float("inf"), None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                parts = []
                for s in range(0, args.images, args.batch):
                    xb = x[s : s + args.batch]
                    if mode == "loop":
                        parts += [
                            sess.run([layer], {model.input.name: xb[i : i + 1]})[0]
                            for i in range(len(xb))
                        ]
                    else:
                        parts.append(sess.run([layer], {model.input.name: xb})[0])
                best = min(best, time.perf_counter() - t0)
                out = np.concatenate(parts)
            return best, out

        if eng.batch_mode != "rewritten":
            print("the rewrite was refused for this model: only the loop runs")
            t, _ = timed("loop")
            print(f"loop: {t * 1e3:.1f} ms for {args.images} images")
            return
        t_loop, a = timed("loop")
        t_rw, b = timed("rewritten")
        print(f"batch-1 loop      : {t_loop * 1e3:8.1f} ms  ({args.images / t_loop:7.0f} img/s)")
        print(
            f"rewritten batch {args.batch:<2}: {t_rw * 1e3:8.1f} ms  ({args.images / t_rw:7.0f} img/s)"
        )
        print(
            f"speed-up of the rewrite: {t_loop / t_rw:.2f}x; max |diff| {np.abs(a - b).max():.2e}"
        )


if __name__ == "__main__":
    main()
