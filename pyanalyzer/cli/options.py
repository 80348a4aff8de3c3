"""The option groups every command shares, defined once, and the helpers commands share.

* :func:`model_options` — the MODEL argument and the preprocessing flags;
* :func:`store_option`, :func:`layers_option`, :func:`units_option`, :func:`progress_option`,
  :func:`json_option`, :func:`out_option`;
* :func:`open_model`, :func:`open_store`, :func:`concepts_dir`, :func:`report` (the summary
  line or the JSON document of a command's result).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from pyanalyzer.analysis import Analysis
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Store

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "concepts_dir",
    "json_option",
    "layers_option",
    "model_options",
    "open_model",
    "open_store",
    "out_option",
    "progress_option",
    "report",
    "store_option",
    "units_option",
]

_PREPROCESSING = (
    "preset",
    "mean",
    "std",
    "scale",
    "channel_order",
    "layout",
    "input_size",
    "resize",
)


def _apply(f: F, options: Sequence[Callable[[F], F]]) -> F:
    for opt in reversed(options):
        f = opt(f)
    return f


def model_options(f: F) -> F:
    """The MODEL argument and the preprocessing flags (they override, in this order, the
    model's ``metadata_props`` and a JSON sidecar ``<model file>.json``)."""
    opts = [
        click.argument("model", type=click.Path(dir_okay=True)),
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
    return _apply(f, opts)


def store_option(f: F) -> F:
    """``--store``: the result store (a folder; ``$PYANALYZER_STORE`` by default)."""
    return click.option(
        "--store",
        "store_path",
        type=click.Path(),
        envvar="PYANALYZER_STORE",
        help="Result store (default $PYANALYZER_STORE, else ~/.cache/pyanalyzer/store).",
    )(f)


def layers_option(*, multiple: bool = True, required: bool = True, help: str) -> Callable[[F], F]:
    """``--layer NAME`` (an alias or an ONNX tensor name), once or repeatable."""
    return click.option(
        "--layer",
        "layers" if multiple else "layer",
        multiple=multiple,
        required=required,
        metavar="NAME",
        help=help,
    )


def units_option(
    *, default: str | None = "all", help: str, alias: str | None = None, required: bool = False
) -> Callable[[F], F]:
    """``--units N|A-B|all`` (and an older spelling, e.g. deconv's ``--unit``)."""
    names = ["--units"] if alias is None else ["--units", alias]
    return click.option(
        *names,
        "units",
        default=default,
        required=required,
        show_default=default is not None,
        metavar="N|A-B|all",
        help=help,
    )


def progress_option(f: F) -> F:
    """``--no-progress``: hide progress bars (they go to stderr, only on a terminal)."""
    return click.option("--no-progress", is_flag=True, help="Hide progress bars.")(f)


def json_option(f: F) -> F:
    """``--json``: print the command's summary as JSON on stdout (and nothing else there)."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."
    )(f)


def out_option(help: str) -> Callable[[F], F]:
    """``--out DIR``: where the command writes its files."""
    return click.option(
        "--out", "out_dir", type=click.Path(file_okay=False), required=True, help=help
    )


# ---- helpers --------------------------------------------------------------------------------


def preprocessing_from_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the preprocessing flags out of a command's kwargs into a partial spec dict."""
    spec: dict[str, Any] = {}
    preset = kw.pop("preset", None)
    if preset:
        spec["preset"] = preset
    for key in _PREPROCESSING[1:]:
        value = kw.pop(key, None)
        if value is not None:
            spec[key] = value
    return spec


def open_model(path: str, kw: dict[str, Any], *, check_parity: bool = False) -> Model:
    """Load MODEL with the preprocessing flags popped from ``kw``."""
    from pyanalyzer.model import load_model

    return load_model(path, preprocessing_from_flags(kw), check_parity=check_parity)


def open_store(store_path: str | None) -> Store:
    """The result store (nothing is created until something is written)."""
    from pyanalyzer.store import Store

    return Store(store_path)


def concepts_dir(store: Store) -> Path:
    """Where concept datasets and their decoded-label caches live: beside the store."""
    return Path(store.path).parent / "concepts"


def report(
    analysis: Analysis,
    result: Any,
    *,
    as_json: bool,
    lines: Sequence[str],
    out_dir: str | None = None,
    files: Sequence[Any] = (),
) -> None:
    """Finish a command: with ``--json`` one JSON document on stdout (the method, whether it
    came from the store or resumed, the files written and the result's summary); else the
    human ``lines``, each ending with where the result came from when it was not computed."""
    if as_json:
        doc = {
            "method": analysis.method,
            "from_store": analysis.from_store,
            "resumed": analysis.resumed,
            "out": out_dir,
            "files": [str(p) for p in files],
            "summary": result.summary(),
        }
        click.echo(json.dumps(doc, indent=2))
        return
    for line in lines:
        click.echo(line)
