"""Model comparison: what changed between two versions of a model (a fine-tune, a model
suspected of a backdoor), unit by unit and in its outputs.

Units are matched across the two models as Li, Yosinski, Clune, Lipson & Hopcroft do
("Convergent Learning: Do different neural networks learn the same representations?", ICLR
2016): the Pearson correlation of every pair (A's unit i, B's unit j) over all images and
spatial positions, then the one-to-one matching that maximises the total correlation (the
Hungarian method, :func:`scipy.optimize.linear_sum_assignment`; rectangular when the layers
have different widths). Each layer is dissected in both models (network dissection, Bau et
al., CVPR 2017, each through the store) on the same concept dataset, which says which concepts
B gained and lost, and which matched units changed their label. On the same images the two
outputs are compared: top-1 agreement, mean absolute difference of the softmax probabilities,
and the agreement per class.

One streaming pass over the dataset runs both models and accumulates, per layer pair, the
sums, sums of squares and cross products in float64 (each unit shifted by its mean over the
first batch, so that large means do not cancel the variance away): memory is one batch plus
``[U_A, U_B]`` numbers, whatever the dataset's size. When the two maps differ in spatial size,
B's maps are resized bilinearly (half-pixel centres, edge clamp, as the dissection's tally
upsamples) to A's size, and the result says so. A unit constant over every image and position
(a dead unit) has no correlation: its row or column is NaN, and it is left out of the matching.
The pass checkpoints into the store and resumes bitwise identical.

::

    import pyanalyzer as pa

    a = pa.load_model("base.onnx")
    b = pa.load_model("finetuned.onnx")
    result = pa.Comparison(a, {"layers": ["relu5", "relu6:relu6"]}, other=b).run(dataset)
    print(result.summary()["layers"][0]["gained"])
"""

from pyanalyzer.methods.compare.method import Comparison, ComparisonParams
from pyanalyzer.methods.compare.result import ComparisonResult, LayerComparison, OutputAgreement
from pyanalyzer.methods.compare.stats import (
    CorrelationTally,
    OutputTally,
    bilinear_matrix,
    match_units,
    resize_maps,
)

__all__ = [
    "Comparison",
    "ComparisonParams",
    "ComparisonResult",
    "CorrelationTally",
    "LayerComparison",
    "OutputAgreement",
    "OutputTally",
    "bilinear_matrix",
    "match_units",
    "resize_maps",
]
