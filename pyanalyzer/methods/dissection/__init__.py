"""Network dissection (Bau et al. 2017) and Net2Vec (Fong & Vedaldi 2018)."""

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
    "Dissection",
    "DissectionParams",
    "DissectionResult",
    "LayerDissection",
    "Net2Vec",
    "Net2VecParams",
    "Net2VecResult",
    "Net2VecResults",
    "concept_number",
    "net2vec",
    "thresholds_from_topk",
    "topk_size",
    "unit_image_provider",
]
