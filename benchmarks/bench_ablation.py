"""Unit ablation: the mask input with the graph cut after the layer, against the whole graph
with the mask and against the brute force (one edited model per unit), in one process.

The default model, every unit of a layer ablated one at a time over synthetic scenes (no
sets): ``Ablation`` as it runs (the head before the layer once per image, the tail after it
once per ablation, batched over units), the same analysis forced onto the whole graph (every
ablation runs the whole network), and the brute force that an auditor would write by hand (for
each unit, the ONNX file with the producing conv's filter and bias zeroed, a new onnxruntime
session, the images run through it). The three give the same per-unit score changes (checked).

    python benchmarks/bench_ablation.py [--layer relu5] [--images 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import pyanalyzer as pa
from pyanalyzer.data.defaults import SyntheticImages
from pyanalyzer.methods.ablation import Ablation

ROOT = Path(__file__).resolve().parents[1]


def brute_force(path: Path, conv_out: str, units: list[int], x: np.ndarray) -> np.ndarray:
    """Mean score change per unit, one zeroed-weights model per unit."""
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if conv_out in n.output)
    inits = {i.name: i for i in proto.graph.initializer}
    base = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = base.get_inputs()[0].name
    y0 = base.run(None, {name: x})[0].astype(np.float64)
    out = []
    for u in units:
        edited = onnx.ModelProto()
        edited.CopyFrom(proto)
        e_inits = {i.name: i for i in edited.graph.initializer}
        for w in node.input[1:]:
            arr = numpy_helper.to_array(inits[w]).copy()
            arr[u] = 0
            e_inits[w].CopyFrom(numpy_helper.from_array(arr, w))
        sess = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
        out.append((sess.run(None, {name: x})[0] - y0).mean(0))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="relu5")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path = ROOT / "models" / "default.onnx"
    model = pa.load_model(path, check_parity=False)
    src = SyntheticImages.for_model(model.preprocessing, args.images)
    spec = model.preprocessing
    x = spec.normalize(np.stack([src.pixels(i, spec) for i in range(len(src))])).astype(np.float32)
    layer = model.layer(args.layer)
    units = list(range(int(layer.channels or 0)))
    producer = next(n for n in model.proto.graph.node if layer.name in n.output)
    conv_out = producer.input[0]  # the conv before the ReLU

    def ours(cut: str) -> tuple[float, np.ndarray]:
        a = Ablation(model, layer=args.layer, top=0, progress=False)
        if cut == "whole":
            a._setup = lambda x, a=a: a._use("whole")  # type: ignore[method-assign]
        t = time.perf_counter()
        r = a.run(src)
        return time.perf_counter() - t, r.delta_score

    times: dict[str, list[float]] = {"tail": [], "whole": [], "brute": []}
    results = {}
    for _ in range(args.runs):
        for cut in ("tail", "whole"):
            dt, d = ours(cut)
            times[cut].append(dt)
            results[cut] = d
        t = time.perf_counter()
        results["brute"] = brute_force(path, conv_out, units, x)
        times["brute"].append(time.perf_counter() - t)
    for k in ("whole", "brute"):
        np.testing.assert_allclose(results["tail"], results[k], rtol=1e-3, atol=1e-4)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.layer}: {len(units)} units x {args.images} images, {args.runs} runs (median)")
    for k, label in (("tail", "mask input, graph cut after the layer (pyanalyzer)"),
                     ("whole", "mask input, whole graph"),
                     ("brute", "brute force: an edited model per unit")):  # fmt: skip
        print(f"  {label:<52} {med[k]:7.2f} s  ({', '.join(f'{v:.2f}' for v in times[k])})")
    print(f"speed-up over the whole graph: {med['whole'] / med['tail']:.2f}x")
    print(f"speed-up over the brute force: {med['brute'] / med['tail']:.2f}x")


if __name__ == "__main__":
    main()
