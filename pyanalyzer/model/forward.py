"""The forward engine: onnxruntime sessions that return any chosen set of layer tensors.

Intermediate tensors are exposed by adding them to the graph's outputs (one session per set of
requested layers, cached). Models exported with a batch dimension fixed to 1 are first tried
with that dimension rewritten to a symbolic one; the rewrite is kept only if a batch of two
gives the same results as two single runs, else batches run one image at a time
(``batch_mode`` says which; ``benchmarks/bench_batch1.py`` measures the difference).

Spatial maps come back as ``[N, C, H, W]`` whatever layout the model computes in (converted by
:meth:`~pyanalyzer.model.graph.LayerInfo.to_nchw`, the one place that does it); ``nchw=False``
gives the tensors exactly as the graph produces them.

:meth:`ForwardEngine.iter_bound` leaves the maps where onnxruntime computed them (IOBinding):
on the GPU with onnxruntime-gpu's CUDA provider, so that pyanalyzer's CUDA kernels read them
there without a copy to the host (:class:`BoundMaps`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx

from pyanalyzer import budget
from pyanalyzer.errors import ModelError, UserInputError, first_line

if TYPE_CHECKING:
    from pyanalyzer.model.graph import InputInfo, LayerInfo
    from pyanalyzer.model.preprocessing import PreprocessSpec


class ImageSource(Protocol):
    """Anything the forward engine can stream over: indexable images as 0–255 pixels.

    :mod:`pyanalyzer.data` provides folders, file lists, in-memory arrays and concept datasets.
    """

    def __len__(self) -> int: ...

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        """``uint8 [H, W, C]`` at ``spec.input_size`` with ``spec.channels`` channels (RGB)."""
        ...

    def name(self, index: int) -> str: ...


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and sees a device, then CPU."""
    avail = available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail] or avail


BOUND_SUFFIX = "::pyanalyzer_nchw_f32"
"""Suffix of the extra outputs that :meth:`ForwardEngine.iter_bound` adds: each requested
map as C-contiguous float32 ``[N, C, H, W]``, transposed and cast in the graph, so on the
device that computes it."""


@dataclass(frozen=True)
class BoundMaps:
    """One layer's maps of a batch, float32 ``[N, C, H, W]`` C-contiguous, left in the memory
    where onnxruntime computed them (:meth:`ForwardEngine.iter_bound`).

    Attributes:
        value: the ``onnxruntime.OrtValue`` that owns the memory (keep this object while
            :attr:`ptr` is used).
        shape: ``(N, C, H, W)``.
        device: ``"cuda"`` or ``"cpu"``.
        device_id: the CUDA device index (0 on the CPU).
        host: the host array that :attr:`value` wraps, when the maps were made on the host.
    """

    value: Any
    shape: tuple[int, int, int, int]
    device: str
    device_id: int
    host: np.ndarray | None = None

    @property
    def ptr(self) -> int:
        """The address of the first float (device memory when :attr:`device` is ``"cuda"``)."""
        return int(self.value.data_ptr())

    @property
    def size(self) -> int:
        """Number of floats."""
        return math.prod(self.shape)

    def numpy(self) -> np.ndarray:
        """The maps as a host array that owns its memory (a copy: ``OrtValue.numpy()`` may
        give a view that outlives nothing), or :attr:`host` itself."""
        if self.host is not None:
            return self.host
        return np.array(self.value.numpy(), dtype=np.float32, order="C", copy=True)


def _host_maps(maps: np.ndarray) -> BoundMaps:
    """Host maps (float32 ``[N, C, H, W]``) as :class:`BoundMaps`."""
    import onnxruntime as ort

    arr = np.ascontiguousarray(maps, dtype=np.float32)
    return BoundMaps(ort.OrtValue.ortvalue_from_numpy(arr), arr.shape, "cpu", 0, host=arr)


def random_input(
    spec: PreprocessSpec, dtype: np.dtype | type = np.float32, n: int = 1, seed: int = 0
) -> np.ndarray:
    """``n`` preprocessed images of uniform random 0–255 pixels (seeded), in the model's layout
    and input dtype: what shape probes, batch checks and parity checks feed the model."""
    rng = np.random.default_rng(seed)
    h, w = spec.input_size
    pix = rng.integers(0, 256, size=(n, h, w, spec.channels), dtype=np.uint8)
    return spec.normalize(pix).astype(dtype)


