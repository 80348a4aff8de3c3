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

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def network_ms_per_image(
    fn: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    batch: int,
    *,
    repeat: int = 20,
) -> tuple[float, float]:
    """Milliseconds per image of ``fn(x).sum().backward()`` for ``x [batch, *shape]`` (a
    gradient with respect to ``x`` only, as the methods need; ``fn`` picks the memory layout it
    runs in, as the method does): ``(fastest, median)`` of ``repeat`` runs. On a shared machine
    noise only adds time, so the fastest run is the best estimate of the cost, and it errs on
    the side of a higher ceiling."""
    return network_ms_pair((fn,), shape, batch, repeat=repeat)[0]


def network_ms_pair(
    fns: tuple[Callable[[torch.Tensor], torch.Tensor], ...],
    shape: tuple[int, ...],
    batch: int,
    *,
    repeat: int = 20,
) -> list[tuple[float, float]]:
    """:func:`network_ms_per_image` of several networks, their passes alternated (in reversed
    order every other round) so that a slow spell of the shared machine hits all of them:
    ``[(fastest, median)]`` for each."""
    x = torch.rand(batch, *shape, requires_grad=True)
    times: list[list[float]] = [[] for _ in fns]
    warm = 5  # oneDNN creates and caches its primitives in the first rounds
    order = list(range(len(fns)))
    for i in range(warm + repeat):
        for k in order if i % 2 == 0 else order[::-1]:
            seconds = _timed_pass(fns[k], x)
            if i >= warm:
                times[k].append(seconds)
    return [(min(t) * 1e3 / batch, statistics.median(t) * 1e3 / batch) for t in times]


