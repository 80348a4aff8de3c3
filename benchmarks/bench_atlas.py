"""The model atlas: build time cold and warm, and how a page of a 2,048-unit layer loads.

1. ``pyanalyzer atlas models/default.onnx --layer relu5 --layer relu6`` with the default
   settings (1,000 synthetic concept scenes, 256 actmax steps, 9 patches with DeconvNet
   projections, 4 inversion samples of 200 steps), as a user runs it: cold (a new store and
   concept-data folder: everything computed, the synthetic dataset made) and warm (the same
   command again: every part from the store, the site rewritten). Wall time of the whole
   process, imports included.
2. A layer of 2,048 units (a generated model: one 3x3 convolution of 2,048 channels, stride 2,
   on 32x32 inputs; cheap settings: 2 pixel-space actmax steps without transforms, the top
   patch only, no projection, no inversion):
   the time to write its site, then in headless Chromium (Playwright, a 1280x800 window) the
   layer page's size, its time to the load event, how many of its images are fetched at load
   (lazy loading) and the time to sort its cards by IoU and to filter them.

    python benchmarks/bench_atlas.py [--skip-cold-warm] [--skip-wide] [--units 2048]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cli_atlas(work: Path, *args: str) -> float:
    env = {**os.environ, "PYANALYZER_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "pyanalyzer", "atlas", str(ROOT / "models" / "default.onnx"),
           "--layer", "relu5", "--layer", "relu6", "--out", str(work / "site"),
           "--store", str(work / "store"), *args]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"atlas failed: {proc.stderr[-2000:]}")
    print("   ", proc.stdout.strip().splitlines()[-1])
    return seconds


def cold_warm(warm_runs: int) -> None:
    print("1. atlas of relu5 + relu6 of the default model, default settings")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        cold = cli_atlas(work)
        warm = [cli_atlas(work) for _ in range(warm_runs)]
        files = sum(len(f) for _, _, f in os.walk(work / "site"))
        size = sum(p.stat().st_size for p in (work / "site").rglob("*") if p.is_file())
    print(f"   cold {cold:.1f} s; warm {', '.join(f'{w:.1f}' for w in warm)} s "
          f"(median {float(np.median(warm)):.1f} s); site {files} files, {size / 2**20:.1f} MiB")  # fmt: skip


def wide_model(path: Path, channels: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, channels).astype(np.float32)
    fc = rng.normal(0, 0.05, (4, channels)).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"
        ),
        helper.make_node("Add", ["conv", "b"], ["pre"], name="bias"),
        helper.make_node("Relu", ["pre"], ["wide"], name="wide"),
        helper.make_node("GlobalAveragePool", ["wide"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "wide",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b.reshape(1, -1, 1, 1), "b"),
         numpy_helper.from_array(fc, "fc")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def wide(units: int) -> None:
    import pyanalyzer as pa
    from pyanalyzer.data.broden import BrodenDataset, synth_dataset

    print(f"2. a layer of {units} units")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model = pa.load_model(wide_model(work / "wide.onnx", units), {"preset": "unit"},
                              check_parity=False)  # fmt: skip
        alias = model.layer("wide").alias
        ds = BrodenDataset(synth_dataset(work / "ds", n_images=40, size=32, progress=False))
        atlas = pa.Atlas(
            model, layers=[alias], samples=0,
            actmax={"steps": 2, "param": "pixel", "regularizers": "none"},
            patches={"k": 1, "projection": "none"}, store=pa.Store(work / "store"),
            progress=False,
        )  # fmt: skip
        t0 = time.perf_counter()
        result = atlas.run(ds)
        t1 = time.perf_counter()
        pa.write_atlas(result, work / "site", model=model, dataset=ds, progress=False)
        t2 = time.perf_counter()
        page = work / "site" / "layers" / alias / "index.html"
        print(f"   analyses {t1 - t0:.1f} s; site written in {t2 - t1:.1f} s; layer page "
              f"{page.stat().st_size / 2**20:.2f} MiB")  # fmt: skip
        browse(page, units)


def browse(page: Path, units: int) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("   (no playwright: the page load is not measured)")
        return
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        loads, fetched, sorts, filters = [], [], [], []
        for _ in range(3):
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            tab = ctx.new_page()
            requests: list[str] = []
            tab.on("request", lambda r, requests=requests: requests.append(r.url))
            t0 = time.perf_counter()
            tab.goto(page.as_uri(), wait_until="load")
            loads.append(time.perf_counter() - t0)
            fetched.append(sum(1 for u in requests if u.endswith(".png")))
            sorts.append(tab.evaluate(
                "() => { const t = performance.now(); const s = document.getElementById('sort');"
                " s.value = 'iou'; s.dispatchEvent(new Event('change'));"
                " document.body.offsetHeight; return performance.now() - t; }"))  # fmt: skip
            filters.append(tab.evaluate(
                "() => { const t = performance.now(); const c = document.getElementById("
                "'detectors'); c.checked = true; c.dispatchEvent(new Event('change'));"
                " document.body.offsetHeight; return performance.now() - t; }"))  # fmt: skip
            images = tab.evaluate("document.querySelectorAll('#units img').length")
            ctx.close()
        browser.close()
    print(f"   {units} cards, {images} images: load event in "
          f"{', '.join(f'{x * 1000:.0f}' for x in loads)} ms; images fetched at load "
          f"{', '.join(map(str, fetched))}; sort by IoU {', '.join(f'{x:.0f}' for x in sorts)} "
          f"ms; detectors only {', '.join(f'{x:.0f}' for x in filters)} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cold-warm", action="store_true")
    ap.add_argument("--skip-wide", action="store_true")
    ap.add_argument("--warm-runs", type=int, default=2)
    ap.add_argument("--units", type=int, default=2048)
    args = ap.parse_args()
    if not args.skip_cold_warm:
        cold_warm(args.warm_runs)
    if not args.skip_wide:
        wide(args.units)


if __name__ == "__main__":
    main()
