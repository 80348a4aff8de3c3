"""The loaded model: validated ONNX graph, image input, layers, preprocessing, two engines."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from pyanalyzer.errors import (
    GradientUnavailableError,
    ModelError,
    ParityWarning,
    PreprocessingError,
    first_line,
)
from pyanalyzer.model import graph as _graph
from pyanalyzer.model.forward import ForwardEngine, random_input
from pyanalyzer.model.onnx_io import read_model
from pyanalyzer.model.preprocessing import METADATA_KEY, PreprocessSpec, build_spec

if TYPE_CHECKING:
    from pyanalyzer.model.gradient import GradientEngine

PARITY_RTOL = 1e-3
"""Parity tolerance: max |ort - torch| relative to max |ort| on each layer."""


@dataclass(frozen=True)
class LayerParity:
    name: str
    alias: str
    max_abs: float
    max_rel: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= PARITY_RTOL


@dataclass(frozen=True)
class ParityReport:
    """How far the torch conversion is from onnxruntime, per shared layer, on one random input.

    ``max_rel`` is ``max |a - b| / max |a|`` over the layer (a = onnxruntime).
    """

    layers: tuple[LayerParity, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(layer.ok for layer in self.layers)

    @property
    def worst(self) -> LayerParity | None:
        return max(self.layers, key=lambda p: p.max_rel, default=None)

    def describe(self) -> str:
        if self.error:
            return f"not checked: {self.error}"
        w = self.worst
        if w is None:
            return "no shared layers"
        status = "ok" if self.ok else "MISMATCH"
        return (
            f"{status}: {len(self.layers)} layers compared, worst {w.alias} "
            f"max abs {w.max_abs:.3g}, max rel {w.max_rel:.3g} (tolerance {PARITY_RTOL:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": self.error,
            "tolerance": PARITY_RTOL,
            "layers": [
                {"name": p.name, "alias": p.alias, "max_abs": p.max_abs, "max_rel": p.max_rel}
                for p in self.layers
            ],
        }


MAX_SIDECAR_BYTES = 2**20
"""The largest preprocessing sidecar (``<model>.json``) read: 1 MiB."""

MAX_JSON_DEPTH = 64
"""The deepest nesting of JSON read from a model's metadata or sidecar (a preprocessing spec
is two levels deep; 10000 nested arrays would exhaust Python's recursion)."""


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (cheap, no recursion)."""
    depth = best = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def _json(text: str, what: str) -> Any:
    """``json.loads(text)``, refusing malformed or too deeply nested text with one line."""
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise PreprocessingError(
            f"{what} is JSON nested more than {MAX_JSON_DEPTH} levels deep; a preprocessing "
            "spec is a flat object"
        )
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise PreprocessingError(f"{what} is not valid JSON: {reason}") from None


def _sidecar(path: Path) -> tuple[str, dict[str, Any]] | None:
    from pyanalyzer._checks import open_regular

    side = path.with_name(path.name + ".json")
    if not side.exists() and not side.is_symlink():
        return None
    what = f"preprocessing sidecar {str(side)!r}"
    try:
        with open_regular(
            side, "a preprocessing sidecar (JSON)", error=PreprocessingError,
            max_bytes=MAX_SIDECAR_BYTES,
        ) as fh:  # fmt: skip
            text = fh.read(MAX_SIDECAR_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PreprocessingError(f"{what} is not valid JSON: {exc}") from None
    data = _json(text, what)
    if (
        isinstance(data, dict)
        and "preprocessing" in data
        and isinstance(data["preprocessing"], dict)
    ):
        data = data["preprocessing"]
    return f"sidecar {side.name}", data


class Model:
    """An ONNX image model ready for analysis. Build it with :func:`load_model`.

    Attributes:
        path: the resolved file path.
        sha256: digest of the file (and its external data): the store's model key.
        proto: the validated ONNX graph, external data loaded.
        input: the image input (:class:`~pyanalyzer.model.graph.InputInfo`).
        preprocessing: the resolved :class:`PreprocessSpec`.
        layers: the layer catalogue, in graph order.
        metadata: the model's ``metadata_props``.
        forward: the onnxruntime engine (:class:`~pyanalyzer.model.forward.ForwardEngine`).
        parity_report: how far the torch engine is from onnxruntime (:meth:`check_parity`),
            None until checked.
        onnxruntime_error: why onnxruntime could not run one image at load (forward passes
            will fail with it), or None.
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        path: Path,
        sha256: str,
        preprocessing: PreprocessSpec | Mapping[str, Any] | str | None = None,
        providers: Sequence[str] | None = None,
    ):
        self.proto = proto
        self.path = path
        self.sha256 = sha256
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.input = _graph.find_image_input(proto)
        self.preprocessing = self._resolve_preprocessing(preprocessing)
        self.layers: list[_graph.LayerInfo] = []
        self.forward = ForwardEngine(
            proto, self.input, self.preprocessing, providers=providers, resolve=self.layer,
            catalogue=lambda: self.layers,
        )  # fmt: skip
        h, w = self.preprocessing.input_size
        shapes = _graph.infer_shapes(proto, self.input, h, w)
        # Before anything runs: what one image costs, from the shapes inference could give.
        self._check_activations(shapes)
        missing = [o for n in proto.graph.node for o in n.output if o and o not in shapes]
        # One image through onnxruntime: the shapes inference could not give, and whether
        # onnxruntime can run the graph at all (see onnxruntime_error).
        self.onnxruntime_error: str | None = None
        shapes.update(self._run_once(missing))
        if missing:
            self._check_activations(shapes)
        self.layers = _graph.build_catalogue(proto, self.input, shapes)
        if not self.layers:
            raise ModelError("the model has no spatial feature maps or outputs to analyse")
        self.parity_report: ParityReport | None = None
        self._gradient: GradientEngine | None = None
        self._gradient_error: str | None = None

    def _check_activations(self, shapes: dict[str, tuple[_graph.Dim, ...]]) -> None:
        """Refuse a model whose tensors for one image exceed the memory budget (a Conv padded
        by thousands of pixels, a huge Resize), naming the largest, before anything runs."""
        from pyanalyzer import budget

        sizes = _graph.activation_sizes(self.proto, self.input, shapes)
        total = sum(n for _, n in sizes) * budget.FLOAT_BYTES
        if total <= budget.memory_budget():
            return
        name, count = max(sizes, key=lambda t: t[1])
        node = next((n for n in self.proto.graph.node if name in n.output), None)
        of = f" of node {node.name!r} ({node.op_type})" if node is not None and node.name else ""
        dims = [d for d in shapes.get(name, ())]
        h, w = self.preprocessing.input_size
        budget.check(
            f"running the model on one {h}x{w} image ({len(sizes)} tensors; the largest, "
            f"{name!r}{of}, is {dims})",
            total,
        )

    # ---- preprocessing ---------------------------------------------------------------------
    def _resolve_preprocessing(self, given) -> PreprocessSpec:
        if isinstance(given, PreprocessSpec):
            given = {k: v for k, v in given.to_dict().items() if k != "channels"}
        elif isinstance(given, str):
            given = {"preset": given}
        layers: list[tuple[str, Mapping[str, Any] | None]] = []
        if METADATA_KEY in self.metadata:
            layers.append(
                (
                    "model metadata",
                    _json(self.metadata[METADATA_KEY], f"the model's metadata {METADATA_KEY!r}"),
                )
            )
        side = _sidecar(self.path)
        if side:
            layers.append(side)
        layers.append(("arguments", given))
        info = self.input
        return build_spec(
            channels=info.channels,
            layout=info.layout,
            model_size=(info.height, info.width),
            layers=layers,
        )

    # ---- catalogue -------------------------------------------------------------------------
    def layer(self, name: str) -> _graph.LayerInfo:
        """A layer by ONNX tensor name or alias; raises LayerNotFoundError with suggestions."""
        return _graph.resolve_layer(self.layers, name)

    def spatial_layer(self, name: str) -> _graph.LayerInfo:
        """Like :meth:`layer`, but refuses tensors that are not spatial maps."""
        layer = self.layer(name)
        if not layer.is_spatial:
            from pyanalyzer.errors import UserInputError

            raise UserInputError(
                f"layer {layer.alias} ({layer.name!r}, shape {list(layer.shape)}) is not a "
                "spatial feature map [N, C, H, W]"
            )
        return layer

    @property
    def class_names(self) -> list[str] | None:
        raw = self.metadata.get("pyanalyzer.class_names")
        try:
            names = _json(raw, "class names") if raw else None
        except PreprocessingError:
            return None
        return [str(n) for n in names] if isinstance(names, list) else None

    @property
    def opset(self) -> int:
        return next(
            (int(o.version) for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0
        )

    # ---- engines ---------------------------------------------------------------------------
    def _run_once(self, missing: list[str]) -> dict[str, tuple[int, ...]]:
        """Run one random image through onnxruntime, returning the shapes of the model's
        outputs and of the tensors ``missing``. Where onnxruntime cannot run the graph (a
        BatchNormalization whose scale does not fit its input; a dilated SAME convolution,
        which it does not support) the reason is kept in :attr:`onnxruntime_error` and
        nothing is returned: forward passes will fail with it, and a torch conversion that
        fails too makes the model unusable (:meth:`_smoke_torch`).

        Raises:
            BudgetError: the run ran out of memory.
        """
        from pyanalyzer import budget

        names = list(dict.fromkeys([o.name for o in self.proto.graph.output] + missing))
        x = random_input(self.preprocessing, self.input.numpy_dtype, 1)
        h, w = self.preprocessing.input_size
        try:
            outs = self.forward.session(names).run(names, {self.input.name: x})
        except ModelError as exc:  # no session could be made
            self.onnxruntime_error = str(exc)
            return {}
        except Exception as exc:  # onnxruntime's own exception types are not public
            if budget.is_out_of_memory(exc):
                raise budget.BudgetError(
                    budget.out_of_memory_message(exc, f"onnxruntime ran one {h}x{w} image")
                ) from None
            self.onnxruntime_error = (
                f"onnxruntime cannot run this model on one {h}x{w} image: {first_line(exc)}"
            )
            return {}
        return {n: tuple(o.shape) for n, o in zip(names, outs, strict=True) if hasattr(o, "shape")}

    def _build_gradient(self) -> GradientEngine | None:
        """The torch engine, built on first use (torch is imported only then)."""
        if self._gradient is None and self._gradient_error is None:
            from pyanalyzer.model.gradient import GradientEngine

            layouts = {layer.name: layer.layout for layer in self.layers if layer.is_spatial}
            try:
                engine = GradientEngine(self.proto, self.input.name, layouts)
                self._smoke_torch(engine)
                self._gradient = engine
            except GradientUnavailableError as exc:
                self._gradient_error = str(exc)
        return self._gradient

    def _smoke_torch(self, engine: GradientEngine) -> None:
        """Run one random image through the converted module (onnxruntime ran one at load):
        a conversion that builds but cannot run makes the gradient methods unavailable, with
        torch's reason, instead of failing in the middle of one.

        Raises:
            ModelError: neither onnxruntime nor torch can run the model (onnxruntime's reason,
                which names the node).
            GradientUnavailableError: torch cannot run the converted model.
        """
        import torch

        from pyanalyzer import budget

        x = torch.from_numpy(random_input(self.preprocessing, self.input.numpy_dtype, 1))
        try:
            with torch.no_grad():
                engine(x)
        except (RuntimeError, IndexError, ValueError, TypeError) as exc:
            if budget.is_out_of_memory(exc):
                raise budget.BudgetError(
                    budget.out_of_memory_message(exc, "torch ran one image")
                ) from None
            if self.onnxruntime_error is not None:
                raise ModelError(self.onnxruntime_error) from None
            raise GradientUnavailableError(
                f"the model converted to torch cannot run: {first_line(exc)} (forward-only "
                "methods still work)"
            ) from None

    @property
    def gradient_available(self) -> bool:
        """Whether the graph converted to torch (gradient methods can run)."""
        return self._build_gradient() is not None

    @property
    def gradient_error(self) -> str | None:
        """Why the conversion to torch failed, or None."""
        self._build_gradient()
        return self._gradient_error

    @property
    def gradient(self) -> GradientEngine:
        """The torch engine (:class:`~pyanalyzer.model.gradient.GradientEngine`), built on first
        use.

        Raises:
            GradientUnavailableError: naming the ops that could not be converted.
        """
        eng = self._build_gradient()
        if eng is None:
            raise GradientUnavailableError(
                f"gradient-based methods are unavailable for this model: {self._gradient_error}"
            )
        return eng

    # ---- parity ----------------------------------------------------------------------------
    def parity(self, seed: int = 0) -> ParityReport:
        """Run both engines on one random image and compare every layer they share."""
        eng = self._build_gradient()
        if eng is None:
            return ParityReport((), error=self._gradient_error)
        import torch

        shared = [layer for layer in self.layers if eng.has_tensor(layer.name)]
        x = random_input(self.preprocessing, np.float32, 1, seed)
        ref = self.forward.run(x, [layer.name for layer in shared])
        with torch.no_grad():
            got = eng.features(torch.from_numpy(x), [layer.name for layer in shared])
        results = []
        for layer in shared:
            a = ref[layer.name].astype(np.float64)
            t = got.get(layer.name)
            if t is None or tuple(t.shape) != a.shape:
                results.append(LayerParity(layer.name, layer.alias, float("inf"), float("inf")))
                continue
            b = t.detach().double().numpy()
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            scale = float(np.max(np.abs(a))) if a.size else 0.0
            results.append(LayerParity(layer.name, layer.alias, diff, diff / max(scale, 1e-12)))
        return ParityReport(tuple(results))

    def check_parity(self, seed: int = 0) -> ParityReport:
        """Compare the engines (:meth:`parity`) and keep the report as :attr:`parity_report`."""
        self.parity_report = self.parity(seed)
        return self.parity_report

    # ---- description -----------------------------------------------------------------------
    def summary(self, *, gradient: bool = True) -> dict[str, Any]:
        """Everything ``pyanalyzer info --json`` prints (parity when it was checked).

        Args:
            gradient: convert to torch to say whether gradient methods are available (torch
                is imported); False: ``"gradient"`` says it was not checked, unless the
                conversion was already tried.
        """
        p = self.proto
        parity = self.parity_report
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "producer": f"{p.producer_name} {p.producer_version}".strip(),
            "ir_version": int(p.ir_version),
            "opset": self.opset,
            "input": {
                "name": self.input.name,
                "shape": [d if d is not None else "?" for d in self.input.shape],
                "layout": self.input.layout,
                "channels": self.input.channels,
                "dtype": self.input.numpy_dtype.name,
            },
            "batch_mode": self.forward.batch_mode,
            "preprocessing": self.preprocessing.to_dict(),
            "preprocessing_source": dict(self.preprocessing.source),
            "class_names": self.class_names,
            "layers": [layer.to_dict() for layer in self.layers],
            "gradient": (
                {"available": self.gradient_available, "error": self.gradient_error}
                if gradient or self._gradient is not None or self._gradient_error is not None
                else {"available": None, "error": None}
            ),
            "parity": parity.to_dict() if parity is not None else None,
        }


