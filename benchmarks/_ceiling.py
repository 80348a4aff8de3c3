"""What batching can gain on this machine: the network's own forward + backward cost per image.

An optimisation that renders N images in one batch instead of one at a time saves the per-step
costs that do not grow with the batch (Python, dispatch, small-tensor overheads) and gains
whatever the hardware does better on bigger tensors. It cannot make the network's arithmetic
itself cheaper than the network alone at batch N. So

    ceiling = (one-by-one time per image and step) / (network alone, batch N, per image)

bounds the ratio of any batched implementation: it is what batching would give if every other
cost of the batched step were zero. Both benchmarks of iterative methods print it next to their
measured ratio, so that a target above the ceiling is recognisable as a hardware limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def network_ms_per_image(
    fn: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    batch: int,
    *,
    repeat: int = 20,
) -> float:
    """Milliseconds per image of ``fn(x).sum().backward()`` for ``x [batch, *shape]`` (a
    gradient with respect to ``x`` only, as the methods need; ``fn`` picks the memory layout it
    runs in, as the method does): the fastest of ``repeat`` runs. On a shared machine noise only
    adds time, so the fastest run is the best estimate of the cost, and it errs on the side of
    a higher ceiling."""
    x = torch.rand(batch, *shape, requires_grad=True)
    times = []
    warm = 5  # oneDNN creates and caches its primitives in the first rounds
    for i in range(warm + repeat):
        x.grad = None
        t0 = time.perf_counter()
        fn(x).sum().backward()
        if i >= warm:
            times.append(time.perf_counter() - t0)
    return min(times) * 1e3 / batch


def report(
    label: str,
    fn,
    shape,
    batch: int,
    one_by_one_ms: float,
    target: float,
    batched_ms: float | None = None,
    overhead_target: float = 1.15,
) -> float:
    """Print the network's cost per image at batch 1 and ``batch``, and the ceiling of the
    batched/one-by-one ratio; with ``batched_ms`` (the method's batched cost per image and
    step), last, that cost over the network alone at the same batch, against
    ``overhead_target``. Returns the ceiling."""
    single = network_ms_per_image(fn, shape, 1, repeat=50)
    many = network_ms_per_image(fn, shape, batch)
    ceiling = one_by_one_ms / many
    print(
        f"network alone ({label}, forward + backward), per image: batch 1 {single:.3f} ms, "
        f"batch {batch} {many:.3f} ms ({single / many:.2f}x)"
    )
    print(
        f"ceiling     {ceiling:8.2f}x  = one-by-one {one_by_one_ms:.3f} ms per image and step / "
        f"network alone at batch {batch}"
        + (f"; the target {target:g}x is above it on this machine" if ceiling < target else "")
    )
    if batched_ms is not None:
        print(
            f"overhead    {batched_ms / many:8.2f}x  = batched {batched_ms:.3f} ms per image and "
            f"step / network alone at batch {batch} {many:.3f} ms (target <= "
            f"{overhead_target:g}x)"
        )
    return ceiling
