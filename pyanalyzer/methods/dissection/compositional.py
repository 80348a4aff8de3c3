"""Compositional explanations: each unit's best logical formula of concepts.

Mu & Andreas, "Compositional Explanations of Neurons", NeurIPS 2020.

A unit of a dissected layer fires on the pixels ``M`` where its upsampled activation exceeds its
dissection threshold (the same mask the dissection tally counts). Its explanation is the formula
``F`` of concepts joined by AND, OR and AND NOT, read left to right (``(grass OR field) AND NOT
sky``), whose pixels best match ``M`` by IoU over all pixels of all images of the concept
dataset, ``|M ∧ F| / |M ∨ F|``. The formulas of length ``<= max_length`` are searched by beam
search, as in the paper:

1. length 1: the ``beam`` single concepts of highest IoU;
2. length k + 1: every formula of the beam extended by every concept it does not hold, under
   each of AND, OR and AND NOT, and the beam itself, scored; the ``beam`` best are kept
   (highest IoU first; ties: the shorter formula, then the order of enumeration).

Every candidate's IoU is exact and comes from integer counts: one pass of the compiled ``compose``
kernel over the dataset gives, for every formula ``F`` of the beam and every concept ``c``,
``|F ∧ c|`` and ``|M ∧ F ∧ c|`` (and ``|F|``, ``|M ∧ F|``), from which

* ``F AND c``: intersection ``|M ∧ F ∧ c|``, area ``|F ∧ c|``;
* ``F OR c``: intersection ``|M ∧ F| + |M ∧ c| - |M ∧ F ∧ c|``, area ``|F| + |c| - |F ∧ c|``;
* ``F AND NOT c``: intersection ``|M ∧ F| - |M ∧ F ∧ c|``, area ``|F| - |F ∧ c|``;

and IoU = intersection / (``|M|`` + area - intersection). The first pass counts the empty formula
(every pixel), which gives ``|c|``, ``|M ∧ c|`` and ``|M|``. A search of formulas of length
``max_length`` is therefore ``max_length`` passes over the dataset (each recomputes the forward
pass of the layers), and the best formula of the last length is known without another.

Extensions that do not change the formula's pixels (``F OR c`` with ``c`` inside ``F``, ``F AND
c`` with ``F`` inside ``c``, ``F AND NOT c`` with ``c`` outside ``F``: those whose area equals
``|F|``), concepts that never occur, and reorderings of commutative terms already in the beam
(``B OR A`` beside ``A OR B``) are left out, so that the beam holds distinct pixel sets.

Concept presence is a set: a concept is present at a pixel when any of the dataset's label
channels there or any of the image's image-level labels is that concept (an image-level label
covers its whole image). NOTE the two IoUs this module reports: Mu & Andreas' IoU, over all
pixels of all images (``iou``, ``single_iou``), and NetDissect's single-label IoU of the
dissection (``netdissect_iou``), whose denominator counts the unit's pixels only on images
labelled in the concept's category (:attr:`LayerDissection.iou`). The two differ even for one
concept; the formula's IoU is to be compared with ``single_iou``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, overload

import numpy as np
from pydantic import Field

from pyanalyzer import _backend
from pyanalyzer.analysis import (
    Analysis,
    Choice,
    Float,
    Int,
    Layers,
    NotStored,
    Params,
    Result,
    Units,
)
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.methods.dissection.result import LayerDissection
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.store import Checkpoint

__all__ = [
    "AND",
    "AND_NOT",
    "OR",
    "Beam",
    "Compositional",
    "CompositionalParams",
    "CompositionalResult",
    "LayerComposition",
    "Singles",
    "extend_beam",
    "first_beam",
    "formula_iou",
    "formula_text",
]

AND, OR, AND_NOT = _backend.AND, _backend.OR, _backend.AND_NOT
"""The operators, numbered as the compiled kernel reads them (``ops[u, b, t]``)."""

OPERATORS = {AND: "AND", OR: "OR", AND_NOT: "AND NOT"}
"""Each operator's word in a formula's text."""

MAX_LENGTH = 5
"""The longest formulas searched (each length is one pass over the dataset)."""

MAX_BEAM = 64
"""The widest beam (the counts are ``[U, beam, C]`` per layer)."""


def formula_text(terms: Sequence[int] | np.ndarray, ops: Sequence[int] | np.ndarray,
                 names: Sequence[str]) -> str:  # fmt: skip
    """A formula as text, left-nested terms in parentheses: ``"(grass OR field) AND NOT sky"``.

    Args:
        terms: concept ids, the first 0 ending the formula.
        ops: the operator of each term (``ops[0]`` unused).
        names: concept names by id.

    Returns:
        the text; ``""`` for the empty formula.
    """
    ids = [int(c) for c in terms]
    if not ids or ids[0] == 0:
        return ""
    text = names[ids[0]]
    for t in range(1, len(ids)):
        if ids[t] == 0:
            break
        if t > 1:
            text = f"({text})"
        text = f"{text} {OPERATORS[int(ops[t])]} {names[ids[t]]}"
    return text


def formula_iou(intersection: Any, area: Any, unit_area: Any) -> np.ndarray:
    """IoU = intersection / (unit_area + area - intersection), 0 where the union is empty;
    integer counts in, float64 out (broadcast)."""
    inter = np.asarray(intersection, np.int64)
    union = np.asarray(unit_area, np.int64) + np.asarray(area, np.int64) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


# ---- the beam search ------------------------------------------------------------------------


@dataclass
class Singles:
    """The counts of the empty formula (the first pass): everything single concepts need.

    Attributes:
        unit_area: int64 [U], ``|M|`` of each unit.
        concept_area: int64 [C], ``|c|`` (0 for 0 and concepts that never occur).
        unit_concept: int64 [U, C], ``|M ∧ c|``.
        pixels: all pixels counted (images x Sh x Sw).
    """

    unit_area: np.ndarray
    concept_area: np.ndarray
    unit_concept: np.ndarray
    pixels: int

    @classmethod
    def from_counts(cls, counts: _backend.ComposeCounts) -> Singles:
        """From the counts of one empty formula per unit (``B = 1``)."""
        units, _, concepts = counts.f_concept.shape
        area = counts.f_concept[0, 0] if units else np.zeros(concepts, np.int64)
        return cls(
            unit_area=counts.mf_area[:, 0].copy(),
            concept_area=np.array(area, np.int64),
            unit_concept=counts.mf_concept[:, 0].copy(),
            pixels=int(counts.f_area[0, 0]) if units else 0,
        )

    @property
    def iou(self) -> np.ndarray:
        """float64 [U, C]: each single concept's IoU with each unit."""
        return formula_iou(self.unit_concept, self.concept_area[None, :], self.unit_area[:, None])


