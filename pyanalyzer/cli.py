"""The ``pyanalyzer`` command line: a thin click layer over the public API.

Exit codes: 0 success; 2 bad input or usage (one line on stderr, no traceback); 1 an
unexpected failure (set ``PYANALYZER_DEBUG=1`` for its traceback); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from pyanalyzer._version import __version__

# ---- shared options ------------------------------------------------------------------------


def preprocessing_options(f: Callable) -> Callable:
    """The flags every command that reads a model takes."""
    opts = [
        click.option(
            "--preprocess",
            "preset",
            type=click.Choice(["imagenet", "caffe", "unit", "raw"]),
            help="Preset: imagenet (RGB, /255, ImageNet mean/std), caffe (BGR, 0-255, "
            "mean-subtracted), unit (0-1), raw (0-255).",
        ),
        click.option("--mean", metavar="A,B,C", help="Per-channel mean, after scaling (model channel order)."),
        click.option("--std", metavar="A,B,C", help="Per-channel std, after scaling (model channel order)."),
        click.option("--scale", type=float, metavar="X", help="Factor applied to 0-255 pixels."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), help="Channel order the model expects."),
        click.option("--layout", type=click.Choice(["nchw", "nhwc"]), help="Input layout (normally detected)."),
        click.option("--input-size", metavar="HxW", help="Input size for models with dynamic sizes."),
        click.option("--resize", type=click.Choice(["stretch", "crop"]), help="stretch to the size, or resize the shorter side and centre-crop."),
    ]  # fmt: skip
    for opt in reversed(opts):
        f = opt(f)
    return f


def store_option(f: Callable) -> Callable:
    return click.option(
        "--store",
        "store_path",
        type=click.Path(dir_okay=False),
        envvar="PYANALYZER_STORE",
        help="HDF5 result store (default $PYANALYZER_STORE, else ~/.cache/pyanalyzer/store.h5).",
    )(f)


def preprocessing_from_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the preprocessing flags out of a command's kwargs into a partial spec dict."""
    spec: dict[str, Any] = {}
    preset = kw.pop("preset", None)
    if preset:
        spec["preset"] = preset
    for key in ("mean", "std", "scale", "channel_order", "layout", "input_size", "resize"):
        value = kw.pop(key, None)
        if value is not None:
            spec[key] = value
    return spec


def open_model(path: str, kw: dict[str, Any], *, check_parity: bool = True):
    from pyanalyzer.model import load_model

    return load_model(path, preprocessing_from_flags(kw), check_parity=check_parity)


# ---- the group -----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="pyanalyzer")
def cli() -> None:
    """See what an image CNN saved as ONNX has learned.

    Activation maximization, DeconvNet, network inversion and network dissection on any
    ONNX image model. Every command that reads a model takes the preprocessing flags
    (see `pyanalyzer info --help`); results are cached in an HDF5 store (--store).
    """


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@preprocessing_options
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.option("--no-parity", is_flag=True, help="Skip the onnxruntime/torch parity check.")
@click.option(
    "--layer", "layers", multiple=True, metavar="NAME",
    help="Show only these layers (alias or ONNX tensor name; repeatable).",
)  # fmt: skip
def info(model: str, as_json: bool, no_parity: bool, layers: tuple[str, ...], **kw: Any) -> None:
    """Describe MODEL: inputs, opset, producer, preprocessing, layers, parity.

    Every layer has an ONNX tensor name and a short alias (conv1, relu3...); any --layer
    option of any command accepts either. Preprocessing flags override, in this order, the
    model's metadata_props ('pyanalyzer.preprocessing') and a JSON sidecar
    '<model file>.json'.
    """
    m = open_model(model, kw, check_parity=not no_parity)
    summary = m.summary(getattr(m, "parity_report", None))
    if layers:
        chosen = {m.layer(name).name for name in layers}
        summary["layers"] = [x for x in summary["layers"] if x["name"] in chosen]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _print_info(m, summary)


def _print_info(m, s: dict[str, Any]) -> None:
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
    rows.append(
        ("gradients", "available (onnx2torch)" if g["available"] else f"unavailable: {g['error']}")
    )
    if s["parity"] is not None:
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


@cli.command()
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
    for mod in (
        "numpy",
        "onnx",
        "onnxruntime",
        "onnx2torch",
        "torch",
        "torchvision",
        "h5py",
        "click",
        "PIL",
    ):
        try:
            rep[mod if mod != "PIL" else "Pillow"] = getattr(__import__(mod), "__version__", "?")
        except Exception as exc:  # a broken install is what doctor is for
            rep[mod] = f"NOT AVAILABLE ({type(exc).__name__}: {exc})"
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


# ---- cache ---------------------------------------------------------------------------------


@cli.group()
def cache() -> None:
    """List and remove cached results in the HDF5 store."""


@cache.command("ls")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def cache_ls(store_path: str | None, as_json: bool) -> None:
    """List the store's entries."""
    from pyanalyzer.store import Store

    store = Store(store_path)
    entries = store.entries()
    if as_json:
        click.echo(json.dumps([_entry_dict(e) for e in entries], indent=2))
        return
    click.echo(f"{store.path}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    for e in entries:
        d = _entry_dict(e)
        click.echo(
            f"  {d['key'][:40]}  {d['method']:<16} {d['model_file']:<24} "
            f"{_human(d['size'])}  {d['created']}"
        )


def _entry_dict(e) -> dict[str, Any]:
    key = e.key
    return {
        "key": f"{key.model_sha256[:12]}/{key.method}/{key.params_sha256[:12]}",
        "model_sha256": key.model_sha256,
        "method": key.method,
        "params_sha256": key.params_sha256,
        "model_file": e.model_file,
        "created": e.created,
        "size": int(e.size),
        "version": e.version,
    }


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:7.1f} {unit}"
        size /= 1024
    return str(n)


@cache.command("rm")
@store_option
@click.option(
    "--model", "model", help="Remove entries of this model (a path to it, or its sha256 prefix)."
)
@click.option("--method", help="Remove entries of this method.")
@click.option("--all", "all_", is_flag=True, help="Remove every entry.")
@click.argument("keys", nargs=-1)
def cache_rm(
    store_path: str | None, model: str | None, method: str | None, all_: bool, keys: tuple[str, ...]
) -> None:
    """Remove entries: by KEYS (as `cache ls` prints them, prefixes allowed), --model,
    --method, or --all."""
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.store import Store, file_sha256

    if not (keys or model or method or all_):
        raise UserInputError("say what to remove: KEYS, --model, --method or --all")
    store = Store(store_path)
    removed = 0
    if all_:
        removed = store.clear()
    else:
        sha = None
        if model is not None:
            sha = file_sha256(model) if os.path.isfile(model) else model.lower()
        if model is not None or method is not None:
            removed += store.remove_where(model_sha256=sha, method=method)
        for k in keys:
            matches = [e for e in store.entries() if _entry_dict(e)["key"].startswith(k)]
            if not matches:
                raise UserInputError(f"no store entry matches {k!r} (see `pyanalyzer cache ls`)")
            for e in matches:
                store.remove(e.key)
                removed += 1
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {store.path}")


# ---- entry point ---------------------------------------------------------------------------


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point with pyanalyzer's exit-code contract."""
    from pyanalyzer.errors import PyanalyzerError

    warnings.showwarning = _show_warning
    try:
        cli.main(args=argv, prog_name="pyanalyzer", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except PyanalyzerError as exc:
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("PYANALYZER_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(set PYANALYZER_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


def _one_line(text: str) -> str:
    return " ".join(text.split())