class ForwardEngine:
    """Batched forward passes through onnxruntime with extra outputs.

    Args:
        proto: the validated ONNX model.
        image_input: its image input.
        preprocessing: how 0–255 pixels become the model's input.
        providers: onnxruntime execution providers (default: CUDA when present, then CPU).
        threads: intra-op threads for onnxruntime (0 = its default).
        resolve: maps a layer name or alias to its catalogue entry (the model's
            :meth:`~pyanalyzer.model.model.Model.layer`); without it, names must be ONNX tensor
            names and tensors come back as the graph makes them.
        catalogue: the model's layer catalogue (for the memory estimate of a batch,
            :func:`pyanalyzer.budget.forward_bytes`).
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        image_input: InputInfo,
        preprocessing: PreprocessSpec,
        *,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        resolve: Callable[[str], LayerInfo] | None = None,
        catalogue: Callable[[], Sequence[LayerInfo]] | None = None,
    ):
        self.proto = proto
        self.input = image_input
        self.preprocessing = preprocessing
        self.providers = list(providers) if providers else default_providers()
        self.threads = threads
        self.resolve = resolve
        self._catalogue = catalogue
        self._sessions: dict[tuple[str, ...], Any] = {}
        self._batchable: onnx.ModelProto | None = None
        self._batch_mode = "native" if image_input.batch is None else "loop"

    # ---- graph preparation -----------------------------------------------------------------
    @property
    def batch_mode(self) -> str:
        """``"native"`` (dynamic batch), ``"rewritten"`` (a fixed batch of 1 made symbolic and
        checked) or ``"loop"`` (one image at a time)."""
        self._batchable_proto()
        return self._batch_mode

    @property
    def graph(self) -> onnx.ModelProto:
        """The graph the sessions run: the model, with a fixed batch of 1 made symbolic when
        that was checked to give the same results (:attr:`batch_mode`)."""
        return self._batchable_proto()

    def _batchable_proto(self) -> onnx.ModelProto:
        if self._batchable is None:
            self._batchable = self._make_batchable()
        return self._batchable

    def _make_batchable(self) -> onnx.ModelProto:
        m, info = self.proto, self.input
        if info.batch != 1:
            return m
        # Rewrite the fixed batch of 1 to a symbolic one and check it on a batch of two.
        cand = copy.deepcopy(m)
        for vi in cand.graph.input:
            if vi.name == info.name:
                d = vi.type.tensor_type.shape.dim[0]
                d.Clear()
                d.dim_param = "N"
        for vi in cand.graph.output:  # outputs re-inferred by onnxruntime
            vi.type.tensor_type.ClearField("shape")
        del cand.graph.value_info[:]
        try:
            x = random_input(self.preprocessing, info.numpy_dtype, 2)
            outs = [o.name for o in m.graph.output]
            both = self._make_session(cand, outs).run(outs, {info.name: x})
            single = self._make_session(m, outs)
            ones = [single.run(outs, {info.name: x[i : i + 1]}) for i in range(2)]
            for k in range(len(outs)):
                ref = np.concatenate([ones[0][k], ones[1][k]], axis=0)
                if both[k].shape != ref.shape or not np.allclose(
                    both[k], ref, rtol=1e-4, atol=1e-5
                ):
                    return m
        except Exception:  # the rewrite broke something (a hard-coded reshape): stay batch-1
            return m
        self._batch_mode = "rewritten"
        return cand

    def _make_session(self, proto: onnx.ModelProto, outputs: Sequence[str]) -> Any:
        import onnxruntime as ort

        m = proto
        existing = {o.name for o in proto.graph.output}
        extra = [o for o in outputs if o not in existing]
        if extra:
            m = onnx.ModelProto()
            m.CopyFrom(proto)
            for name in extra:
                m.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # failures surface as our own one-line errors
        if self.threads:
            opts.intra_op_num_threads = self.threads
        # Between two runs the engine's callers decode images and run pyanalyzer's kernels on
        # the same cores; onnxruntime's threads spinning for the next run took those cores
        # (a dissection of 1,000 images 0.63-0.67 s spinning, 0.58-0.61 s not, alternated).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(m.SerializeToString(), opts, providers=self.providers)
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot run this model: {first_line(exc)}") from None

    def make_session(self, proto: onnx.ModelProto, outputs: Sequence[str]) -> Any:
        """A new onnxruntime session of another graph (an edit of this model's: the unit
        ablation's) with this engine's providers and threads, returning ``outputs``.

        Raises:
            ModelError: onnxruntime cannot load the graph (one line).
        """
        return self._make_session(proto, outputs)

    def session(self, outputs: Sequence[str]) -> Any:
        """The cached onnxruntime session whose outputs are these ONNX tensors."""
        key = tuple(outputs)
        if key not in self._sessions:
            self._sessions[key] = self._make_session(self._batchable_proto(), outputs)
        return self._sessions[key]

    @property
    def layers(self) -> Sequence[LayerInfo]:
        """The model's layer catalogue (empty when the engine was made without one)."""
        return self._catalogue() if self._catalogue is not None else ()

    def check_batch(self, layers: Sequence[str], batch_size: int) -> None:
        """Refuse a batch of ``batch_size`` images at ``layers`` whose forward pass exceeds the
        memory budget (:func:`pyanalyzer.budget.forward_bytes`).

        Raises:
            BudgetError: one line naming the batch, the layers, the estimate and the budget.
        """
        if self.resolve is None:
            return
        infos = [self.resolve(n) for n in layers]
        names = ", ".join(i.alias for i in infos)
        budget.check(
            f"a forward pass of {batch_size} images returning {names}",
            budget.forward_bytes(self, infos, batch_size),
            advice="use a smaller --batch-size",
        )

    # ---- running ---------------------------------------------------------------------------
    def _layers(self, layers: Sequence[str]) -> list[tuple[str, str]]:
        """``(ONNX name, layout)`` of each requested layer."""
        if self.resolve is None:
            return [(str(n), "") for n in layers]
        return [(info.name, info.layout) for info in (self.resolve(n) for n in layers)]

    def _failure(self, exc: Exception, images: int) -> Exception:
        """The one-line error for an onnxruntime failure on a batch of ``images``."""
        if budget.is_out_of_memory(exc):
            return budget.BudgetError(
                budget.out_of_memory_message(exc, f"onnxruntime ran the model on {images} image(s)")
            )
        return ModelError(f"onnxruntime failed to run the model: {first_line(exc)}")

    def _bound_session(self, layers: Sequence[tuple[str, str]]) -> Any:
        """The cached session whose outputs are the given ``(name, layout)`` maps as float32
        NCHW (:data:`BOUND_SUFFIX`: a Transpose for NHWC layers and a Cast, in the graph)."""
        key = ("\0bound", *(n for n, _ in layers))
        if key not in self._sessions:
            m = onnx.ModelProto()
            m.CopyFrom(self._batchable_proto())
            for i, (name, layout) in enumerate(layers):
                src = name
                if layout == "nhwc":
                    src = f"{name}::pyanalyzer_nchw"
                    m.graph.node.append(onnx.helper.make_node(
                        "Transpose", [name], [src], perm=[0, 3, 1, 2],
                        name=f"pyanalyzer_bound_transpose_{i}",
                    ))  # fmt: skip
                m.graph.node.append(onnx.helper.make_node(
                    "Cast", [src], [name + BOUND_SUFFIX], to=onnx.TensorProto.FLOAT,
                    name=f"pyanalyzer_bound_cast_{i}",
                ))  # fmt: skip
            outs = [n + BOUND_SUFFIX for n, _ in layers]
            self._sessions[key] = self._make_session(m, outs)
        return self._sessions[key]

    def bound_device(self, layers: Sequence[str]) -> tuple[str, int]:
        """Where :meth:`iter_bound` leaves these layers' maps: ``("cuda", device id)`` when
        their session runs on onnxruntime's CUDA provider, else ``("cpu", 0)``."""
        sess = self._bound_session(self._layers(layers))
        if sess.get_providers()[0] != "CUDAExecutionProvider":
            return "cpu", 0
        options = sess.get_provider_options().get("CUDAExecutionProvider", {})
        return "cuda", int(options.get("device_id", 0) or 0)

    def iter_bound(
        self,
        source: ImageSource,
        layers: Sequence[str],
        *,
        batch_size: int = 32,
        start: int = 0,
        progress: bool = True,
        label: str = "forward",
    ) -> Iterator[tuple[range, dict[str, BoundMaps]]]:
        """:meth:`iter_layers` with the maps left where onnxruntime computed them.

        The outputs are bound (IOBinding) to the session's device, :meth:`bound_device`: GPU
        memory with the CUDA provider, so that nothing is copied to the host unless asked
        (:meth:`BoundMaps.numpy`); host memory otherwise. The maps are the same floats as
        :meth:`iter_layers` gives, as float32 NCHW. A model that runs one image at a time
        (:attr:`batch_mode` ``"loop"``) yields one image per item on the GPU; on the CPU its
        images are joined into the batch.

        Yields:
            ``(indices, {ONNX tensor name: BoundMaps})`` in source order.
        """
        batches = self._input_batches(source, layers, batch_size, start, progress, label)
        resolved = self._layers(layers)
        names = [n for n, _ in resolved]
        device, device_id = self.bound_device(layers)
        sess = self._bound_session(resolved)
        self._batchable_proto()
        step = 1 if self._batch_mode == "loop" else batch_size

        def run_part(part: np.ndarray) -> dict[str, BoundMaps]:
            part = np.ascontiguousarray(part)  # kept alive: the binding does not hold it
            binding = sess.io_binding()
            binding.bind_cpu_input(self.input.name, part)
            for name in names:
                binding.bind_output(name + BOUND_SUFFIX, device, device_id)
            try:
                sess.run_with_iobinding(binding)
            except Exception as exc:  # onnxruntime's own exception types are not public
                raise self._failure(exc, part.shape[0]) from None
            maps = {}
            for name, value in zip(names, binding.get_outputs(), strict=True):
                shape = tuple(int(d) for d in value.shape())
                if len(shape) != 4:
                    raise ModelError(f"tensor {name!r} is not a 4-D map (shape {list(shape)})")
                maps[name] = BoundMaps(value, shape, device, device_id)
            return maps

        for idx, normalized in batches:
            x = np.asarray(normalized, dtype=self.input.numpy_dtype)
            if step >= len(idx):
                yield idx, run_part(x)
            elif device == "cpu":  # one image at a time, joined into the batch on the host
                parts = [run_part(x[b : b + 1]) for b in range(len(idx))]
                yield (
                    idx,
                    {
                        name: _host_maps(np.concatenate([p[name].numpy() for p in parts]))
                        for name in names
                    },
                )
            else:  # one image at a time, each left on the device
                for b, i in enumerate(idx):
                    yield range(i, i + 1), run_part(x[b : b + 1])

    def run(
        self, x: np.ndarray, layers: Sequence[str], *, nchw: bool = True
    ) -> dict[str, np.ndarray]:
        """Run a preprocessed batch and return the chosen tensors.

        Args:
            x: the model input, ``[N, C, H, W]`` or ``[N, H, W, C]`` as the model takes it.
            layers: layer names or aliases (see :meth:`Model.layer`).
            nchw: spatial maps as ``[N, C, H, W]`` (default), else as the graph makes them.

        Returns:
            ``{onnx tensor name: array [N, ...]}``.
        """
        resolved = self._layers(layers)
        names = [n for n, _ in resolved]
        x = np.asarray(x, dtype=self.input.numpy_dtype)
        c_axis = 1 if self.input.layout == "nchw" else 3
        if x.ndim != 4 or x.shape[c_axis] != self.input.channels:
            raise UserInputError(
                f"input batch has shape {list(x.shape)}; the model takes {self.input.describe()}"
            )
        sess = self.session(names)
        feed_name = self.input.name

        def call(batch: np.ndarray) -> list[np.ndarray]:
            try:
                return list(sess.run(names, {feed_name: batch}))
            except Exception as exc:  # onnxruntime's own exception types are not public
                raise self._failure(exc, batch.shape[0]) from None

        self._batchable_proto()
        if self._batch_mode == "loop" and x.shape[0] != 1:
            parts = [call(x[i : i + 1]) for i in range(x.shape[0])]
            outs = [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(names))]
        else:
            outs = call(x)
        if nchw and self.resolve is not None:
            from pyanalyzer.model.graph import to_nchw

            outs = [to_nchw(o, lay) for o, (_, lay) in zip(outs, resolved, strict=True)]
        return dict(zip(names, outs, strict=True))

    def iter_layers(
        self,
        source: ImageSource,
        layers: Sequence[str],
        *,
        batch_size: int = 32,
        start: int = 0,
        progress: bool = True,
        label: str = "forward",
        nchw: bool = True,
    ) -> Iterator[tuple[range, dict[str, np.ndarray]]]:
        """Stream a whole image source through the model.

        Yields:
            ``(indices, {tensor name: [B, ...]})`` per batch, in source order (spatial maps
            as ``[B, C, H, W]`` unless ``nchw=False``).
        """
        for idx, x in self._input_batches(source, layers, batch_size, start, progress, label):
            yield idx, self.run(x, layers, nchw=nchw)

    def _input_batches(
        self,
        source: ImageSource,
        layers: Sequence[str],
        batch_size: int,
        start: int,
        progress: bool,
        label: str,
    ) -> Iterator[tuple[range, np.ndarray]]:
        """The source's images from ``start`` in batches, read and normalized
        (:meth:`PreprocessSpec.normalize`), with a progress bar of the batches. The batch size
        and the memory budget for ``layers`` are checked now, before any batch is read."""
        from pyanalyzer._progress import progress_bar

        if batch_size < 1:
            raise UserInputError(f"batch size must be at least 1, got {batch_size}")
        spec = self.preprocessing
        n = len(source)
        self.check_batch(layers, max(1, min(batch_size, n - start)))
        starts = range(start, n, batch_size)

        def batches() -> Iterator[tuple[range, np.ndarray]]:
            with progress_bar(len(starts), label=label, enabled=progress) as bar:
                for s in starts:
                    idx = range(s, min(n, s + batch_size))
                    yield idx, spec.normalize(np.stack([source.pixels(i, spec) for i in idx]))
                    bar.update(1)

        return batches()