@dataclass
class Beam:
    """Each unit's beam of formulas, best first.

    Attributes:
        formulas: int32 [U, B, T] concept ids (0 after a formula's end).
        ops: int8 [U, B, T] the operator of each term (``ops[..., 0]`` unused, 0).
        length: int64 [U, B] terms of each formula; 0 marks an empty slot (fewer distinct
            formulas than the beam is wide).
        iou: float64 [U, B]; intersection, area: int64 [U, B], ``|M ∧ F|`` and ``|F|``.
    """

    formulas: np.ndarray
    ops: np.ndarray
    length: np.ndarray
    iou: np.ndarray
    intersection: np.ndarray
    area: np.ndarray

    FIELDS: ClassVar[tuple[str, ...]] = ("formulas", "ops", "length", "iou", "intersection",
                                         "area")  # fmt: skip

    @classmethod
    def empty(cls, units: int, width: int, terms: int) -> Beam:
        return cls(
            formulas=np.zeros((units, width, terms), np.int32),
            ops=np.zeros((units, width, terms), np.int8),
            length=np.zeros((units, width), np.int64),
            iou=np.zeros((units, width), np.float64),
            intersection=np.zeros((units, width), np.int64),
            area=np.zeros((units, width), np.int64),
        )

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}{name}": getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> Beam:
        return cls(**{name: np.array(arrays[f"{prefix}{name}"]) for name in cls.FIELDS})


def _canonical(terms: np.ndarray, ops: np.ndarray, length: int) -> tuple[Any, ...]:
    """A key equal for formulas that differ only in the order of a leading run of one
    commutative operator (``B OR A`` and ``A OR B``; ``(C AND A) AND B`` and ``(A AND B) AND
    C``)."""
    ids = [int(c) for c in terms[:length]]
    seq = [int(o) for o in ops[:length]]
    seq[0] = 0
    if length >= 2 and seq[1] in (AND, OR):
        k = 2
        while k < length and seq[k] == seq[1]:
            k += 1
        ids[:k] = sorted(ids[:k])
    return tuple(ids), tuple(seq)


