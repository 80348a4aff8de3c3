"""Network dissection (Bau et al. 2017), Net2Vec (Fong & Vedaldi 2018) and compositional
explanations (Mu & Andreas 2020)."""

from pyanalyzer.methods.dissection.compositional import (
    Compositional,
    CompositionalParams,
    CompositionalResult,
    LayerComposition,
    formula_text,
)
from pyanalyzer.methods.dissection.net2vec import Net2VecResult, net2vec
from pyanalyzer.methods.dissection.pipeline import (
    Dissection,
    DissectionParams,
    Net2Vec,
    Net2VecParams,
    Net2VecResults,
    concept_number,
    thresholds_from_topk,
    topk_size,
)
from pyanalyzer.methods.dissection.result import DissectionResult, LayerDissection
from pyanalyzer.methods.dissection.visual import unit_image_provider

__all__ = [
    "Compositional",
    "CompositionalParams",
    "CompositionalResult",
    "Dissection",
    "DissectionParams",
    "DissectionResult",
    "LayerComposition",
    "LayerDissection",
    "Net2Vec",
    "Net2VecParams",
    "Net2VecResult",
    "Net2VecResults",
    "concept_number",
    "formula_text",
    "net2vec",
    "thresholds_from_topk",
    "topk_size",
    "unit_image_provider",
]