def load_model(
    path: str | os.PathLike[str],
    preprocessing: PreprocessSpec | Mapping[str, Any] | str | None = None,
    *,
    check_parity: bool = True,
    providers: Sequence[str] | None = None,
    external_data: bool = True,
) -> Model:
    """Load, validate and describe an ONNX image model.

    Args:
        path: the ``.onnx`` file. External data must sit inside its folder.
        preprocessing: a preset name (``imagenet``, ``caffe``, ``unit``, ``raw``), a partial
            dict of :class:`PreprocessSpec` fields (``{"preset": "caffe", "input_size": 227}``)
            or a full spec; it overrides the model's metadata and JSON sidecar.
        check_parity: convert to torch and compare with onnxruntime now, warning
            (:class:`~pyanalyzer.errors.ParityWarning`) when a layer is off by more than
            :data:`PARITY_RTOL`. A failed conversion is not an error: forward-only methods
            still work, gradient methods raise naming the ops.
        providers: onnxruntime execution providers (default: CUDA first when available).
        external_data: whether weights may live in external data files beside the model
            (False: refused, as for uploads to the service).

    Raises:
        ModelError: the file is missing, unreadable, invalid, hostile or not an image model.
        PreprocessingError: the preprocessing spec is impossible for the model.
    """
    proto, resolved, sha = read_model(path, external_data=external_data)
    model = Model(proto, resolved, sha, preprocessing, providers=providers)
    if check_parity:
        report = model.check_parity()
        if report.error is None and not report.ok:
            warnings.warn(
                f"{resolved.name}: onnxruntime and torch disagree: {report.describe()}",
                ParityWarning,
                stacklevel=2,
            )
    return model
