"""Activation maximization: images that make a unit, a class or a direction fire.

Erhan, Bengio, Courville & Vincent, "Visualizing Higher-Layer Features of a Deep Network",
2009; Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", 2013; Yosinski,
Clune, Nguyen, Fuchs & Lipson, "Understanding Neural Networks Through Deep Visualization",
2015; Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017 (lucid, and its
PyTorch port lucent).

Split as lucid/lucent split it, four small modules joined by callables:

* :mod:`.objectives` — what to maximise: :func:`neuron`, :func:`channel`,
  :func:`class_logit`, :func:`direction`, :func:`diversity`, and linear combinations of them
  (``channel("relu6", 5) - 0.5 * neuron("relu5", 1)``); one value per image of a batch;
* :mod:`.param` — how images are made: :class:`PixelParam`, :class:`FFTParam` (1/f spectrum,
  decorrelated colour, sigmoid), :func:`color_correlation_from_images`;
* :mod:`.transforms` — random pad / jitter / scale / rotate, seeded by explicit generators;
* :mod:`.regularizers` — Yosinski's decay, blur and clipping, total variation, α-norm, and the
  named sets ``lucid`` (default), ``yosinski1``..``yosinski4``, ``none``;
* :mod:`.render` — the optimisation loop alone (:func:`render`, lucent's ``render_vis``);
  :mod:`.redirect` — redirected ReLU gradients for dead units; :mod:`.directions` — direction
  matrices for the direction objective; :mod:`.fused` and :mod:`.selected` — the loop's
  compiled input pass and each image's own unit computed alone;
* :mod:`.method` — the analysis: :class:`ActivationMaximization` renders one image per unit of
  a layer, in batches, into an :class:`ActmaxResult` (cached and checkpointed in the store).

Example::

    import pyanalyzer as pa

    model = pa.load_model("models/default.onnx")
    result = pa.ActivationMaximization(model, layer="relu4", units="all", steps=256).run()
    pa.report.write_result(result, "out/actmax")   # one PNG per unit + a montage
    print(result.reached / result.start)
"""

from pyanalyzer.methods.actmax.directions import as_directions, load_directions
from pyanalyzer.methods.actmax.method import (
    KINDS,
    ActivationMaximization,
    ActmaxParams,
    ActmaxResult,
    method_objective,
    reference_maxima,
)
from pyanalyzer.methods.actmax.objectives import (
    OBJECTIVES,
    Activations,
    Objective,
    channel,
    class_logit,
    direction,
    diversity,
    find_logits,
    neuron,
    unit_objective,
)
from pyanalyzer.methods.actmax.param import (
    IMAGENET_COLOR_SQRT,
    PARAMS,
    FFTParam,
    ImageParam,
    PixelParam,
    color_correlation_from_images,
    mean_color,
)
from pyanalyzer.methods.actmax.redirect import RedirectedReLU, RedirectedReLU6, redirected_relu
from pyanalyzer.methods.actmax.regularizers import (
    SETS,
    AlphaNorm,
    ContributionClip,
    GaussianBlur,
    L2Decay,
    NormClip,
    Regularizer,
    RegularizerSet,
    TotalVariation,
    custom_set,
    regularizer_set,
)
from pyanalyzer.methods.actmax.render import Net, Rendering, render, unit_seed
from pyanalyzer.methods.actmax.transforms import (
    AffineTransform,
    CenterCrop,
    Compose,
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    Transform,
    standard_transforms,
)

__all__ = [
    "IMAGENET_COLOR_SQRT",
    "KINDS",
    "OBJECTIVES",
    "PARAMS",
    "SETS",
    "ActivationMaximization",
    "Activations",
    "ActmaxParams",
    "ActmaxResult",
    "AffineTransform",
    "AlphaNorm",
    "CenterCrop",
    "Compose",
    "ContributionClip",
    "FFTParam",
    "GaussianBlur",
    "ImageParam",
    "Jitter",
    "L2Decay",
    "Net",
    "NormClip",
    "Objective",
    "Pad",
    "PixelParam",
    "RandomRotate",
    "RandomScale",
    "RedirectedReLU",
    "RedirectedReLU6",
    "Regularizer",
    "RegularizerSet",
    "Rendering",
    "TotalVariation",
    "Transform",
    "as_directions",
    "channel",
    "class_logit",
    "color_correlation_from_images",
    "custom_set",
    "direction",
    "diversity",
    "find_logits",
    "load_directions",
    "mean_color",
    "method_objective",
    "neuron",
    "redirected_relu",
    "reference_maxima",
    "regularizer_set",
    "render",
    "standard_transforms",
    "unit_objective",
    "unit_seed",
]
