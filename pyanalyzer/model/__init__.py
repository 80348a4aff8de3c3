"""Model import: validation, image input, layer catalogue, preprocessing, the two engines."""

from pyanalyzer.model.graph import InputInfo, LayerInfo
from pyanalyzer.model.model import PARITY_RTOL, Model, ParityReport, load_model
from pyanalyzer.model.preprocessing import PRESETS, PreprocessSpec

__all__ = [
    "PARITY_RTOL",
    "PRESETS",
    "InputInfo",
    "LayerInfo",
    "Model",
    "ParityReport",
    "PreprocessSpec",
    "load_model",
]
