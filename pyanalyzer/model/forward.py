"""The forward engine: onnxruntime sessions that return any chosen set of layer tensors.

Intermediate tensors are exposed by adding them to the graph's outputs (one session per set of
requested layers, cached). Models exported with a batch dimension fixed to 1 are first tried
with that dimension rewritten to a symbolic one; the rewrite is kept only if a batch of two
gives the same results as two single runs, else batches run one image at a time
(``batch_mode`` says which; ``benchmarks/bench_batch1.py`` measures the difference).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

from pyanalyzer.errors import ModelError, UserInputError

if TYPE_CHECKING:
    from pyanalyzer.data.images import ImageSource
    from pyanalyzer.model.model import Model


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and sees a device, then CPU."""
    avail = available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail] or avail


class ForwardEngine:
    """Batched forward passes through onnxruntime with extra outputs.

    Args:
        model: the loaded :class:`~pyanalyzer.model.model.Model`.
        providers: onnxruntime execution providers (default: CUDA when present, then CPU).
        threads: intra-op threads for onnxruntime (0 = its default).
    """

    def __init__(self, model: Model, providers: Sequence[str] | None = None, threads: int = 0):
        self.model = model
        self.providers = list(providers) if providers else default_providers()
        self.threads = threads
        self._sessions: dict[tuple[str, ...], object] = {}
        self._proto = self._batchable_proto()

    # ---- graph preparation -----------------------------------------------------------------
    def _batchable_proto(self) -> onnx.ModelProto:
        m = self.model.proto
        info = self.model.input
        self.batch_mode = "native" if info.batch is None else "loop"
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
            x = self._random_input(2)
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
        self.batch_mode = "rewritten"
        return cand

    def _random_input(self, n: int) -> np.ndarray:
        spec = self.model.preprocessing
        rng = np.random.default_rng(0)
        h, w = spec.input_size
        pix = rng.integers(0, 256, size=(n, h, w, spec.channels), dtype=np.uint8)
        return spec.normalize(pix).astype(self.model.input.numpy_dtype)

    def _make_session(self, proto: onnx.ModelProto, outputs: Sequence[str]):
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
        try:
            return ort.InferenceSession(m.SerializeToString(), opts, providers=self.providers)
        except Exception as exc:
            raise ModelError(
                f"onnxruntime cannot run this model: {str(exc).splitlines()[0]}"
            ) from None

    def session(self, outputs: Sequence[str]):
        key = tuple(outputs)
        if key not in self._sessions:
            self._sessions[key] = self._make_session(self._proto, outputs)
        return self._sessions[key]

    # ---- running ---------------------------------------------------------------------------
    def run(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Run a preprocessed batch and return the chosen tensors.

        Args:
            x: the model input, ``[N, C, H, W]`` or ``[N, H, W, C]`` as the model takes it.
            layers: layer names or aliases (see :meth:`Model.layer`).

        Returns:
            ``{onnx tensor name: array [N, ...]}``.
        """
        names = [self.model.layer(n).name for n in layers]
        x = np.asarray(x, dtype=self.model.input.numpy_dtype)
        expected_c = self.model.input.channels
        c_axis = 1 if self.model.input.layout == "nchw" else 3
        if x.ndim != 4 or x.shape[c_axis] != expected_c:
            raise UserInputError(
                f"input batch has shape {list(x.shape)}; the model takes "
                f"{self.model.input.describe()}"
            )
        sess = self.session(names)
        feed_name = self.model.input.name

        def call(batch: np.ndarray) -> list[np.ndarray]:
            try:
                return sess.run(names, {feed_name: batch})
            except Exception as exc:  # onnxruntime's own exception types are not public
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ModelError(f"onnxruntime failed to run the model: {msg}") from None

        if self.batch_mode == "loop" and x.shape[0] != 1:
            parts = [call(x[i : i + 1]) for i in range(x.shape[0])]
            return {n: np.concatenate([p[k] for p in parts], axis=0) for k, n in enumerate(names)}
        return dict(zip(names, call(x), strict=True))

    def iter_layers(
        self,
        source: ImageSource,
        layers: Sequence[str],
        *,
        batch_size: int = 32,
        start: int = 0,
        progress: bool = True,
        label: str = "forward",
    ) -> Iterator[tuple[range, dict[str, np.ndarray]]]:
        """Stream a whole image source through the model.

        Yields:
            ``(indices, {tensor name: [B, ...]})`` per batch, in source order.
        """
        from pyanalyzer._progress import progress_bar

        if batch_size < 1:
            raise UserInputError(f"batch size must be at least 1, got {batch_size}")
        spec = self.model.preprocessing
        n = len(source)
        starts = range(start, n, batch_size)
        with progress_bar(len(starts), label=label, enabled=progress) as bar:
            for s in starts:
                idx = range(s, min(n, s + batch_size))
                pix = np.stack([source.pixels(i, spec) for i in idx])
                yield idx, self.run(spec.normalize(pix), layers)
                bar.update(1)
