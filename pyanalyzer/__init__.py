"""pyanalyzer: see what an image CNN saved as ONNX has learned.

The public API is re-exported here and imported lazily, so that ``import pyanalyzer`` (and
``pyanalyzer --version``) does not pay for torch and onnxruntime until they are used::

    import pyanalyzer as pa

    model = pa.load_model("models/default.onnx")
    print(model.layers[0].alias, model.preprocessing.describe())
    acts = model.forward.run(x, ["conv3"])
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
}

__all__ = [
    "__version__",
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
    from pyanalyzer.data.images import ArraySource, ImageFiles, ImageFolder
    from pyanalyzer.errors import (
        GradientUnavailableError,
        LayerNotFoundError,
        ModelError,
        ParityWarning,
        PreprocessingError,
        PyanalyzerError,
        StoreError,
        UserInputError,
    )
    from pyanalyzer.model import (
        PRESETS,
        InputInfo,
        LayerInfo,
        Model,
        ParityReport,
        PreprocessSpec,
        load_model,
    )
    from pyanalyzer.store import Key, Store
