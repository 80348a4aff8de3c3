"""Start-up of the commands that need no gradients: how long from process start until the
command prints (``info --no-parity``, ``cache ls``), or reaches its first forward batch
(``dissect``), and whether torch / onnx2torch were imported on the way.

Each command runs in a fresh ``python`` process (median of ``--runs``); the time is measured from
before the interpreter starts (the parent's clock) to the moment the child reaches the point
(its clock, the same wall clock). The targets of the issue: ``info --no-parity`` under 1.0 s,
``dissect`` at its first forward batch within 1.0 s.

    python benchmarks/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "models" / "default.onnx")

_CHILD = r"""
import json, sys, time
mark = {}
if PATCH:  # only where the command imports it anyway (the wrapper must not add imports)
    import pyanalyzer.model.forward as fwd
    real = fwd.ForwardEngine.iter_layers
    def first_batch(self, *a, **k):
        for i, item in enumerate(real(self, *a, **k)):
            if i == 0 and "first_batch" not in mark:
                mark["first_batch"] = time.time()
            yield item
    fwd.ForwardEngine.iter_layers = first_batch
from pyanalyzer.cli import main
try:
    main(ARGS)
except SystemExit as e:
    code = e.code
mark["end"] = time.time()
sys.stderr.write("\nMARK " + json.dumps({**mark, "code": code,
                 "torch": "torch" in sys.modules, "onnx2torch": "onnx2torch" in sys.modules}) + "\n")
"""


def run(args: list[str]) -> dict:
    code = _CHILD.replace("ARGS", repr(args)).replace("PATCH", repr(args[0] == "dissect"))
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    line = [x for x in out.stderr.splitlines() if x.startswith("MARK ")][-1]
    mark = json.loads(line[5:])
    return {
        "end": mark["end"] - t0,
        "first_batch": mark["first_batch"] - t0 if "first_batch" in mark else None,
        "code": mark["code"], "torch": mark["torch"], "onnx2torch": mark["onnx2torch"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store = str(Path(d) / "store")
        # the synthetic concept dataset made once (every later dissect finds it)
        run(["dissect", MODEL, "--layer", "relu6", "--n-images", "200", "--out", f"{d}/warm",
             "--store", store, "--no-progress"])  # fmt: skip
        interp = statistics.median(
            [_time([sys.executable, "-c", "pass"]) for _ in range(opts.runs)]
        )
        print(f"python itself: {interp:.3f} s")

        def dissect(k: int) -> list[str]:
            # a new store each run, so that it computes (the concept dataset beside the stores
            # is shared: made once above)
            return ["dissect", MODEL, "--layer", "relu5", "--n-images", "200", "--out",
                    f"{d}/out{k}", "--store", f"{d}/s{k}", "--no-progress"]  # fmt: skip

        cases = {
            "info --no-parity": (lambda k: ["info", MODEL, "--no-parity"], "end", 1.0),
            "cache ls": (lambda k: ["cache", "ls", "--store", store], "end", None),
            "dissect (first forward batch)": (dissect, "first_batch", 1.0),
        }
        for label, (make, point, target) in cases.items():
            found = [run(make(k)) for k in range(opts.runs)]
            times = [f[point] for f in found]
            med = statistics.median(times)
            imported = [m for m in ("torch", "onnx2torch") if any(f[m] for f in found)]
            goal = f"  (target < {target:.1f} s)" if target else ""
            print(
                f"{label:<32} {med:6.3f} s median ({', '.join(f'{t:.2f}' for t in times)})"
                f"{goal}; imports {', '.join(imported) or 'neither torch nor onnx2torch'}"
            )


def _time(cmd: list[str]) -> float:
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


if __name__ == "__main__":
    main()