def first_beam(singles: Singles, valid: np.ndarray, width: int, terms: int) -> Beam:
    """The beam of length 1: each unit's ``width`` single concepts of highest IoU (ties: the
    lower concept id), among the ``valid`` ones (bool [C]).

    Returns:
        a :class:`Beam` with ``terms`` terms per formula (the longest to come).
    """
    units = singles.unit_area.shape[0]
    concepts = singles.concept_area.shape[0]
    beam = Beam.empty(units, width, terms)
    if units == 0:
        return beam
    iou = np.where(valid[None, :], singles.iou, -np.inf)
    ids = np.broadcast_to(np.arange(concepts), iou.shape)
    order = np.lexsort((ids, -iou), axis=-1)[:, :width]
    rows = np.arange(units)[:, None]
    ok = np.isfinite(iou[rows, order])
    k = order.shape[1]
    beam.formulas[:, :k, 0] = np.where(ok, order, 0)
    beam.length[:, :k] = ok
    beam.iou[:, :k] = np.where(ok, iou[rows, order], 0.0)
    beam.intersection[:, :k] = np.where(ok, singles.unit_concept[rows, order], 0)
    beam.area[:, :k] = np.where(ok, singles.concept_area[order], 0)
    return beam


def extend_beam(
    beam: Beam, counts: _backend.ComposeCounts, singles: Singles, valid: np.ndarray, width: int
) -> Beam:
    """One step of the beam search: score every extension of every formula of ``beam`` by one
    concept under AND, OR and AND NOT, and the beam itself, exactly from ``counts`` (the
    compose counts of ``beam``'s formulas); keep each unit's ``width`` best distinct formulas.

    Args:
        beam: the current beam ([U, B, T]).
        counts: :func:`~pyanalyzer._backend.compose`'s counts of ``beam.formulas``.
        singles: the empty formula's counts (``|M|``, ``|c|``, ``|M ∧ c|``).
        valid: bool [C], the concepts that may be added.
        width: the new beam's width.

    Returns:
        the new beam, best first (highest IoU, then the shorter formula, then the beam's own
        formulas before extensions, extensions by formula, operator and concept).
    """
    units, b_in, terms = beam.formulas.shape
    concepts = singles.concept_area.shape[0]
    new = Beam.empty(units, width, terms)
    if units == 0:
        return new
    fc, mfc = counts.f_concept, counts.mf_concept  # [U, B, C]
    fa, mfa = counts.f_area[..., None], counts.mf_area[..., None]  # [U, B, 1]
    c_area = singles.concept_area[None, None, :]
    m_c = singles.unit_concept[:, None, :]
    # [U, B, 3, C]: AND, OR, AND NOT, in the order of the operators' numbers
    inter = np.stack([mfc, mfa + m_c - mfc, mfa - mfc], axis=2)
    area = np.stack([fc, fa + c_area - fc, fa - fc], axis=2)
    del fc, mfc
    m = singles.unit_area[:, None, None, None]
    iou = formula_iou(inter, area, m)
    used = np.zeros((units, b_in, concepts), bool)
    rows, slots = np.arange(units)[:, None], np.arange(b_in)[None, :]
    for t in range(terms):
        used[rows, slots, beam.formulas[:, :, t]] = True
    grows = (beam.length > 0) & (beam.length < terms)  # [U, B]
    ok = (
        grows[:, :, None, None]
        & valid[None, None, None, :]
        & ~used[:, :, None, :]
        & (area != fa[..., None])  # the formula's pixels change
    )
    iou = np.where(ok, iou, -np.inf)
    own = np.where(beam.length > 0, formula_iou(counts.mf_area, counts.f_area,
                                                singles.unit_area[:, None]), -np.inf)  # fmt: skip
    scores = np.concatenate([own, iou.reshape(units, -1)], axis=1)
    lengths = np.concatenate(
        [beam.length, np.broadcast_to((beam.length + 1)[:, :, None, None], iou.shape)
         .reshape(units, -1)], axis=1,
    )  # fmt: skip
    index = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((index, lengths, -scores), axis=-1)
    for u in range(units):
        seen: set[tuple[Any, ...]] = set()
        k = 0
        for j in order[u]:
            j = int(j)
            if not np.isfinite(scores[u, j]):
                break  # the rest are excluded too
            if j < b_in:
                b, n = j, int(beam.length[u, j])
                f, o = beam.formulas[u, b].copy(), beam.ops[u, b].copy()
                hit, size = int(counts.mf_area[u, b]), int(counts.f_area[u, b])
            else:
                b, op, c = np.unravel_index(j - b_in, (b_in, 3, concepts))
                n = int(beam.length[u, b])
                f, o = beam.formulas[u, b].copy(), beam.ops[u, b].copy()
                f[n], o[n] = c, op + 1
                n += 1
                hit, size = int(inter[u, b, op, c]), int(area[u, b, op, c])
            key = _canonical(f, o, n)
            if key in seen:
                continue
            seen.add(key)
            new.formulas[u, k], new.ops[u, k], new.length[u, k] = f, o, n
            new.iou[u, k], new.intersection[u, k], new.area[u, k] = scores[u, j], hit, size
            k += 1
            if k == width:
                break
    return new


