"""Check and time pyanalyzer's CUDA kernels against the CPU reference, on a GPU machine.

Run from the repository root after building the package there, e.g. on a machine with no
network (build requirements already installed)::

    rm -rf CMakeCache.txt CMakeFiles   # stale in-source CMake state from another machine
    pip install -e . --no-build-isolation --no-deps
    python benchmarks/gpu_check.py            # add --large for the 64-bit indexing path

Every check prints its findings and returns PASS/FAIL; the script ends with a summary and
exits with status 1 when any check failed. CUDA results must be BITWISE equal to the CPU's:
both sum shared switches in the same order (see csrc/include/pyanalyzer/unpool.h).

To add a kernel (tally, quantile on CUDA), write a ``check_...`` function returning a
:class:`Result` and append it to ``CHECKS`` at the bottom (marked ``ADD NEW CHECKS HERE``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pyanalyzer import _backend


@dataclass
class Result:
    name: str
    ok: bool
    detail: str = ""


def make_pool_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool,
    ties: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(values, switches) from torch's max_pool2d on fresh random data."""
    import torch
    import torch.nn.functional as F

    if ties:  # integer-valued: many windows tie, torch's switches pick the winners
        x = rng.integers(0, 3, size=shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape, dtype=np.float32)
    _, switches = F.max_pool2d(
        torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode, return_indices=True
    )
    values = rng.standard_normal(tuple(switches.shape), dtype=np.float32)
    return values, switches.numpy()


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    )


def check_info() -> Result:
    info = _backend.info()
    for key, value in info.items():
        print(f"    {key}: {value}")
    ok = info["cuda_module_loaded"] and info["cuda_devices"] > 0
    try:
        chosen = _backend.kernels("auto").__name__
    except Exception as exc:  # reported, not raised
        return Result("backend info", False, f"kernels('auto') raised {exc!r}")
    print(f"    kernels('auto') -> {chosen}")
    ok = ok and chosen == "pyanalyzer._core_cuda"
    detail = "" if ok else f"CUDA unusable: {info['cuda_module_error'] or 'no device visible'}"
    return Result("backend info", ok, detail)


