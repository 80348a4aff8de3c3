"""Reading an ONNX file safely: path checks, parsing, external data, the full checker.

Everything here treats the file as untrusted: every failure becomes a one-line
:class:`~pyanalyzer.errors.ModelError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from pyanalyzer._checks import open_regular, regular_file
from pyanalyzer.errors import ModelError, first_line

MAX_MODEL_BYTES = 2**31 - 1
"""The largest ONNX file read (protobuf's limit for one message, 2 GiB): larger models keep
their weights as external data."""

MAX_EXTERNAL_BYTES = 2**38
"""The most external data one model may have (256 GiB, all files together); it must also fit
the memory budget, as it is loaded into memory."""


def _tensors_with_external_data(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def external_data_files(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """The files a model's external data lives in, checked to stay inside ``base_dir``.

    Raises:
        ModelError: a location is absolute, leaves the model's folder (``../``, a symlink
            out), or names a file that does not exist.
    """
    base = base_dir.resolve()
    files: dict[Path, None] = {}
    for tensor in _tensors_with_external_data(model):
        location = ExternalDataInfo(tensor).location
        if not location:
            raise ModelError(f"tensor {tensor.name!r} uses external data but names no location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
            raise ModelError(
                f"tensor {tensor.name!r} points to external data at an absolute path "
                f"({location!r}); only files inside the model's folder are allowed"
            )
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise ModelError(
                f"tensor {tensor.name!r} points to external data outside the model's folder "
                f"({location!r}); only files inside {base} are allowed"
            )
        if not target.exists():
            raise ModelError(
                f"external data file {location!r} of tensor {tensor.name!r} is missing"
            )
        regular_file(target, f"an external data file (of tensor {tensor.name!r})", error=ModelError)
        files[target] = None
    return list(files)


def read_model(
    path: str | os.PathLike[str], *, external_data: bool = True
) -> tuple[onnx.ModelProto, Path, str]:
    """Parse, check and fully load an ONNX file.

    The file and its external data must be regular files (a FIFO would block, a symlink to
    ``/dev/zero`` never ends) of at most :data:`MAX_MODEL_BYTES` and
    :data:`MAX_EXTERNAL_BYTES`; their bytes, held twice while parsed, must fit the memory
    budget (:mod:`pyanalyzer.budget`). Every string of the model must be valid UTF-8, and the
    attributes of its nodes sizes a model can have (:func:`~.graph.check_attributes`).

    Args:
        external_data: whether the model may keep weights in external data files (False for
            uploads, which come as one file).

    Returns:
        ``(model, resolved path, sha256)``; the digest covers the file and its external data.

    Raises:
        ModelError: for every way the file can be unusable.
    """
    from pyanalyzer import budget
    from pyanalyzer.model.graph import check_attributes

    p = Path(path)
    what = "an ONNX model file"
    if not p.exists() and not p.is_symlink():
        raise ModelError(f"model file {str(p)!r} does not exist")
    st = regular_file(p, what, error=ModelError)
    size = st.st_size
    if size == 0:
        raise ModelError(f"model file {str(p)!r} is empty")
    if size > MAX_MODEL_BYTES:
        raise ModelError(
            f"model file {str(p)!r} is {size} bytes; ONNX files over 2 GiB must keep "
            "their weights as external data"
        )
    budget.check(f"reading model file {str(p)!r} ({budget.format_bytes(size)})", 2 * size)
    try:
        with open_regular(p, what, error=ModelError, max_bytes=MAX_MODEL_BYTES) as fh:
            raw = fh.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"cannot read model file {str(p)!r}: {exc.strerror or exc}") from None
    if len(raw) != size:
        raise ModelError(f"model file {str(p)!r} changed while it was read")
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ...
        raise ModelError(
            f"{str(p)!r} is not an ONNX model (it does not parse: {first_line(exc)})"
        ) from None
    check_strings(model, str(p))
    if not model.HasField("graph") or not model.ir_version or not model.graph.node:
        raise ModelError(f"{str(p)!r} is not an ONNX model (no graph, IR version or nodes)")
    check_attributes(model)

    digest = hashlib.sha256(raw)
    del raw
    if not external_data and _tensors_with_external_data(model):
        raise ModelError(
            f"{str(p)!r} references external data files; give a model that holds its weights "
            "in the one file"
        )
    files = external_data_files(model, p.parent)
    external = sum(f.stat().st_size for f in files)  # regular files (external_data_files)
    if external > MAX_EXTERNAL_BYTES:
        raise ModelError(
            f"the external data of {str(p)!r} is {external} bytes, more than the "
            f"{MAX_EXTERNAL_BYTES} allowed (MAX_EXTERNAL_BYTES)"
        )
    if external:
        budget.check(
            f"loading the external data of {str(p)!r} ({budget.format_bytes(external)})",
            2 * (size + external),
        )
    for f in files:
        with open_regular(f, "an external data file", error=ModelError) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as exc:
        raise ModelError(
            f"cannot load the external data of {str(p)!r}: {first_line(exc)}"
        ) from None

    check_tensor_sizes(model, str(p))  # the checker misses data larger than the shape
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError(f"{str(p)!r} is not a valid ONNX model: {first_line(exc)}") from None
    return model, p.resolve(), digest.hexdigest()


_SUB_BYTE = {"UINT4", "INT4", "FLOAT4E2M1", "UINT2", "INT2", "FLOAT6E2M3", "FLOAT6E3M2"}
"""Packed types whose byte count is not ``values * itemsize``; their sizes are left to the
runtime (image models do not store weights so)."""


def _size_problem(t: onnx.TensorProto) -> str | None:
    """What is wrong with the amount of data a tensor holds for its shape, or None."""
    if any(d < 0 for d in t.dims):
        return f"has a negative dimension {list(t.dims)}"
    name = onnx.TensorProto.DataType.Name(t.data_type) if t.data_type else "UNDEFINED"
    if name == "UNDEFINED" or name in _SUB_BYTE:
        return None  # the checker reports an undefined type
    n = 1
    for d in t.dims:
        n *= d
    shape = f"its shape {list(t.dims)}"
    if t.HasField("raw_data"):
        if name == "STRING":
            return "is a string tensor with raw data"
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if len(t.raw_data) != n * itemsize:
            return f"holds {len(t.raw_data)} bytes of data but {shape} needs {n * itemsize}"
        return None
    if name == "STRING":
        held, need = len(t.string_data), n
    else:
        held = len(getattr(t, onnx.helper.tensor_dtype_to_field(t.data_type)))
        need = 2 * n if name.startswith("COMPLEX") else n
    if held != need:
        return f"holds {held} values but {shape} needs {need}"
    return None


def _graph_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The initializers and constant tensors of a graph and of its subgraphs."""
    found = list(graph.initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                found.append(a.t)
            found.extend(a.tensors)
            if a.HasField("g"):
                found.extend(_graph_tensors(a.g))
            for g in a.graphs:
                found.extend(_graph_tensors(g))
    return found


def check_tensor_sizes(model: onnx.ModelProto, shown: str = "the model") -> None:
    """Every weight and constant holds exactly the data its shape and type need.

    The checker does not look (a weight's bytes may disagree with its dims), and reading such
    a tensor fails deep inside numpy or onnxruntime with a multi-line message.

    Raises:
        ModelError: one line naming the file and the first such tensor.
    """
    for t in _graph_tensors(model.graph):
        problem = _size_problem(t)
        if problem is not None:
            raise ModelError(f"{shown!r} is not a valid ONNX model: tensor {t.name!r} {problem}")


def _field_path(prefix: str, name: str, index: int | None) -> str:
    return f"{prefix}.{name}" if index is None else f"{prefix}.{name}[{index}]"


def _bad_string(message: Message, prefix: str) -> str | None:
    """The path of the first string field of ``message`` (recursively) that is not valid UTF-8.

    The upb protobuf runtime hands such fields out as ``bytes`` instead of ``str`` (other
    runtimes raise on access): either way the field is named here.
    """
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            values = list(value) if _is_repeated(field) else [value]
            for i, v in enumerate(values):
                if not isinstance(v, str):
                    return _field_path(prefix, field.name, i if _is_repeated(field) else None)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue  # ONNX has no map fields; a map would be checked by its entries
            items = list(value) if _is_repeated(field) else [value]
            for i, item in enumerate(items):
                where = _field_path(prefix, field.name, i if _is_repeated(field) else None)
                found = _bad_string(item, where)
                if found is not None:
                    return found
    return None


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5; older: the label
    if repeated is None:
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
    return bool(repeated)


def check_strings(model: onnx.ModelProto, shown: str = "the model") -> None:
    """Refuse a model with a string field that is not valid UTF-8 (producer name, metadata
    keys and values, node, tensor and attribute names...), naming the field.

    Raises:
        ModelError: one line naming the file and the field.
    """
    try:
        found = _bad_string(model, "model")
    except (UnicodeDecodeError, ValueError):  # a runtime that decodes on access
        found = "a string field"
    except RecursionError:
        raise ModelError(f"{shown!r} is not a usable ONNX model: it is nested too deeply") from None
    if found is not None:
        raise ModelError(f"{shown!r} is not a valid ONNX model: {found} is not valid UTF-8 text")
