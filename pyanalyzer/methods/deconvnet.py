"""Projecting a unit back to pixels: DeconvNet, guided backpropagation and saliency.

* DeconvNet: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
* Guided backpropagation: Springenberg et al., "Striving for Simplicity", ICLR 2015 workshop.
* Saliency: Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", 2013.

One walker serves all three. The model's torch twin (onnx2torch) runs forward once with every
intermediate value recorded; then a signal that holds only the chosen unit's activation walks
the ONNX graph in reverse, node by node:

==================  ===========================  =========================  ==================
op                  ``deconv``                   ``guided``                 ``saliency``
==================  ===========================  =========================  ==================
Relu                rectify the signal           rectify, and mask where    mask where the
                                                 the forward input was <= 0 forward input <= 0
MaxPool             unpool with the switches     same                       same
                    (C++/CUDA kernel)
linear ops          their transpose: Conv →      same                       same
                    transposed convolution with
                    the same filters, BN → its
                    linear part, Add → every
                    input, Concat → split,
                    Flatten/Reshape/Transpose →
                    inverse, pooling → spread
other ops           error naming the op          error naming the op        their gradient
==================  ===========================  =========================  ==================

The transpose of a linear op is its vector-Jacobian product at the recorded input, so the
walker uses torch's autograd for it; the bias never enters. Overlapping max-pools (3×3 stride 2)
send two values to one switch: the unpool kernel sums them, which equals autograd's max-pool
backward.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyanalyzer import _backend
from pyanalyzer.errors import UserInputError

METHODS = ("deconv", "guided", "saliency")
MODES = ("max", "map", "topk")

# Ops that are linear in their path inputs (their transpose is their VJP).
_LINEAR = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub", "Sum",
    "Concat", "Split", "Slice", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "AveragePool", "GlobalAveragePool", "Pad", "Identity", "Dropout", "ReduceMean",
    "ReduceSum", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "Neg", "Cast", "Mean",
}  # fmt: skip
# Linear only when the other operand is a constant.
_LINEAR_IF_CONSTANT = {"Mul", "Div"}
# Local response normalization is skipped by the deconvnet (Zeiler & Fergus do not invert it).
_PASS_THROUGH = {"LRN"}
# Ops whose output is a shape, an index or a constant: no signal flows through them.
_NO_SIGNAL = {"Shape", "Constant", "ConstantOfShape", "Size", "Range"}


@dataclass(frozen=True)
class Projection:
    """Unit projections in input space.

    Attributes:
        pixels: float32 ``[N, C, H, W]``: the signal that reached the input, in the model's
            input layout converted to NCHW and channel order converted to RGB.
        activation: float32 ``[N]``: the unit's activation that was projected (its maximum
            for ``mode="max"``, the sum of the kept activations otherwise).
        positions: int64 ``[N, 2]``: the (y, x) of the unit's strongest activation.
        method, mode, layer, unit: what was projected.
    """

    pixels: np.ndarray
    activation: np.ndarray
    positions: np.ndarray
    method: str
    mode: str
    layer: str
    unit: int

    def images(self) -> np.ndarray:
        """``uint8 [N, H, W, 3]`` for display: DeconvNet and guided backprop as signed images
        (0 at mid-grey, each image scaled by its own max |value|), saliency as Simonyan's map
        (max over channels of |value|, white = strongest)."""
        p = self.pixels
        if self.method == "saliency":
            s = np.abs(p).max(axis=1)
            s = s / np.maximum(s.reshape(len(s), -1).max(axis=1), 1e-12)[:, None, None]
            g = (s * 255).round().astype(np.uint8)
            return np.repeat(g[..., None], 3, axis=-1)
        scale = np.abs(p).reshape(len(p), -1).max(axis=1)
        img = p / (2 * np.maximum(scale, 1e-12))[:, None, None, None] + 0.5
        img = np.clip(img.transpose(0, 2, 3, 1) * 255, 0, 255).round().astype(np.uint8)
        return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


class Deconvolution:
    """Project a unit of any layer back to pixels (one verb, the method chosen by name).

    Args:
        model: a loaded :class:`~pyanalyzer.model.model.Model` whose graph converted to torch.
        method: ``"deconv"`` (Zeiler & Fergus), ``"guided"`` (Springenberg et al.) or
            ``"saliency"`` (Simonyan et al., the plain gradient).
        device: where the unpooling kernel runs (``"auto"``, ``"cpu"``, ``"cuda"``).

    Raises:
        GradientUnavailableError: the model could not be converted (names the ops).
        UserInputError: an unknown method.
    """

    def __init__(self, model, method: str = "deconv", device: str = "auto"):
        if method not in METHODS:
            raise UserInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.model = model
        self.method = method
        self.device = device
        self.engine = model.gradient
        _backend.kernels(device)

    # ---- public --------------------------------------------------------------------------
    def run(
        self, x: np.ndarray, layer: str, unit: int, *, mode: str = "max", k: int = 9
    ) -> Projection:
        """Project ``unit`` of ``layer`` for a batch of model inputs.

        Args:
            x: float32 model input (``model.preprocessing.normalize`` of 0–255 pixels).
            layer: alias or ONNX name of a spatial layer.
            unit: the channel.
            mode: ``"max"``: only the unit's strongest activation (Zeiler & Fergus);
                ``"map"``: the whole channel map; ``"topk"``: its ``k`` strongest activations.
            k: for ``mode="topk"``.

        Raises:
            UserInputError: unknown layer or mode, unit out of range, an op the chosen method
                cannot invert (named).
        """
        import torch

        info = self.model.spatial_layer(layer)
        if mode not in MODES:
            raise UserInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not (0 <= int(unit) < info.channels):
            raise UserInputError(
                f"unit {unit} is out of range: layer {info.alias} has units 0..{info.channels - 1}"
            )
        if mode == "topk" and k < 1:
            raise UserInputError(f"k must be at least 1, got {k}")
        unit = int(unit)
        gm = self.engine.module
        values = self._record(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        target = self._fx_node(info.name)
        act = values[target.name]
        if isinstance(act, tuple | list):
            act = act[self.engine._producer[info.name][1]]
        act = act.detach()
        nhwc = info.layout == "nhwc"
        chan = act[..., unit] if nhwc else act[:, unit]  # [N, h, w]
        flat = chan.reshape(len(chan), -1)
        pos = flat.argmax(dim=1)
        keep = torch.zeros_like(flat)
        if mode == "max":
            keep.scatter_(1, pos[:, None], 1.0)
        elif mode == "map":
            keep.fill_(1.0)
        else:
            top = flat.topk(min(k, flat.shape[1]), dim=1).indices
            keep.scatter_(1, top, 1.0)
        kept = (flat * keep).reshape(chan.shape)
        signal = torch.zeros_like(act)
        if nhwc:
            signal[..., unit] = kept
        else:
            signal[:, unit] = kept
        pixels = self._walk(gm, values, target, signal)
        if self.model.input.layout == "nhwc":
            pixels = pixels.permute(0, 3, 1, 2)
        out = pixels.detach().numpy().astype(np.float32)
        if self.model.input.channels == 3 and self.model.preprocessing.channel_order == "bgr":
            out = out[:, ::-1].copy()
        w = chan.shape[-1]
        positions = torch.stack([pos // w, pos % w], dim=1).numpy().astype(np.int64)
        return Projection(
            pixels=out, activation=kept.reshape(len(kept), -1).sum(1).numpy().astype(np.float32),
            positions=positions, method=self.method, mode=mode, layer=info.name, unit=unit,
        )  # fmt: skip

    # ---- the forward record --------------------------------------------------------------
    def _record(self, x) -> dict[str, Any]:
        import torch
        import torch.fx

        values: dict[str, Any] = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                values[n.name] = out
                return out

        with torch.no_grad():
            Recorder(self.engine.module).run(x)
        return values

    def _fx_node(self, tensor: str):
        name, _ = self.engine._producer[tensor]
        for n in self.engine.module.graph.nodes:
            if n.op == "call_module" and n.target == name:
                return n
        raise UserInputError(f"layer tensor {tensor!r} has no node in the torch graph")

    # ---- the reverse walk ----------------------------------------------------------------
    def _walk(self, gm, values: dict[str, Any], target, signal):
        import torch

        nodes = list(gm.graph.nodes)
        on_path = _depends_on_input(nodes)
        signals: dict[str, Any] = {target.name: signal}
        for n in reversed(nodes[: nodes.index(target) + 1]):
            sig = signals.pop(n.name, None)
            if sig is None:
                continue
            if n.op == "placeholder":
                return sig
            if n.op == "call_function" and n.target is operator.getitem:
                src, idx = n.args
                parent = signals.setdefault(src.name, [None] * len(values[src.name]))
                parent[idx] = sig if parent[idx] is None else parent[idx] + sig
                continue
            if n.op != "call_module":
                continue
            ins = [a for a in n.args if isinstance(a, torch.fx.Node) and a.name in on_path]
            if not ins:
                continue
            for a, g in zip(ins, self._node_vjp(gm, n, values, ins, sig), strict=True):
                if g is None:
                    continue
                prev = signals.get(a.name)
                signals[a.name] = g if prev is None else prev + g
        raise UserInputError("the chosen layer is not connected to the model input")

    def _node_vjp(self, gm, n, values, ins, sig):
        import torch

        onnx_node = self.engine.onnx_nodes[n.target]
        op = onnx_node.op_type
        module = gm.get_submodule(n.target)
        args = [values[a.name] if isinstance(a, torch.fx.Node) else a for a in n.args]
        if isinstance(sig, list):  # a multi-output node: missing outputs get zeros
            out = values[n.name]
            sig = tuple(
                torch.zeros_like(o) if s is None else s for s, o in zip(sig, out, strict=True)
            )
        if op == "Relu":
            x = args[0]
            if self.method == "deconv":
                return [sig.clamp_min(0)]
            if self.method == "guided":
                return [sig.clamp_min(0) * (x > 0)]
            return [sig * (x > 0)]
        if op == "MaxPool":
            return [self._unpool(onnx_node, args[0], sig[0] if isinstance(sig, tuple) else sig)]
        if op in _PASS_THROUGH and self.method != "saliency":
            return [sig]
        path_args = {a.name for a in ins}
        linear = op in _LINEAR or (
            op in _LINEAR_IF_CONSTANT
            and sum(1 for a in n.args if getattr(a, "name", None) in path_args) == 1
        )
        if op in _NO_SIGNAL:
            return [None] * len(ins)
        if not linear and self.method != "saliency":
            raise UserInputError(
                f"{self.method} cannot invert op {op} (ONNX node {onnx_node.name or n.target}); "
                "saliency (the plain gradient) can"
            )
        if isinstance(module, torch.nn.Conv2d) and isinstance(sig, torch.Tensor) and len(ins) == 1:
            # Transposed convolution with the same filters, without re-running the forward.
            x = args[0]
            return [
                torch.nn.grad.conv2d_input(
                    x.shape, module.weight, sig, module.stride, module.padding,
                    module.dilation, module.groups,
                )
            ]  # fmt: skip
        # The transpose of a linear op (and the gradient of any op) is its VJP at the input.
        leaves = []
        call = []
        for a, v in zip(n.args, args, strict=True):
            if isinstance(a, torch.fx.Node) and a.name in path_args:
                leaf = v.detach().clone().requires_grad_(True)
                leaves.append(leaf)
                call.append(leaf)
            else:
                call.append(v)
        with torch.enable_grad():
            out = module(*call)
            outs = out if isinstance(out, tuple | list) else (out,)
            sigs = sig if isinstance(sig, tuple) else (sig,)
            pairs = [(o, s) for o, s in zip(outs, sigs, strict=False) if o.requires_grad]
            grads = torch.autograd.grad(
                [o for o, _ in pairs], leaves, [s for _, s in pairs], allow_unused=True
            )
        by_name = dict(
            zip(
                [a.name for a in n.args if getattr(a, "name", None) in path_args],
                grads,
                strict=True,
            )
        )
        return [by_name.get(a.name) for a in ins]

    def _unpool(self, node, x, sig):
        """Max-unpooling with switches, through pyanalyzer's C++/CUDA kernel."""
        import torch
        import torch.nn.functional as F

        from pyanalyzer.model.graph import same_pads

        attrs = {a.name: onnx_attr(a) for a in node.attribute}
        kernel = list(attrs["kernel_shape"])
        if len(kernel) != 2:
            raise UserInputError(f"only 2-D max-pooling can be unpooled (node {node.name})")
        strides = list(attrs.get("strides", [1, 1]))
        dil = list(attrs.get("dilations", [1, 1]))
        auto = attrs.get("auto_pad", "NOTSET")
        h, w = x.shape[-2:]
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            lower = auto == "SAME_LOWER"
            (pt, pb), (pl, pr) = (
                same_pads(h, kernel[0], strides[0], dil[0], lower),
                same_pads(w, kernel[1], strides[1], dil[1], lower),
            )
        elif auto == "VALID":
            pt = pl = pb = pr = 0
        else:
            pt, pl, pb, pr = list(attrs.get("pads", [0, 0, 0, 0]))
        xp = F.pad(x, [pl, pr, pt, pb], value=float("-inf")) if (pt or pl or pb or pr) else x
        pooled, switches = F.max_pool2d(
            xp, kernel, strides, 0, dil, bool(attrs.get("ceil_mode", 0)), return_indices=True
        )
        if tuple(pooled.shape) != tuple(sig.shape):
            raise UserInputError(
                f"max-pool node {node.name}: recomputed output {list(pooled.shape)} does not "
                f"match the graph's {list(sig.shape)}"
            )
        up = _backend.unpool(
            sig.detach().numpy(), switches.numpy(), tuple(xp.shape[-2:]), kernel, strides, 0, dil,
            device=self.device,
        )  # fmt: skip
        up = torch.from_numpy(up)
        return up[..., pt : pt + h, pl : pl + w]


