"""The model atlas: the four methods joined unit by unit, for a browsable site per model.

For each chosen layer, :class:`Atlas` runs (or takes from the store) what the site shows of it:

* network dissection against a concept dataset (:class:`~.dissection.Dissection`): each unit's
  concepts and IoU, its top images and masks;
* the top-k image patches of each unit with their DeconvNet (or guided, saliency) projections
  (:class:`~.patches.TopPatches`), over an image source (default: the concept dataset's images);
* channel activation maximization (:class:`~.actmax.ActivationMaximization`);
* an inversion strip (:class:`~.inversion.OptimInversion`): a few sample images of the source
  reconstructed from the layer.

The atlas is a composition, not a cached analysis of its own: each part is an ordinary analysis
with its own store entry, so the CLI's runs answer the atlas and the atlas' runs answer the CLI.
Parts are taken from the store piece by piece (:func:`run_covering`): the units of an actmax or
a patches projection, the layers of a dissection or an inversion, found in any stored run with
the same settings; only the units and layers no stored run holds are computed. Adding units or
layers to an atlas therefore computes only what is new, and building it again computes nothing.
The site itself is written by :mod:`pyanalyzer.report.atlas`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from pyanalyzer.analysis import Analysis, Int, Params, Result, Units, stored_data
from pyanalyzer.analysis import Layers as LayersField
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    from pyanalyzer.methods.actmax import ActmaxResult
    from pyanalyzer.methods.dissection.result import LayerDissection
    from pyanalyzer.methods.inversion.result import InversionResult
    from pyanalyzer.methods.patches import TopPatchesResult
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Checkpoint, Store

__all__ = [
    "Atlas",
    "AtlasInputs",
    "AtlasLayer",
    "AtlasParams",
    "AtlasResult",
    "Piece",
    "run_covering",
]

MAX_SAMPLES = 16
"""The most sample images of an inversion strip."""

PARTS = ("dissect", "patches", "actmax", "invert")
"""The analyses of an atlas, in the order they run for each layer."""

_OWN_FIELDS = {"layer", "layers", "units"}
_TITLES = {
    "dissect": "dissection",
    "patches": "top patches and projections",
    "actmax": "activation maximization",
    "invert": "inversion strip",
}


@dataclass
class Piece:
    """One run that answers part of a request: its result, the items (units or layer names) it
    answers for, and whether it came from the store."""

    result: Any
    items: list[Any]
    from_store: bool


def run_covering(
    cls: type[Analysis],
    model: Model,
    params: Mapping[str, Any],
    inputs: Any,
    field_name: str,
    wanted: Sequence[Any],
    *,
    store: Store | None,
    progress: bool = True,
    checkpoint_every: float = 2.0,
    stored_only: bool = False,
    executor: Any = None,
) -> list[Piece]:
    """Run analysis ``cls`` for the items ``wanted`` of its list field ``field_name`` (units or
    layers), reusing every stored run that holds some of them.

    A stored run answers when its parameters (resolved against the model), inputs,
    preprocessing and revision equal the request's in everything but ``field_name``; the
    items no stored run holds are computed by one new run (stored in turn). Items are matched
    as the analysis resolves them (unit numbers, ONNX layer names).

    Args:
        stored_only: raise :class:`~pyanalyzer.analysis.NotStored` rather than compute.
        executor: where the analyses that shard their work run them (:mod:`pyanalyzer.executor`).

    Returns:
        the pieces, together answering for every wanted item (resolved), each item once.
    """

    def make(items: Any) -> Analysis:
        analysis = cls(model, {**params, field_name: items}, store=store, progress=progress,
                       checkpoint_every=checkpoint_every, executor=executor)  # fmt: skip
        analysis.stored_only = stored_only
        return analysis

    probe = make(list(wanted))
    prepared = probe.prepare(inputs)
    want = stored_data(probe.key_params(prepared))
    items = want["params"].get(field_name)
    if store is None or not isinstance(items, list):
        return [Piece(probe.run(inputs), list(items or []), probe.from_store)]
    rest = {k: v for k, v in want["params"].items() if k != field_name}
    left = list(items)
    pieces: list[Piece] = []
    # (checkpoints are not listed: a checkpoint is resumed only by the same request)
    for stored in cls.stored_usable(store, model):
        if not left:
            break
        have = stored.params.get(field_name)
        if (
            not isinstance(have, list)
            or stored_data(stored.inputs) != want["inputs"]
            or {k: v for k, v in stored_data(stored.params).items() if k != field_name} != rest
        ):
            continue
        use = [x for x in left if x in have]
        if not use:
            continue
        analysis = make(have)
        pieces.append(Piece(analysis.run(inputs), use, analysis.from_store))
        left = [x for x in left if x not in use]
    if left:
        analysis = probe if left == items else make(left)
        pieces.append(Piece(analysis.run(inputs), left, analysis.from_store))
    return pieces


# ---- parameters and inputs -----------------------------------------------------------------


class AtlasParams(Params):
    """Parameters of :class:`Atlas`: the layers and units, and the parameters of each part
    (checked by that analysis: see its params)."""

    title: ClassVar[str] = "atlas"

    layers: LayersField = Field(description="Layers of the atlas (aliases or ONNX names).")
    units: Units | dict[str, Units] = Field(
        "all",
        description="Units shown: one selection for every layer ('all', '0-7', '1,4,9', a "
        "list), or a mapping from layer to selection (layers not in it: all).",
    )
    samples: Annotated[int, Int("samples", 0, MAX_SAMPLES)] = Field(
        4, description="Sample images of each layer's inversion strip (0: no inversion)."
    )
    dissect: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the dissection (method dissect), without layers.",
    )
    patches: dict[str, Any] = Field(
        default_factory=lambda: {"projection": "deconv"},
        description="Parameters of the top-k patches (method patches), without layer and "
        "units; the projection is deconv unless set.",
    )
    actmax: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the channel activation maximization (method actmax), "
        "without layer and units.",
    )
    invert: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the inversion strip (method invert-optim), without layers.",
    )


@dataclass
class AtlasInputs:
    """What an atlas runs on.

    Attributes:
        dataset: the Broden-format concept dataset (dissection, top images and masks).
        images: the images scanned for top patches and sampled for the inversion strips
            (None: the dataset's images).
    """

    dataset: Any
    images: ImageSource | None = None

    @property
    def source(self) -> ImageSource:
        """The image source of the patches and the inversion strips."""
        return self.dataset if self.images is None else self.images


# ---- the result ----------------------------------------------------------------------------


@dataclass
class AtlasLayer:
    """Everything the atlas knows of one layer.

    Attributes:
        info: the layer (alias, ONNX name, op, channels, map size).
        units: the units shown, in order.
        dissection: the layer's dissection (every unit).
        patches: the top-k scan (every unit) with projections of ``units``.
        actmax: one image per unit of ``units``, in that order.
        inversion: the sample images reconstructed from this layer, or None.
    """

    info: LayerInfo
    units: list[int]
    dissection: LayerDissection
    patches: TopPatchesResult
    actmax: ActmaxResult
    inversion: InversionResult | None

    @property
    def alias(self) -> str:
        return self.info.alias

    # The dissection's per-unit views, computed once (each is a pass over the [U, C] IoUs).
    @functools.cached_property
    def iou(self) -> np.ndarray:
        """float64 ``[U, C]``: :attr:`LayerDissection.iou`."""
        return self.dissection.iou

    @functools.cached_property
    def best_concept(self) -> np.ndarray:
        """int64 ``[U]``: :attr:`LayerDissection.best_concept`."""
        return self.dissection.best_concept

    @functools.cached_property
    def best_iou(self) -> np.ndarray:
        """float64 ``[U]``: :attr:`LayerDissection.best_iou`."""
        return self.dissection.best_iou

    @functools.cached_property
    def detectors(self) -> np.ndarray:
        """bool ``[U]``: :attr:`LayerDissection.detectors`."""
        return self.dissection.detectors

    def actmax_index(self, unit: int) -> int:
        """The row of ``unit`` in :attr:`actmax`."""
        return self.units.index(int(unit))

    def top_concepts(self, unit: int, n: int = 5) -> list[tuple[str, str, float]]:
        """The unit's ``n`` best concepts: ``(name, category, IoU)``, best first (IoU > 0)."""
        d = self.dissection
        iou = self.iou[int(unit)]
        order = np.argsort(-iou, kind="stable")
        out = []
        for c in order[:n]:
            if iou[c] <= 0:
                break
            cat = int(d.concept_category[c])
            out.append((d.concept_names[c], d.categories[cat] if cat >= 0 else "", float(iou[c])))
        return out

    def summary(self) -> dict[str, Any]:
        d = self.dissection
        best, iou, det = self.best_concept, self.best_iou, self.detectors
        units = []
        for u in self.units:
            b = int(best[u])
            cat = int(d.concept_category[b]) if b else -1
            row = self.actmax_index(u)
            units.append(
                {
                    "unit": int(u),
                    "label": d.concept_names[b] if b else None,
                    "category": d.categories[cat] if cat >= 0 else None,
                    "iou": float(iou[u]),
                    "detector": bool(det[u]),
                    "threshold": float(d.thresholds[u]),
                    "actmax": float(self.actmax.reached[row]),
                    "top_activation": float(self.patches.values[u, 0])
                    if self.patches.count(u)
                    else None,
                }
            )
        s = d.summary()
        return {
            "alias": self.alias,
            "layer": self.info.name,
            "channels": int(self.info.channels or 0),
            "units_shown": len(self.units),
            "detectors": s["detectors"],
            "unique_concepts": s["unique_concepts"],
            "inversion": None
            if self.inversion is None
            else {
                "feature_error": [float(v) for v in self.inversion.feature_error[:, 0]],
                "pixel_error": [float(v) for v in self.inversion.pixel_error[:, 0]],
            },
            "units": units,
        }


@dataclass
class AtlasResult(Result):
    """An atlas: the model card and every layer's parts.

    Attributes:
        model: the model card (``Model.summary()``: input, preprocessing and where it came
            from, classes, layers; parity when it was checked).
        dataset: the concept dataset (name, digest, images, categories, concepts).
        source: the image source of the patches and inversion strips (kind, images, identity).
        samples: int64 ``[S]``, the sample images' indices in the source.
        layers: one :class:`AtlasLayer` per layer, in the order given.
        params: the atlas' parameters, resolved (layer names, unit lists).
        parts: per part: layer, method, items, and whether it came from the store.
    """

    model: dict[str, Any]
    dataset: dict[str, Any]
    source: dict[str, Any]
    samples: np.ndarray
    layers: list[AtlasLayer]
    params: dict[str, Any] = field(default_factory=dict)
    parts: list[dict[str, Any]] = field(default_factory=list)

    def layer(self, alias: str) -> AtlasLayer:
        """One layer, by alias or ONNX name."""
        for layer in self.layers:
            if alias in (layer.alias, layer.info.name):
                return layer
        raise KeyError(alias)

    @property
    def computed(self) -> list[dict[str, Any]]:
        """The parts computed by this run (the others came from the store)."""
        return [p for p in self.parts if not p["from_store"]]

    def summary(self) -> dict[str, Any]:
        return {
            "model": {"sha256": self.model.get("sha256")},
            "dataset": self.dataset,
            "source": self.source,
            "samples": [int(i) for i in self.samples],
            "parts": self.parts,
            "layers": [layer.summary() for layer in self.layers],
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Per layer: the shown units, their best IoU and concept, actmax images and values,
        top activations; the inversion strip."""
        out: dict[str, np.ndarray] = {"samples": self.samples}
        for layer in self.layers:
            units = np.asarray(layer.units, np.int64)
            a = layer.alias
            out[f"{a}/units"] = units
            out[f"{a}/best_iou"] = layer.best_iou[units]
            out[f"{a}/best_concept"] = layer.best_concept[units]
            out[f"{a}/actmax_images"] = layer.actmax.images
            out[f"{a}/actmax_reached"] = layer.actmax.reached
            out[f"{a}/top_values"] = layer.patches.values[units]
            out[f"{a}/top_images"] = layer.patches.images[units]
            if layer.inversion is not None:
                out[f"{a}/inversion"] = layer.inversion.uint8()[:, 0]
        return out

    def to_meta(self) -> dict[str, Any]:
        return {"summary": self.summary()}


# ---- the analysis --------------------------------------------------------------------------


class Atlas(Analysis[AtlasParams, AtlasResult]):
    """The model atlas: dissection, top-k patches with projections, channel activation
    maximization and an inversion strip for each layer (see the module).

    :meth:`run` takes the concept dataset (a :class:`~pyanalyzer.data.broden.BrodenDataset`)
    or :class:`AtlasInputs` (the dataset and an image source for the patches and samples) and
    returns an :class:`AtlasResult`; :func:`pyanalyzer.report.atlas.write_atlas` writes the
    site. Each part is looked up in and stored into ``store`` on its own.

    Raises:
        ParamsError, UserInputError: as each part's analysis would (named by part), an
            unknown layer, units out of range, part parameters that set layers or units.
    """

    method: ClassVar[str] = "atlas"
    inputs: ClassVar[str] = "concepts"
    params_type: ClassVar[type[Params]] = AtlasParams
    result_type: ClassVar[type[Result]] = AtlasResult
    summary_line: ClassVar[str] = (
        "The model atlas: dissection, top-k patches with projections, channel activation "
        "maximization and an inversion strip, unit by unit, for a static site."
    )

    def check(self) -> None:
        from pyanalyzer.units import select_units

        p = self.params
        self.infos = [self.model.spatial_layer(name) for name in p.layers]
        names = [i.name for i in self.infos]
        if len(set(names)) != len(names):
            raise UserInputError("a layer was given twice")
        by_layer: dict[str, Any] = {}
        if isinstance(p.units, dict):
            for key, spec in p.units.items():
                info = self.model.spatial_layer(key)
                if info.name not in names:
                    raise UserInputError(
                        f"units are given for layer {info.alias}, which is not among the "
                        f"atlas' layers ({', '.join(i.alias for i in self.infos)})"
                    )
                by_layer[info.name] = spec
        self.units: dict[str, list[int]] = {}
        for info in self.infos:
            spec = by_layer.get(info.name, "all") if isinstance(p.units, dict) else p.units
            chosen = select_units(spec, int(info.channels or 0))
            if not chosen:
                raise UserInputError(f"no units chosen for layer {info.alias}")
            self.units[info.name] = chosen
        for part in ("dissect", "patches", "actmax", "invert"):
            own = sorted(_OWN_FIELDS & set(getattr(p, part)))
            if own:
                raise UserInputError(
                    f"atlas {part} parameters may not set {', '.join(own)}: the atlas sets "
                    "the layers and units of every part"
                )
        if p.actmax.get("objective", "channel") != "channel":
            raise UserInputError(
                "atlas actmax parameters: the atlas renders channels (objective channel), "
                f"got objective {p.actmax['objective']!r}"
            )
        # Build every part now: their parameters are checked against the model here, before
        # anything runs, with each part's own message.
        for info in self.infos:
            for part in PARTS:
                if part != "invert" or p.samples:
                    self._part(part, info, None)

    def _part(self, part: str, info: LayerInfo, items: Any) -> tuple[type[Analysis], dict, str]:
        """The analysis class, parameters and list field of one part of a layer (built once to
        check the parameters when ``items`` is None)."""
        from pyanalyzer.methods import analysis as analysis_class

        p = self.params
        cls: type[Analysis]
        if part == "dissect":
            cls, params, name = analysis_class("dissect"), dict(p.dissect), "layers"
            default: Any = [info.name]
        elif part == "patches":
            cls, params, name = (
                analysis_class("patches"),
                {"layer": info.name, **p.patches},
                "units",
            )
            params.setdefault("projection", "deconv")
            default = self.units[info.name]
        elif part == "actmax":
            cls, name = analysis_class("actmax"), "units"
            params = {"layer": info.name, **p.actmax}
            default = self.units[info.name]
        else:
            cls, params, name = analysis_class("invert-optim"), dict(p.invert), "layers"
            default = [info.name]
        if items is None:
            try:
                cls(self.model, {**params, name: default}, store=None, progress=False)
            except UserInputError as exc:
                raise type(exc)(f"atlas {part}: {exc}") from None
        return cls, params, name

    def resolved(self) -> dict[str, Any]:
        p = self.params.canonical()
        return {**p, "layers": [i.name for i in self.infos], "units": self.units}

    def prepare(self, inputs: Any) -> AtlasInputs:
        if inputs is None:
            raise UserInputError("give the concept dataset of the atlas")
        if not isinstance(inputs, AtlasInputs):
            inputs = AtlasInputs(inputs)
        if inputs.dataset is None or len(inputs.dataset) == 0:
            raise UserInputError("the concept dataset has no images")
        if len(inputs.source) == 0:
            raise UserInputError("the image source of the atlas is empty")
        return inputs

    def identify(self, inputs: AtlasInputs) -> Any:
        from pyanalyzer.data.images import source_identity

        return {"dataset": inputs.dataset.digest, "images": source_identity(inputs.source)}

    def compute(self, inputs: Any, checkpoint: Checkpoint) -> AtlasResult:
        raise NotImplementedError("an atlas is run part by part (Atlas.run)")  # pragma: no cover

    def sample_indices(self, source: ImageSource) -> np.ndarray:
        """The inversion strip's images: ``samples`` indices spread evenly over the source."""
        n, s = len(source), min(self.params.samples, len(source))
        if s == 0:
            return np.zeros(0, np.int64)
        return np.unique(np.linspace(0, n - 1, s).round().astype(np.int64))

    def run(self, inputs: Any = None) -> AtlasResult:
        """Run every part of every layer, each from the store where it is there.

        Returns:
            the atlas; :attr:`from_store` says whether every part came from the store, and
            the result's ``parts`` which did.
        """
        from pyanalyzer._progress import note
        from pyanalyzer.data.images import source_identity
        from pyanalyzer.store import Cached

        prepared = self.prepare(inputs)
        source = prepared.source
        samples = self.sample_indices(source)
        sample_images = None
        if len(samples):
            spec = self.model.preprocessing
            sample_images = np.stack([source.pixels(int(i), spec) for i in samples])
        if self.model.parity_report is None:
            self.model.check_parity()
        parts: list[dict[str, Any]] = []
        layers: list[AtlasLayer] = []
        todo = [p for p in PARTS if p != "invert" or sample_images is not None]
        steps, step = len(self.infos) * len(todo), 0
        for info in self.infos:
            found: dict[str, list[Piece]] = {}
            for part in todo:
                step += 1
                cls, params, name = self._part(part, info, True)
                wanted = self.units[info.name] if name == "units" else [info.name]
                what = f"{len(wanted)} unit(s)" if name == "units" else f"{len(samples)} sample(s)"
                note(f"atlas [{step}/{steps}] {info.alias}: {_TITLES[part]}"
                     + ("" if part == "dissect" else f", {what}"), enabled=self.progress)  # fmt: skip
                data = {
                    "dissect": prepared.dataset,
                    "patches": source,
                    "actmax": None,
                    "invert": sample_images,
                }[part]
                pieces = run_covering(
                    cls, self.model, params, data, name, wanted, store=self.store,
                    progress=self.progress, checkpoint_every=self.checkpoint_every,
                    stored_only=self.stored_only, executor=self.executor,
                )  # fmt: skip
                found[part] = pieces
                for piece in pieces:
                    parts.append(
                        {
                            "layer": info.alias,
                            "method": cls.method,
                            name: piece.items,
                            "from_store": piece.from_store,
                        }
                    )
            layers.append(self._join(info, found))
        ds = prepared.dataset
        card = self.model.summary()
        card["preprocessing_text"] = self.model.preprocessing.describe()
        report = self.model.parity_report
        card["parity_text"] = None if report is None else report.describe()
        result = AtlasResult(
            model=card,
            dataset={
                "name": ds.root.name,
                "digest": ds.digest,
                "images": len(ds),
                "categories": list(getattr(ds, "categories", [])),
            },
            source={
                "kind": "dataset" if prepared.images is None else type(source).__name__,
                "images": len(source),
                "identity": source_identity(source),
            },
            samples=samples,
            layers=layers,
            params=stored_data(self.resolved()),
            parts=parts,
        )
        # no key of its own: the atlas is "from the store" when every part was
        from_store = all(p["from_store"] for p in parts)
        self.last = Cached(result, key=None, from_store=from_store, resumed=False)
        return result

    def _join(self, info: LayerInfo, found: dict[str, list[Piece]]) -> AtlasLayer:
        """One layer's parts, each merged from its pieces."""
        units = self.units[info.name]
        dissection = found["dissect"][0].result.layer(info.name)
        inversion = None
        if "invert" in found:
            inv = found["invert"][0].result
            inversion = _inversion_layer(inv, inv.layers.index(info.name))
        return AtlasLayer(
            info=info,
            units=units,
            dissection=dissection,
            patches=_merge_patches(found["patches"]),
            actmax=_merge_actmax(found["actmax"], units),
            inversion=inversion,
        )


def _merge_patches(pieces: list[Piece]) -> TopPatchesResult:
    """The scan of the first piece (every piece scanned the same images) with the projections
    of every piece's units."""
    import dataclasses

    first = pieces[0].result
    projections = {}
    for piece in pieces:
        for u in piece.items:
            if u in piece.result.projections:
                projections[u] = piece.result.projections[u]
    return dataclasses.replace(first, projections=projections)


def _merge_actmax(pieces: list[Piece], units: list[int]) -> ActmaxResult:
    """One actmax result for ``units``, in that order, from the pieces that hold them."""
    import dataclasses

    rows: dict[int, tuple[Any, int]] = {}
    for piece in pieces:
        index = {int(u): i for i, u in enumerate(piece.result.units)}
        for u in piece.items:
            rows[int(u)] = (piece.result, index[int(u)])
    order = [rows[u] for u in units]

    def take(name: str) -> np.ndarray:
        return np.stack([np.asarray(getattr(r, name))[i] for r, i in order])

    first = pieces[0].result
    return dataclasses.replace(
        first,
        images=take("images"),
        units=np.asarray(units, np.int64),
        reached=take("reached"),
        start=take("start"),
        curve=np.stack([np.asarray(r.curve)[:, i] for r, i in order], axis=1),
        reference_max=None,
        labels=tuple(r.labels[i] for r, i in order),
        seconds=float(sum(p.result.seconds for p in pieces)),
    )


def _inversion_layer(result: InversionResult, j: int) -> InversionResult:
    """The reconstructions of one layer (column ``j``) of an inversion result."""
    import dataclasses

    return dataclasses.replace(
        result,
        layers=(result.layers[j],),
        aliases=(result.aliases[j],),
        images=result.images[:, j : j + 1],
        feature_error=result.feature_error[:, j : j + 1],
        pixel_error=result.pixel_error[:, j : j + 1],
        history=None if result.history is None else result.history[:, :, j : j + 1],
    )