# ---- the result -----------------------------------------------------------------------------

_LAYER_ARRAYS = (
    "units", "thresholds", "formulas", "ops", "length", "iou", "intersection", "area",
    "unit_area", "single_concept", "single_iou", "netdissect_concept", "netdissect_iou",
    "beam_formulas", "beam_ops", "beam_iou",
)  # fmt: skip


@dataclass
class LayerComposition:
    """Compositional explanations of the units of one layer (Mu & Andreas 2020).

    Per explained unit ``i`` (channel ``units[i]``):

    Attributes:
        layer: the ONNX tensor name; ``alias`` its short name.
        units: int64 [U] the channels explained.
        thresholds: float32 [U] their dissection thresholds (the mask is ``> threshold``).
        formulas: int32 [U, T] the best formula's concept ids (0 after its end; all 0 when no
            formula overlaps the unit); ``ops`` int8 [U, T] its operators (1 AND, 2 OR,
            3 AND NOT; ``ops[:, 0]`` unused); ``length`` int64 [U] its terms.
        iou: float64 [U] its IoU with the unit's mask over all pixels of all images.
        intersection, area, unit_area: int64 [U] ``|M ∧ F|``, ``|F|``, ``|M|``.
        single_concept: int64 [U] the best single concept by the same IoU (0: none);
            ``single_iou`` float64 [U] its IoU.
        netdissect_concept: int64 [U] the dissection's label (``LayerDissection.best_concept``);
            ``netdissect_iou`` float64 [U] its NetDissect IoU (per-category denominator: not
            comparable with ``iou`` as it stands).
        beam_formulas: int32 [U, B, T], ``beam_ops`` int8 [U, B, T], ``beam_iou`` float64
            [U, B]: the final beam, best first (empty slots have all ids 0).
        concept_names: [C] concept names by id.
        max_length, beam: the search's parameters; quantile: the dissection's.
        pixels: all pixels counted (images x Sh x Sw).
    """

    layer: str
    alias: str
    units: np.ndarray
    thresholds: np.ndarray
    formulas: np.ndarray
    ops: np.ndarray
    length: np.ndarray
    iou: np.ndarray
    intersection: np.ndarray
    area: np.ndarray
    unit_area: np.ndarray
    single_concept: np.ndarray
    single_iou: np.ndarray
    netdissect_concept: np.ndarray
    netdissect_iou: np.ndarray
    beam_formulas: np.ndarray
    beam_ops: np.ndarray
    beam_iou: np.ndarray
    concept_names: list[str]
    max_length: int
    beam: int
    quantile: float
    pixels: int

    def text(self, i: int) -> str:
        """The best formula of the ``i``-th explained unit as text ("" when none)."""
        return formula_text(self.formulas[i], self.ops[i], self.concept_names)

    @property
    def texts(self) -> list[str]:
        """Every explained unit's best formula as text, in ``units`` order."""
        return [self.text(i) for i in range(len(self.units))]

    def index_of(self, channel: int) -> int | None:
        """The position of ``channel`` in ``units``, or None when it was not explained."""
        hits = np.flatnonzero(self.units == channel)
        return int(hits[0]) if hits.size else None

    def summary(self) -> dict[str, Any]:
        names = self.concept_names
        records = []
        for i, u in enumerate(self.units.tolist()):
            single, nd = int(self.single_concept[i]), int(self.netdissect_concept[i])
            records.append({
                "channel": int(u),
                "unit": int(u) + 1,
                "formula": self.text(i),
                "length": int(self.length[i]),
                "iou": float(self.iou[i]),
                "single": names[single] if single else None,
                "single_iou": float(self.single_iou[i]),
                "netdissect_label": names[nd] if nd else None,
                "netdissect_iou": float(self.netdissect_iou[i]),
            })  # fmt: skip
        better = int(np.sum((self.length > 1) & (self.iou > self.single_iou)))
        return {
            "layer": self.layer,
            "alias": self.alias,
            "units": len(self.units),
            "max_length": self.max_length,
            "beam": self.beam,
            "quantile": self.quantile,
            "pixels": self.pixels,
            "mean_iou": float(self.iou.mean()) if len(self.units) else 0.0,
            "mean_single_iou": float(self.single_iou.mean()) if len(self.units) else 0.0,
            "compositional_units": better,
            "unit_records": records,
        }


