"""The option groups every command shares, defined once, and the helpers commands share.

* :func:`model_options` — the MODEL argument and the preprocessing flags;
* :func:`store_option`, :func:`layers_option`, :func:`units_option`, :func:`progress_option`,
  :func:`json_option`, :func:`out_option`; :class:`FiniteFloat`, the type of float options;
* :func:`open_model`, :func:`open_store`, :func:`concepts_dir`, :class:`Outputs`,
  :func:`report` (the summary line or the JSON document of a command's result).

Every command checks all its input first (options, paths, the model, the analysis built from
them, which checks its parameters against the model) and only then creates anything: the
store (:func:`open_store` checks it can be written), output folders (:class:`Outputs` checks
they can be created, sweeps what killed runs left in them, and removes the folders it made
when the command fails), datasets, reports.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from pyanalyzer.analysis import Analysis
    from pyanalyzer.executor import Executor
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Store

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "FiniteFloat",
    "Outputs",
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


class FiniteFloat(click.ParamType):
    """A float option that must be finite (no nan, inf) and, optionally, at least ``minimum``;
    a bad value is a one-line usage error before anything runs."""

    name = "float"

    def __init__(self, minimum: float | None = None) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        want = "a finite number" + ("" if self.minimum is None else f" >= {self.minimum:g}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"must be {want}, got {value!r}", param, ctx)
        if not math.isfinite(number) or (self.minimum is not None and number < self.minimum):
            self.fail(f"must be {want}, got {value!r}", param, ctx)
        return number


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
        click.option("--scale", type=FiniteFloat(), metavar="X", help="Factor applied to 0-255 pixels."),
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
    # No default=None: click >= 8.3 takes an explicit None default as a given value, and a
    # required option would then not be reported missing.
    extra: dict[str, Any] = {} if default is None else {"default": default, "show_default": True}
    return click.option(*names, "units", required=required, metavar="N|A-B|all", help=help, **extra)


def device_option(help: str) -> Callable[[F], F]:
    """``--device auto|cpu|cuda``: where the compiled kernels run."""
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help=help,
    )


def concept_data_options(f: F) -> F:
    """``--dataset DIR``, or the default synthetic concept dataset's ``--n-images`` and
    ``--seed``."""
    return _apply(
        f,
        [
            click.option(
                "--dataset",
                type=click.Path(),
                help="A Broden-format dataset folder (default: synthetic concepts made on the "
                "fly).",
            ),
            click.option(
                "--n-images",
                type=click.IntRange(min=1),
                default=1000,
                show_default=True,
                help="Images of the default synthetic dataset.",
            ),
            click.option(
                "--seed",
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="Seed of the default synthetic dataset.",
            ),
        ],
    )


def dissection_options(*, top_k_help: str = "Strongest images kept per unit.") -> Callable[[F], F]:
    """The dissection's ``--quantile``, ``--iou-threshold``, ``--batch-size`` and ``--top-k``
    (``dissect``, and ``compare``'s dissections of both models)."""

    def apply(f: F) -> F:
        return _apply(
            f,
            [
                click.option(
                    "--quantile",
                    type=FiniteFloat(),
                    default=0.005,
                    show_default=True,
                    help="Top fraction of each unit's activations that counts as firing.",
                ),
                click.option(
                    "--iou-threshold",
                    type=FiniteFloat(),
                    default=0.04,
                    show_default=True,
                    help="A unit is a detector when its best IoU exceeds this.",
                ),
                click.option(
                    "--batch-size",
                    type=int,
                    default=64,
                    show_default=True,
                    help="Images per pass.",
                ),  # fmt: skip
                click.option("--top-k", type=int, default=10, show_default=True, help=top_k_help),
            ],
        )

    return apply


def checkpoint_option(f: F) -> F:
    """``--checkpoint-every SECONDS`` between resumable checkpoints in the store."""
    return click.option(
        "--checkpoint-every",
        type=FiniteFloat(minimum=0),
        default=2.0,
        show_default=True,
        help="Seconds between resumable checkpoints in the store (0: every batch).",
    )(f)


def engine_options(f: F) -> F:
    """``--engine local|ray`` and ``--ray-address ADDR``: where the work's shards run."""
    return _apply(
        f,
        [
            click.option(
                "--engine",
                type=click.Choice(["local", "ray"]),
                default="local",
                show_default=True,
                help="Run in this process, or sharded over a Ray cluster (same results).",
            ),
            click.option(
                "--ray-address",
                metavar="ADDR",
                help="The Ray cluster of --engine ray (default: start a local Ray here).",
            ),
        ],
    )


@contextlib.contextmanager
def engine(name: str, address: str | None) -> Iterator[Executor | None]:
    """The executor of ``--engine``/``--ray-address`` for the block (None: the local engine,
    the analysis' own path); a Ray started for it is stopped after it."""
    from pyanalyzer.errors import UserInputError

    if name == "local":
        if address:
            raise UserInputError("--ray-address applies to --engine ray")
        yield None
        return
    from pyanalyzer.executor import executor

    with executor(name, address) as ex:
        yield ex


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
    from pyanalyzer.cli import verbose
    from pyanalyzer.model import load_model

    with contextlib.suppress(Exception):  # onnxruntime's own log goes to stderr directly
        import onnxruntime

        onnxruntime.set_default_logger_severity(2 if verbose() else 3)
    return load_model(path, preprocessing_from_flags(kw), check_parity=check_parity)


def open_store(store_path: str | None, *, write: bool = True) -> Store:
    """The result store; nothing is created until something is written.

    Args:
        write: the command may store results: check now, without writing, that it can
            (:meth:`~pyanalyzer.store.Store.check_writable`).

    Raises:
        StoreError: one line: a device, a FIFO, an empty path, a foreign or corrupt store, a
            read-only one, or one that cannot be created.
    """
    from pyanalyzer.store import Store

    store = Store(store_path)
    if write:
        store.check_writable()
    return store


def concepts_dir(store: Store) -> Path:
    """Where concept datasets and their decoded-label caches live: beside the store."""
    return Path(store.path).parent / "concepts"


class Outputs:
    """The folders a command writes into: checked before anything is created, swept of what
    killed runs left there when the writing starts, and removed again when this run created
    them and the command fails while they are still empty.

    ::

        outputs = Outputs()
        out = outputs.folder(out_dir, "output folder")   # checks only
        ...                                              # every other check
        with outputs.writing():                          # sweeps, then the writes
            write_result(result, out)
    """

    def __init__(self) -> None:
        self._made: list[Path] = []  # folders missing before the run, outermost first
        self._sweeps: list[tuple[Path, str | None, bool]] = []

    def folder(self, path: str | os.PathLike[str], what: str, *, work_dirs: bool = False) -> Path:
        """Check that ``path`` is a folder that exists and is writable, or can be created
        (nothing is created); its stale temporary files (and those of it in its parent) are
        swept when :meth:`writing` starts.

        Args:
            what: what it is, for the message (``"output folder"``).
            work_dirs: the folder holds a dissection report (whose hidden ``.tmp-*`` work
                folders are swept too).

        Raises:
            UserInputError: one line (see :func:`pyanalyzer._io.check_dir_creatable`).
        """
        from pyanalyzer._io import check_dir_creatable

        for p in check_dir_creatable(path, what):
            if p not in self._made:
                self._made.append(p)
        folder = Path(path)
        absolute = Path(os.path.abspath(folder))
        self._sweeps.append((absolute, None, work_dirs))
        self._sweeps.append((absolute.parent, absolute.name, False))
        return folder

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Sweep the stale temporary files of killed runs, run the block (the writes), and on
        any exception remove the folders this run created that are still empty."""
        from pyanalyzer._io import sweep_stale_temps

        try:
            for folder, target, work_dirs in self._sweeps:
                sweep_stale_temps(folder, target=target, work_dirs=work_dirs)
            yield
        except BaseException:
            for p in reversed(self._made):
                with contextlib.suppress(OSError):
                    p.rmdir()  # only when empty
            raise


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
