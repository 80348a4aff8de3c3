"""The gradient engine: the model as a torch module (onnx2torch), with taps by tensor name.

Before conversion every ONNX node is renamed ``n<index>`` in a private copy of the graph, so
each ONNX tensor maps to exactly one submodule output of the ``fx.GraphModule`` and taps are
forward hooks on that submodule. Hooks live in a context manager and are removed in
``finally`` whatever happens inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from pyanalyzer.errors import GradientUnavailableError


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


class GradientEngine:
    """The model as a differentiable torch module.

    Args:
        proto: the validated ONNX model.
        input_name: the image input's ONNX name.

    Raises:
        GradientUnavailableError: the graph could not be converted (the message names the
            ops), raised from the constructor; :class:`~pyanalyzer.model.model.Model` catches it
            so forward-only use still works.
    """

    def __init__(self, proto: onnx.ModelProto, input_name: str):
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
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failure = ConversionFailure((op,) if op else (), msg)
            raise GradientUnavailableError(
                f"{failure.describe()}: {msg} (forward-only methods still work)"
            ) from None
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        for b in module.buffers():
            b.requires_grad_(False)
        self.module: nn.Module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.module(x)

    def has_tensor(self, name: str) -> bool:
        return name in self._producer

    def _submodule(self, name: str) -> tuple[nn.Module, int]:
        if name not in self._producer:
            raise KeyError(f"tensor {name!r} is not produced by any node")
        mod_name, k = self._producer[name]
        return self.module.get_submodule(mod_name), k

    @contextlib.contextmanager
    def taps(self, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Record the given ONNX tensors during forward passes inside the block.

        Yields:
            a dict filled with ``{tensor name: tensor}`` by each forward pass; tensors keep
            their autograd history, so objectives can be built on them.
        """
        found: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name in names:
                mod, k = self._submodule(name)

                def hook(_m, _inp, out, name=name, k=k):
                    found[name] = out[k] if isinstance(out, tuple | list) else out

                handles.append(mod.register_forward_hook(hook))
            yield found
        finally:
            for h in handles:
                h.remove()

    def hook_count(self) -> int:
        """Forward hooks currently installed on the module (0 outside :meth:`taps`)."""
        return sum(len(m._forward_hooks) for m in self.module.modules())


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
