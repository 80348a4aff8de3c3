"""The memory budget: how much memory one analysis may ask for, and estimates of what it needs.

Every size that comes from a user or a file (a model's shapes, an image header, a dataset's
CSV files, ``--size``, ``--units``, ``--batch-size``, ``--n-images``) is turned into an estimate
of the peak bytes it will need, here, and checked against the budget **before** anything is
allocated or written. What does not fit is refused with one line (:class:`BudgetError`, a
:class:`~pyanalyzer.errors.UserInputError`: exit code 2 in the CLI) that names the quantity,
its estimate and the budget, instead of a ``MemoryError``, an out-of-memory kill or a full disk.

The budget, in bytes (:func:`memory_budget`), is the first of:

1. the Python setting, :func:`set_memory_budget` (or the :func:`budget_override` context);
2. the environment variable :data:`ENV_VAR` (``PYANALYZER_MEMORY_BUDGET``): a size such as
   ``8G``, ``512M``, ``1.5GiB``, ``2000000000`` (bytes) or a share of physical memory such as
   ``75%`` (:func:`parse_size`);
3. the default: :data:`DEFAULT_FRACTION` (half) of the physical memory, or of the container's
   memory limit (cgroup ``memory.max``) or the process's address-space limit (``ulimit -v``)
   when one is smaller; :data:`FALLBACK_BYTES` (8 GiB) where none can be read.

The estimates are deliberately simple and documented with each function: products of the
shapes involved, times the number of copies the code makes, in float32 (4 bytes a value)
unless the data is smaller. They aim at the right order of magnitude, an upper bound where it
is cheap to give one: their job is to turn "1.2 TB" into a one-line refusal, not to predict
the allocator.

The estimates can miss (a graph whose shapes only show when it runs, a library's own
copies); an allocation that fails all the same is reported as one line too
(:func:`is_out_of_memory`, :func:`out_of_memory_message`), exit code 2 in the CLI.

Disk space is checked the same way where a command writes data whose size follows from its
parameters (:func:`check_disk`: the synthetic concept set, the dissection's spill files).

Where the checks are made:

- loading a model (:func:`pyanalyzer.model.load_model`): the file and its external data (read
  into memory), then every tensor of one image at the input size, from shape inference,
  before onnxruntime or torch runs anything;
- reading images, masks and segmentations (:func:`pyanalyzer.data.images.open_image`), from
  their headers; image sets held in memory (``model_images``);
- Broden datasets: a batch of label maps, a decoded row, the label cache;
- synthetic scenes (:class:`~pyanalyzer.data.defaults.SyntheticImages`, ``render_batch``);
- the analyses, in ``check()`` (activation maximization: units, size, batch; inversion: one
  image at its layers; dissection: a batch at its layers) and ``prepare()`` (the images or
  the dataset given); a forward pass over an image source (``ForwardEngine.iter_layers``).

Fixed bounds that no budget changes sit with the data they bound: image pixels
(:data:`pyanalyzer.data.images.MAX_IMAGE_PIXELS`), model files
(:data:`pyanalyzer.model.onnx_io.MAX_MODEL_BYTES`), node attributes
(:data:`pyanalyzer.model.graph.MAX_ATTRIBUTE`), Broden label numbers and CSV sizes
(:data:`pyanalyzer.data.broden.format.MAX_LABEL_NUMBER`, ``MAX_CSV_BYTES``), synthetic scenes
(:data:`pyanalyzer.data.synthetic.MAX_SCENES`, ``MAX_SIZE``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import resource
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from pyanalyzer.errors import UserInputError

__all__ = [
    "DEFAULT_FRACTION",
    "ENV_VAR",
    "FALLBACK_BYTES",
    "FLOAT_BYTES",
    "BudgetError",
    "activation_bytes",
    "actmax_bytes",
    "budget_override",
    "budget_source",
    "check",
    "check_disk",
    "dissection_bytes",
    "dissection_spill_bytes",
    "forward_bytes",
    "format_bytes",
    "image_bytes",
    "image_decode_bytes",
    "images_bytes",
    "inversion_bytes",
    "label_cache_bytes",
    "label_table_bytes",
    "layer_bytes",
    "memory_budget",
    "parse_size",
    "physical_memory",
    "segmentation_batch_bytes",
    "set_memory_budget",
    "synthetic_disk_bytes",
    "synthetic_images_bytes",
    "upconv_bytes",
    "upconv_training_bytes",
]

ENV_VAR = "PYANALYZER_MEMORY_BUDGET"
"""The environment variable that sets the budget (``8G``, ``512M``, ``75%``...)."""

DEFAULT_FRACTION = 0.5
"""The default budget: this share of the physical memory (or of the container's limit)."""

FALLBACK_BYTES = 8 * 2**30
"""The default budget where the physical memory cannot be read: 8 GiB."""

FLOAT_BYTES = 4
"""Bytes of one activation value: float32, what both engines compute in."""

IMAGE_COPIES = 16
"""Image-sized float32 tensors activation maximization holds per image: the parametrization
(an FFT spectrum and its scale, or the pixels), the colour mixing and sigmoid, the transforms
(pad, jitter, scale, rotate, crop), their gradients and Adam's two moments."""

GRAD_FACTOR = 2
"""Activations held by a backward pass, per forward activation: the one saved for the
backward pass and its gradient."""

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")

_setting: int | None = None


class LayerInfo(Protocol):
    """What the estimates read of a catalogue layer (:class:`pyanalyzer.model.LayerInfo`)."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def channels(self) -> int | None: ...
    @property
    def index(self) -> int: ...


class BudgetError(UserInputError):
    """A request needs more memory (or disk) than the budget allows; the message names the
    quantity, its estimate and the budget."""


# ---- the budget -------------------------------------------------------------------------------


def _cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    for path in (
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ):
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit() and 0 < int(text) < 2**60:  # "max" or a huge number: no limit
            return int(text)
    return None


def _address_space_limit() -> int | None:
    """The soft ``RLIMIT_AS`` (``ulimit -v``) in bytes, None when unlimited."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


@functools.lru_cache(maxsize=1)
def physical_memory() -> int | None:
    """The machine's memory in bytes, or the container's memory limit or the process's
    address-space limit when smaller; None if none is known."""
    total: int | None = None
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and page > 0:
            total = int(pages) * int(page)
    except (AttributeError, ValueError, OSError):
        total = None
    for limit in (_cgroup_limit(), _address_space_limit()):
        if limit is not None:
            total = limit if total is None else min(total, limit)
    return total


def parse_size(text: str | int, *, what: str = "memory budget") -> int:
    """Bytes from ``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"64KB"``, ``"2000000000"`` (units are
    powers of 1024) or a share of physical memory, ``"75%"``.

    Raises:
        BudgetError: not a size, or not positive.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text)
        pct = _PERCENT.match(s)
        m = _SIZE.match(s)
        if pct:
            total = physical_memory() or FALLBACK_BYTES / DEFAULT_FRACTION
            value = int(float(pct.group(1)) / 100.0 * total)
        elif m:
            value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
        else:
            raise BudgetError(
                f"{what} {s!r} is not a size: give bytes or a number with K, M, G or T "
                "(e.g. 8G, 512M) or a share of memory (e.g. 50%)"
            )
    if value <= 0:
        raise BudgetError(f"{what} must be positive, got {text!r}")
    return value


def set_memory_budget(value: int | str | None) -> None:
    """Set the budget for this process (bytes, or text as :func:`parse_size` reads it); None
    goes back to :data:`ENV_VAR` or the default.

    Raises:
        BudgetError: not a positive size.
    """
    global _setting
    _setting = None if value is None else parse_size(value)


@contextlib.contextmanager
def budget_override(value: int | str | None) -> Iterator[int]:
    """The budget set to ``value`` inside the block (restored after it); yields the bytes."""
    global _setting
    saved = _setting
    set_memory_budget(value)
    try:
        yield memory_budget()
    finally:
        _setting = saved


def memory_budget() -> int:
    """The budget in bytes: the Python setting, else :data:`ENV_VAR`, else the default.

    Raises:
        BudgetError: :data:`ENV_VAR` is set to something that is not a size.
    """
    if _setting is not None:
        return _setting
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return parse_size(env, what=ENV_VAR)
    total = physical_memory()
    return int(total * DEFAULT_FRACTION) if total else FALLBACK_BYTES


def budget_source() -> str:
    """Where the budget comes from, for messages."""
    if _setting is not None:
        return "set by pyanalyzer.budget.set_memory_budget"
    if os.environ.get(ENV_VAR, "").strip():
        return f"set by {ENV_VAR}"
    return (
        "half of the memory this process may use: the machine's, its container's or "
        f"ulimit -v, whichever is least; {ENV_VAR} changes it"
    )


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``4.3e12`` -> ``"3.9 TiB"``."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def check(quantity: str, estimate: int, *, advice: str = "") -> int:
    """Refuse ``estimate`` bytes when they exceed the budget.

    Args:
        quantity: what needs the memory, for the message (``"a forward pass of 64 images at
            relu5"``).
        estimate: its estimated peak bytes.
        advice: what the user can change, appended to the message (``"use a smaller
            --batch-size"``).

    Returns:
        ``estimate``.

    Raises:
        BudgetError: one line: ``<quantity> needs about <estimate>, more than the memory budget
            of <budget> (<where the budget comes from>)[; <advice>]``.
    """
    limit = memory_budget()
    if estimate > limit:
        tail = f"; {advice}" if advice else ""
        raise BudgetError(
            f"{quantity} needs about {format_bytes(estimate)}, more than the memory budget of "
            f"{format_bytes(limit)} ({budget_source()}){tail}"
        )
    return estimate


_OOM_TEXT = re.compile(
    r"can't allocate memory|out of memory|failed to allocate memory|bad_alloc"
    r"|AllocateRawInternal",
    re.IGNORECASE,
)
_TRIED = re.compile(r"(?:tried to allocate|allocate memory for requested buffer of size) (\d+)")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed: ``MemoryError``, torch's allocator errors
    (CPU and CUDA), onnxruntime's arena errors."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, Exception) and bool(_OOM_TEXT.search(str(exc)))


def out_of_memory_message(exc: BaseException, doing: str = "") -> str:
    """One line for a failed allocation: what failed, how much it asked for when the library
    says, and the budget that did not foresee it."""
    text = str(exc)
    tried = _TRIED.search(text)
    if tried:
        asked = f" (an allocation of {format_bytes(int(tried.group(1)))} failed)"
    elif isinstance(exc, MemoryError) and text.strip():  # numpy: "Unable to allocate 4 GiB ..."
        asked = f" ({text.strip().splitlines()[0][:200]})"
    else:
        asked = ""
    during = f" while {doing}" if doing else ""
    return (
        f"out of memory{during}{asked}; the estimates allowed it under the memory budget of "
        f"{format_bytes(memory_budget())}: set {ENV_VAR} lower for earlier refusals, or use "
        "smaller images, batches or layers"
    )


def _existing(folder: str | os.PathLike[str]) -> Path:
    p = Path(os.path.abspath(os.fspath(folder)))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(
    quantity: str, estimate: int, folder: str | os.PathLike[str], *, advice: str = ""
) -> int:
    """Refuse to write ``estimate`` bytes under ``folder`` (or the nearest folder above it that
    exists) when its file system has less free space.

    Raises:
        BudgetError: one line naming the quantity, its estimate, the free space and the folder.
    """
    where = _existing(folder)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return estimate  # nothing to measure against: the write reports its own failure
    if estimate > free:
        tail = f"; {advice}" if advice else ""
        raise BudgetError(
            f"{quantity} needs about {format_bytes(estimate)} of disk, more than the "
            f"{format_bytes(free)} free in {str(where)!r}{tail}"
        )
    return estimate


# ---- estimates: shapes ------------------------------------------------------------------------


def _prod(dims: Iterable[int]) -> int:
    return math.prod(max(0, int(d)) for d in dims)


def layer_bytes(layer: LayerInfo | Sequence[int], batch: int = 1) -> int:
    """float32 bytes of one catalogue layer for ``batch`` images: ``batch x prod(shape[1:])``
    (the catalogue's shapes are for a batch of one)."""
    shape = tuple(layer if isinstance(layer, Sequence) else layer.shape)
    per_image = _prod(shape[1:]) if shape else 1
    return int(batch) * per_image * FLOAT_BYTES


def activation_bytes(layers: Iterable[LayerInfo | Sequence[int]]) -> int:
    """float32 bytes of all the given layers for one image (a model's whole catalogue: what
    holding every feature map of one image costs)."""
    return sum(layer_bytes(layer) for layer in layers)


def image_bytes(width: int, height: int, channels: int, itemsize: int = 1) -> int:
    """Bytes of one decoded image: ``width x height x channels x itemsize``."""
    return _prod((width, height, channels, itemsize))


def image_decode_bytes(width: int, height: int, channels: int, itemsize: int = 1) -> int:
    """Peak bytes of reading one image file: the decoded pixels, the copy handed out and the
    conversion to RGB (three images)."""
    return 3 * max(image_bytes(width, height, channels, itemsize), image_bytes(width, height, 3))


def images_bytes(n: int, height: int, width: int, channels: int) -> int:
    """uint8 bytes of ``n`` images held together (``[n, H, W, C]``)."""
    return _prod((n, height, width, channels))


def _input_hwc(model: Any) -> tuple[int, int, int]:
    h, w = model.preprocessing.input_size
    return int(h), int(w), int(model.preprocessing.channels)


def _upto(model: Any, names: Iterable[str]) -> list[Any]:
    """The catalogue layers computed up to the deepest of ``names`` (graph order); all of them
    when a name is not in the catalogue."""
    index = {layer.name: layer.index for layer in model.layers}
    wanted = [index.get(n) for n in names]
    if not wanted or any(i is None for i in wanted):
        return list(model.layers)
    last = max(i for i in wanted if i is not None)
    return [layer for layer in model.layers if layer.index <= last]


def forward_bytes(model: Any, layers: Sequence[LayerInfo], batch: int) -> int:
    """Peak bytes of one onnxruntime forward pass of ``batch`` images that returns ``layers``.

    Per image: the pixels and their normalised float32 copy (uint8 + 2 x float32 input), the
    requested maps twice (onnxruntime's outputs and the NCHW copies the methods make), and
    twice the largest map of the network (the tensors onnxruntime keeps alive at once while it
    computes one layer from the previous one).
    """
    h, w, c = _input_hwc(model)
    per_image = h * w * c * (1 + 2 * FLOAT_BYTES)
    per_image += 2 * activation_bytes(layers)
    per_image += 2 * max((layer_bytes(x) for x in model.layers), default=0)
    return int(batch) * per_image


def actmax_bytes(
    model: Any,
    target: str,
    *,
    batch: int,
    units: int,
    size: tuple[int, int],
    steps: int,
) -> int:
    """Peak bytes of activation maximization: one batch of ``batch`` images optimised at once,
    plus the results of all ``units``.

    Per image of the batch: :data:`IMAGE_COPIES` float32 images of ``size`` (the
    parametrization, transforms, gradients, Adam) and the network up to ``target`` at the
    model's input size, :data:`GRAD_FACTOR` times (activations and their gradients). For
    all units: the uint8 RGB images (and the model's channels before the gray-to-RGB copy) and
    the per-step curve (float32 ``[steps, units]``).
    """
    h, w, c = _input_hwc(model)
    sh, sw = size
    image = sh * sw * c * FLOAT_BYTES * IMAGE_COPIES + h * w * c * FLOAT_BYTES * 2
    network = GRAD_FACTOR * activation_bytes(_upto(model, [target]))
    results = units * (sh * sw * (c + 3) + 4 * FLOAT_BYTES) + steps * units * FLOAT_BYTES
    return int(batch) * (image + network) + results


def projection_bytes(model: Any, layer: LayerInfo, *, batch: int) -> int:
    """Peak bytes of projecting a unit back to pixels (DeconvNet, guided backprop, saliency)
    for a batch of images: every node's value up to the layer is recorded for the reverse
    walk, and the walk holds a signal as large as each of them, :data:`GRAD_FACTOR` + 1 copies
    of the activations in all; plus the float32 input and its projection."""
    h, w, c = _input_hwc(model)
    network = (GRAD_FACTOR + 1) * activation_bytes(_upto(model, [layer.name]))
    return int(batch) * (network + 2 * h * w * c * FLOAT_BYTES)


def inversion_bytes(model: Any, layers: Sequence[LayerInfo], *, images: int, steps: int) -> int:
    """Peak bytes of optimisation inversion (Mahendran & Vedaldi): ``images x len(layers)``
    rows optimised in one batch.

    Per row: the network up to the deepest layer, :data:`GRAD_FACTOR` times; the target
    features of its layer; 8 float32 images (the variable, its gradient, momentum, the
    jittered and normalised copies, the clamp bounds); the reconstruction twice (float32
    ``[N, L, H, W, C]`` and the reshaped copy). Plus the history (float64 ``[steps, rows]``)
    and the originals (uint8).
    """
    h, w, c = _input_hwc(model)
    rows = int(images) * len(layers)
    network = GRAD_FACTOR * activation_bytes(_upto(model, [x.name for x in layers]))
    targets = max((layer_bytes(x) for x in layers), default=0)
    image = h * w * c * FLOAT_BYTES * 10
    return rows * (network + targets + image) + steps * rows * 8 + images * h * w * c


def upconv_bytes(model: Any, layers: Sequence[LayerInfo], *, images: int, batch: int) -> int:
    """Peak bytes of UpconvNet inversion: a forward pass of ``batch`` images at each layer, the
    decoder's batch (4 float32 images a row), and the reconstructions of every image at every
    layer (float32 ``[N, L, H, W, C]``, twice: the parts and the stacked result)."""
    h, w, c = _input_hwc(model)
    n = int(images)
    b = min(int(batch), max(n, 1))
    per_batch = max((forward_bytes(model, [x], b) for x in layers), default=0)
    per_batch += b * h * w * c * FLOAT_BYTES * 4
    return per_batch + 2 * n * len(layers) * h * w * c * FLOAT_BYTES + n * h * w * c


def upconv_training_bytes(model: Any, layer: LayerInfo, *, images: int, batch: int) -> int:
    """Peak bytes of training an UpconvNet decoder: every image's features (float16) and
    pixels (uint8) held for all epochs, a forward pass of 64 images, and a training batch of
    ``batch`` rows (features, decoder activations and their gradients: 8 float32 images a row).
    """
    h, w, c = _input_hwc(model)
    n = int(images)
    held = n * (layer_bytes(layer) // 2 + h * w * c)
    train = int(batch) * (layer_bytes(layer) + h * w * c * FLOAT_BYTES * 8)
    return held + forward_bytes(model, [layer], min(64, max(n, 1))) + train


def dissection_bytes(
    model: Any,
    layers: Sequence[LayerInfo],
    *,
    batch: int,
    images: int | None = None,
    topk: Sequence[int] = (),
    top_k: int = 10,
    concepts: int = 0,
    categories: int = 0,
    seg: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> int:
    """Peak bytes of network dissection (Bau et al.).

    The data pass: a forward pass of ``batch`` images at ``layers`` (:func:`forward_bytes`) and
    each layer's batch of maps twice (the contiguous copy and the tally's reading). With the
    dataset's ``images`` (None: not known yet, the rest is left out), the state kept over the
    whole dataset, per layer: the exact top-k of every unit (float32 ``[U, k]`` with ``k`` from
    ``topk``, one per layer, twice while a batch is merged), the counts (int64 ``[U, concepts
    + categories + 1]``) and the top images (``[U, top_k]``); and the labels of a batch
    (:func:`segmentation_batch_bytes` with ``seg = (K, L, sh, sw)``).
    """
    b = int(batch)
    total = forward_bytes(model, layers, b) + 2 * b * activation_bytes(layers)
    if images is not None:
        n = int(images)
        ks = list(topk) or [n] * len(layers)
        for x, k in zip(layers, ks, strict=True):
            u = int(x.channels or 0)
            total += 2 * u * int(k) * FLOAT_BYTES
            total += u * (concepts + categories + 1) * 8 + u * min(top_k, n) * 12
        k_, l_, sh, sw = seg
        total += segmentation_batch_bytes(b, k_, l_, categories, (sh, sw))
        total += concepts * 8 * 2
    return total


def dissection_spill_bytes(layers: Sequence[LayerInfo], images: int) -> int:
    """Disk bytes of dissection's spill: every image's maps at every layer, float32."""
    return int(images) * activation_bytes(layers)


def segmentation_batch_bytes(
    batch: int, channels: int, image_labels: int, categories: int, seg_size: tuple[int, int]
) -> int:
    """Bytes of one batch of concept labels: int32 ``[B, K, sh, sw]`` label maps, int32
    ``[B, L]`` image-level labels and uint8 ``[B, G]`` categories present."""
    sh, sw = seg_size
    b = int(batch)
    return b * (int(channels) * sh * sw * 4 + int(image_labels) * 4 + int(categories))


def label_cache_bytes(
    images: int, channels: int, image_labels: int, categories: int, seg_size: tuple[int, int]
) -> int:
    """Memory of writing the decoded-label cache: the per-image tables kept until the end
    (int32 ``[n, L]`` image-level labels, uint8 ``[n, G]`` categories, two int32 counts) and one
    row of label maps decoded and padded (int32 and the stored dtype: 8 bytes a pixel)."""
    sh, sw = seg_size
    n = int(images)
    return n * (int(image_labels) * 4 + int(categories) + 8) + int(channels) * sh * sw * 8


def label_table_bytes(max_number: int) -> int:
    """Memory of a dataset's label tables, indexed by label number ``0..max_number``: a
    category index (int32), a name (a list slot and a short string, ~64 bytes) and a flag."""
    return (int(max_number) + 1) * (4 + 64 + 1)


SCENE_BYTES_PER_PIXEL = 128
"""Working memory of drawing one synthetic scene, per pixel: float64 coordinate grids and
shape tests, the int16 canvas and masks, the noise and the image."""


def synthetic_images_bytes(n: int, size: int) -> int:
    """Memory of ``n`` synthetic scenes held together, uint8 ``[n, size, size, 3]``, plus the
    scene being drawn (:data:`SCENE_BYTES_PER_PIXEL`)."""
    return images_bytes(n, size, size, 3) + size * size * SCENE_BYTES_PER_PIXEL


def synthetic_disk_bytes(n: int, size: int) -> int:
    """Disk bytes of a synthetic concept set of ``n`` scenes, an upper bound: each image as an
    uncompressed RGB PNG (``size^2 x 3``), its three segmentation PNGs at half size (RGB), and
    1 KiB of file overhead and CSV rows."""
    half = max(1, size // 2)
    return int(n) * (size * size * 3 + 3 * half * half * 3 + 1024)
