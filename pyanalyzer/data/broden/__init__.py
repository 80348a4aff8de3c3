"""Broden-format concept datasets: reader, label cache and writers.

Network dissection (Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual
Representations", CVPR 2017) scores every unit of a CNN against the concepts of a densely
labelled dataset. The dataset released with it, Broden, has a simple folder layout that this
package reads unchanged and writes for new data (synthetic scenes, a user's own masks)::

    <root>/
        index.csv       image,split,ih,iw,sh,sw,<category>,<category>,...
        label.csv       number,name,category,frequency,coverage,syns
        category.csv    name,first,last,count,frequency
        c_<category>.csv  code,number,name,frequency,coverage   (one per category)
        images/         the images and the segmentation PNGs (index.csv paths are relative to it)

``index.csv`` has one row per image: its path, split, image size ``ih, iw`` and segmentation
size ``sh, sw`` (``size // 2`` in the released ``broden1_224`` / ``broden1_227``), then one cell
per category holding ``;``-separated entries, dominant first. An entry ending in ``.png`` is a
pixel-level segmentation whose label at each pixel is ``R + 256 * G`` (0 = unlabelled); a decimal
number is an image-level label that applies to the whole image. A category may hold several
PNG channels (Broden's ``part`` has up to four) and may mix PNGs and numbers.

Label numbers are global over all categories. Number 0 is ``-`` (unlabelled) and is not listed in
``label.csv``, whose ``category`` cell lists every category the label occurs in with its number
of images, most frequent first: ``21,fabric,material(36);object(3),39,4.225474,cloth``. Broden
suffixes colour names with ``-c`` (``red-c``) and scene names with ``-s`` (``street-s``).
``category.csv`` gives, per category, the smallest and largest label number, the number of labels
and the summed image counts of its labels; ``c_<category>.csv`` gives a dense per-category code
(1-based, most frequent first) for each label number.

Reference: the format as written by NetDissect's ``joinseg.py`` (``write_label_files``,
``save_segmentation``, ``encodeRG``) and read by NetDissect-Lite's ``loader/data_loader.py``
(``SegmentationData``, ``decode_index_dict``, ``decode_label_dict``), and the ``README.txt``
shipped in ``broden1_224``.

Decoding PNGs dominates the time of a dissection's data pass, so :meth:`BrodenDataset.prepare_cache`
decodes every segmentation once into an HDF5 file under ``<store folder>/concepts/`` keyed by a
digest of the dataset's files; every later run (another model, another layer) reads from it.

Modules, each importing only those above it:

- :mod:`~pyanalyzer.data.broden.format`: the CSV columns, :class:`DatasetError`,
  :class:`BrodenLabel` and the parsing and validation of the tables;
- :mod:`~pyanalyzer.data.broden.codec`: the segmentation PNG codec and :func:`resize_labels`;
- :mod:`~pyanalyzer.data.broden.cache`: the decoded-label HDF5 cache;
- :mod:`~pyanalyzer.data.broden.reader`: :class:`BrodenDataset`;
- :mod:`~pyanalyzer.data.broden.writer`: :class:`BrodenRecord` and :func:`write_broden`;
- :mod:`~pyanalyzer.data.broden.build`: :func:`synth_dataset`, :func:`build_dataset` and
  :func:`read_class_names`.
"""

from __future__ import annotations

from pyanalyzer.data.broden.build import (
    build_dataset,
    read_class_names,
    synth_concept_names,
    synth_dataset,
)
from pyanalyzer.data.broden.cache import CACHE_FORMAT
from pyanalyzer.data.broden.cache import CACHE_VERSION as CACHE_VERSION
from pyanalyzer.data.broden.codec import MAX_PNG_LABEL as MAX_PNG_LABEL
from pyanalyzer.data.broden.codec import decode_label_png, encode_label_png, resize_labels
from pyanalyzer.data.broden.format import (
    CATEGORY_COLUMNS,
    CODE_COLUMNS,
    INDEX_COLUMNS,
    LABEL_COLUMNS,
    BrodenLabel,
    DatasetError,
)
from pyanalyzer.data.broden.reader import BrodenDataset
from pyanalyzer.data.broden.writer import BrodenRecord, write_broden

__all__ = [
    "CACHE_FORMAT",
    "CATEGORY_COLUMNS",
    "CODE_COLUMNS",
    "INDEX_COLUMNS",
    "LABEL_COLUMNS",
    "BrodenDataset",
    "BrodenLabel",
    "BrodenRecord",
    "DatasetError",
    "build_dataset",
    "decode_label_png",
    "encode_label_png",
    "read_class_names",
    "resize_labels",
    "synth_concept_names",
    "synth_dataset",
    "write_broden",
]
