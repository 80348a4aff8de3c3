"""Network inversion: reconstruct an image from what a layer computed of it.

* Optimisation (:func:`invert_optim`, :class:`OptimInversion`): Mahendran & Vedaldi,
  "Understanding Deep Image Representations by Inverting Them", CVPR 2015.
* UpconvNet (:func:`train_upconv`, :func:`invert_upconv`): Dosovitskiy & Brox, "Inverting
  Visual Representations with Convolutional Networks", CVPR 2016.
* :func:`layer_sweep`: one image reconstructed from each of several layers, side by side.

Both methods return an :class:`InversionResult` with the paper's normalised feature-space
error ``‖Φ(x̂) − Φ0‖ / ‖Φ0‖`` and a pixel-space RMS error, per image and layer.
"""

from pyanalyzer.methods.inversion._common import load_images, resolve_layers
from pyanalyzer.methods.inversion.optim import OptimInversion, invert_optim
from pyanalyzer.methods.inversion.result import InversionResult, feature_error, pixel_error
from pyanalyzer.methods.inversion.sweep import LayerSweep, layer_sweep, strip
from pyanalyzer.methods.inversion.upconv import (
    DecoderMismatchError,
    UpconvDecoder,
    architecture,
    find_decoder,
    invert_upconv,
    synthetic_source,
    train_upconv,
)

__all__ = [
    "DecoderMismatchError",
    "InversionResult",
    "LayerSweep",
    "OptimInversion",
    "UpconvDecoder",
    "architecture",
    "feature_error",
    "find_decoder",
    "invert_optim",
    "invert_upconv",
    "layer_sweep",
    "load_images",
    "pixel_error",
    "resolve_layers",
    "strip",
    "synthetic_source",
    "train_upconv",
]