@dataclass
class CompositionalResult(Result, Sequence[LayerComposition]):
    """Compositional explanations of several layers: a sequence of :class:`LayerComposition`
    (in the order the layers were given), with the run's timings (seconds: ``dissection``,
    then ``pass 1`` ... ``pass T``)."""

    layers: list[LayerComposition]
    timings: dict[str, float] = field(default_factory=dict)

    @overload
    def __getitem__(self, index: int) -> LayerComposition: ...

    @overload
    def __getitem__(self, index: slice) -> list[LayerComposition]: ...

    def __getitem__(self, index: int | slice) -> LayerComposition | list[LayerComposition]:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerComposition]:
        return iter(self.layers)

    def layer(self, alias: str) -> LayerComposition:
        """The explanations of one layer, by alias or ONNX name."""
        for r in self.layers:
            if alias in (r.alias, r.layer):
                return r
        raise KeyError(alias)

    def summary(self) -> dict[str, Any]:
        return {"layers": [r.summary() for r in self.layers], "timings": self.timings}

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for r in self.layers:
            for name in _LAYER_ARRAYS:
                arrays[f"{r.alias}/{name}"] = np.asarray(getattr(r, name))
        if self.layers:
            arrays["concept_names"] = np.array(self.layers[0].concept_names, dtype=str)
        return arrays

    def to_meta(self) -> dict[str, Any]:
        return {
            "layers": [
                {"alias": r.alias, "layer": r.layer, "max_length": r.max_length, "beam": r.beam,
                 "quantile": r.quantile, "pixels": r.pixels}
                for r in self.layers
            ],
            "timings": self.timings,
        }  # fmt: skip

    @classmethod
    def from_stored(
        cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> CompositionalResult:
        names = [str(x) for x in arrays["concept_names"]] if "concept_names" in arrays else []
        layers = []
        for m in meta["layers"]:
            alias = m["alias"]
            layers.append(
                LayerComposition(
                    layer=m["layer"],
                    alias=alias,
                    **{name: np.asarray(arrays[f"{alias}/{name}"]) for name in _LAYER_ARRAYS},
                    concept_names=names,
                    max_length=int(m["max_length"]),
                    beam=int(m["beam"]),
                    quantile=float(m["quantile"]),
                    pixels=int(m["pixels"]),
                )  # fmt: skip
            )
        return cls(layers=layers, timings=dict(meta.get("timings", {})))


# ---- the analysis ---------------------------------------------------------------------------


class CompositionalParams(Params):
    """Parameters of :class:`Compositional`."""

    title: ClassVar[str] = "compose"

    layers: Layers = Field(description="Layers whose units are explained (aliases or ONNX names).")
    units: Units = Field(
        "all", description="Units explained in every layer ('all', '0-7', '1,4,9', a list)."
    )
    quantile: Annotated[
        float, Float("quantile", low=0.0, high=1.0, low_open=True, high_open=True)
    ] = Field(0.005, description="The dissection's top fraction of activations that fires.")
    max_length: Annotated[int, Int("formula length", 1, MAX_LENGTH)] = Field(
        3, description="Longest formula searched (one pass over the dataset per length)."
    )
    beam: Annotated[int, Int("beam", 1, MAX_BEAM)] = Field(
        5, description="Formulas kept per unit at each length of the beam search."
    )
    batch_size: Annotated[int, Int("batch size", 1)] = Field(
        64, description="Images per forward pass."
    )
    device: Annotated[str, Choice("device", _backend.DEVICES)] = Field(
        "auto", description="Where the counts run."
    )


@dataclass
class _Layer:
    info: LayerInfo
    units: list[int]
    thresholds: np.ndarray

    @property
    def all_units(self) -> bool:
        return self.units == list(range(int(self.info.channels or 0)))


class Compositional(Analysis[CompositionalParams, CompositionalResult]):
    """Compositional explanations of neurons (Mu & Andreas, NeurIPS 2020): for every unit of the
    chosen layers, the formula of concepts (AND, OR, AND NOT; up to ``max_length`` terms) whose
    pixels best match the unit's thresholded mask by IoU, found by beam search (see the module).

    Parameters (:class:`CompositionalParams`): ``layers``; ``units`` (default all);
    ``quantile`` (the dissection's, which sets each unit's threshold); ``max_length`` (3);
    ``beam`` (5); ``batch_size`` and ``device``, which do not change the result.

    The thresholds come from a :class:`~.pipeline.Dissection` of the layers: any dissection in
    the store with the same quantile and dataset answers (whatever its other parameters), else
    one is run (and stored). :meth:`run` takes the
    :class:`~pyanalyzer.data.broden.BrodenDataset` and returns a :class:`CompositionalResult`.
    Each pass over the dataset is checkpointed (and every few seconds within a pass), so an
    interrupted run resumes.
    """

    method: ClassVar[str] = "compose"
    inputs: ClassVar[str] = "concepts"
    params_type: ClassVar[type[Params]] = CompositionalParams
    result_type: ClassVar[type[Result]] = CompositionalResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})
    summary_line: ClassVar[str] = (
        "Compositional explanations: each unit's best formula of concepts (AND, OR, AND NOT) "
        "by IoU, found by beam search (Mu & Andreas, NeurIPS 2020)."
    )

    def check(self) -> None:
        from pyanalyzer.units import select_units

        self.infos = [self.model.spatial_layer(n) for n in self.params.layers]
        if len({i.name for i in self.infos}) != len(self.infos):
            raise UserInputError("a layer was given twice")
        self.units = {
            i.name: select_units(self.params.units, int(i.channels or 0),
                                 where=f"layer {i.alias} has units 0..{int(i.channels or 0) - 1}")
            for i in self.infos
        }  # fmt: skip
        _backend.kernels(self.params.device)  # fail now if CUDA was asked for and is missing
        self.timings: dict[str, float] = {}
        self.resumed_from: tuple[int, int] | None = None

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        out["layers"] = [i.name for i in self.infos]
        out["units"] = [self.units[i.name] for i in self.infos]
        return out

    def prepare(self, inputs: BrodenDataset | None) -> BrodenDataset:
        if inputs is None:
            raise UserInputError("give the concept dataset to explain the units with")
        if len(inputs) == 0:
            raise UserInputError("the concept dataset has no images")
        self._check_memory(inputs)
        return inputs

    def identify(self, inputs: BrodenDataset) -> Any:
        return {"dataset": inputs.digest}

    def _check_memory(self, ds: BrodenDataset) -> None:
        """Refuse a search whose counts and candidates (per layer, ``[U, beam, C]`` int64 counts
        twice and the candidates' ``[U, beam, 3, C]`` intersections, areas, IoUs and masks) and
        one batch exceed the memory budget."""
        from pyanalyzer import budget

        p = self.params
        c = len(ds.names)
        sh, sw = ds.seg_size
        estimate = budget.forward_bytes(self.model, self.infos, p.batch_size)
        estimate += budget.segmentation_batch_bytes(
            p.batch_size, ds.max_channels, ds.max_image_labels, len(ds.categories), (sh, sw)
        )
        for info in self.infos:
            u = len(self.units[info.name])
            estimate += 2 * p.batch_size * u * int(info.height or 1) * int(info.width or 1) * 4
            estimate += u * p.beam * c * (2 * 8 + 3 * (8 + 8 + 8 + 8 + 1))
        names = ", ".join(i.alias for i in self.infos)
        budget.check(
            f"explaining the units of {names} with a beam of {p.beam} over {c} concepts",
            estimate,
            advice="use a narrower --beam, fewer units or a smaller --batch-size",
        )

    # ---- the thresholds ----------------------------------------------------------------------
    def _dissections(self, ds: BrodenDataset) -> dict[str, LayerDissection]:
        """Each layer's dissection: from any stored dissection with the same quantile, dataset
        and preprocessing (its other parameters do not change thresholds or labels), else from
        one new dissection of the layers no stored one holds."""
        from pyanalyzer.methods.dissection.pipeline import Dissection

        p = self.params
        want = [i.name for i in self.infos]
        found: dict[str, LayerDissection] = {}
        if self.store is not None:
            for run in Dissection.stored_usable(self.store, self.model):
                layers = run.params.get("layers")
                if (
                    not isinstance(run.inputs, dict)
                    or run.inputs.get("dataset") != ds.digest
                    or run.params.get("quantile") != p.quantile
                    or not isinstance(layers, list)
                    or not any(n in layers and n not in found for n in want)
                ):
                    continue
                try:
                    stored = Dissection(self.model, run.params, store=self.store,
                                        progress=False, device=p.device)  # fmt: skip
                    stored.stored_only = True
                    for r in stored.run(ds):
                        if r.layer in want and r.layer not in found:
                            found[r.layer] = r
                except (NotStored, UserInputError):
                    continue  # parameters of an older version, or gone meanwhile
        missing = [n for n in want if n not in found]
        if missing:
            dissection = Dissection(
                self.model, layers=missing, quantile=p.quantile, batch_size=p.batch_size,
                device=p.device, store=self.store, progress=self.progress,
                checkpoint_every=self.checkpoint_every,
            )  # fmt: skip
            for r in dissection.run(ds):
                found[r.layer] = r
        return found

    # ---- running -----------------------------------------------------------------------------
    def compute(self, inputs: BrodenDataset, checkpoint: Checkpoint) -> CompositionalResult:
        p, ds = self.params, inputs
        ds.prepare_cache(progress=self.progress)
        t0 = time.perf_counter()
        dissected = self._dissections(ds)
        self.timings["dissection"] = time.perf_counter() - t0
        layers = [
            _Layer(info, self.units[info.name],
                   np.ascontiguousarray(dissected[info.name].thresholds[self.units[info.name]],
                                        dtype=np.float32))
            for info in self.infos
        ]  # fmt: skip
        concepts = len(ds.names)
        named = np.array([bool(n) for n in ds.names]) & (np.arange(concepts) > 0)
        width, terms = p.beam, p.max_length

        # the state: per layer the singles and single labels (after pass 1), the beam (the
        # formulas the next pass counts) and the counts of the pass under way
        beams: dict[str, Beam] = {}
        singles: dict[str, Singles] = {}
        counts: dict[str, _backend.ComposeCounts] = {}
        first, start = 1, 0
        state = checkpoint.state
        if state is not None and "pass" in checkpoint.meta:
            first, start = int(checkpoint.meta["pass"]), int(checkpoint.meta["next"])
            for st in layers:
                a = st.info.alias
                counts[a] = _backend.ComposeCounts(*(np.array(state[f"{a}/counts/{k}"]) for k in
                                                     ("f_concept", "mf_concept", "f_area",
                                                      "mf_area")))  # fmt: skip
                if first > 1:
                    beams[a] = Beam.from_arrays(state, f"{a}/beam/")
                    singles[a] = Singles(
                        np.array(state[f"{a}/unit_area"]), np.array(state[f"{a}/concept_area"]),
                        np.array(state[f"{a}/unit_concept"]), int(checkpoint.meta["pixels"][a]),
                    )  # fmt: skip
            self.resumed_from = (first, start)

        def save(k: int, nxt: int, force: bool = False) -> None:
            arrays: dict[str, np.ndarray] = {}
            pixels: dict[str, int] = {}
            for st in layers:
                a = st.info.alias
                for name in ("f_concept", "mf_concept", "f_area", "mf_area"):
                    arrays[f"{a}/counts/{name}"] = getattr(counts[a], name)
                if a in beams:
                    arrays.update(beams[a].arrays(f"{a}/beam/"))
                    s = singles[a]
                    arrays[f"{a}/unit_area"] = s.unit_area
                    arrays[f"{a}/concept_area"] = s.concept_area
                    arrays[f"{a}/unit_concept"] = s.unit_concept
                    pixels[a] = s.pixels
            checkpoint.save(arrays, {"pass": k, "next": nxt, "pixels": pixels}, force=force)

        single_best: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for k in range(first, terms + 1):
            t1 = time.perf_counter()
            shape = {st.info.alias: (len(st.units), 1 if k == 1 else width) for st in layers}
            if k != first or start == 0:
                counts = {a: _backend.ComposeCounts.zeros(u, b, concepts)
                          for a, (u, b) in shape.items()}  # fmt: skip
            formulas = {
                st.info.alias: (beams[st.info.alias].formulas, beams[st.info.alias].ops)
                if k > 1 else (np.zeros((len(st.units), 1, 1), np.int32),
                               np.zeros((len(st.units), 1, 1), np.int8))
                for st in layers
            }  # fmt: skip
            label = f"compose: pass {k}/{terms}"
            self._count(ds, layers, formulas, counts, start, functools.partial(save, k), label)
            for st in layers:
                a = st.info.alias
                if k == 1:
                    singles[a] = Singles.from_counts(counts[a])
                    beams[a] = first_beam(singles[a], named & (singles[a].concept_area > 0),
                                          width, terms)  # fmt: skip
                else:
                    valid = named & (singles[a].concept_area > 0)
                    beams[a] = extend_beam(beams[a], counts[a], singles[a], valid, width)
            start = 0
            self.timings[f"pass {k}"] = time.perf_counter() - t1
            if k < terms:  # the next pass starts from fresh counts: saved with the new beam
                counts = {a: _backend.ComposeCounts.zeros(u, width, concepts)
                          for a, (u, _) in shape.items()}  # fmt: skip
                save(k + 1, 0, True)
        for st in layers:
            a = st.info.alias
            s = singles[a]
            iou = np.where((named & (s.concept_area > 0))[None, :], s.iou, -1.0)
            best = iou.argmax(axis=1) if iou.size else np.zeros(len(st.units), np.int64)
            val = iou[np.arange(len(st.units)), best] if iou.size else np.zeros(len(st.units))
            single_best[a] = (np.where(val > 0, best, 0).astype(np.int64), np.maximum(val, 0.0))
        return CompositionalResult(
            layers=[self._layer_result(st, beams[st.info.alias], singles[st.info.alias],
                                       single_best[st.info.alias], dissected[st.info.name], ds)
                    for st in layers],
            timings=dict(self.timings),
        )  # fmt: skip

    def _count(
        self,
        ds: BrodenDataset,
        layers: list[_Layer],
        formulas: dict[str, tuple[np.ndarray, np.ndarray]],
        counts: dict[str, _backend.ComposeCounts],
        start: int,
        save: Callable[[int], Any],
        label: str,
    ) -> None:
        """One pass over the dataset: every batch's counts of ``formulas`` added to ``counts``
        (``save(next_image)`` after each batch)."""
        p = self.params
        n = len(ds)
        if start >= n:
            return
        names = [st.info.name for st in layers]
        for idx, outs in self.model.forward.iter_layers(
            ds, names, batch_size=p.batch_size, start=start, progress=self.progress, label=label
        ):
            seg, image_labels, _ = ds.segmentation_batch(np.arange(idx.start, idx.stop))
            for st in layers:
                acts = outs[st.info.name]
                if not st.all_units:
                    acts = acts[:, st.units]
                acts = np.ascontiguousarray(acts, dtype=np.float32)
                if not np.isfinite(acts).all():
                    raise UserInputError(
                        f"layer {st.info.alias} produced NaN or infinite activations on images "
                        f"{idx.start}..{idx.stop - 1}"
                    )
                f, o = formulas[st.info.alias]
                _backend.compose(acts, st.thresholds, seg, image_labels, f, o,
                                 counts[st.info.alias], device=p.device)  # fmt: skip
            save(idx.stop)

    def _layer_result(
        self,
        st: _Layer,
        beam: Beam,
        singles: Singles,
        single: tuple[np.ndarray, np.ndarray],
        dissection: LayerDissection,
        ds: BrodenDataset,
    ) -> LayerComposition:
        p = self.params
        units = np.array(st.units, np.int64)
        found = (beam.length[:, 0] > 0) & (beam.iou[:, 0] > 0)
        keep = found[:, None]
        return LayerComposition(
            layer=st.info.name,
            alias=st.info.alias,
            units=units,
            thresholds=st.thresholds,
            formulas=np.where(keep, beam.formulas[:, 0], 0).astype(np.int32),
            ops=np.where(keep, beam.ops[:, 0], 0).astype(np.int8),
            length=np.where(found, beam.length[:, 0], 0).astype(np.int64),
            iou=np.where(found, beam.iou[:, 0], 0.0),
            intersection=np.where(found, beam.intersection[:, 0], 0).astype(np.int64),
            area=np.where(found, beam.area[:, 0], 0).astype(np.int64),
            unit_area=singles.unit_area.astype(np.int64),
            single_concept=single[0],
            single_iou=single[1].astype(np.float64),
            netdissect_concept=np.asarray(dissection.best_concept)[units].astype(np.int64),
            netdissect_iou=np.asarray(dissection.best_iou)[units].astype(np.float64),
            beam_formulas=beam.formulas,
            beam_ops=beam.ops,
            beam_iou=np.where(beam.length > 0, beam.iou, 0.0),
            concept_names=list(ds.names),
            max_length=p.max_length,
            beam=p.beam,
            quantile=p.quantile,
            pixels=singles.pixels,
        )
