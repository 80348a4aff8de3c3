"""The gradient engine: the model as a torch module (onnx2torch), with taps by tensor name.

Before conversion every ONNX node is renamed ``n<index>`` in a private copy of the graph, so
each ONNX tensor maps to exactly one submodule output of the ``fx.GraphModule`` and taps are
forward hooks on that submodule. Hooks live in a context manager and are removed in
``finally`` whatever happens inside.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import torch
import torch.fx
from torch import nn

from pyanalyzer._backend import DEVICES
from pyanalyzer.errors import (
    BackendUnavailableError,
    GradientUnavailableError,
    UserInputError,
    first_line,
)
from pyanalyzer.model.graph import to_nchw


@dataclass(frozen=True)
class ConversionFailure:
    """Why the torch conversion failed: the ops that could not be converted, and the message."""

    ops: tuple[str, ...]
    message: str

    def describe(self) -> str:
        if self.ops:
            return f"ops that could not be converted to torch: {', '.join(self.ops)}"
        return f"conversion to torch failed: {self.message}"


def _opset(model: onnx.ModelProto, domain: str) -> int:
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(imp.version)
    return 0


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types (with version) that no registered converter handles."""
    from onnx2torch.node_converters.registry import get_converter

    missing: dict[str, None] = {}
    for node in model.graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        try:
            get_converter(node.op_type, _opset(model, domain), domain)
        except NotImplementedError:
            label = node.op_type if not domain else f"{domain}.{node.op_type}"
            missing[f"{label} (opset {_opset(model, domain)})"] = None
    return list(missing)


def torch_device(device: str | torch.device = "auto") -> torch.device:
    """Where torch runs a gradient method: ``"cpu"``, ``"cuda"`` (the current CUDA device) or
    ``"auto"`` (CUDA when torch sees a device, else the CPU). A ``torch.device`` is returned as
    it is.

    Raises:
        BackendUnavailableError: ``"cuda"`` was asked for and torch sees no CUDA device (the
            message says whether this torch build has CUDA at all).
        UserInputError: any other value.
    """
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES:
        raise UserInputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if device == "auto":
        return torch.device("cpu")
    reason = (
        f"this torch build ({torch.__version__}) has no CUDA support"
        if torch.version.cuda is None
        else "torch sees no CUDA device"
    )
    raise BackendUnavailableError(f"device='cuda' was requested but CUDA is unavailable: {reason}")


