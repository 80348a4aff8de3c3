"""DeconvNet unpooling: pyanalyzer's unpool kernel vs torch's max-pool backward, side by side.

Both do the same job: scatter max-pool values (a gradient, in torch's case) back to the
switches that the max-pool chose, summing where overlapping pools share a switch. The contender
is the kernel that autograd runs for F.max_pool2d, called directly:
``torch.ops.aten.max_pool2d_with_indices_backward``. pyanalyzer's kernel also checks every
switch against its own pool window (torch does not); that check is part of what is timed.

1. AlexNet-sized maps, overlapping pools: [64, 256, 27, 27] pooled 3x3 stride 2. Target: ours
   >= 1.0x torch (ratio = torch time / our time).
2. The same maps, non-overlapping 2x2 stride 2 pools.

Both sides run with all CPU cores (torch.set_num_threads and OMP_NUM_THREADS = os.cpu_count(),
set before either library starts its thread pool), are warmed up, and are timed interleaved
(ours, torch, ours, ...), median of --repeat runs each. Both allocate a fresh output per call,
as a user's call does, and faulting in that fresh memory is a large part of both times: numpy
(hence ours) advises transparent huge pages for large arrays, torch's CPU allocator does not
unless THP_MEM_ALLOC_ENABLE=1. A context row times just a fresh zeroed output with each
allocator; run with THP_MEM_ALLOC_ENABLE=1 to compare both on huge pages. Results are compared: exactly on integer-valued data (every sum is exact),
with allclose on normal data. Where a CUDA device is visible, a CUDA row follows each section
(ours takes host arrays, so its time includes the copies to and from the device; torch's
tensors stay on the device).

    python benchmarks/bench_unpool.py [--batch 64] [--channels 256] [--size 27] [--repeat 15]
"""

from __future__ import annotations

import os

# Before torch or pyanalyzer._core start an OpenMP runtime: the same thread count for both.
os.environ["OMP_NUM_THREADS"] = str(os.cpu_count())

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pyanalyzer import _backend  # noqa: E402

TARGET = 1.0


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds per call of each function, run in turn repeat times after a warm-up."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def section(title: str, args: argparse.Namespace, kernel: int, stride: int) -> bool:
    shape = (args.batch, args.channels, args.size, args.size)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    pooled, switches = F.max_pool2d(x, kernel, stride, return_indices=True)
    geometry = ([kernel] * 2, [stride] * 2, [0, 0], [1, 1])
    grads = {
        "integer": torch.from_numpy(rng.integers(-8, 9, pooled.shape).astype(np.float32)),
        "normal": torch.from_numpy(rng.standard_normal(pooled.shape, dtype=np.float32)),
    }
    sw = switches.numpy()
    print(
        f"\n{title}: input {list(shape)}, pool {kernel}x{kernel}/{stride} -> {list(pooled.shape)}"
    )

    def ours(g: torch.Tensor, device: str = "cpu") -> np.ndarray:
        return _backend.unpool(g.numpy(), sw, shape[2:], kernel, stride, 0, 1, device=device)

    def theirs(g: torch.Tensor, xx: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.max_pool2d_with_indices_backward(g, xx, *geometry, False, idx)

    # Equality first: exact where every sum is exact, allclose otherwise.
    ok = True
    for kind, g in grads.items():
        got, want = ours(g), theirs(g, x, switches).numpy()
        same = np.array_equal(got, want) if kind == "integer" else np.allclose(got, want)
        print(
            f"   {kind}-valued grad: ours vs torch {'equal' if same else 'DIFFER'}"
            f"{' (exact)' if kind == 'integer' else ' (allclose)'}"
        )
        ok &= same

    g = grads["normal"]
    fns = {
        "ours": lambda: ours(g),
        "torch": lambda: theirs(g, x, switches),
        "np_zeroed": lambda: np.empty(shape, np.float32).fill(0),
        "torch_zeros": lambda: torch.zeros(shape),
    }
    t = interleaved(fns, args.repeat)
    ratio = t["torch"] / t["ours"]
    print(f"   {'CPU, median of ' + str(args.repeat):24s} {'time':>10s}")
    print(f"   {'pyanalyzer unpool':24s} {t['ours'] * 1e3:8.2f} ms")
    print(f"   {'torch max-pool backward':24s} {t['torch'] * 1e3:8.2f} ms")
    print(
        f"   (context: a fresh zeroed output alone takes {t['np_zeroed'] * 1e3:.2f} ms with "
        f"numpy, 1 thread; {t['torch_zeros'] * 1e3:.2f} ms with torch.zeros)"
    )
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"   ratio torch / ours = {ratio:.2f}x   (target >= {TARGET:.1f}x: {verdict})")

    if _backend.info()["cuda_devices"] > 0:
        dev = torch.device("cuda")
        gx, gg, gi = x.to(dev), g.to(dev), switches.to(dev)

        def theirs_cuda() -> None:
            theirs(gg, gx, gi)
            torch.cuda.synchronize()

        tc = interleaved({"ours": lambda: ours(g, "cuda"), "torch": theirs_cuda}, args.repeat)
        same = np.array_equal(ours(g, "cuda"), ours(g, "cpu"))
        print(f"   {'CUDA':24s} {'time':>10s}")
        print(
            f"   {'pyanalyzer (+ copies)':24s} {tc['ours'] * 1e3:8.2f} ms   "
            f"(bitwise equal to CPU: {same})"
        )
        print(f"   {'torch (on device)':24s} {tc['torch'] * 1e3:8.2f} ms")
        ok &= same
    return ok and ratio >= TARGET


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--size", type=int, default=27)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    if args.repeat < 10:
        ap.error("--repeat must be >= 10")

    torch.set_num_threads(os.cpu_count() or 1)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    print(
        f"threads: torch {torch.get_num_threads()}, "
        f"pyanalyzer OpenMP {_backend.info()['omp_max_threads']} (os.cpu_count() = {os.cpu_count()}); "
        f"torch huge-page allocations {'on' if thp else 'off'} (THP_MEM_ALLOC_ENABLE)"
    )
    results = [
        section("1. overlapping pools (AlexNet)", args, 3, 2),
        section("2. non-overlapping pools", args, 2, 2),
    ]
    print("\nall targets met, results equal" if all(results) else "\nSOME TARGET OR CHECK FAILED")


if __name__ == "__main__":
    main()
