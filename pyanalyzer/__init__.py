"""pyanalyzer: see what an image CNN saved as ONNX has learned.

The public API is re-exported here and imported lazily, so that ``import pyanalyzer`` (and
``pyanalyzer --version``) does not pay for torch and onnxruntime until they are used. Every
analysis has the same shape (:mod:`pyanalyzer.analysis`): built on a model with its params, one
verb, ``run``, a result with ``summary()``, cached in the store, written by
:func:`write_result`::

    import pyanalyzer as pa

    model = pa.load_model("models/default.onnx")
    store = pa.Store("out/store")
    result = pa.Dissection(model, layers=["relu5"], store=store).run(dataset)
    pa.write_result(result, "out/dissect", model=model, dataset=dataset)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pyanalyzer._version import __version__

_EXPORTS = {
    "load_model": "pyanalyzer.model",
    "Model": "pyanalyzer.model",
    "LayerInfo": "pyanalyzer.model",
    "InputInfo": "pyanalyzer.model",
    "ParityReport": "pyanalyzer.model",
    "PreprocessSpec": "pyanalyzer.model",
    "PRESETS": "pyanalyzer.model",
    "Store": "pyanalyzer.store",
    "Key": "pyanalyzer.store",
    "ImageFolder": "pyanalyzer.data.images",
    "ImageFiles": "pyanalyzer.data.images",
    "ArraySource": "pyanalyzer.data.images",
    "PyanalyzerError": "pyanalyzer.errors",
    "UserInputError": "pyanalyzer.errors",
    "ModelError": "pyanalyzer.errors",
    "LayerNotFoundError": "pyanalyzer.errors",
    "PreprocessingError": "pyanalyzer.errors",
    "GradientUnavailableError": "pyanalyzer.errors",
    "StoreError": "pyanalyzer.errors",
    "ParityWarning": "pyanalyzer.errors",
    "PyanalyzerWarning": "pyanalyzer.errors",
    "ParamsError": "pyanalyzer.analysis",
    "Analysis": "pyanalyzer.analysis",
    "Params": "pyanalyzer.analysis",
    "Result": "pyanalyzer.analysis",
    "analyses": "pyanalyzer.methods",
    "analysis": "pyanalyzer.methods",
    "Dissection": "pyanalyzer.methods.dissection",
    "DissectionResult": "pyanalyzer.methods.dissection",
    "LayerDissection": "pyanalyzer.methods.dissection",
    "Net2Vec": "pyanalyzer.methods.dissection",
    "Net2VecResults": "pyanalyzer.methods.dissection",
    "Compositional": "pyanalyzer.methods.dissection",
    "CompositionalResult": "pyanalyzer.methods.dissection",
    "DeconvNet": "pyanalyzer.methods.deconvnet",
    "GuidedBackprop": "pyanalyzer.methods.deconvnet",
    "Saliency": "pyanalyzer.methods.deconvnet",
    "ProjectionResult": "pyanalyzer.methods.deconvnet",
    "TopPatches": "pyanalyzer.methods.patches",
    "TopPatchesResult": "pyanalyzer.methods.patches",
    "ActivationMaximization": "pyanalyzer.methods.actmax",
    "ActmaxResult": "pyanalyzer.methods.actmax",
    "OptimInversion": "pyanalyzer.methods.inversion",
    "UpconvInversion": "pyanalyzer.methods.inversion",
    "UpconvTraining": "pyanalyzer.methods.inversion",
    "UpconvDecoder": "pyanalyzer.methods.inversion",
    "InversionResult": "pyanalyzer.methods.inversion",
    "Atlas": "pyanalyzer.methods.atlas",
    "AtlasInputs": "pyanalyzer.methods.atlas",
    "AtlasResult": "pyanalyzer.methods.atlas",
    "Comparison": "pyanalyzer.methods.compare",
    "ComparisonResult": "pyanalyzer.methods.compare",
    "write_atlas": "pyanalyzer.report.atlas",
    "Ablation": "pyanalyzer.methods.ablation",
    "AblationInputs": "pyanalyzer.methods.ablation",
    "AblationResult": "pyanalyzer.methods.ablation",
    "write_ablation": "pyanalyzer.report.ablation",
    "read_labels": "pyanalyzer.data.labels",
    "BrodenDataset": "pyanalyzer.data.broden",
    "SyntheticImages": "pyanalyzer.data.defaults",
    "write_result": "pyanalyzer.report",
}

__all__ = [
    "__version__",
    "Ablation",
    "AblationInputs",
    "AblationResult",
    "ActivationMaximization",
    "ActmaxResult",
    "Analysis",
    "Atlas",
    "AtlasInputs",
    "AtlasResult",
    "BrodenDataset",
    "Compositional",
    "CompositionalResult",
    "Comparison",
    "ComparisonResult",
    "DeconvNet",
    "Dissection",
    "DissectionResult",
    "GuidedBackprop",
    "InversionResult",
    "LayerDissection",
    "Net2Vec",
    "Net2VecResults",
    "OptimInversion",
    "Params",
    "ParamsError",
    "ProjectionResult",
    "Result",
    "Saliency",
    "SyntheticImages",
    "TopPatches",
    "TopPatchesResult",
    "UpconvDecoder",
    "UpconvInversion",
    "UpconvTraining",
    "analyses",
    "analysis",
    "read_labels",
    "write_ablation",
    "write_atlas",
    "write_result",
    "ArraySource",
    "GradientUnavailableError",
    "ImageFiles",
    "ImageFolder",
    "InputInfo",
    "Key",
    "LayerInfo",
    "LayerNotFoundError",
    "Model",
    "ModelError",
    "PRESETS",
    "ParityReport",
    "ParityWarning",
    "PyanalyzerWarning",
    "PreprocessSpec",
    "PreprocessingError",
    "PyanalyzerError",
    "Store",
    "StoreError",
    "UserInputError",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyanalyzer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from pyanalyzer.analysis import Analysis, Params, ParamsError, Result
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.data.defaults import SyntheticImages
    from pyanalyzer.data.images import ArraySource, ImageFiles, ImageFolder
    from pyanalyzer.data.labels import read_labels
    from pyanalyzer.errors import (
        GradientUnavailableError,
        LayerNotFoundError,
        ModelError,
        ParityWarning,
        PreprocessingError,
        PyanalyzerError,
        PyanalyzerWarning,
        StoreError,
        UserInputError,
    )
    from pyanalyzer.methods import analyses, analysis
    from pyanalyzer.methods.ablation import Ablation, AblationInputs, AblationResult
    from pyanalyzer.methods.actmax import ActivationMaximization, ActmaxResult
    from pyanalyzer.methods.atlas import Atlas, AtlasInputs, AtlasResult
    from pyanalyzer.methods.compare import Comparison, ComparisonResult
    from pyanalyzer.methods.deconvnet import (
        DeconvNet,
        GuidedBackprop,
        ProjectionResult,
        Saliency,
    )
    from pyanalyzer.methods.dissection import (
        Compositional,
        CompositionalResult,
        Dissection,
        DissectionResult,
        LayerDissection,
        Net2Vec,
        Net2VecResults,
    )
    from pyanalyzer.methods.inversion import (
        InversionResult,
        OptimInversion,
        UpconvDecoder,
        UpconvInversion,
        UpconvTraining,
    )
    from pyanalyzer.methods.patches import TopPatches, TopPatchesResult
    from pyanalyzer.model import (
        PRESETS,
        InputInfo,
        LayerInfo,
        Model,
        ParityReport,
        PreprocessSpec,
        load_model,
    )
    from pyanalyzer.report import write_result
    from pyanalyzer.report.ablation import write_ablation
    from pyanalyzer.report.atlas import write_atlas
    from pyanalyzer.store import Key, Store
