"""``pyanalyzer info`` (what a model is, as pyanalyzer reads it) and ``pyanalyzer doctor``
(the installation: versions, onnxruntime providers, compiled kernels, GPUs)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from pyanalyzer._version import __version__
from pyanalyzer.cli.options import json_option, layers_option, model_options, open_model

if TYPE_CHECKING:
    from pyanalyzer.model.model import Model

__all__ = ["doctor", "info"]


@click.command()
@json_option
@click.option(
    "--no-parity",
    is_flag=True,
    help="Skip the conversion to torch and the onnxruntime/torch parity check (fast: torch is "
    "not imported; gradient availability is then not checked).",
)
@layers_option(
    required=False, help="Show only these layers (alias or ONNX tensor name; repeatable)."
)
@model_options
def info(model: str, as_json: bool, no_parity: bool, layers: tuple[str, ...], **kw: Any) -> None:
    """Describe MODEL: inputs, opset, producer, preprocessing, layers, parity.

    Every layer has an ONNX tensor name and a short alias (conv1, relu3...); any --layer
    option of any command accepts either. Preprocessing flags override, in this order, the
    model's metadata_props ('pyanalyzer.preprocessing') and a JSON sidecar
    '<model file>.json'.
    """
    m = open_model(model, kw, check_parity=not no_parity)
    summary = m.summary(gradient=not no_parity)  # --no-parity: torch is not imported
    if layers:
        chosen = {m.layer(name).name for name in layers}
        summary["layers"] = [x for x in summary["layers"] if x["name"] in chosen]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _print_info(m, summary)


def _print_info(m: Model, s: dict[str, Any]) -> None:
    inp = s["input"]
    shape = ", ".join(str(d) for d in inp["shape"])
    rows = [
        ("model", f"{s['path']}"),
        ("sha256", s["sha256"]),
        ("producer", f"{s['producer'] or '?'}; IR {s['ir_version']}, opset {s['opset']}"),
        ("input", f"{inp['name']} [{shape}] {inp['layout']} {inp['channels']}ch {inp['dtype']}"),
        ("batching", s["batch_mode"]),
        ("preprocess", m.preprocessing.describe()),
        ("  from", _sources(s["preprocessing_source"])),
    ]
    if s["class_names"]:
        names = s["class_names"]
        more = f" (+{len(names) - 12} more)" if len(names) > 12 else ""
        rows.append(("classes", f"{len(names)}: {', '.join(names[:12])}{more}"))
    g = s["gradient"]
    if g["available"] is None:
        state = "not checked (--no-parity skips the conversion to torch)"
    else:
        state = "available (onnx2torch)" if g["available"] else f"unavailable: {g['error']}"
    rows.append(("gradients", state))
    if m.parity_report is not None:
        rows.append(("parity", m.parity_report.describe()))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    click.echo()
    header = ("#", "alias", "op", "channels", "size", "name")
    table = [header]
    for i, layer in enumerate(s["layers"]):
        size = f"{layer['height']}x{layer['width']}" if layer["height"] is not None else "-"
        name = layer["name"] + ("  (output)" if layer["is_output"] else "")
        table.append((str(i), layer["alias"], layer["op"], str(layer["channels"]), size, name))
    widths = [max(len(r[c]) for r in table) for c in range(len(header) - 1)]
    for r in table:
        click.echo("  ".join(f"{v:<{widths[c]}}" for c, v in enumerate(r[:-1])) + "  " + r[-1])


def _sources(src: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for k, v in src.items():
        groups.setdefault(v, []).append(k)
    return "; ".join(f"{v}: {', '.join(ks)}" for v, ks in groups.items())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def doctor(as_json: bool) -> None:
    """Versions, onnxruntime providers, compiled kernels and GPUs."""
    report = _doctor_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for k, v in report.items():
        click.echo(f"{k:<20} {v}")


def _doctor_report() -> dict[str, Any]:
    import platform

    rep: dict[str, Any] = {"pyanalyzer": __version__, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    # (import name, distribution name): onnx2torch has no __version__, Pillow imports as PIL.
    for mod, dist in (
        ("numpy", "numpy"), ("onnx", "onnx"), ("onnxruntime", None), ("onnx2torch", "onnx2torch"),
        ("torch", "torch"), ("torchvision", "torchvision"), ("h5py", "h5py"),
        ("click", "click"), ("PIL", "Pillow"),
    ):  # fmt: skip
        name = dist or mod
        try:
            module = __import__(mod)
        except Exception as exc:  # a broken install is what doctor is for
            rep[name] = f"NOT AVAILABLE ({type(exc).__name__}: {exc})"
            continue
        try:
            rep[name] = version(dist) if dist else module.__version__
        except PackageNotFoundError:
            rep[name] = getattr(module, "__version__", "?")
    try:
        rep["onnxruntime build"] = f"onnxruntime-gpu {version('onnxruntime-gpu')}"
    except PackageNotFoundError:
        rep["onnxruntime build"] = "onnxruntime (CPU build)"
    try:
        import onnxruntime as ort

        rep["ort providers"] = ", ".join(ort.get_available_providers())
        rep["ort device"] = ort.get_device()
    except Exception as exc:
        rep["ort providers"] = f"NOT AVAILABLE ({exc})"
    try:
        from pyanalyzer import _backend

        b = _backend.info()
        rep["_core"] = "loaded" if b.get("core_loaded") else f"NOT LOADED ({b.get('core_error')})"
        rep["openmp"] = f"{b.get('openmp')} ({b.get('omp_max_threads')} threads)"
        rep["_core_cuda"] = (
            "loaded"
            if b.get("cuda_module_loaded")
            else f"not loaded ({b.get('cuda_module_error')})"
        )
        rep["cuda devices"] = (
            f"{b.get('cuda_devices', 0)} {b.get('cuda_device_names') or ''}".strip()
        )
    except Exception as exc:
        rep["_core"] = f"NOT LOADED ({exc})"
    try:
        import torch

        rep["torch cuda"] = (
            f"{torch.cuda.device_count()} device(s)"
            if torch.cuda.is_available()
            else "no GPU visible"
        )
    except Exception:
        pass
    return rep