def onnx_attr(a):
    import onnx

    return (
        onnx.helper.get_attribute_value(a) if a.type != onnx.AttributeProto.STRING else a.s.decode()
    )


def _depends_on_input(nodes) -> set[str]:
    """fx nodes whose value depends on the graph input (the others are constants)."""
    import torch

    dep: set[str] = set()
    for n in nodes:
        if n.op == "placeholder":
            dep.add(n.name)
        elif any(isinstance(a, torch.fx.Node) and a.name in dep for a in _flat_args(n.args)):
            dep.add(n.name)
    return dep


def _flat_args(args) -> list:
    out = []
    for a in args:
        if isinstance(a, tuple | list):
            out.extend(_flat_args(a))
        else:
            out.append(a)
    return out


def project(
    model, x: np.ndarray, layer: str, unit: int, *, method: str = "deconv", mode: str = "max",
    k: int = 9, device: str = "auto",
) -> Projection:  # fmt: skip
    """Shorthand for ``Deconvolution(model, method, device).run(x, layer, unit, mode=, k=)``."""
    return Deconvolution(model, method, device).run(x, layer, unit, mode=mode, k=k)


def top_patch_projections(
    model, patches, source, units: Sequence[int], *, method: str = "deconv",
    device: str = "auto", batch_size: int = 16,
) -> dict[int, list[np.ndarray]]:  # fmt: skip
    """Project each unit's top activations (Zeiler & Fergus, Fig. 2).

    Args:
        patches: a :class:`~pyanalyzer.methods.patches.TopPatchesResult` of ``source``.
        units: the units to project.

    Returns:
        ``{unit: [uint8 [H, W, 3] at the model's input size, one per top image]}``, each the
        projection of the unit's strongest activation in that image (``Projection.images``);
        :meth:`TopPatchesResult.montage` cuts them at the patch's box.
    """
    spec = model.preprocessing
    walker = Deconvolution(model, method, device)
    out: dict[int, list[np.ndarray]] = {}
    for u in units:
        ids = [int(i) for i in patches.images[u] if i >= 0]
        imgs: list[np.ndarray] = []
        for s in range(0, len(ids), batch_size):
            chunk = ids[s : s + batch_size]
            x = spec.normalize(np.stack([source.pixels(i, spec) for i in chunk]))
            imgs.extend(walker.run(x, patches.layer.name, u, mode="max").images())
        out[u] = imgs
    return out


def parse_units(spec: str, channels: int | None) -> list[int]:
    """``"5"``, ``"0-7"``, ``"1,4,9"`` or ``"all"`` to a sorted list of units in range.

    Args:
        spec: the text.
        channels: the number of units; None parses only (no range check, no ``"all"``), for
            callers that check the range in their own words.

    Raises:
        UserInputError: malformed, or a unit outside ``0..channels-1``.
    """
    text = str(spec).strip().lower()
    if text == "all":
        if channels is None:
            raise ValueError("parse_units: 'all' needs the number of units")
        return list(range(channels))
    units: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise ValueError
                units.update(range(lo, hi + 1))
            else:
                units.add(int(part))
    except ValueError:
        raise UserInputError(f"units {spec!r}: expected N, A-B, a comma list or 'all'") from None
    bad = [] if channels is None else sorted(u for u in units if not 0 <= u < channels)
    if bad:
        raise UserInputError(
            f"unit {bad[0]} is out of range: the layer has units 0..{channels - 1}"
        )
    return sorted(units)


__all__: Sequence[str] = (
    "METHODS", "MODES", "Deconvolution", "Projection", "parse_units", "project",
    "top_patch_projections",
)  # fmt: skip
