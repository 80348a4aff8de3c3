"""Network inversion: reconstruct an image from what a layer computed of it.

* Optimisation (:class:`OptimInversion`): Mahendran & Vedaldi, "Understanding Deep Image
  Representations by Inverting Them", CVPR 2015.
* UpconvNet (:class:`UpconvTraining`, then :class:`UpconvInversion`): Dosovitskiy & Brox,
  "Inverting Visual Representations with Convolutional Networks", CVPR 2016.

Both return an :class:`InversionResult` with the paper's normalised feature-space error
``‖Φ(x̂) − Φ0‖ / ‖Φ0‖`` and a pixel-space RMS error, per image and layer; the strip of one image
reconstructed from each layer, side by side (the survey's figure), is drawn by
:func:`pyanalyzer.report.inversion.strip`.
"""

from pyanalyzer.methods.inversion._common import load_images, resolve_layers
from pyanalyzer.methods.inversion.decoder import (
    DecoderMismatchError,
    DecoderMissingError,
    UpconvDecoder,
    architecture,
    find_decoder,
)
from pyanalyzer.methods.inversion.optim import OptimInversion, OptimParams
from pyanalyzer.methods.inversion.result import InversionResult, feature_error, pixel_error
from pyanalyzer.methods.inversion.upconv import (
    TrainParams,
    UpconvInversion,
    UpconvParams,
    UpconvTraining,
)

__all__ = [
    "DecoderMismatchError",
    "DecoderMissingError",
    "InversionResult",
    "OptimInversion",
    "OptimParams",
    "TrainParams",
    "UpconvDecoder",
    "UpconvInversion",
    "UpconvParams",
    "UpconvTraining",
    "architecture",
    "feature_error",
    "find_decoder",
    "load_images",
    "pixel_error",
    "resolve_layers",
]