# (name, [N, C, H, W], kernel, stride, padding, dilation, ceil_mode, ties)
UNPOOL_CASES = [
    ("2x2/2", (4, 16, 32, 32), (2, 2), (2, 2), (0, 0), (1, 1), False, True),
    ("3x3/2 alexnet conv1", (8, 96, 55, 55), (3, 3), (2, 2), (0, 0), (1, 1), False, True),
    ("3x3/2 alexnet conv5", (16, 256, 13, 13), (3, 3), (2, 2), (0, 0), (1, 1), False, False),
    ("3x3/2 pad1", (4, 32, 28, 28), (3, 3), (2, 2), (1, 1), (1, 1), False, True),
    ("3x3/1 pad1", (4, 32, 20, 20), (3, 3), (1, 1), (1, 1), (1, 1), False, True),
    ("3x3/1 pad1 dil2", (2, 16, 23, 19), (3, 3), (1, 1), (1, 1), (2, 2), False, True),
    ("3x2/2x1 pad(1,0)", (2, 8, 17, 12), (3, 2), (2, 1), (1, 0), (1, 1), False, True),
    ("3x3/2 ceil", (2, 8, 20, 20), (3, 3), (2, 2), (0, 0), (1, 1), True, True),
    ("empty batch", (0, 8, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False, True),
]


def check_unpool_equality() -> Result:
    rng = np.random.default_rng(2024)
    cpu, gpu = _backend.kernels("cpu"), _backend.kernels("cuda")
    failures = []
    for name, shape, k, s, p, d, ceil, ties in UNPOOL_CASES:
        values, switches = make_pool_case(rng, shape, k, s, p, d, ceil, ties)
        args = (values, switches, shape[2], shape[3], k, s, p, d)
        want, got = cpu.unpool(*args), gpu.unpool(*args)
        same = bitwise_equal(want, got)
        worst = float(np.max(np.abs(want - got))) if want.size and want.shape == got.shape else 0.0
        print(
            f"    {name:24s} {str(shape):22s} {'bitwise equal' if same else f'DIFFERS (max {worst:g})'}"
        )
        if not same:
            failures.append(name)
    return Result("unpool CUDA == CPU (bitwise)", not failures, ", ".join(failures))


def check_unpool_validation() -> Result:
    """The CUDA module rejects bad switches on the host, like the CPU one."""
    gpu = _backend.kernels("cuda")
    values = np.ones((1, 1, 2, 2), np.float32)
    switches = np.array([[[[0, 2], [8, 99]]]], np.int64)
    try:
        gpu.unpool(values, switches, 4, 4, (2, 2), (2, 2), (0, 0), (1, 1))
    except ValueError as exc:
        print(f"    out-of-range switch -> ValueError: {exc}")
        return Result("unpool CUDA validation", True)
    return Result("unpool CUDA validation", False, "out-of-range switch was accepted")


def _time(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_unpool() -> Result:
    shape = (64, 256, 27, 27)
    rng = np.random.default_rng(7)
    values, switches = make_pool_case(rng, shape, (3, 3), (2, 2), (0, 0), (1, 1), False, False)
    args = (values, switches, 27, 27, (3, 3), (2, 2), (0, 0), (1, 1))
    cpu, gpu = _backend.kernels("cpu"), _backend.kernels("cuda")
    t_cpu = _time(lambda: cpu.unpool(*args))
    t_gpu = _time(lambda: gpu.unpool(*args))
    same = bitwise_equal(cpu.unpool(*args), gpu.unpool(*args))
    print(f"    unpool {shape} 3x3/2 (pooled {values.shape}), median of 10:")
    print(
        f"      CPU  ({_backend.info()['omp_max_threads']} OpenMP threads): {t_cpu * 1e3:8.2f} ms"
    )
    print(f"      CUDA (incl. host<->device copies):  {t_gpu * 1e3:8.2f} ms")
    print(f"      CPU / CUDA = {t_cpu / t_gpu:.2f}x   (bitwise equal: {same})")
    return Result("unpool timing 64x256x27x27", same, "" if same else "results differ")


def check_unpool_large() -> Result:
    """Over 2**30 output pixels: exercises the 64-bit indexing path of the CUDA kernel."""
    rng = np.random.default_rng(9)
    n, c, h, w = 1, 260, 2048, 2048  # 1.09e9 output pixels (4.4 GB)
    ho, wo = h // 2, w // 2
    # Non-overlapping 2x2/2 switches drawn directly: a random pixel of each window.
    dy = rng.integers(0, 2, size=(n, c, ho, wo), dtype=np.int64)
    dx = rng.integers(0, 2, size=(n, c, ho, wo), dtype=np.int64)
    rows = (2 * np.arange(ho, dtype=np.int64))[:, None] + dy
    cols = (2 * np.arange(wo, dtype=np.int64))[None, :] + dx
    switches = rows * w + cols
    del dy, dx, rows, cols
    values = rng.standard_normal(switches.shape, dtype=np.float32)
    args = (values, switches, h, w, (2, 2), (2, 2), (0, 0), (1, 1))
    same = bitwise_equal(
        _backend.kernels("cpu").unpool(*args), _backend.kernels("cuda").unpool(*args)
    )
    print(f"    [{n}, {c}, {h}, {w}] 2x2/2: {'bitwise equal' if same else 'DIFFERS'}")
    return Result("unpool CUDA 64-bit indexing", same)


# The checks, in order. ADD NEW CHECKS HERE (e.g. check_tally_equality, check_quantile_cuda).
CHECKS: list[Callable[[], Result]] = [
    check_info,
    check_unpool_equality,
    check_unpool_validation,
    bench_unpool,
]
LARGE_CHECKS: list[Callable[[], Result]] = [check_unpool_large]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also run the >4 GB checks")
    args = parser.parse_args()

    results: list[Result] = []
    for check in CHECKS + (LARGE_CHECKS if args.large else []):
        print(f"== {check.__name__}", flush=True)
        try:
            result = check()
        except Exception as exc:  # one broken check must not hide the others
            traceback.print_exc()
            result = Result(check.__name__, False, f"raised {type(exc).__name__}: {exc}")
        results.append(result)
        if check is check_info and not result.ok:
            print("   CUDA is not usable; skipping the remaining checks")
            break

    print("\n== summary")
    for r in results:
        print(f"  {'PASS' if r.ok else 'FAIL'}  {r.name}{'  -- ' + r.detail if r.detail else ''}")
    failed = [r for r in results if not r.ok]
    print(
        f"\n{'FAIL' if failed else 'PASS'}: {len(results) - len(failed)}/{len(results)} checks passed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
