"""Projecting a unit back to pixels: DeconvNet, guided backpropagation and saliency.

* DeconvNet: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
* Guided backpropagation: Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for
  Simplicity: The All Convolutional Net", ICLR 2015 workshop.
* Saliency: Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", 2013.

One walker serves all three. The model's torch twin (onnx2torch) runs forward once with every
intermediate value recorded; then a signal that holds only the chosen unit's activation walks
the ONNX graph in reverse, node by node. The methods differ only where the signal ``s`` that
reaches an op's output crosses a nonlinearity whose recorded forward input is ``x``.

A *rectifier* is ``f(x) = x`` for ``0 < x < c``, ``a * x`` for ``x <= 0`` and ``c`` for
``x >= c`` (ReLU: slope ``a = 0`` and no cap ``c``). Its signal map is ``r(s) = s`` where
``s > 0`` and ``a * s`` elsewhere (the unit's own piecewise-linear map, without the cap), and
its forward gradient is ``f'(x) = 1`` on ``(0, c)``, ``a`` for ``x <= 0`` and 0 for ``x >= c``.

=======================  ==========================  ===========================  ==============
op                       ``deconv``                  ``guided``                   ``saliency``
=======================  ==========================  ===========================  ==============
Relu                     ``max(s, 0)``               ``max(s, 0) * [x > 0]``      ``s * [x > 0]``
Clip with min 0:         ``max(s, 0)``: the cap      ``max(s, 0) * [0 < x < c]``  ``s * f'(x)``
Clip(0, c) (ReLU6),      is not applied to the
Clip(0, ∞)               signal
LeakyRelu(α)             ``r(s)``, ``a = α``         ``r(s) * f'(x)``             ``s * f'(x)``
PRelu(slope)             ``r(s)``, ``a`` the slope   ``r(s) * f'(x)``             ``s * f'(x)``
                         broadcast as ONNX does
                         (per channel or scalar)
smooth ops (below)       local gradient              local gradient               local gradient
                         ``s * f'(x)``               ``s * f'(x)``
MaxPool                  unpool with the switches    same                         same
                         (C++/CUDA kernel)
linear ops               their transpose: Conv →     same                         same
                         transposed convolution
                         with the same filters,
                         BN → its linear part,
                         Add → every input, Concat
                         → split, Flatten/Reshape/
                         Transpose → inverse,
                         pooling → spread
LRN                      passed through              passed through               its gradient
other ops                error naming the op         error naming the op          their gradient
=======================  ==========================  ===========================  ==============

*Smooth ops* take the local gradient (the op's vector-Jacobian product at ``x``) in all three
methods: Sigmoid, Tanh, Erf, HardSigmoid, HardSwish, Elu, Selu, Celu, Softplus, Softsign, Gelu,
Mish, the pointwise functions their decompositions use (Exp, Log, Pow, Sqrt, Reciprocal), a Clip
whose min is not 0 (a saturation, not a rectifier), and the product or quotient of two tensors
that both depend on the input (``x * sigmoid(x)``, the erf and tanh forms of GELU,
``x * tanh(softplus(x))`` for Mish, ``x * HardSigmoid(x)``): a decomposed activation is then
projected exactly as its fused op.

Why these rules. Zeiler & Fergus pass the reconstruction "through a relu non-linearity": the
signal is rectified as the forward pass rectifies, whatever the forward input was. For any
rectifier the analogue is the same piecewise-linear map on the signal, ``r(s)``; the cap is left
out because it acts on the size of the forward value, not on the sign that ``r`` keeps, so
ReLU6's ``r`` is ReLU's. Springenberg et al.'s guided backpropagation applies the deconvnet
rule and the gradient's forward mask together; for every rectifier here that is
``r(s) * f'(x)``, which is ``max(s, 0) * [x > 0]`` for ReLU. Saliency is the plain gradient of
every op. Smooth activations have no rectification to reproduce, so the deconvnet and guided
backpropagation take their local gradient: guided backpropagation differs from the deconvnet
only at rectifiers.

The transpose of a linear op is its vector-Jacobian product at the recorded input, so the
walker uses torch's autograd for it; the bias never enters. Overlapping max-pools (3×3 stride 2)
send two values to one switch: the unpool kernel sums them, which equals autograd's max-pool
backward.

Where it runs. The forward recording and the whole walk run on one torch device (the
``device`` parameter: ``"cpu"``, ``"cuda"``, or ``"auto"``: CUDA when torch sees a GPU and
pyanalyzer's CUDA module is built, else the CPU), on the torch twin moved there
(:meth:`~pyanalyzer.model.gradient.GradientEngine.on`); the unpooling kernel then runs on that
device too (:func:`pyanalyzer._backend.unpool_tensor`: on CUDA from device memory to device
memory), and only the results come back to the host. CUDA agrees with the CPU to float32
rounding (to TF32's where torch allows TF32 convolutions, its default on recent GPUs).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from pyanalyzer import _backend
from pyanalyzer._backend import DEVICES
from pyanalyzer._checks import check_shape
from pyanalyzer.analysis import Choice, ImageAnalysis, Int, Params, Result, Units
from pyanalyzer.errors import UserInputError
from pyanalyzer.model.graph import to_nchw
from pyanalyzer.units import select_units

if TYPE_CHECKING:
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Checkpoint

__all__ = [
    "DEVICES",
    "METHODS",
    "MODES",
    "PROJECTIONS",
    "DeconvNet",
    "GuidedBackprop",
    "Projection",
    "ProjectionParams",
    "ProjectionResult",
    "Projector",
    "Saliency",
    "UnitProjection",
]

METHODS = ("deconv", "guided", "saliency")
MODES = ("max", "map", "topk")
WALK_ROWS = 8
"""About how many image rows one backward walk of :meth:`Projector.project_units` takes (the
units are walked in groups of ``max(1, WALK_ROWS // images)``, the forward pass shared). On a
227-px AlexNet, 8 units of 8 images (medians of 4): 8 rows a walk 232 ms, 16 rows 266 ms, 32
rows 284 ms, all 64 rows in one walk 404 ms (``benchmarks/bench_deconv.py``'s model)."""

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
# Rectifiers: each has its own deconvnet and guided rule (a Clip only when its min is 0).
_RECTIFIERS = {"Relu", "Clip", "LeakyRelu", "PRelu"}
# Smooth activations, and the pointwise functions of their decompositions: every method takes
# their local gradient (as do a Clip whose min is not 0 and a Mul/Div of two path tensors).
_LOCAL_GRADIENT = {
    "Sigmoid", "Tanh", "Erf", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Mish", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
}  # fmt: skip
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
    unit: int | np.ndarray
    """The unit, or int64 ``[N]``: each row's unit."""

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


class Projector:
    """Project a unit of any layer back to pixels for a batch of model inputs: the reverse walk
    that the analyses below (:class:`DeconvNet`, :class:`GuidedBackprop`, :class:`Saliency`) run.

    Args:
        model: a loaded :class:`~pyanalyzer.model.model.Model` whose graph converted to torch.
        method: ``"deconv"`` (Zeiler & Fergus), ``"guided"`` (Springenberg et al.) or
            ``"saliency"`` (Simonyan et al., the plain gradient).
        device: where the forward recording, the walk and the unpooling kernel run:
            ``"cpu"``, ``"cuda"`` (torch's current CUDA device), or ``"auto"`` (CUDA when torch
            sees a GPU and pyanalyzer's CUDA module is built, else the CPU).

    Attributes:
        device: the torch device everything runs on (the results come back to the host).
        engine: the model's torch twin on that device.

    Raises:
        GradientUnavailableError: the model could not be converted (names the ops).
        BackendUnavailableError: ``device="cuda"`` and torch sees no CUDA device, or
            pyanalyzer's CUDA module is missing.
        UserInputError: an unknown method or device.
    """

    def __init__(self, model: Model, method: str = "deconv", device: str = "auto"):
        if method not in METHODS:
            raise UserInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.model = model
        self.method = method
        engine = model.gradient  # GradientUnavailableError first, as before
        self.device = _walk_device(device)
        self.engine = engine.on(self.device)
        self._pool_same: dict[str, bool] = {}

    # ---- public --------------------------------------------------------------------------
    def project(
        self,
        x: np.ndarray,
        layer: str,
        unit: int | Sequence[int] | np.ndarray,
        *,
        mode: str = "max",
        k: int = 9,
        repeat: int = 1,
    ) -> Projection:
        """Project ``unit`` of ``layer`` for a batch of model inputs, in one pass.

        Args:
            x: float32 model input (``model.preprocessing.normalize`` of 0–255 pixels).
            layer: alias or ONNX name of a spatial layer.
            unit: the channel, or one channel per row of the images repeated ``repeat``
                times (several units in one batched walk: :meth:`project_units`).
            mode: ``"max"``: only the unit's strongest activation (Zeiler & Fergus);
                ``"map"``: the whole channel map; ``"topk"``: its ``k`` strongest activations.
            k: for ``mode="topk"``.
            repeat: the walk runs on the images repeated this many times (the forward pass
                runs once); each row's unit given by ``unit``.

        Raises:
            UserInputError: unknown layer or mode, unit out of range, an op the chosen method
                cannot invert (named).
        """
        info, units, x = self._checked(x, layer, unit, mode, k)
        per_row = np.ndim(unit) == 1
        reps = max(1, int(repeat))
        if per_row and len(units) != len(x) * reps:
            raise UserInputError(
                f"{len(units)} unit(s) given for {len(x) * reps} image row(s): one per row"
            )
        return self._project_recorded(self._record(x, info), info, units, per_row, reps, mode, k)

    def _checked(
        self, x: np.ndarray, layer: str, unit: Any, mode: str, k: int
    ) -> tuple[LayerInfo, np.ndarray, np.ndarray]:
        """The layer, the units as int64 ``[K]`` (each in range) and the checked input."""
        info = self.model.spatial_layer(layer)
        channels = int(info.channels or 0)
        if mode not in MODES:
            raise UserInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        units = np.asarray(unit, np.int64).reshape(-1)
        for u in units:
            if not (0 <= int(u) < channels):
                raise UserInputError(
                    f"unit {int(u)} is out of range: layer {info.alias} has units 0..{channels - 1}"
                )
        if mode == "topk" and k < 1:
            raise UserInputError(f"k must be at least 1, got {k}")
        spec = self.model.preprocessing
        h, w = spec.input_size
        dims = "N C H W" if self.model.input.layout == "nchw" else "N H W C"
        x = check_shape("x", x, dims, note="(preprocessed model input)", C=spec.channels, H=h, W=w)
        return info, units, x

    def _record(self, x: np.ndarray, info: LayerInfo) -> Any:
        """The forward pass of the images, every value kept (what the walks read), the
        max-pool switches taken from it (:meth:`_pool_in_forward`)."""
        import torch

        with torch.no_grad():
            return self.engine.record(
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device),
                [info.name],
                intercept=self._pool_in_forward,
            )

    def _pool_in_forward(self, n: Any, args: tuple[Any, ...], values: dict[str, Any]) -> Any:
        """The forward pass's 2-D max-pools computed with their switches (kept in ``values``
        for :meth:`_unpool`), so that no walk pools again. The first time a pool node is met
        its submodule runs too and the two outputs are compared: only a node whose values are
        equal bit for bit is computed this way from then on (a pool whose padding or rounding
        the converter handles otherwise keeps its own output, and its switches are still
        kept)."""
        import torch

        node = self.engine.onnx_nodes.get(n.target)
        if node is None or node.op_type != "MaxPool" or len(node.output) != 1:
            return None
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            return None
        try:
            values[f"{node.name}#switches"] = found = _pool_switches(node, x)
        except UserInputError:  # not a 2-D pool: the walk says so if it reaches it
            return None
        same = self._pool_same.get(n.target)
        if same is None:
            out = self.engine.module.get_submodule(n.target)(*args)
            self._pool_same[n.target] = isinstance(out, torch.Tensor) and torch.equal(out, found[0])
            return out
        return found[0] if same else None

    def _project_recorded(
        self, rec: Any, info: LayerInfo, units: np.ndarray, per_row: bool, reps: int,
        mode: str, k: int,
    ) -> Projection:  # fmt: skip
        """One walk of a recording's images repeated ``reps`` times (:meth:`project`)."""
        import torch

        dev = self.device
        target = rec.nodes[info.name]
        act = rec.values[target.name]
        if isinstance(act, tuple | list):
            act = act[self.engine.producer(info.name)[1]]
        n_rows = act.shape[0] * reps
        rows = torch.from_numpy(units if per_row else np.full(n_rows, int(units[0]))).to(dev)
        act = info.to_nchw(act.detach())  # [N, C, h, w] whatever the model's layout
        if reps > 1:  # the forward ran once; the walk runs on the images repeated
            act = act.repeat(reps, 1, 1, 1)
        index = torch.arange(len(act), device=dev)
        chan = act[index, rows]  # [N, h, w]
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
        signal[index, rows] = kept
        pixels = self._walk(rec.module, rec.values, target, info.from_nchw(signal), reps)
        pixels = to_nchw(pixels, self.model.input.layout)
        out = pixels.detach().cpu().numpy().astype(np.float32)
        if self.model.input.channels == 3 and self.model.preprocessing.channel_order == "bgr":
            out = out[:, ::-1].copy()
        w = chan.shape[-1]
        positions = torch.stack([pos // w, pos % w], dim=1).cpu().numpy().astype(np.int64)
        activation = kept.reshape(len(kept), -1).sum(1).cpu().numpy().astype(np.float32)
        return Projection(
            pixels=out, activation=activation,
            positions=positions, method=self.method, mode=mode, layer=info.name,
            unit=units.copy() if per_row else int(units[0]),
        )  # fmt: skip

    def project_units(
        self,
        x: np.ndarray,
        layer: str,
        units: Sequence[int],
        *,
        mode: str = "max",
        k: int = 9,
    ) -> list[Projection]:
        """Project several units of ``layer`` on the same images: one forward pass, then
        backward walks of the images repeated once per unit, about :data:`WALK_ROWS` rows a walk
        (one walk of every unit's rows is slower per row: its maps no longer fit the cache),
        the max-pool switches made once. One :class:`Projection` per unit, equal to
        :meth:`project` of that unit alone (bit for bit where a walk holds one unit)."""
        units = [int(u) for u in units]
        if not units:
            return []
        info, _, x = self._checked(x, layer, units, mode, k)
        n = len(x)
        rec = self._record(x, info)
        per_walk = max(1, WALK_ROWS // max(n, 1))
        found: list[Projection] = []
        for c in range(0, len(units), per_walk):
            chunk = units[c : c + per_walk]
            both = self._project_recorded(
                rec, info, np.repeat(np.asarray(chunk, np.int64), n), True, len(chunk), mode, k
            )
            found += [
                replace(
                    both,
                    pixels=both.pixels[j * n : (j + 1) * n],
                    activation=both.activation[j * n : (j + 1) * n],
                    positions=both.positions[j * n : (j + 1) * n],
                    unit=u,
                )
                for j, u in enumerate(chunk)
            ]
        return found

    # ---- the reverse walk ----------------------------------------------------------------
    def _walk(self, gm, values: dict[str, Any], target, signal, reps=1):
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
            # Each path input once, even when the op reads it twice (Mul(x, x)).
            ins = list(
                {
                    a.name: a for a in n.args if isinstance(a, torch.fx.Node) and a.name in on_path
                }.values()
            )
            if not ins:
                continue
            for a, g in zip(ins, self._node_vjp(gm, n, values, ins, sig, reps), strict=True):
                if g is None:
                    continue
                prev = signals.get(a.name)
                signals[a.name] = g if prev is None else prev + g
        raise UserInputError("the chosen layer is not connected to the model input")

    def _node_vjp(self, gm, n, values, ins, sig, reps=1):
        import torch

        onnx_node = self.engine.onnx_nodes[n.target]
        op = onnx_node.op_type
        module = gm.get_submodule(n.target)
        raw = [values[a.name] if isinstance(a, torch.fx.Node) else a for a in n.args]
        path_names = {a.name for a in ins}

        def repeated(a, v):
            # the images' values, repeated as the signal's rows are (inputs on the path only)
            if reps == 1 or getattr(a, "name", None) not in path_names:
                return v
            if isinstance(v, torch.Tensor) and v.dim() >= 1:
                return v.repeat(reps, *([1] * (v.dim() - 1)))
            return v

        if isinstance(sig, list):  # a multi-output node: missing outputs get zeros
            out = values[n.name]
            sig = tuple(
                torch.zeros((o.shape[0] * reps, *o.shape[1:]), dtype=o.dtype, device=o.device)
                if s is None
                else s
                for s, o in zip(sig, out, strict=True)
            )
        if op in _RECTIFIERS and self.method != "saliency":
            rect = _rectifier(op, onnx_node, module, raw)
            if rect is not None:
                if self.method == "guided":
                    return [rect.guided(sig, repeated(n.args[0], raw[0]))]
                return [rect.deconv(sig)]
        if op == "Relu":  # saliency: the gradient, written out (it is autograd's)
            return [sig * (repeated(n.args[0], raw[0]) > 0)]
        if op == "MaxPool":
            sig0 = sig[0] if isinstance(sig, tuple) else sig
            return [self._unpool(onnx_node, raw[0], sig0, reps, values)]
        if op in _PASS_THROUGH and self.method != "saliency":
            return [sig]
        if op in _NO_SIGNAL:
            return [None] * len(ins)
        path_args = {a.name for a in ins}
        on_path = sum(1 for a in n.args if getattr(a, "name", None) in path_args)
        linear = op in _LINEAR or (op in _LINEAR_IF_CONSTANT and on_path == 1)
        local = op in _LOCAL_GRADIENT or op in _RECTIFIERS or op in _LINEAR_IF_CONSTANT
        if not (linear or local) and self.method != "saliency":
            raise UserInputError(
                f"{self.method} cannot invert op {op} (ONNX node {onnx_node.name or n.target}); "
                "saliency (the plain gradient) can"
            )
        if isinstance(module, torch.nn.Conv2d) and isinstance(sig, torch.Tensor) and len(ins) == 1:
            # Transposed convolution with the same filters, without re-running the forward,
            # where the signal is: the filters of the channels it reaches, the windows of the
            # maps it lies in (a unit's walk starts at one position of one channel).
            shape = (raw[0].shape[0] * reps, *raw[0].shape[1:])
            return [_conv_input(module, sig, shape)]
        # The transpose of a linear op (and the gradient of any op) is its VJP at the input.
        args = [repeated(a, v) for a, v in zip(n.args, raw, strict=True)]
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
        by_name = {}
        names = [a.name for a in n.args if getattr(a, "name", None) in path_args]
        for name, g in zip(names, grads, strict=True):  # an input read twice: both terms
            if g is not None:
                by_name[name] = g if name not in by_name else by_name[name] + g
        return [by_name.get(a.name) for a in ins]

    def _unpool(self, node, x, sig, reps, recorded):
        """Max-unpooling with switches, through pyanalyzer's C++/CUDA kernel on the walk's
        device (the switches of the images ``x``, repeated ``reps`` times as the signal's rows
        are): those the forward pass kept in ``recorded``, else made here (and kept)."""
        key = f"{node.name}#switches"
        if key not in recorded:
            recorded[key] = _pool_switches(node, x)
        pooled, switches, padded, (pt, pl, kernel, strides, dil) = recorded[key]
        if reps > 1:
            switches = switches.repeat(reps, 1, 1, 1)
        shape = (pooled.shape[0] * reps, *pooled.shape[1:])
        if tuple(shape) != tuple(sig.shape):
            raise UserInputError(
                f"max-pool node {node.name}: recomputed output {list(shape)} does not "
                f"match the graph's {list(sig.shape)}"
            )
        up = _backend.unpool_tensor(sig, switches, padded, kernel, strides, 0, dil)
        h, w = x.shape[-2:]
        return up[..., pt : pt + h, pl : pl + w]


WINDOW_SHARE = 0.7
"""A transposed convolution runs on windows of the signal (:func:`_conv_input`) where the
windows cover at most this share of its map."""


def _conv_input(module, sig, shape):
    """``torch.nn.grad.conv2d_input`` of the NCHW signal ``sig`` through ``module``'s filters
    for an input of ``shape``, computed where the signal is: over the filters of the channels
    it reaches (:func:`_live_channels`), and, where each image's signal lies in a window of
    its map (a unit's walk starts at one position, :func:`_windows`), as a transposed
    convolution of those windows placed back into the input. The same sums; zero terms are
    left out."""
    import torch
    import torch.nn.functional as F

    weight, groups = module.weight, module.groups
    mag = sig.abs()  # where the signal is, for both tests below
    live = _live_channels(mag) if groups == 1 else None
    if live is not None:
        weight, sig, mag = weight[live], sig[:, live], mag[:, live]
    stride, padding, dilation = module.stride, module.padding, module.dilation
    found = None if isinstance(padding, str) else _windows(mag)
    if found is None:
        return torch.nn.grad.conv2d_input(shape, weight, sig, stride, padding, dilation, groups)
    (hb, wb), starts = found
    win = torch.stack([sig[i, :, y : y + hb, x : x + wb] for i, (y, x) in enumerate(starts)])
    patch = F.conv_transpose2d(win, weight, None, stride, 0, 0, groups, dilation)
    out = sig.new_zeros(shape)
    ph, pw = patch.shape[-2:]
    height, width = shape[-2:]
    for i, (y, x) in enumerate(starts):
        top, left = y * stride[0] - padding[0], x * stride[1] - padding[1]
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + ph, height), min(left + pw, width)
        if t1 > t0 and l1 > l0:
            out[i, :, t0:t1, l0:l1] = patch[i, :, t0 - top : t1 - top, l0 - left : l1 - left]
    return out


def _windows(mag):
    """``((height, width), [(top, left) per image])`` for the magnitude ``mag = |signal|`` of an
    NCHW signal: one window size for the batch that holds each image's nonzero signal at its
    own position, inside the map; None where the windows would cover more than
    :data:`WINDOW_SHARE` of the map."""
    import torch

    if mag.ndim != 4:
        return None
    n, _, h, w = mag.shape
    nz = mag.amax(dim=1) != 0  # [N, h, w]; NaN counts as nonzero
    rows, cols = nz.any(dim=2), nz.any(dim=1)  # [N, h], [N, w]
    has = rows.any(dim=1)
    if not bool(has.any()):
        return (1, 1), [(0, 0)] * n  # no signal: one zero pixel a image gives the zeros
    ar_h, ar_w = torch.arange(h, device=mag.device), torch.arange(w, device=mag.device)
    big = max(h, w) + 1
    r0 = torch.where(rows, ar_h, big).amin(dim=1)
    r1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    c0 = torch.where(cols, ar_w, big).amin(dim=1)
    c1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    hb, wb = int((r1 - r0)[has].max()), int((c1 - c0)[has].max())
    if hb * wb > WINDOW_SHARE * h * w:
        return None
    top = torch.where(has, r0, 0).clamp(max=h - hb).tolist()
    left = torch.where(has, c0, 0).clamp(max=w - wb).tolist()
    return (hb, wb), list(zip(top, left, strict=True))


def _live_channels(mag):
    """The channels where the magnitude ``mag = |signal|`` of an NCHW signal is nonzero
    somewhere, int64 ``[K]``, when they are at most half of them (a transposed convolution over
    those filters alone gives the same result: the others add zeros; channel 0 alone for a
    zero signal), else None."""
    import torch

    if mag.ndim != 4:
        return None
    live = torch.nonzero(mag.amax(dim=(0, 2, 3)) != 0).flatten()  # NaN counts as live
    if len(live) == 0:  # a zero signal: one (zero) channel gives the zeros
        return live.new_zeros(1)
    return live if 2 * len(live) <= mag.shape[1] else None


def _pool_switches(node, x):
    """A 2-D ONNX MaxPool of ``x [N, C, H, W]`` with its switches: ``(pooled, switches,
    padded size, (top pad, left pad, kernel, strides, dilations))``; the padding is explicit
    (``-inf``), so the switches index the padded plane.

    Raises:
        UserInputError: not a 2-D pool.
    """
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
    return pooled, switches, tuple(xp.shape[-2:]), (pt, pl, kernel, strides, dil)


def _walk_device(device: str) -> Any:
    """The torch device a projection runs on (:func:`~pyanalyzer.model.gradient.torch_device`);
    ``"auto"`` falls back to the CPU when torch sees a GPU but pyanalyzer's CUDA module cannot
    run there (the unpooling kernel would have nowhere to run).

    Raises:
        BackendUnavailableError: ``"cuda"`` without a CUDA device or the CUDA module.
        UserInputError: an unknown device.
    """
    import torch

    from pyanalyzer.errors import BackendUnavailableError
    from pyanalyzer.model.gradient import torch_device

    dev = torch_device(device)
    if dev.type == "cuda":
        try:
            _backend.kernels("cuda")
        except BackendUnavailableError:
            if device != "auto":
                raise
            return torch.device("cpu")
    return dev


@dataclass(frozen=True)
class _Rectifier:
    """``f(x) = x`` on ``(0, cap)``, ``slope * x`` for ``x <= 0``, ``cap`` for ``x >= cap``.

    ``slope`` is a number or a tensor that broadcasts to the input as ONNX broadcasts PRelu's
    slope (aligned on the last axes); ``cap`` is None for no cap.
    """

    slope: Any = 0.0
    cap: float | None = None

    def deconv(self, s):
        """Zeiler & Fergus: the signal through the unit's own piecewise-linear map, ``r(s)``."""
        import torch

        if isinstance(self.slope, float) and self.slope == 0.0:
            return s.clamp_min(0)
        return torch.where(s > 0, s, s * self.slope)

    def gradient(self, x):
        """``f'(x)``: 1 on ``(0, cap)``, ``slope`` for ``x <= 0``, 0 for ``x >= cap``."""
        import torch

        if isinstance(self.slope, float) and self.slope == 0.0:
            d = (x > 0).to(x.dtype)
        else:
            d = torch.where(x > 0, torch.ones_like(x), self.slope * torch.ones_like(x))
        if self.cap is not None:
            d = d * (x < self.cap)
        return d

    def guided(self, s, x):
        """Springenberg et al.: the deconvnet rule and the forward gradient, ``r(s) * f'(x)``."""
        return self.deconv(s) * self.gradient(x)


def _rectifier(op: str, node, module, args) -> _Rectifier | None:
    """The rectifier an op computes, or None for a Clip whose min is not 0 (a saturation)."""
    attrs = {a.name: onnx_attr(a) for a in node.attribute}
    if op == "Relu":
        return _Rectifier()
    if op == "LeakyRelu":
        return _Rectifier(float(attrs.get("alpha", 0.01)))
    if op == "PRelu":
        slope = args[1]
        return _Rectifier(float(slope.reshape(-1)[0]) if slope.numel() == 1 else slope)
    low, high = _clip_bounds(node, module, attrs)
    if low is None or low != 0:
        return None
    return _Rectifier(0.0, high)


def _clip_bounds(node, module, attrs) -> tuple[float | None, float | None]:
    """(min, max) of a Clip, None where absent: attributes before opset 11, constant inputs
    from 11 on (onnx2torch reads those into the module: ``nn.ReLU`` for (0, none),
    ``nn.ReLU6`` for (0, 6), ``OnnxClip`` otherwise, ``nn.Identity`` for neither)."""
    import torch

    if "min" in attrs or "max" in attrs:
        low, high = attrs.get("min"), attrs.get("max")
    elif isinstance(module, torch.nn.ReLU):
        low, high = 0.0, None
    elif isinstance(module, torch.nn.Identity):
        low, high = None, None
    elif hasattr(module, "min_val") and hasattr(module, "max_val"):  # OnnxClip, nn.ReLU6
        low, high = module.min_val, module.max_val
    else:
        raise UserInputError(
            f"cannot read the bounds of Clip node {node.name} from its torch module "
            f"{type(module).__name__}"
        )

    def number(v) -> float | None:
        if v is None:
            return None
        v = float(v)
        return None if abs(v) >= 3.0e38 else v  # ONNX's defaults are the float32 extremes

    return number(low), number(high)


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


# ---- the analyses ----------------------------------------------------------------------------


class ProjectionParams(Params):
    """Parameters of the projections (:class:`DeconvNet`, :class:`GuidedBackprop`,
    :class:`Saliency`)."""

    title: ClassVar[str] = "deconv"

    layer: str = Field(description="Layer (alias or ONNX name) of a spatial map.")
    units: Units = Field("all", description="Units (channels) to project.")
    mode: Annotated[str, Choice("mode", MODES)] = Field(
        "max",
        description="max: the unit's strongest activation (Zeiler & Fergus); map: the whole "
        "channel map; topk: its k strongest activations.",
    )
    k: Annotated[int, Int("k", 1)] = Field(9, description="Activations kept for mode topk.")
    batch_size: Annotated[int, Int("batch size", 1)] = Field(
        16, description="Images per backward walk."
    )
    device: Annotated[str, Choice("device", DEVICES)] = Field(
        "auto",
        description="Where the projection runs (torch and the unpooling kernel): auto (CUDA "
        "when available, else the CPU), cpu or cuda.",
    )


@dataclass(frozen=True)
class ProjectionResult(Result):
    """The projections of some units of a layer on a batch of images.

    Attributes:
        pixels: float32 ``[U, N, C, H, W]``: for unit ``u`` and image ``n`` the signal that
            reached the input (NCHW, RGB order), as :class:`Projection` describes it.
        activation: float32 ``[U, N]``: the activation that was projected.
        positions: int64 ``[U, N, 2]``: ``(y, x)`` of each unit's strongest activation.
        originals: uint8 ``[N, H, W, C]``: the images, as the model saw them.
        units: int64 ``[U]``.
        method: ``"deconv"``, ``"guided"`` or ``"saliency"``; ``mode``: as the params.
        layer, alias: the layer's ONNX name and alias.
    """

    pixels: np.ndarray
    activation: np.ndarray
    positions: np.ndarray
    originals: np.ndarray
    units: np.ndarray
    method: str
    mode: str
    layer: str
    alias: str

    def images(self) -> np.ndarray:
        """uint8 ``[U, N, H, W, 3]`` for display (:meth:`Projection.images`)."""
        return np.stack(
            [
                Projection(p, a, q, self.method, self.mode, self.layer, int(u)).images()
                for p, a, q, u in zip(
                    self.pixels, self.activation, self.positions, self.units, strict=True
                )
            ]
        )

    def summary(self) -> dict[str, Any]:
        """Per unit: the projected activation and the position of its maximum, per image."""
        return {
            "method": self.method,
            "mode": self.mode,
            "layer": self.layer,
            "alias": self.alias,
            "images": len(self.originals),
            "units": [
                {
                    "unit": int(u),
                    "activation": [float(v) for v in self.activation[i]],
                    "positions": [[int(y), int(x)] for y, x in self.positions[i]],
                }
                for i, u in enumerate(self.units)
            ],
        }


class UnitProjection(ImageAnalysis[ProjectionParams, ProjectionResult]):
    """Project units of a layer back to pixels on a batch of images; :attr:`rule` says how the
    signal passes the rectifiers (see the module's table). Subclasses only set it.

    :meth:`run` takes uint8 ``[N, H, W, C]`` images at the model's input size (or one image, or
    an image source) and returns a :class:`ProjectionResult`.

    Raises:
        GradientUnavailableError: the model could not be converted (names the ops).
        UserInputError: not a spatial layer, units out of range, CUDA asked for and missing, an
            op the rule cannot invert (named, when it runs).
    """

    rule: ClassVar[str]
    missing_inputs: ClassVar[str] = "give the images to project the units on"
    params_type: ClassVar[type[Params]] = ProjectionParams
    result_type: ClassVar[type[Result]] = ProjectionResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})

    def check(self) -> None:
        from pyanalyzer import budget

        p = self.params
        self.info = self.model.spatial_layer(p.layer)
        self.units = select_units(p.units, int(self.info.channels or 0))
        self.projector = Projector(self.model, self.rule, p.device)
        budget.check(
            f"projecting {self.info.alias} for {p.batch_size} image(s) at a time",
            budget.projection_bytes(self.model, self.info, batch=p.batch_size),
            advice="use a smaller batch size",
        )

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        out.update(layer=self.info.name, units=self.units)
        if self.params.mode != "topk":
            out.pop("k")
        return out

    def compute(self, inputs: np.ndarray, checkpoint: Checkpoint) -> ProjectionResult:
        p, spec = self.params, self.model.preprocessing
        per_unit: list[list[Projection]] = [[] for _ in self.units]
        # batch_size rows a walk: the images of a batch repeated once per unit of a group
        for s in range(0, len(inputs), p.batch_size):
            x = spec.normalize(inputs[s : s + p.batch_size])
            group = max(1, p.batch_size // len(x))
            for g in range(0, len(self.units), group):
                chosen = self.units[g : g + group]
                found = self.projector.project_units(x, self.info.name, chosen, mode=p.mode, k=p.k)
                for j, q in enumerate(found):
                    per_unit[g + j].append(q)
        return ProjectionResult(
            pixels=np.stack([np.concatenate([q.pixels for q in parts]) for parts in per_unit]),
            activation=np.stack(
                [np.concatenate([q.activation for q in parts]) for parts in per_unit]
            ),
            positions=np.stack(
                [np.concatenate([q.positions for q in parts]) for parts in per_unit]
            ),
            originals=inputs,
            units=np.asarray(self.units, np.int64),
            method=self.rule,
            mode=p.mode,
            layer=self.info.name,
            alias=self.info.alias,
        )


class DeconvNet(UnitProjection):
    """DeconvNet (Zeiler & Fergus, ECCV 2014): the signal goes through each rectifier's own
    piecewise-linear map (rectified at every ReLU), smooth activations by their local gradient
    (the module's table)."""

    method: ClassVar[str] = "deconv"
    rule: ClassVar[str] = "deconv"
    summary_line: ClassVar[str] = (
        "DeconvNet: project a unit back to pixels through rectification, transposed "
        "convolutions and max-unpooling with switches (Zeiler & Fergus, ECCV 2014)."
    )


class GuidedBackprop(UnitProjection):
    """Guided backpropagation (Springenberg et al., ICLR 2015 workshop): the DeconvNet rule
    and the forward gradient together at every rectifier (rectified, and masked where the
    forward input was <= 0, at a ReLU); smooth activations by their local gradient."""

    method: ClassVar[str] = "guided"
    rule: ClassVar[str] = "guided"
    summary_line: ClassVar[str] = (
        "Guided backpropagation: the DeconvNet signal also masked by the forward pass "
        "(Springenberg et al., ICLR 2015)."
    )


class Saliency(UnitProjection):
    """Saliency (Simonyan, Vedaldi & Zisserman, 2013): the plain gradient of the unit."""

    method: ClassVar[str] = "saliency"
    rule: ClassVar[str] = "saliency"
    summary_line: ClassVar[str] = (
        "Saliency: the gradient of a unit with respect to the image (Simonyan et al., 2013)."
    )


PROJECTIONS: dict[str, type[UnitProjection]] = {
    c.rule: c for c in (DeconvNet, GuidedBackprop, Saliency)
}
"""The projection analyses by rule name (``"deconv"``, ``"guided"``, ``"saliency"``)."""
