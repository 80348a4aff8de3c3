"""Reading an ONNX file safely: path checks, parsing, external data, the full checker.

Everything here treats the file as untrusted: every failure becomes a one-line
:class:`~pyanalyzer.errors.ModelError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from pyanalyzer.errors import ModelError

_MAX_BYTES = 2**31 - 1  # protobuf's hard limit for one message


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
        if not target.is_file():
            raise ModelError(
                f"external data file {location!r} of tensor {tensor.name!r} is missing"
            )
        files[target] = None
    return list(files)


def read_model(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, Path, str]:
    """Parse, check and fully load an ONNX file.

    Returns:
        ``(model, resolved path, sha256)``; the digest covers the file and its external data.

    Raises:
        ModelError: for every way the file can be unusable.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file {str(p)!r} does not exist")
    if p.is_dir():
        raise ModelError(f"{str(p)!r} is a directory, not an ONNX model file")
    try:
        size = p.stat().st_size
        raw = p.read_bytes() if size <= _MAX_BYTES else b""
    except OSError as exc:
        raise ModelError(f"cannot read model file {str(p)!r}: {exc.strerror or exc}") from None
    if size == 0:
        raise ModelError(f"model file {str(p)!r} is empty")
    if size > _MAX_BYTES:
        raise ModelError(
            f"model file {str(p)!r} is {size} bytes; ONNX files over 2 GiB must keep "
            "their weights as external data"
        )
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ...
        raise ModelError(
            f"{str(p)!r} is not an ONNX model (it does not parse: {_first_line(exc)})"
        ) from None
    if not model.HasField("graph") or not model.ir_version or not model.graph.node:
        raise ModelError(f"{str(p)!r} is not an ONNX model (no graph, IR version or nodes)")

    digest = hashlib.sha256(raw)
    for f in external_data_files(model, p.parent):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as exc:
        raise ModelError(
            f"cannot load the external data of {str(p)!r}: {_first_line(exc)}"
        ) from None

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError(f"{str(p)!r} is not a valid ONNX model: {_first_line(exc)}") from None
    return model, p.resolve(), digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # onnx's checker puts the useful part on the first line; keep messages to one line.
    msg = lines[0] if lines else text
    return msg if len(msg) <= 300 else msg[:297] + "..."
