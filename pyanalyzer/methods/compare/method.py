"""The comparison analysis: :class:`Comparison` built on model A with model B as ``other``,
its parameters (:class:`ComparisonParams`), the layer pairs, the two dissections and the
streaming pass (see :mod:`pyanalyzer.methods.compare`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from pyanalyzer.analysis import Analysis, Float, Int, Layers, Params, Result
from pyanalyzer.errors import LayerNotFoundError, UserInputError
from pyanalyzer.methods.compare.result import ComparisonResult, LayerComparison, OutputAgreement
from pyanalyzer.methods.compare.stats import (
    CorrelationTally,
    OutputTally,
    match_units,
    resize_maps,
)

if TYPE_CHECKING:
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.executor import Executor
    from pyanalyzer.methods.dissection import DissectionResult, LayerDissection
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Checkpoint, Store

__all__ = ["Comparison", "ComparisonParams"]


class ComparisonParams(Params):
    """Parameters of :class:`Comparison`."""

    title: ClassVar[str] = "compare"

    layers: Layers = Field(
        description="Layer pairs: 'L' (the layer of that name in both models) or 'LA:LB' "
        "(A's layer LA against B's layer LB); aliases or ONNX names."
    )
    other: str | None = Field(
        None,
        description="The service: the id of model B, another model uploaded by the same "
        "owner. The Python API takes the loaded model instead: Comparison(model_a, params, "
        "other=model_b).",
    )
    quantile: Annotated[
        float, Float("quantile", low=0.0, high=1.0, low_open=True, high_open=True)
    ] = Field(0.005, description="The dissections' top fraction of activations that fires.")
    iou_threshold: Annotated[float, Float("IoU threshold", low=0.0, high=1.0, high_open=True)] = (
        Field(0.04, description="A unit is a detector when its best IoU exceeds this.")
    )
    top_k: Annotated[int, Int("top-k", 1)] = Field(
        10, description="Strongest images the dissections keep per unit."
    )
    batch_size: Annotated[int, Int("batch size", 1)] = Field(
        64, description="Images per forward pass."
    )


def _describe(model: Model, which: str) -> str:
    return f"model {which} ({model.path.name})"


def _find(model: Model, name: str) -> LayerInfo | None:
    try:
        return model.layer(name)
    except LayerNotFoundError:
        return None


def _spatial(model: Model, name: str, which: str) -> LayerInfo:
    """``model.spatial_layer(name)``, its one-line errors naming the model."""
    if not name:
        raise UserInputError(f"{_describe(model, which)}: a layer name is empty")
    try:
        return model.spatial_layer(name)
    except UserInputError as exc:
        raise UserInputError(f"{_describe(model, which)}: {exc}") from None


def _output(model: Model) -> LayerInfo | None:
    """The model's first graph output, when it is in the catalogue."""
    outputs = [o.name for o in model.proto.graph.output]
    return _find(model, outputs[0]) if outputs else None