class GradientEngine:
    """The model as a differentiable torch module.

    Methods reach the network only through this object: tensors by ONNX name, the network cut
    after the last layer a method needs (:meth:`truncated`, the one truncation mechanism), its
    features as ``[N, C, H, W]`` maps (:meth:`features`), every intermediate value of a forward
    pass (:meth:`record`, for graph-walking methods) and the producing node of a tensor
    (:meth:`producer`).

    Args:
        proto: the validated ONNX model.
        input_name: the image input's ONNX name.
        layouts: ``{tensor name: "nchw" | "nhwc"}`` of the spatial maps (the layer
            catalogue's), so that :meth:`features` hands out ``[N, C, H, W]`` maps.

    Raises:
        GradientUnavailableError: the graph could not be converted (the message names the
            ops), raised from the constructor; :class:`~pyanalyzer.model.model.Model` catches it
            so forward-only use still works.
    """

    def __init__(
        self, proto: onnx.ModelProto, input_name: str, layouts: Mapping[str, str] | None = None
    ):
        from pyanalyzer.model import converters

        converters.register()
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        producer: dict[str, tuple[str, int]] = {}
        for i, node in enumerate(m.graph.node):
            node.name = f"n{i}"
            for k, out in enumerate(node.output):
                producer[out] = (node.name, k)
        self._producer = producer
        self._layouts = dict(layouts or {})
        self._truncated: dict[tuple[str, ...], torch.fx.GraphModule] = {}
        self.input_name = input_name
        self.onnx_nodes: dict[str, onnx.NodeProto] = {node.name: node for node in m.graph.node}
        """The ONNX node behind each submodule (``n<index>``), for graph-walking methods."""
        self.initializers = {init.name for init in m.graph.initializer}

        missing = unsupported_ops(m)
        if missing:
            raise GradientUnavailableError(
                ConversionFailure(tuple(missing), "").describe()
                + " (forward-only methods still work)"
            )
        from onnx2torch import convert

        try:
            # The converted modules are built (randomly initialised) before onnx2torch copies
            # the weights in: keep that from advancing the caller's global torch generator.
            with torch.random.fork_rng(devices=[]):
                module = convert(m)
        except Exception as exc:  # converter-specific NotImplementedError, KeyError...
            op = _failing_op(exc, m)
            msg = first_line(exc)
            failure = ConversionFailure((op,) if op else (), msg)
            raise GradientUnavailableError(
                f"{failure.describe()}: {msg} (forward-only methods still work)"
            ) from None
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        for b in module.buffers():
            b.requires_grad_(False)
        self.module: torch.fx.GraphModule = module
        self.device = torch.device("cpu")
        """Where :attr:`module`'s weights live (:meth:`on` makes the engine of another
        device)."""
        self._on: dict[torch.device, GradientEngine] = {self.device: self}

    def on(self, device: str | torch.device = "auto") -> GradientEngine:
        """This engine on ``device`` (:func:`torch_device`): itself on the CPU, else a copy of
        the module moved there, made once per device and kept. Inputs handed to the returned
        engine must be on its :attr:`device`.

        Every gradient method gets its engine here, so this is where their work starts: glibc
        is told to keep freed big buffers for reuse (:func:`pyanalyzer._memory.keep_freed_buffers`;
        building the engine alone, as a model's parity check does, leaves it as it is).

        Raises:
            BackendUnavailableError: CUDA was asked for and is unavailable.
        """
        from pyanalyzer._memory import keep_freed_buffers

        keep_freed_buffers()  # a method reallocates its big tensors at every step
        dev = torch_device(device)
        if dev not in self._on:
            other = copy.copy(self)
            other.module = copy.deepcopy(self.module).to(dev)
            other.device = dev
            other._truncated = {}
            self._on[dev] = other
        return self._on[dev]

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.module(x)

    # ---- tensors by ONNX name --------------------------------------------------------------
    def has_tensor(self, name: str) -> bool:
        """Whether a node of the graph produces the ONNX tensor ``name``."""
        return name in self._producer

    def producer(self, name: str) -> tuple[str, int]:
        """``(submodule name, output index)`` of the node that produces tensor ``name``; the
        submodule is ``module.get_submodule(name)`` and its ONNX node ``onnx_nodes[name]``.

        Raises:
            UserInputError: no node produces it.
        """
        if name not in self._producer:
            raise UserInputError(f"tensor {name!r} is not produced by any node of the model")
        return self._producer[name]

    def _submodule(self, name: str) -> tuple[nn.Module, int]:
        mod_name, k = self.producer(name)
        return self.module.get_submodule(mod_name), k

    def layout(self, name: str) -> str:
        """``"nchw"``/``"nhwc"`` for a spatial map of the catalogue, ``""`` otherwise."""
        return self._layouts.get(name, "")

    # ---- truncation ------------------------------------------------------------------------
    def truncated(self, names: Sequence[str]) -> torch.fx.GraphModule:
        """The network cut after the given tensors: a ``GraphModule`` (sharing this module's
        submodules) that takes the model input and returns the tensors as a tuple, in order,
        exactly as the graph makes them; nodes that none of them needs are never computed.

        Cached per tuple of names. Submodules may be swapped on the returned module (as the
        redirected ReLUs of activation maximization are) without touching :attr:`module`.

        Raises:
            UserInputError: a tensor that no node produces, or an output of a node that the
                model never uses.
        """
        key = tuple(names)
        if key not in self._truncated:
            self._truncated[key] = self._truncate(key)
        return self._truncated[key]

    def _truncate(self, names: tuple[str, ...]) -> torch.fx.GraphModule:
        gm = self.module
        by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
        wanted = []
        for name in names:
            mod_name, k = self.producer(name)
            node = by_target.get(mod_name)
            if node is None:
                raise UserInputError(f"no torch module computes ONNX node {mod_name}")
            pick = next(
                (
                    u
                    for u in node.users
                    if u.op == "call_function" and u.target is operator.getitem and u.args[1] == k
                ),
                None,
            )
            if pick is None and k != 0:
                raise UserInputError(f"output {k} of ONNX node {mod_name} is not used by the model")
            wanted.append(pick if pick is not None else node)
        graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        remaining = set(wanted)
        for node in gm.graph.nodes:
            if node.op == "output":
                break
            env[node] = graph.node_copy(node, lambda a: env[a])
            remaining.discard(node)
            if not remaining:
                break
        graph.output(tuple(env[w] for w in wanted))
        cut = torch.fx.GraphModule(gm, graph)
        cut.graph.eliminate_dead_code()
        cut.recompile()
        return cut

    def features(
        self, x: torch.Tensor, names: Sequence[str], *, nchw: bool = True
    ) -> dict[str, torch.Tensor]:
        """The tensors ``names`` for the model input ``x``, from one pass of the network cut
        after the last of them (:meth:`truncated`); autograd history is kept.

        Returns:
            ``{name: tensor}``, spatial maps as ``[N, C, H, W]`` unless ``nchw=False``.
        """
        outs = self.truncated(names)(x)
        return {
            n: to_nchw(t, self.layout(n)) if nchw else t for n, t in zip(names, outs, strict=True)
        }

    def record(
        self,
        x: torch.Tensor,
        names: Sequence[str],
        *,
        intercept: Callable[[torch.fx.Node, tuple[Any, ...], dict[str, Any]], Any] | None = None,
    ) -> Recording:
        """One forward pass of the network cut after ``names`` with every node's value kept
        (an ``fx.Interpreter``): what graph-walking methods (DeconvNet) read.

        Args:
            intercept: called as ``intercept(node, args, values)`` before each submodule call;
                a value it returns is used as the node's output instead of running the
                submodule (None: run it). It may add entries to ``values`` under keys that are
                not fx node names (what the walk wants kept from the forward pass).

        Returns:
            a :class:`Recording`: the cut module, ``{fx node name: value}`` and, per tensor
            name, the fx node that computes it (a submodule call; pick output
            ``producer(name)[1]`` of a multi-output node).
        """
        module = self.truncated(names)
        values: dict[str, Any] = {}
        _Recorder(module, values, intercept).run(x)
        by_target = {n.target: n for n in module.graph.nodes if n.op == "call_module"}
        nodes = {name: by_target[self.producer(name)[0]] for name in names}
        return Recording(module, values, nodes)

    # ---- taps ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def taps(self, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Record the given ONNX tensors during forward passes of the whole network inside the
        block (as the graph makes them; hooks are removed in ``finally``).

        Yields:
            a dict filled with ``{tensor name: tensor}`` by each forward pass; tensors keep
            their autograd history.
        """
        found: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name in names:
                mod, k = self._submodule(name)

                def hook(_m: nn.Module, _inp: Any, out: Any, name: str = name, k: int = k) -> None:
                    found[name] = out[k] if isinstance(out, tuple | list) else out

                handles.append(mod.register_forward_hook(hook))
            yield found
        finally:
            for h in handles:
                h.remove()

    def hook_count(self) -> int:
        """Forward hooks currently installed on the module (0 outside :meth:`taps`)."""
        return sum(len(m._forward_hooks) for m in self.module.modules())


class _Recorder(torch.fx.Interpreter):
    """:meth:`GradientEngine.record`'s interpreter: every node's output kept in ``values``.

    A class of its own, not one made per call: a class is always in a reference cycle, and
    one whose methods closed over ``values`` kept every recorded tensor alive until Python's
    cycle collector ran (about 50 MB per DeconvNet call on a 227-px AlexNet, batch 8).
    """

    def __init__(
        self,
        module: torch.fx.GraphModule,
        values: dict[str, Any],
        intercept: Callable[[torch.fx.Node, tuple[Any, ...], dict[str, Any]], Any] | None,
    ):
        super().__init__(module)
        self.values = values
        self.intercept = intercept

    def run_node(self, n: torch.fx.Node) -> Any:
        out = None
        if self.intercept is not None and n.op == "call_module":
            args, _ = self.fetch_args_kwargs_from_env(n)
            out = self.intercept(n, args, self.values)
        if out is None:
            out = super().run_node(n)
        self.values[n.name] = out
        return out


@dataclass(frozen=True)
class Recording:
    """What :meth:`GradientEngine.record` returns.

    Attributes:
        module: the network cut after the recorded tensors.
        values: ``{fx node name: its output}`` for every node that ran.
        nodes: ``{ONNX tensor name: the fx node (a submodule call) that computes it}``.
    """

    module: torch.fx.GraphModule
    values: dict[str, Any]
    nodes: dict[str, torch.fx.Node]


def _failing_op(exc: Exception, m: onnx.ModelProto) -> str | None:
    text = str(exc)
    for node in m.graph.node:
        if f"operation_type='{node.op_type}'" in text or f'"{node.op_type}"' in text:
            return node.op_type
    tb = exc.__traceback__
    while tb is not None:  # the converter's frame holds the node it was converting
        node = tb.tb_frame.f_locals.get("onnx_node") or tb.tb_frame.f_locals.get("node")
        op = getattr(node, "operation_type", None)
        if isinstance(op, str):
            return op
        tb = tb.tb_next
    return None
