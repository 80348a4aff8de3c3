"""Unit ablation: does the model use a unit for its decision?

Bau, Zhu, Strobelt, Lapedriza, Zhou & Torralba, "Understanding the role of individual units in
a deep neural network", PNAS 2020; Zhou, Sun, Bau & Torralba, "Revisiting the importance of
individual units in CNNs via ablation", 2018.

Each unit of a layer is ablated (its channel set to zero after the layer) and the model's
output is compared with the intact model's on the same images: per unit, the change of every
class's mean output (score) and probability, the fraction of images whose top-1 class changes,
and with labels the accuracy, overall and per class. Per class, the units whose ablation hurts
that class most (its accuracy with labels, else its score on the images of the class), joined
with their concept labels when a dissection of the layer is stored. Sets of units are ablated
together too: each class's top units, and a set given by the user.

The ablation is done on the ONNX graph itself (:mod:`pyanalyzer.model.surgery`): a mask input
after the layer, so one onnxruntime session serves every unit, batched over units; the part of
the network before the layer runs once per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from pyanalyzer.analysis import Analysis, Int, Params, Result, Units
from pyanalyzer.errors import UserInputError
from pyanalyzer.units import select_units

if TYPE_CHECKING:
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.surgery import AblationGraph
    from pyanalyzer.store import Checkpoint, Store

__all__ = [
    "ABLATION_IMAGES",
    "Ablation",
    "AblationInputs",
    "AblationParams",
    "AblationResult",
    "stored_unit_labels",
]

ABLATION_IMAGES = 500
"""Synthetic scenes used when no images are given."""

TAIL_FEED_BYTES = 256 << 20
"""The most bytes of repeated inputs fed to one pass of the network after the layer."""


class AblationParams(Params):
    """Parameters of :class:`Ablation`."""

    title: ClassVar[str] = "ablate"

    layer: str = Field(description="Layer whose units are ablated (alias or ONNX name).")
    units: Units = Field("all", description="Units ablated one at a time.")
    output: str | None = Field(
        None,
        description="The class output (alias or ONNX name); default: the model's first "
        "output with one value per class.",
    )
    labels: list[int] | None = Field(
        None,
        description="The class of every image, in order (0-based); gives accuracies. "
        "Without it, each image's class is the intact model's top-1.",
    )
    top: Annotated[int, Int("top", 0, 1000)] = Field(
        5, description="Per class, its top units by effect ablated together (0: none)."
    )
    joint: Units | None = Field(None, description="A set of units ablated together.")
    batch_size: Annotated[int, Int("batch size", 1)] = Field(
        32, description="Images per pass of the part of the network before the layer."
    )
    unit_batch: Annotated[int, Int("unit batch", 1)] = Field(
        16, description="Ablations per pass of the rest of the network."
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            raise UserInputError("labels must be a list of class numbers")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise UserInputError(f"labels must be class numbers (integers), got {v!r}")
            if v < 0:
                raise UserInputError(f"labels must be >= 0, got {int(v)}")
            out.append(int(v))
        return out


@dataclass
class AblationInputs:
    """Images (an image source) and, optionally, their classes (the ``labels`` parameter
    takes precedence)."""

    source: ImageSource
    labels: np.ndarray | None = None
    labels_source: str = "given"
    """Where the labels come from: ``"given"`` or ``"synthetic"`` (the scenes' own)."""


@dataclass
class AblationResult(Result):
    """Unit ablation of one layer.

    ``U`` units ablated one at a time, ``K`` classes, ``S`` sets ablated together. "Score" is
    the class output as the model gives it (logits, or probabilities when the model ends in a
    Softmax); "prob" is its softmax (the output itself after a Softmax). Every delta is
    ablated minus intact, averaged over images.

    Attributes:
        layer, alias: the layer; ``output`` the class output's ONNX name.
        units: int64 [U].
        class_names: [K].
        n_images: images evaluated.
        labels_source: ``"given"`` (accuracies are real), ``"synthetic"`` (the synthetic
            scenes' classes) or ``"predicted"`` (each image's class is the intact model's
            top-1: accuracies then measure agreement with the intact model).
        class_images: int64 [K], images of each class.
        base_score, base_prob: float64 [K], the intact model's mean score and probability.
        delta_score, delta_prob: float64 [U, K], mean change of each class's score and
            probability over all images.
        class_delta_score, class_delta_prob: float64 [U, K], mean change of class k's score
            and probability over the images of class k (0 where there are none).
        flipped: float64 [U], fraction of images whose top-1 class changed.
        base_accuracy: the intact model's accuracy; ``accuracy`` float64 [U] ablated.
        base_class_accuracy: float64 [K]; ``class_accuracy`` float64 [U, K].
        sets: per set ablated together: ``{"name", "units", "class"}`` (class: the class
            whose top units it is, or None).
        set_delta_score, set_class_delta_score: float64 [S, K]; ``set_flipped``,
            ``set_accuracy`` float64 [S]; ``set_class_accuracy`` float64 [S, K].
        cut: how the graph was cut (``"tail"``: the head ran once per image; ``"whole"``).
        timings: seconds per stage.
        unit_labels: concept labels of the units from a stored dissection of the layer
            (``{unit: {"concept", "iou", "detector"}}``; empty when none is stored). Looked
            up when the analysis runs, not stored with the result.
    """

    layer: str
    alias: str
    output: str
    units: np.ndarray
    class_names: list[str]
    n_images: int
    labels_source: str
    class_images: np.ndarray
    base_score: np.ndarray
    base_prob: np.ndarray
    delta_score: np.ndarray
    delta_prob: np.ndarray
    class_delta_score: np.ndarray
    class_delta_prob: np.ndarray
    flipped: np.ndarray
    base_accuracy: float
    accuracy: np.ndarray
    base_class_accuracy: np.ndarray
    class_accuracy: np.ndarray
    sets: list[dict[str, Any]]
    set_delta_score: np.ndarray
    set_class_delta_score: np.ndarray
    set_flipped: np.ndarray
    set_accuracy: np.ndarray
    set_class_accuracy: np.ndarray
    cut: str = "tail"
    timings: dict[str, float] = field(default_factory=dict)
    unit_labels: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        meta = super().to_meta()
        meta.pop("unit_labels", None)
        return meta

    # ---- derived -----------------------------------------------------------------------------
    @property
    def accuracy_drop(self) -> np.ndarray:
        """float64 [U]: intact accuracy minus ablated accuracy."""
        return self.base_accuracy - self.accuracy

    @property
    def class_accuracy_drop(self) -> np.ndarray:
        """float64 [U, K]: per class, intact minus ablated accuracy."""
        return self.base_class_accuracy[None, :] - self.class_accuracy

    def ranking(self, k: int) -> np.ndarray:
        """Positions (into :attr:`units`) of the units by their importance to class ``k``,
        most important first: the class's accuracy drop, then (ties, or no images of the
        class) its score drop, then the unit number."""
        score_drop = -self.class_delta_score[:, k]
        acc_drop = self.class_accuracy_drop[:, k]
        return np.lexsort((self.units, -score_drop, -acc_drop))

    def top_units(self, k: int, n: int = 5) -> list[int]:
        """The ``n`` units class ``k`` relies on most (unit numbers)."""
        return [int(self.units[i]) for i in self.ranking(k)[:n]]

    def describe_class(self, k: int, n: int = 5) -> str:
        """ "class X relies on units 12 (stripes), 40 (grass) ..." (labels where a dissection of
        the layer is stored)."""
        parts = []
        for u in self.top_units(k, n):
            lab = self.unit_labels.get(u)
            parts.append(f"{u} ({lab['concept']})" if lab and lab.get("concept") else str(u))
        return f"class {self.class_names[k]} relies on units {', '.join(parts)}"

    def summary(self) -> dict[str, Any]:
        classes = []
        for k, name in enumerate(self.class_names):
            order = self.ranking(k)[:5]
            classes.append(
                {
                    "class": name,
                    "images": int(self.class_images[k]),
                    "base_accuracy": float(self.base_class_accuracy[k]),
                    "relies_on": [
                        {
                            "unit": int(self.units[i]),
                            "accuracy_drop": float(self.class_accuracy_drop[i, k]),
                            "score_change": float(self.class_delta_score[i, k]),
                            "concept": self.unit_labels.get(int(self.units[i]), {}).get("concept"),
                        }
                        for i in order
                    ],
                    "text": self.describe_class(k),
                }
            )
        strongest = np.argsort(-self.flipped, kind="stable")[:5]
        return {
            "layer": self.layer,
            "alias": self.alias,
            "output": self.output,
            "units": len(self.units),
            "images": self.n_images,
            "labels": self.labels_source,
            "cut": self.cut,
            "base_accuracy": float(self.base_accuracy),
            "most_disruptive_units": [
                {
                    "unit": int(self.units[i]),
                    "flipped": float(self.flipped[i]),
                    "accuracy_drop": float(self.accuracy_drop[i]),
                }
                for i in strongest
            ],
            "classes": classes,
            "sets": [
                {
                    **s,
                    "flipped": float(self.set_flipped[j]),
                    "accuracy_drop": float(self.base_accuracy - self.set_accuracy[j]),
                    "class_accuracy_drop": (
                        None
                        if s.get("class") is None
                        else float(
                            self.base_class_accuracy[s["class"]]
                            - self.set_class_accuracy[j, s["class"]]
                        )
                    ),
                }
                for j, s in enumerate(self.sets)
            ],
            "timings": self.timings,
        }


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def stored_unit_labels(store: Store | None, model: Any, layer: LayerInfo) -> dict[int, dict]:
    """Each unit's concept label from the newest complete dissection of ``layer`` stored for
    ``model`` (with its current preprocessing), or ``{}``."""
    if store is None:
        return {}
    from pyanalyzer.methods.dissection import Dissection
    from pyanalyzer.methods.dissection.result import DissectionResult

    for run in Dissection.stored_usable(store, model):
        if layer.name not in (run.params.get("layers") or []):
            continue
        entry = store.get(run.info.key)
        if entry is None:
            continue
        try:
            r = DissectionResult.from_stored(entry.arrays, entry.extra["result"]).layer(layer.name)
        except (KeyError, ValueError):
            continue
        best, iou, det = r.best_concept, r.best_iou, r.detectors
        return {
            u: {
                "concept": r.concept_names[int(best[u])] if best[u] > 0 else None,
                "iou": float(iou[u]),
                "detector": bool(det[u]),
            }
            for u in range(r.units)
        }
    return {}


class Ablation(Analysis[AblationParams, AblationResult]):
    """Ablate the units of a layer one at a time and in sets, and measure the model's output
    (Bau et al., PNAS 2020; Zhou et al. 2018). See the module.

    :meth:`run` takes an image source (or :class:`AblationInputs` with labels, or None for
    synthetic scenes, labelled with their shape when the model's classes are those of the
    synthetic scenes) and returns an :class:`AblationResult`.
    """

    method: ClassVar[str] = "ablate"
    inputs: ClassVar[str] = "image-source"
    params_type: ClassVar[type[Params]] = AblationParams
    result_type: ClassVar[type[Result]] = AblationResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "unit_batch"})
    summary_line: ClassVar[str] = (
        "Unit ablation: the change of every class's output and accuracy when a unit (or a set) "
        "is zeroed (Bau et al., PNAS 2020; Zhou et al. 2018), with the dissection's labels."
    )

    def check(self) -> None:
        p, model = self.params, self.model
        self.layer = model.layer(p.layer)
        rank = len(self.layer.shape)
        if rank not in (2, 4) or not self.layer.channels:
            raise UserInputError(
                f"layer {self.layer.alias} is not a feature map or a vector of units "
                f"(shape {list(self.layer.shape)}): it cannot be ablated by channel"
            )
        if self.layer.is_output and rank == 2 and p.output is None:
            raise UserInputError(f"layer {self.layer.alias} is the class output itself")
        self.output = self._output(p.output)
        if self.output.index <= self.layer.index:
            raise UserInputError(
                f"the output {self.output.alias} comes before layer {self.layer.alias}"
            )
        c = int(self.layer.channels)
        self.graph: AblationGraph | None = None
        """The ablatable graph, built on the first batch (:meth:`_setup`)."""
        self.session: Any = None
        self.head: list[str] = []
        self.head_session: Any = None
        """The part of the network before the cut (computing :attr:`head`)."""
        self.units = select_units(p.units, c)
        self.joint = None if p.joint is None else select_units(p.joint, c)
        self.n_classes = int(self.output.channels or 0)
        if p.labels is not None and p.labels and max(p.labels) >= self.n_classes:
            raise UserInputError(
                f"label {max(p.labels)} is out of range: the output {self.output.alias} has "
                f"{self.n_classes} classes (0..{self.n_classes - 1})"
            )
        names = model.class_names
        self.class_names = (
            list(names)
            if names and len(names) == self.n_classes
            else [str(k) for k in range(self.n_classes)]
        )

    def _output(self, name: str | None) -> LayerInfo:
        model = self.model
        if name is not None:
            info = model.layer(name)
            if len(info.shape) != 2:
                raise UserInputError(
                    f"the output {info.alias} is not a vector of class scores "
                    f"(shape {list(info.shape)}); choose one of shape [N, classes]"
                )
            return info
        outs = [i for i in model.layers if i.is_output and len(i.shape) == 2 and i.channels]
        if not outs:
            raise UserInputError(
                "the model has no output of shape [N, classes]; give --output with a layer "
                "of class scores"
            )
        return outs[0]

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        out.update(
            layer=self.layer.name,
            output=self.output.name,
            units=self.units,
            joint=self.joint,
        )
        return out

    def prepare(self, inputs: Any) -> AblationInputs:
        if isinstance(inputs, AblationInputs):
            source, labels = inputs.source, inputs.labels
            self.labels_source = inputs.labels_source if labels is not None else "given"
        else:
            source, labels = inputs, None
            self.labels_source = "given"
        from pyanalyzer.data.defaults import SyntheticImages

        if source is None:
            source = SyntheticImages.for_model(self.model.preprocessing, ABLATION_IMAGES)
        if isinstance(source, SyntheticImages) and labels is None and self.params.labels is None:
            from pyanalyzer.data.synthetic import class_names

            if self.class_names == class_names():  # the default model's classes
                labels = source.labels
                self.labels_source = "synthetic"
        n = len(source)
        if n == 0:
            raise UserInputError("the image source is empty: there is nothing to evaluate")
        if self.params.labels is not None:
            labels = np.asarray(self.params.labels, np.int64)
            self.labels_source = "given"
        if labels is None:
            self.labels_source = "predicted"
        else:
            labels = np.asarray(labels, np.int64)
            if labels.shape != (n,):
                raise UserInputError(f"{labels.size} label(s) given for {n} image(s)")
            if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
                raise UserInputError(
                    f"labels must lie in 0..{self.n_classes - 1} (the output has "
                    f"{self.n_classes} classes)"
                )
        return AblationInputs(source, labels, self.labels_source)

    def identify(self, inputs: AblationInputs) -> Any:
        from pyanalyzer.data.images import array_digest, source_identity

        return {
            "images": source_identity(inputs.source),
            "labels": None if inputs.labels is None else array_digest(inputs.labels),
            "labels_source": self.labels_source,
        }

    def run(self, inputs: Any = None) -> AblationResult:
        result = super().run(inputs)
        result.unit_labels = stored_unit_labels(self.store, self.model, self.layer)
        return result

    # ---- the graphs --------------------------------------------------------------------------
    def _use(self, cut: str) -> None:
        """Build the ablatable graph cut as ``cut`` (``"tail"`` or ``"whole"``) and its
        session; the head's session is made on first use."""
        from pyanalyzer.model.surgery import ablation_graph

        fwd = self.model.forward
        self.graph = ablation_graph(fwd.graph, self.layer, [self.output.name], cut)
        self.session = fwd.make_session(self.graph.proto, list(self.graph.outputs))
        self.head = [n for n in self.graph.inputs if n != fwd.input.name]
        self.head_session = None

    def _setup(self, x: np.ndarray) -> None:
        """Build the tail graph and check it against the intact model on the first batch;
        fall back to the whole graph if it fails or disagrees."""
        from pyanalyzer.errors import ModelError

        fwd = self.model.forward
        intact = fwd.run(x, [self.output.name], nchw=False)[self.output.name]
        for cut in ("tail", "whole"):
            self._use(cut)
            try:
                got = self._evaluate(x, np.ones((1, int(self.layer.channels or 0))))[0]
            except ModelError:
                if cut == "whole":
                    raise
                continue
            scale = max(1.0, float(np.abs(intact).max()))
            if np.allclose(got, intact, rtol=1e-4, atol=1e-5 * scale) or cut == "whole":
                return

    def _head(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The tensors crossing the cut for a batch of model inputs."""
        fwd = self.model.forward
        feeds = {fwd.input.name: x}
        if not self.head:
            return feeds
        if self.head_session is None:
            from pyanalyzer.model.surgery import head_graph

            assert self.graph is not None
            self.head_session = fwd.make_session(head_graph(fwd.graph, self.graph), self.head)
        sess = self.head_session
        if fwd.batch_mode == "loop" and x.shape[0] > 1:
            parts = [sess.run(self.head, {fwd.input.name: x[i : i + 1]}) for i in range(len(x))]
            outs = [np.concatenate([p[k] for p in parts]) for k in range(len(self.head))]
        else:
            outs = sess.run(self.head, feeds)
        feeds.update(zip(self.head, outs, strict=True))
        return feeds

    def _evaluate(self, x: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Scores ``[M, B, K]`` of the images ``x`` under each of the ``M`` masks."""
        from pyanalyzer import budget
        from pyanalyzer.errors import ModelError, first_line
        from pyanalyzer.model.surgery import MASK_INPUT, mask_shape

        assert self.graph is not None
        b = x.shape[0]
        feeds = self._head(x)
        dtype = onnx_dtype(self.graph.mask_dtype)
        out = np.empty((len(masks), b, self.n_classes), np.float64)
        # the crossing tensors are repeated once per ablation of a pass: at most
        # TAIL_FEED_BYTES of them at once, whatever --unit-batch asks (results do not change)
        row = sum(int(feeds[name].nbytes) for name in self.graph.inputs) // max(b, 1)
        step = max(1, min(self.params.unit_batch, TAIL_FEED_BYTES // max(1, row * b)))
        loop = self.model.forward.batch_mode == "loop"
        for s in range(0, len(masks), step):
            chunk = masks[s : s + step]
            m = len(chunk)
            feed = {name: np.concatenate([feeds[name]] * m, axis=0) for name in self.graph.inputs}
            rows = np.repeat(chunk, b, axis=0).astype(dtype)
            feed[MASK_INPUT] = rows.reshape(mask_shape(self.layer, m * b))
            try:
                if loop:
                    parts = [
                        self.session.run(
                            [self.output.name],
                            {k: v[r : r + 1] for k, v in feed.items()},
                        )[0]
                        for r in range(m * b)
                    ]
                    y = np.concatenate(parts)
                else:
                    y = self.session.run([self.output.name], feed)[0]
            except Exception as exc:
                if budget.is_out_of_memory(exc):
                    raise budget.BudgetError(
                        budget.out_of_memory_message(
                            exc,
                            f"onnxruntime ran {m * b} ablated rows (use a smaller --batch-size)",
                        )
                    ) from None
                raise ModelError(
                    f"onnxruntime failed to run the ablated model: {first_line(exc)}"
                ) from None
            out[s : s + m] = np.asarray(y, np.float64).reshape(m, b, -1)[..., : self.n_classes]
        return out

    def scores(self, x: np.ndarray, sets: list[list[int]]) -> np.ndarray:
        """The class output of a batch under ablations, as the analysis computes it.

        Args:
            x: a preprocessed model input batch (as ``model.forward.run`` takes).
            sets: sets of units; each is ablated together in its own row.

        Returns:
            float64 ``[1 + len(sets), N, classes]``: row 0 the intact model, then one row per
            set.
        """
        c = int(self.layer.channels or 0)
        masks = np.ones((1 + len(sets), c))
        for j, group in enumerate(sets):
            masks[1 + j, select_units(list(group), c)] = 0.0
        x = np.asarray(x, self.model.forward.input.numpy_dtype)
        if self.graph is None:
            self._setup(x)
        return self._evaluate(x, masks)

    # ---- running -----------------------------------------------------------------------------
    def compute(self, inputs: AblationInputs, checkpoint: Checkpoint) -> AblationResult:
        from pyanalyzer._progress import progress_bar

        p = self.params
        source, labels = inputs.source, inputs.labels
        n, k = len(source), self.n_classes
        spec = self.model.preprocessing
        units = np.asarray(self.units, np.int64)
        c = int(self.layer.channels or 0)
        is_prob = self.output.op == "Softmax"
        t0 = time.perf_counter()

        def prob(y: np.ndarray) -> np.ndarray:
            return y if is_prob else _softmax(y)

        def sweep(sets: list[list[int]], stage: str, label: str) -> dict[str, np.ndarray]:
            """One pass over the images: row 0 intact, then one row per set ablated."""
            ns = len(sets)
            shapes = {
                "d_score": (ns, k), "d_prob": (ns, k), "cd_score": (ns, k), "cd_prob": (ns, k),
                "flip": (ns,), "correct": (ns + 1,), "c_correct": (ns + 1, k),
                "c_images": (k,), "base_score": (k,), "base_prob": (k,),
            }  # fmt: skip
            acc = {name: np.zeros(shape) for name, shape in shapes.items()}
            start = 0
            state = checkpoint.state
            if state is not None and checkpoint.meta.get("stage") == stage:
                acc = {name: np.array(state[f"{stage}/{name}"]) for name in shapes}
                start = int(checkpoint.meta["next"])
            if start >= n:
                return acc

            def save(next_image: int) -> None:
                arrays = {f"{stage}/{name}": v for name, v in acc.items()}
                arrays.update(
                    {f"{st}/{name}": v for st, a in done.items() for name, v in a.items()}
                )
                checkpoint.save(arrays, {"stage": stage, "next": next_image}, force=True)

            masks = np.ones((1 + ns, c))
            for j, group in enumerate(sets):
                masks[1 + j, group] = 0.0
            starts = range(start, n, p.batch_size)
            with progress_bar(len(starts), label=label, enabled=self.progress) as bar:
                for s in starts:
                    idx = range(s, min(n, s + p.batch_size))
                    x = spec.normalize(np.stack([source.pixels(i, spec) for i in idx]))
                    x = np.asarray(x, self.model.forward.input.numpy_dtype)
                    if self.graph is None:
                        self._setup(x)
                    y = self._evaluate(x, masks)  # [1 + ns, b, k]
                    if not np.isfinite(y).all():
                        raise UserInputError(
                            f"the model's output is NaN or infinite on images {idx.start}.."
                            f"{idx.stop - 1} (intact or ablated)"
                        )
                    pr = prob(y)
                    y0, p0 = y[0], pr[0]
                    pred0 = y0.argmax(axis=1)
                    cls = pred0 if labels is None else labels[idx.start : idx.stop]
                    onehot = np.zeros((len(idx), k))
                    onehot[np.arange(len(idx)), cls] = 1.0
                    d, dp = y[1:] - y0[None], pr[1:] - p0[None]
                    acc["d_score"] += d.sum(axis=1)
                    acc["d_prob"] += dp.sum(axis=1)
                    acc["cd_score"] += np.einsum("sbk,bk->sk", d, onehot)
                    acc["cd_prob"] += np.einsum("sbk,bk->sk", dp, onehot)
                    pred = y.argmax(axis=2)  # [1 + ns, b]
                    acc["flip"] += (pred[1:] != pred0[None]).sum(axis=1)
                    hit = pred == cls[None]
                    acc["correct"] += hit.sum(axis=1)
                    acc["c_correct"] += hit.astype(np.float64) @ onehot
                    acc["c_images"] += onehot.sum(axis=0)
                    acc["base_score"] += y0.sum(axis=0)
                    acc["base_prob"] += p0.sum(axis=0)
                    bar.update(1)
                    if checkpoint.due(False):
                        save(idx.stop)
            save(n)
            return acc

        done: dict[str, dict[str, np.ndarray]] = {}
        state, meta = checkpoint.state, checkpoint.meta
        if state is not None and meta.get("stage") == "sets":  # the units' pass had finished
            names = {key.split("/", 1)[1] for key in state if key.startswith("units/")}
            done["units"] = {name: np.array(state[f"units/{name}"]) for name in names}
            singles = done["units"]
        else:
            singles = sweep([[int(u)] for u in units], "units", f"ablate {self.layer.alias}: units")
            done["units"] = singles
        t1 = time.perf_counter()
        per_class = np.maximum(singles["c_images"], 1)
        cd_score = singles["cd_score"] / per_class[None]
        c_acc = singles["c_correct"] / per_class[None]
        base_c_acc = c_acc[0]
        partial = AblationResult(
            layer=self.layer.name, alias=self.layer.alias, output=self.output.name,
            units=units, class_names=self.class_names, n_images=n,
            labels_source=self.labels_source, class_images=singles["c_images"].astype(np.int64),
            base_score=singles["base_score"] / n, base_prob=singles["base_prob"] / n,
            delta_score=singles["d_score"] / n, delta_prob=singles["d_prob"] / n,
            class_delta_score=cd_score, class_delta_prob=singles["cd_prob"] / per_class[None],
            flipped=singles["flip"] / n, base_accuracy=float(singles["correct"][0] / n),
            accuracy=singles["correct"][1:] / n, base_class_accuracy=base_c_acc,
            class_accuracy=c_acc[1:], sets=[], set_delta_score=np.zeros((0, k)),
            set_class_delta_score=np.zeros((0, k)), set_flipped=np.zeros(0),
            set_accuracy=np.zeros(0), set_class_accuracy=np.zeros((0, k)),
            cut=self.graph.cut if self.graph is not None else "tail",
        )  # fmt: skip
        sets: list[dict[str, Any]] = []
        if p.top and len(units) > 1:
            size = min(p.top, len(units))
            for cl in range(k):
                if singles["c_images"][cl] == 0:
                    continue
                chosen = partial.top_units(cl, size)
                sets.append(
                    {"name": f"top {size} of {self.class_names[cl]}", "units": chosen, "class": cl}
                )
        if self.joint is not None:
            sets.append({"name": "joint", "units": list(self.joint), "class": None})
        if sets:
            together = sweep([s["units"] for s in sets], "sets", f"ablate {self.layer.alias}: sets")
            partial.sets = sets
            partial.set_delta_score = together["d_score"] / n
            partial.set_class_delta_score = together["cd_score"] / per_class[None]
            partial.set_flipped = together["flip"] / n
            partial.set_accuracy = together["correct"][1:] / n
            partial.set_class_accuracy = together["c_correct"][1:] / per_class[None]
        partial.timings = {"units": t1 - t0, "sets": time.perf_counter() - t1}
        return partial


def onnx_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type."""
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