def _timed_pass(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Seconds of ``fn(x).sum().backward()``, the gradient with respect to ``x`` only."""
    x.grad = None
    t0 = time.perf_counter()
    fn(x).sum().backward()
    return time.perf_counter() - t0


def trivial_model(like, channels: int, folder: str | Path):  # type: ignore[no-untyped-def]
    """A network that costs next to nothing, with ``like``'s input and preprocessing: one 1x1
    convolution of stride 8 to ``channels`` channels and a ReLU (its layer ``relu1``). A method
    run on it times the method's own work per step (parametrization, transforms, loss,
    priors, optimiser), the network's share being negligible and measured."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    import pyanalyzer as pa

    spec = like.preprocessing
    c, (h, w) = spec.channels, spec.input_size
    weight = np.random.default_rng(0).standard_normal((channels, c, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv1"], kernel_shape=[1, 1],
                          strides=[8, 8], name="conv1"),
         helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1")],
        "trivial",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("relu1", TensorProto.FLOAT, ["N", channels, -(-h // 8), -(-w // 8)])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    path = Path(folder) / "trivial.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return pa.load_model(path, preprocessing=spec, check_parity=False)


def report(
    label: str,
    fn,
    shape,
    batch: int,
    one_by_one_ms: float,
    target: float,
    batched_ms: float | None = None,
    overhead_target: float = 1.15,
    own_ms: float | None = None,
    method_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Print the network's cost per image at batch 1 and ``batch``, and the ceiling of the
    batched/one-by-one ratio; with ``method_fn`` (the network as the method runs it, where
    that is less than ``fn``: each image's own unit alone), its cost at ``batch`` too; with
    ``own_ms`` (the method's own work per image and step, timed on :func:`trivial_model`),
    the floor of the overhead: what the overhead would be if the method's network and that
    work cost exactly what they cost apart; with ``batched_ms`` (the method's batched cost per
    image and step), last, that cost over the network alone's fastest pass at the same batch
    (:func:`interleaved` gives the like-for-like overhead). Returns the ceiling."""
    single, _ = network_ms_per_image(fn, shape, 1, repeat=50)
    if method_fn is None:
        many, many_median = network_ms_per_image(fn, shape, batch)
        runs = many
    else:  # the two networks' passes alternated, so that their ratio is one machine state's
        (many, many_median), (runs, _) = network_ms_pair((fn, method_fn), shape, batch)
    ceiling = one_by_one_ms / many
    print(
        f"network alone ({label}, forward + backward), per image: batch 1 {single:.3f} ms, "
        f"batch {batch} {many:.3f} ms ({single / many:.2f}x)"
    )
    if method_fn is not None:
        print(
            f"the method's network, per image: batch {batch} {runs:.3f} ms "
            f"({runs / many:.2f}x the network alone, passes alternated: each image's own unit "
            f"computed alone)"
        )
    print(
        f"ceiling     {ceiling:8.2f}x  = one-by-one {one_by_one_ms:.3f} ms per image and step / "
        f"network alone at batch {batch}"
        + (f"; the target {target:g}x is above it on this machine" if ceiling < target else "")
    )
    if own_ms is not None:
        floor = (runs + own_ms) / many
        which = "the method's network" if method_fn is not None else "network alone"
        print(
            f"floor       {floor:8.2f}x  = ({which} {runs:.3f} + the method's own work "
            f"{own_ms:.3f} ms per image and step, timed on a network that costs next to "
            f"nothing) / network alone"
            + (f"; the target {overhead_target:g}x is below it" if floor > overhead_target else "")
        )
    if batched_ms is not None:
        print(
            f"noise       {many_median / many:8.2f}x  = the network alone's median pass / its "
            f"fastest; the method's cost is a mean over its runs, so on a shared machine the "
            f"ratio below carries up to this factor; against the median: "
            f"{batched_ms / many_median:.2f}x"
        )
        print(
            f"fastest     {batched_ms / many:8.2f}x  = batched {batched_ms:.3f} ms per image and "
            f"step (a mean over its runs) / network alone at batch {batch} {many:.3f} ms (its "
            f"fastest pass)"
        )
    return ceiling


def interleaved(
    run: Callable[[], object],
    network: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    batch: int,
    label: str,
    *,
    target: float = 1.15,
) -> float:
    """Run ``run()`` once with the network alone (``network``, as in :func:`report`) timed
    between its steps: a progress listener (:func:`pyanalyzer._progress.set_listener`) runs one
    pass after each step of the bar whose label starts with ``label``, and the time spent in
    the listener is taken out of the run's. Each step and the pass beside it meet the same
    state of a shared machine, so their ratio is free of the slow spells that a mean over a run
    against a fastest pass timed apart carries. Prints both means and both medians, and last
    the overhead (the method's time per image and step over the network's mean pass) against
    ``target``; returns it."""
    from pyanalyzer._progress import set_listener

    x = torch.rand(batch, *shape, requires_grad=True)
    for _ in range(5):  # oneDNN creates and caches its primitives in the first passes
        _timed_pass(network, x)
    passes: list[float] = []
    steps: list[float] = []
    inside = 0.0  # seconds spent in the listener
    left = 0.0  # when the listener last returned

    def listener(bar: str, done: int, total: int) -> None:
        nonlocal inside, left
        if not bar.startswith(label) or done == 0:
            return
        t_in = time.perf_counter()
        if passes:  # the first step also holds the run's set-up
            steps.append(t_in - left)
        passes.append(_timed_pass(network, x))
        left = time.perf_counter()
        inside += left - t_in

    previous = set_listener(listener)
    try:
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
    finally:
        set_listener(previous)
    if not passes:
        raise RuntimeError(f"no progress bar labelled {label!r} moved during the run")
    method_ms = (total - inside) * 1e3 / (len(passes) * batch)
    network_ms = statistics.mean(passes) * 1e3 / batch
    step_med, pass_med = (statistics.median(v) * 1e3 / batch for v in (steps, passes))
    print(
        f"interleaved the batched run with the network alone timed after each of its {len(passes)} "
        f"steps, per image: method {method_ms:.3f} ms a step (the whole run, set-up included) "
        f"against a pass of {network_ms:.3f} ms (means); medians {step_med:.3f} against "
        f"{pass_med:.3f} ms ({step_med / pass_med:.2f}x)"
    )
    overhead = method_ms / network_ms
    print(
        f"overhead    {overhead:8.2f}x  = the batched run per image and step / the network alone timed "
        f"between its steps, at batch {batch} (target <= {target:g}x)"
    )
    return overhead


def alternate(
    rounds: int,
    run: Callable[[], object],
    switch: Callable[[bool], None],
    network: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    batch: int,
) -> tuple[dict[bool, list[float]], list[float], object]:
    """Time ``run()`` with a lever on and off (``switch(True)``/``switch(False)``), alternated
    over ``rounds`` in swapped order so that a slow spell hits both; the lever is left on. Right
    before each run with it on, the network alone is timed (fastest of 10, ms per image at
    ``batch``), so that each round's overhead compares two figures taken in the same state of
    the shared machine. Returns ``({on: seconds per run}, network ms before each run with the
    lever on, the last result with it on)``."""
    times: dict[bool, list[float]] = {True: [], False: []}
    net_ms: list[float] = []
    result = None
    for r in range(rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            if on:
                net_ms.append(network_ms_per_image(network, shape, batch, repeat=10)[0])
            switch(on)
            try:
                t0 = time.perf_counter()
                out = run()
                times[on].append(time.perf_counter() - t0)
            finally:
                switch(True)
            if on:
                result = out
    return times, net_ms, result


def print_paired(seconds: list[float], net_ms: list[float], per_step: int, what: str) -> None:
    """Each round's overhead: ``what`` per image and step (``seconds`` per run over
    ``per_step`` image-steps) / the network alone timed just before it (:func:`alternate`)."""
    paired = [t * 1e3 / per_step / m for t, m in zip(seconds, net_ms, strict=True)]
    print(
        f"paired      {statistics.median(paired):8.2f}x  = per round, {what} per image and step "
        f"/ the network alone timed just before it: "
        f"{', '.join(f'{v:.2f}x' for v in paired)} (target <= 1.15x)"
    )
