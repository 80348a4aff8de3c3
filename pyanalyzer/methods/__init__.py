"""The analyses: one module (or package) a method, each an :class:`~pyanalyzer.analysis.Analysis`
built on a model that ``run``s.

:func:`analyses` lists them by name (what the CLI, the service and the atlas look them up by):

==================  ===========================================================================
name                analysis
==================  ===========================================================================
``dissect``         :class:`~.dissection.Dissection` (Bau et al. 2017)
``net2vec``         :class:`~.dissection.Net2Vec` (Fong & Vedaldi 2018)
``compose``         :class:`~.dissection.Compositional` (Mu & Andreas 2020)
``deconv``          :class:`~.deconvnet.DeconvNet` (Zeiler & Fergus 2014)
``guided``          :class:`~.deconvnet.GuidedBackprop` (Springenberg et al. 2015)
``saliency``        :class:`~.deconvnet.Saliency` (Simonyan et al. 2013)
``patches``         :class:`~.patches.TopPatches` (Zeiler & Fergus 2014, Fig. 2)
``actmax``          :class:`~.actmax.ActivationMaximization` (Erhan 2009 ... Olah 2017)
``invert-optim``    :class:`~.inversion.OptimInversion` (Mahendran & Vedaldi 2015)
``invert-upconv``   :class:`~.inversion.UpconvInversion` (Dosovitskiy & Brox 2016)
``train-upconv``    :class:`~.inversion.UpconvTraining` (Dosovitskiy & Brox 2016)
``atlas``           :class:`~.atlas.Atlas` (the four joined unit by unit, for a static site)
``ablate``          :class:`~.ablation.Ablation` (Bau et al. 2020; Zhou et al. 2018)
``compare``         :class:`~.compare.Comparison` (Li et al. 2016 matching; Bau et al. 2017)
==================  ===========================================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyanalyzer.analysis import Analysis

__all__ = ["analyses", "analysis"]

_REGISTRY = {
    "dissect": ("pyanalyzer.methods.dissection", "Dissection"),
    "net2vec": ("pyanalyzer.methods.dissection", "Net2Vec"),
    "compose": ("pyanalyzer.methods.dissection", "Compositional"),
    "deconv": ("pyanalyzer.methods.deconvnet", "DeconvNet"),
    "guided": ("pyanalyzer.methods.deconvnet", "GuidedBackprop"),
    "saliency": ("pyanalyzer.methods.deconvnet", "Saliency"),
    "patches": ("pyanalyzer.methods.patches", "TopPatches"),
    "actmax": ("pyanalyzer.methods.actmax", "ActivationMaximization"),
    "invert-optim": ("pyanalyzer.methods.inversion", "OptimInversion"),
    "invert-upconv": ("pyanalyzer.methods.inversion", "UpconvInversion"),
    "train-upconv": ("pyanalyzer.methods.inversion", "UpconvTraining"),
    "atlas": ("pyanalyzer.methods.atlas", "Atlas"),
    "ablate": ("pyanalyzer.methods.ablation", "Ablation"),
    "compare": ("pyanalyzer.methods.compare", "Comparison"),
}


def analysis(name: str) -> type[Analysis]:
    """The analysis class registered under ``name`` (imported on first use).

    Raises:
        UserInputError: an unknown name (the known ones are listed).
    """
    from pyanalyzer.errors import UserInputError

    if name not in _REGISTRY:
        raise UserInputError(f"unknown analysis {name!r}; choose one of {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name]
    found: type[Analysis] = getattr(importlib.import_module(module), cls)
    return found


def analyses() -> dict[str, type[Analysis]]:
    """Every analysis by name, in the order of the table above."""
    return {name: analysis(name) for name in _REGISTRY}