class Comparison(Analysis[ComparisonParams, ComparisonResult]):
    """Compare model B with model A unit by unit and in their outputs (see the module).

    Built on model A with the second model as ``other`` (a loaded
    :class:`~pyanalyzer.model.model.Model`; the same model is allowed: an identity
    comparison). Parameters (:class:`ComparisonParams`): ``layers`` (pairs ``"L"`` or
    ``"LA:LB"``), ``quantile``, ``iou_threshold``, ``top_k`` and ``batch_size`` as the
    dissection's (``batch_size`` and ``top_k`` do not change the result); ``other`` is the
    service's id of model B.

    :meth:`run` takes the :class:`~pyanalyzer.data.broden.BrodenDataset` and returns a
    :class:`ComparisonResult`. The key holds B's sha256 and preprocessing beside A's; both
    dissections are ordinary store entries of their models (what ``dissect`` answers from).

    Raises:
        UserInputError: no second model; a layer unknown in either model or not a spatial
            map; a layer given for both models that B lacks; a pair given twice; models that
            take different input sizes.
    """

    method: ClassVar[str] = "compare"
    inputs: ClassVar[str] = "concepts"
    params_type: ClassVar[type[Params]] = ComparisonParams
    result_type: ClassVar[type[Result]] = ComparisonResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "top_k", "other"})
    model_params: ClassVar[tuple[str, ...]] = ("other",)
    """Params that name another model: the service resolves each (the id of an upload of the
    same owner) and passes the loaded model as the keyword of the same name."""
    summary_line: ClassVar[str] = (
        "Model comparison: units of two models matched by activation correlation (Li et al., "
        "ICLR 2016), both dissected (Bau et al., CVPR 2017): concepts gained and lost, labels "
        "changed, output agreement."
    )

    def __init__(
        self,
        model: Model,
        params: ComparisonParams | Mapping[str, Any] | None = None,
        *,
        other: Model | None = None,
        store: Store | None = None,
        progress: bool = True,
        checkpoint_every: float = 2.0,
        executor: Executor | None = None,
        **options: Any,
    ):
        self.other = other  # before the base's check() runs
        super().__init__(
            model, params, store=store, progress=progress, checkpoint_every=checkpoint_every,
            executor=executor, **options,
        )  # fmt: skip

    # ---- checks --------------------------------------------------------------------------------
    def check(self) -> None:
        from pyanalyzer.model.model import Model

        a, b = self.model, self.other
        if b is None:
            raise UserInputError(
                "compare needs the second model: other=<a loaded Model> (in the service, "
                "params.other: the id of an uploaded model)"
            )
        if not isinstance(b, Model):
            raise UserInputError(
                f"other must be a loaded Model (pyanalyzer.load_model), got {type(b).__name__}"
            )
        if tuple(a.preprocessing.input_size) != tuple(b.preprocessing.input_size):
            (ha, wa), (hb, wb) = a.preprocessing.input_size, b.preprocessing.input_size
            raise UserInputError(
                f"the models take different input sizes: {_describe(a, 'A')} {ha}x{wa}, "
                f"{_describe(b, 'B')} {hb}x{wb}"
            )
        self.pairs = [self._pair(spec) for spec in self.params.layers]
        seen: set[tuple[str, str]] = set()
        for la, lb in self.pairs:
            if (la.name, lb.name) in seen:
                raise UserInputError(f"the layer pair {la.alias}:{lb.alias} was given twice")
            seen.add((la.name, lb.name))
        self.same_model = (a is b) or (
            a.sha256 == b.sha256 and a.preprocessing.to_dict() == b.preprocessing.to_dict()
        )
        from pyanalyzer.methods.dissection import Dissection

        p = self.params
        self.layers_a = list(dict.fromkeys(la.name for la, _ in self.pairs))
        self.layers_b = list(dict.fromkeys(lb.name for _, lb in self.pairs))

        def dissection(model: Model, layers: list[str]) -> Dissection:
            return Dissection(
                model, layers=layers, quantile=p.quantile, iou_threshold=p.iou_threshold,
                top_k=p.top_k, batch_size=p.batch_size, store=self.store, progress=self.progress,
                checkpoint_every=self.checkpoint_every, executor=self.executor,
            )  # fmt: skip

        self.dissect_a = dissection(a, self.layers_a)
        self.dissect_b = dissection(b, self.layers_b)
        self.output_a, self.output_b = _output(a), _output(b)
        self.timings: dict[str, float] = {}
        self._check_memory()

    def _pair(self, spec: str) -> tuple[LayerInfo, LayerInfo]:
        """A layer pair from ``"L"`` or ``"LA:LB"`` (a whole name of A that holds a colon, as
        TensorFlow's ``"conv:0"``, is taken as one name first)."""
        a, b = self.model, self.other
        assert b is not None  # check() refused it
        whole_a = _find(a, spec)
        if whole_a is not None and _find(b, spec) is not None:
            return _spatial(a, spec, "A"), _spatial(b, spec, "B")
        if ":" in spec:
            for i, ch in enumerate(spec):  # the first cut whose sides name layers of A and B
                left, right = spec[:i], spec[i + 1 :]
                if ch == ":" and _find(a, left) is not None and _find(b, right) is not None:
                    return _spatial(a, left, "A"), _spatial(b, right, "B")
            if whole_a is None:
                left, right = spec.split(":", 1)
                return _spatial(a, left, "A"), _spatial(b, right, "B")
        _spatial(a, spec, "A")  # unknown in A: A's message
        raise UserInputError(
            f"layer {spec!r} was given for both models but {_describe(b, 'B')} has no layer of "
            f"that name{_spatial_hint(b, spec)}; give B's layer after a colon: "
            f"{spec}:LAYER_OF_B"
        )

    def _check_memory(self) -> None:
        """Refuse, before anything runs, a correlation pass whose batch through both models
        and running sums exceed the memory budget."""
        from pyanalyzer import budget

        bs = self.params.batch_size
        infos_a = [la for la, _ in self.pairs] + ([self.output_a] if self.output_a else [])
        infos_b = [lb for _, lb in self.pairs] + ([self.output_b] if self.output_b else [])
        estimate = budget.forward_bytes(self.model, infos_a, bs)
        if not self.same_model:
            assert self.other is not None
            estimate += budget.forward_bytes(self.other, infos_b, bs)
        for la, lb in self.pairs:
            ua, ub = int(la.channels or 0), int(lb.channels or 0)
            positions = bs * int(la.height or 1) * int(la.width or 1)
            # the cross products, and float64 copies of both batches (B's resized)
            estimate += 8 * (ua * ub + 2 * positions * (ua + ub))
        pairs = ", ".join(f"{la.alias}:{lb.alias}" for la, lb in self.pairs)
        budget.check(
            f"comparing {pairs} in batches of {bs} images",
            estimate,
            advice="use a smaller --batch-size or fewer layers",
        )

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        out["layers"] = [[la.name, lb.name] for la, lb in self.pairs]
        return out

    def key_params(self, inputs: Any) -> dict[str, Any]:
        key = super().key_params(inputs)
        assert self.other is not None
        key["other"] = {
            "sha256": self.other.sha256,
            "preprocessing": self.other.preprocessing.to_dict(),
        }
        return key

    def prepare(self, inputs: BrodenDataset | None) -> BrodenDataset:
        if inputs is None:
            raise UserInputError("give the concept dataset to compare the models on")
        if len(inputs) == 0:
            raise UserInputError("the concept dataset has no images")
        self.dissect_a.prepare(inputs)  # their memory and disk checks, before anything runs
        self.dissect_b.prepare(inputs)
        return inputs

    def identify(self, inputs: BrodenDataset) -> Any:
        return {"dataset": inputs.digest}

    # ---- running -------------------------------------------------------------------------------
    def _outputs_plan(self) -> tuple[OutputTally | None, str]:
        """The output tally, or None and why the outputs are not compared."""
        oa, ob = self.output_a, self.output_b
        assert self.other is not None
        for info, model, which in ((oa, self.model, "A"), (ob, self.other, "B")):
            if info is None:
                return None, f"{_describe(model, which)} has no output in its layer catalogue"
            if info.is_spatial or len(info.shape) != 2 or int(info.shape[-1]) < 2:
                return None, (
                    f"the output {info.alias} of {_describe(model, which)} has shape "
                    f"{list(info.shape)}, not a class vector [N, K]"
                )
        assert oa is not None and ob is not None
        if int(oa.shape[-1]) != int(ob.shape[-1]):
            return None, (
                f"the outputs have {int(oa.shape[-1])} (model A) and {int(ob.shape[-1])} "
                "(model B) classes"
            )
        return OutputTally(int(oa.shape[-1]), oa.op == "Softmax", ob.op == "Softmax"), ""

    def compute(self, inputs: BrodenDataset, checkpoint: Checkpoint) -> ComparisonResult:
        from pyanalyzer._progress import note

        ds, a, b = inputs, self.model, self.other
        assert b is not None
        for part in (self.dissect_a, self.dissect_b):  # an executor set after the build
            part.executor = self.executor
        names = ", ".join(dict.fromkeys(la.alias for la, _ in self.pairs))
        note(f"compare [1/3] model A ({a.path.name}): dissecting {names}", enabled=self.progress)
        t0 = time.perf_counter()
        dis_a = self.dissect_a.run(ds)
        self.timings["dissect_a"] = time.perf_counter() - t0
        names = ", ".join(dict.fromkeys(lb.alias for _, lb in self.pairs))
        note(f"compare [2/3] model B ({b.path.name}): dissecting {names}", enabled=self.progress)
        t0 = time.perf_counter()
        if self.same_model and self.layers_a == self.layers_b:
            dis_b = dis_a  # the same model, the same layers: the same dissection
        else:
            dis_b = self.dissect_b.run(ds)
        self.timings["dissect_b"] = time.perf_counter() - t0
        note(f"compare [3/3] correlating units and outputs over {len(ds)} images",
             enabled=self.progress)  # fmt: skip
        t0 = time.perf_counter()
        tallies = [
            CorrelationTally(int(la.channels or 0), int(lb.channels or 0)) for la, lb in self.pairs
        ]
        outputs, outputs_note = self._outputs_plan()
        self._correlate(ds, checkpoint, tallies, outputs)
        self.timings["correlate"] = time.perf_counter() - t0
        return self._result(ds, dis_a, dis_b, tallies, outputs, outputs_note)

    def _correlate(
        self,
        ds: BrodenDataset,
        checkpoint: Checkpoint,
        tallies: list[CorrelationTally],
        outputs: OutputTally | None,
    ) -> None:
        """The streaming pass: both models over every image, the sums of every pair of units
        and the output agreement, checkpointed after batches (resumed from the last)."""
        from pyanalyzer._progress import progress_bar

        a, b = self.model, self.other
        assert b is not None
        n, bs = len(ds), self.params.batch_size
        start = 0
        if checkpoint.state is not None and "next" in checkpoint.meta:
            start = int(checkpoint.meta["next"])
            for i, t in enumerate(tallies):
                t.load(_under(checkpoint.state, f"pair{i}/"))
            if outputs is not None:
                outputs.load(_under(checkpoint.state, "outputs/"))
        out_a = self.output_a.name if outputs is not None and self.output_a else None
        out_b = self.output_b.name if outputs is not None and self.output_b else None
        names_a = list(dict.fromkeys([*self.layers_a, *([out_a] if out_a else [])]))
        names_b = list(dict.fromkeys([*self.layers_b, *([out_b] if out_b else [])]))
        if self.same_model:
            names_a = list(dict.fromkeys([*names_a, *names_b]))
        spec_a, spec_b = a.preprocessing, b.preprocessing
        same_pixels = spec_a.to_dict() == spec_b.to_dict()
        batches = range(start, n, bs)
        with progress_bar(len(batches), label="compare: correlate", enabled=self.progress) as bar:
            for s in batches:
                idx = range(s, min(n, s + bs))
                pix_a = np.stack([ds.pixels(i, spec_a) for i in idx])
                acts_a = a.forward.run(spec_a.normalize(pix_a), names_a)
                if self.same_model:
                    acts_b = acts_a
                else:
                    pix_b = pix_a if same_pixels else np.stack([ds.pixels(i, spec_b) for i in idx])
                    acts_b = b.forward.run(spec_b.normalize(pix_b), names_b)
                for which, acts, model in (("A", acts_a, a), ("B", acts_b, b)):
                    for name, value in acts.items():
                        if not np.isfinite(value).all():
                            alias = model.layer(name).alias
                            raise UserInputError(
                                f"{_describe(model, which)}: {alias} produced NaN or infinite "
                                f"values on images {idx.start}..{idx.stop - 1}"
                            )
                for t, (la, lb) in zip(tallies, self.pairs, strict=True):
                    mb = acts_b[lb.name]
                    if mb.shape[2:] != acts_a[la.name].shape[2:]:
                        mb = resize_maps(mb, (int(la.height or 0), int(la.width or 0)))
                    t.update(acts_a[la.name], mb)
                if outputs is not None and out_a and out_b:
                    outputs.update(acts_a[out_a], acts_b[out_b])
                bar.update(1)
                if idx.stop < n and checkpoint.due():
                    state: dict[str, np.ndarray] = {}
                    for i, t in enumerate(tallies):
                        state.update({f"pair{i}/{k}": v for k, v in t.state().items()})
                    if outputs is not None:
                        state.update({f"outputs/{k}": v for k, v in outputs.state().items()})
                    checkpoint.save(state, {"next": idx.stop}, force=True)

    def _result(
        self,
        ds: BrodenDataset,
        dis_a: DissectionResult,
        dis_b: DissectionResult,
        tallies: list[CorrelationTally],
        outputs: OutputTally | None,
        outputs_note: str,
    ) -> ComparisonResult:
        a, b = self.model, self.other
        assert b is not None
        layers = []
        for (la, lb), t in zip(self.pairs, tallies, strict=True):
            ra: LayerDissection = dis_a.layer(la.name)
            rb: LayerDissection = dis_b.layer(lb.name)
            corr = t.correlation()
            ma, mb = match_units(corr)
            layers.append(
                LayerComparison(
                    layer_a=la.name,
                    alias_a=la.alias,
                    layer_b=lb.name,
                    alias_b=lb.alias,
                    size_a=(int(la.height or 0), int(la.width or 0)),
                    size_b=(int(lb.height or 0), int(lb.width or 0)),
                    correlation=corr,
                    matched_a=ma,
                    matched_b=mb,
                    constant_a=np.isnan(corr).all(axis=1),
                    constant_b=np.isnan(corr).all(axis=0),
                    best_a=ra.best_concept.astype(np.int64),
                    iou_a=ra.best_iou,
                    detector_a=ra.detectors,
                    best_b=rb.best_concept.astype(np.int64),
                    iou_b=rb.best_iou,
                    detector_b=rb.detectors,
                    concept_names=list(ra.concept_names),
                    concept_category=np.asarray(ra.concept_category, np.int64),
                    categories=list(ra.categories),
                    iou_threshold=self.params.iou_threshold,
                )  # fmt: skip
            )
        agreement = None
        if outputs is not None and self.output_a is not None and self.output_b is not None:
            names = a.class_names
            agreement = OutputAgreement(
                output_a=self.output_a.name, output_b=self.output_b.name,
                images=outputs.images, agree=outputs.agree, abs_sum=outputs.abs_sum,
                count_a=outputs.count_a, count_b=outputs.count_b, both=outputs.both,
                probabilities=(_kind(outputs.given[0]), _kind(outputs.given[1])),
                class_names=names if names and len(names) == outputs.classes else None,
            )  # fmt: skip
        return ComparisonResult(
            layers=layers,
            outputs=agreement,
            outputs_note=outputs_note,
            model_a=_card(a),
            model_b=_card(b),
            images=len(ds),
            quantile=self.params.quantile,
            iou_threshold=self.params.iou_threshold,
            timings=dict(self.timings),
        )


def _under(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays of ``state`` whose names start with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _kind(given: bool) -> str:
    return "output" if given else "softmax"


def _card(model: Model) -> dict[str, Any]:
    return {
        "file": model.path.name,
        "sha256": model.sha256,
        "preprocessing": model.preprocessing.to_dict(),
        "class_names": model.class_names,
    }


def _spatial_hint(model: Model, name: str) -> str:
    """``"; did you mean 'x'?"`` from the model's layer names, or nothing."""
    import difflib

    pool = [x.alias for x in model.layers] + [x.name for x in model.layers]
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
