"""The result store's costs: what a write or read costs against the store's size, how fast large
arrays are written, and the codec measurements behind ``pyanalyzer.store.CODECS``.

Run by hand (not by pytest)::

    python benchmarks/bench_store.py                       # sizes 0, 1 and 4 GiB: a few minutes
    python benchmarks/bench_store.py --sizes 0,0.25 --array-mib 64 --codec-mib 16   # quick

Three parts:

1. Codecs. For each sample dtype (random float32, ReLU-like float32 activations, small int64
   counts, uint8 images, and a few more), each candidate codec (none, lzf, gzip-1, each with
   and without shuffle) writes the sample into an HDF5 file with the store's 1 MiB chunks;
   printed: MB/s (the best of three runs) and the size ratio, the codec the rule picks (the
   smallest at >= 200 MB/s; codecs within 20 % of that size count as equally small and the
   fastest of them wins) and the codec the store picks (``CODECS`` tiers and its probe).
2. Large writes. One array per sample dtype goes through ``Store.put`` with fsync off and on;
   printed: MB/s (target >= 200 with fsync off) and the codec the store picked.
3. Small operations against store size. A 40-byte put and a small get are timed (median of
   many) in an empty store, then after the store was filled with incompressible random float
   data up to each size; printed as ratios to the empty store (target <= 2x). Sizes that do not
   fit on the disk (``shutil.disk_usage``) are skipped with a message.

Everything is written under a temporary folder (``--dir``, default /tmp), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyanalyzer.store._hdf5 as sm  # noqa: E402  (the codec internals)
from pyanalyzer.store import Key, Store  # noqa: E402

TARGET_MBPS = 200.0
TARGET_RATIO = 2.0
MODEL = "b" * 64
CODECS = ["none", "lzf", "lzf+shuffle", "gzip1", "gzip1+shuffle"]


def samples(mib: float, seed: int = 0) -> dict[str, np.ndarray]:
    """The sample arrays, about ``mib`` MiB each (rows of 1024 values, or 224x224x3 images)."""
    rng = np.random.default_rng(seed)
    n = int(mib * 2**20) // 4096 * 1024  # float32 values, whole rows

    def relu(k: int, zeros: float, dtype: type) -> np.ndarray:  # ReLU maps: `zeros` of them 0
        shift = {0.69: 0.5, 0.9: 1.2816}[zeros]
        return np.maximum(rng.standard_normal(k).astype(dtype) - shift, 0).reshape(-1, 1024)

    yy, xx = np.mgrid[0:224, 0:224]
    base = (np.sin(xx / 17.0) + np.cos(yy / 23.0)) * 60 + 128  # smooth shapes + sensor noise
    imgs = np.empty((max(1, 4 * n // (224 * 224 * 3)), 224, 224, 3), np.uint8)
    for i in range(len(imgs)):
        noise = rng.normal(0, 6, (224, 224, 3))
        imgs[i] = np.clip(base[..., None] * (0.6 + 0.4 * ((i % 7) / 7)) + noise, 0, 255)
    return {
        "float32 random": rng.standard_normal(n, dtype=np.float32).reshape(-1, 1024),
        "float32 acts 69% 0": relu(n, 0.69, np.float32),
        "float32 acts 90% 0": relu(n, 0.9, np.float32),
        "int64 counts": rng.poisson(3, n // 2).astype(np.int64).reshape(-1, 1024),
        "int64 < 10^4": rng.integers(0, 10_000, n // 2, dtype=np.int64).reshape(-1, 1024),
        "uint8 images": imgs,
        "float64 acts 69% 0": relu(n // 2, 0.69, np.float64),
        "int32 counts": rng.poisson(3, n).astype(np.int32).reshape(-1, 1024),
        "bool masks": (rng.random(n * 4) < 0.05).reshape(-1, 1024),
    }


def write_rate(folder: Path, arr: np.ndarray, codec: str, repeat: int = 3) -> tuple[float, float]:
    """(MB/s, size ratio) of writing ``arr`` with ``codec`` in the store's chunking; the best of
    ``repeat`` runs (other processes on a shared machine only ever slow a run down)."""
    kwargs = dict(sm._CODEC_ARGS[codec])
    if codec != "none":
        kwargs["chunks"] = sm._chunk_shape(arr.shape, arr.dtype.itemsize)
    best, size = 0.0, 0
    for _ in range(repeat):
        path = folder / "codec.h5"
        t0 = time.perf_counter()
        with h5py.File(path, "w", libver=sm._LIBVER) as f:
            d = f.create_dataset("x", data=arr, **kwargs)
            f.flush()
            size = d.id.get_storage_size()
        best = max(best, arr.nbytes / (time.perf_counter() - t0) / 1e6)
        path.unlink()
    return best, size / arr.nbytes


def chosen(arr: np.ndarray) -> str:
    """The codec the store picks for ``arr`` (``CODECS`` tiers and the probe)."""
    args = sm._codec(arr)
    args = {k: v for k, v in args.items() if k in ("compression", "compression_opts", "shuffle")}
    return next(k for k, v in sm._CODEC_ARGS.items() if v == args)


def by_rule(rates: dict[str, tuple[float, float]]) -> str:
    """The smallest codec at >= TARGET_MBPS; codecs within 20 % of that size count as equally
    small and the fastest of them wins (a slower codec must save a fifth to be worth it)."""
    fast = {c: r for c, r in rates.items() if r[0] >= TARGET_MBPS} or {"none": rates["none"]}
    smallest = min(q for _, q in fast.values())
    return max((c for c, (_, q) in fast.items() if q <= 1.2 * smallest), key=lambda c: fast[c][0])


def codec_table(folder: Path, mib: float) -> None:
    print(f"\n== 1. codecs: {mib:g} MiB a sample, 1 MiB chunks; MB/s (best of 3), size ratio;"
          f" * below {TARGET_MBPS:.0f} MB/s")  # fmt: skip
    print(f"{'sample':19s} {'probe':>5s} " + " ".join(f"{c:>17s}" for c in CODECS)
          + f"  {'best by rule':>14s} {'store picks':>14s}")  # fmt: skip
    for name, arr in samples(mib).items():
        rates = {c: write_rate(folder, arr, c) for c in CODECS}
        cells = " ".join(f"{r:5.0f} MB/s {q:5.3f}" + ("*" if r < TARGET_MBPS else " ")
                         for r, q in rates.values())  # fmt: skip
        best = by_rule(rates)
        pick = chosen(arr)
        note = "" if pick == best else f"  (picked: {rates[pick][0]:.0f} MB/s {rates[pick][1]:.3f})"
        print(f"{name:19s} {sm._probe(arr):5.2f} {cells}  {best:>14s} {pick:>14s}{note}")
    print("  probe: size ratio of 4 x 4 KiB of the array under zlib-1 (it picks the CODECS tier);"
          " best by rule: the smallest at >= 200 MB/s, and of codecs within 20 % of that size"
          " the fastest")  # fmt: skip


def put_rate(store: Store, arr: np.ndarray, i: int, repeat: int = 2) -> tuple[float, str]:
    """(MB/s of ``Store.put`` of ``arr``: the best of ``repeat``, the codec in the file)."""
    best, codec = 0.0, ""
    for r in range(repeat):
        p = {"i": i, "r": r, "fsync": store.fsync}
        key = Key.make(MODEL, "large", p)
        os.sync()  # write-back of the previous run does not slow this one
        t0 = time.perf_counter()
        store.put(key, {"x": arr}, params=p)
        best = max(best, arr.nbytes / (time.perf_counter() - t0) / 1e6)
        with h5py.File(store.path / "entries" / key.relpath, "r") as f:
            d = f["arrays/x"]
            codec = (d.compression or "none") + (str(d.compression_opts or "") if d.compression
                                                 == "gzip" else "") + ("+shuffle" if d.shuffle else "")  # fmt: skip
        store.remove(key)
    return best, codec


def large_writes(folder: Path, mib: float) -> None:
    print(f"\n== 2. Store.put of one {mib:g} MiB array, best of 2 (target >= {TARGET_MBPS:.0f}"
          " MB/s with fsync off)")  # fmt: skip
    print(f"{'sample':19s} {'codec used':>14s} {'fsync off':>12s} {'fsync on':>12s}")
    stores = {fs: Store(folder / f"large-{fs}", fsync=fs) for fs in (False, True)}
    for i, (name, arr) in enumerate(samples(mib, seed=1).items()):
        off, codec = put_rate(stores[False], arr, i)
        on, _ = put_rate(stores[True], arr, i)
        flag = "" if off >= TARGET_MBPS else "  below target"
        print(f"{name:19s} {codec:>14s} {off:7.0f} MB/s {on:7.0f} MB/s{flag}")
    for s in stores.values():
        shutil.rmtree(s.path)


def _median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def small_ops(store: Store, synced: Store, round_: int, n: int) -> dict[str, float]:
    """Median ms of a 40-byte put (fsync off and on), a small get, and a listing."""
    x = np.arange(5, dtype=np.int64)  # 40 bytes

    def put(i: int, s: Store = store) -> None:
        p = {"round": round_, "i": i, "fsync": s.fsync}
        s.put(Key.make(MODEL, "small", p), {"x": x}, params=p)

    keys = [Key.make(MODEL, "small", {"round": round_, "i": i, "fsync": False}) for i in range(n)]
    out = {"put": _median_ms(put, n)}
    out["put, fsync"] = _median_ms(lambda i: put(i, synced), max(10, n // 4))
    out["get"] = _median_ms(lambda i: store.get(keys[i]), n)
    store.entries()  # the index learns the new entries; the next listing is the warm one
    out["entries()"] = _median_ms(lambda i: store.entries(), 5)
    return out


def size_scaling(folder: Path, sizes_gib: list[float], n: int) -> None:
    print("\n== 3. small operations against store size (median ms; ratio to the empty store,"
          f" target <= {TARGET_RATIO:g}x for put and get; a listing reads the index, so it grows"
          " with the number of entries, not with their bytes)")  # fmt: skip
    store = Store(folder / "sized", fsync=False)
    synced = Store(folder / "sized", fsync=True)
    rng = np.random.default_rng(2)
    block = 64 * 2**20
    filled, base = 0, None
    for round_, gib in enumerate(sorted(sizes_gib)):
        want = int(gib * 2**30) // 4 * 4  # whole float32 values
        free = shutil.disk_usage(folder).free
        if want - filled > free - 2**30:
            print(f"  {gib:g} GiB: skipped, {free / 2**30:.1f} GiB free on {folder}")
            continue
        while filled < want:  # incompressible: stored raw at the size it has
            arr = rng.random(min(block, want - filled) // 4, dtype=np.float32)
            p = {"bulk": filled}
            store.put(Key.make(MODEL, "bulk", p), {"x": arr}, params=p)
            filled += arr.nbytes
        os.sync()  # so that background write-back does not blur the timings
        ops = small_ops(store, synced, round_, n)
        base = base or ops
        cells = "  ".join(f"{k} {v:6.2f} ms ({v / base[k]:4.2f}x)" for k, v in ops.items())
        print(f"  {filled / 2**30:5.2f} GiB, {len(store.entries()):4d} entries: {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,1,4", help="store sizes in GiB (default 0,1,4)")
    ap.add_argument("--array-mib", type=float, default=256, help="large-array size (MiB)")
    ap.add_argument("--codec-mib", type=float, default=64, help="codec sample size (MiB)")
    ap.add_argument("--n", type=int, default=200, help="small operations per size")
    ap.add_argument("--dir", default="/tmp", help="where the temporary store goes")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    folder = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    print(f"pyanalyzer store benchmark in {folder} ({os.cpu_count()} CPUs, h5py "
          f"{h5py.version.version}, HDF5 {h5py.version.hdf5_version})")  # fmt: skip
    t0 = time.perf_counter()
    try:
        codec_table(folder, args.codec_mib)
        large_writes(folder, args.array_mib)
        size_scaling(folder, sizes, args.n)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
