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
* :mod:`.render` — the optimisation loop (:func:`render`), redirected ReLU gradients for dead
  units, and the method: :class:`ActivationMaximization` / :func:`run_actmax` render one
  image per unit of a layer, all in one batch, into an :class:`ActmaxResult`.

Example::

    import pyanalyzer as pa
    from pyanalyzer.methods.actmax import run_actmax

    model = pa.load_model("models/default.onnx")
    result = run_actmax(model, "relu4", "all", steps=256, seed=0)
    result.save("out/actmax")          # one PNG per unit + a montage
    print(result.reached / result.start)
"""

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
from pyanalyzer.methods.actmax.render import (
    KINDS,
    ActivationMaximization,
    ActmaxResult,
    RedirectedReLU,
    RedirectedReLU6,
    Rendering,
    as_directions,
    load_directions,
    method_objective,
    redirected_relu,
    reference_maxima,
    render,
    run_actmax,
)
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
    "run_actmax",
    "standard_transforms",
    "unit_objective",
]
