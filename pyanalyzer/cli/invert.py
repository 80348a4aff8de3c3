"""``pyanalyzer invert``: network inversion by optimisation or with a trained UpconvNet
decoder, and ``invert train`` (:class:`~pyanalyzer.OptimInversion`,
:class:`~pyanalyzer.UpconvInversion`, :class:`~pyanalyzer.UpconvTraining`)."""

from __future__ import annotations

import json
from typing import Any

import click

from pyanalyzer.cli.options import (
    Outputs,
    device_option,
    engine_options,
    json_option,
    layers_option,
    model_options,
    open_model,
    open_store,
    out_option,
    progress_option,
    report,
    store_option,
)
from pyanalyzer.cli.options import engine as run_on

__all__ = ["invert"]


class _ModelFirstGroup(click.Group):
    """``invert MODEL ...`` runs the inversion; ``invert train MODEL ...`` trains a decoder."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ModelFirstGroup)
def invert() -> None:
    """Network inversion: reconstruct an image from a layer's features.

    \b
    pyanalyzer invert MODEL --image FILE --layer NAME [--layer NAME ...] [--method optim|upconv] [--device auto|cpu|cuda] --out DIR
    pyanalyzer invert train MODEL --layer NAME [--images DIR] [--device auto|cpu|cuda]

    Mahendran & Vedaldi, CVPR 2015 (optim: regularised optimisation); Dosovitskiy & Brox,
    CVPR 2016 (upconv: a trained up-convolutional decoder, kept in the store).
    --device says where torch runs the optimisation, the decoder and its training (auto:
    CUDA when torch sees a GPU, else the CPU); the features that train and feed a decoder,
    and the reported errors, come from onnxruntime. The device is not part of what the store
    keys: a decoder trained on a GPU is found and used on a CPU, and the other way round.
    The options of the first form: `pyanalyzer invert MODEL --help`.
    """


@invert.command("run", hidden=True)
@click.option("--image", required=True, type=click.Path(), help="The image to reconstruct.")
@layers_option(help="Layer(s) to invert from; repeatable (one strip).")
@click.option(
    "--method",
    type=click.Choice(["optim", "upconv", "both"]),
    default="optim",
    show_default=True,
    help="Regularised optimisation, a trained decoder (invert train), or one row of each.",
)
@click.option(
    "--steps", type=int, default=None, help="Optimisation steps (optim; default: the method's)."
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adam"]),
    default="sgd",
    show_default=True,
    help="Momentum SGD with the authors' schedule, or Adam (optim).",
)
@click.option(
    "--jitter",
    type=int,
    default=0,
    show_default=True,
    help="Random shifts of up to this many pixels (optim).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Starting noise and jitter (optim)."
)
@out_option("Folder for the PNGs and metrics.json.")
@device_option(
    "Where torch runs the optimisation (optim) and the decoder (upconv); auto: CUDA when "
    "torch sees a GPU, else the CPU. Features for the decoder and the errors come from "
    "onnxruntime."
)
@engine_options
@progress_option
@json_option
@store_option
@model_options
def invert_run(
    model: str,
    image: str,
    layers: tuple[str, ...],
    method: str,
    steps: int | None,
    optimizer: str,
    jitter: int,
    seed: int,
    out_dir: str,
    device: str,
    engine: str,
    ray_address: str | None,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Reconstruct --image from each --layer; writes a strip PNG and metrics.json."""  # fmt: skip
    from pyanalyzer.data.images import ImageFiles
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.inversion import DecoderMissingError, OptimInversion, UpconvInversion
    from pyanalyzer.report.inversion import write_inversion

    if method == "upconv":  # a decoder is one forward pass: the optimiser's options do not apply
        ctx = click.get_current_context()
        given = [
            f"--{name}"
            for name in ("steps", "optimizer", "jitter", "seed")
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise UserInputError(
                f"{', '.join(given)} apply to --method optim or both, not to upconv"
            )
    # Everything is checked before anything is created (the store, the PNGs).
    outputs = Outputs()
    outputs.folder(out_dir, "output folder")
    store = open_store(store_path)
    m = open_model(model, kw)
    progress = not no_progress
    analyses: dict[str, Any] = {}
    if method in ("optim", "both"):
        options: dict[str, Any] = {
            "optimizer": optimizer,
            "seed": seed,
            "jitter": jitter,
            "device": device,
        }
        if steps is not None:
            options["steps"] = steps
        analyses["optim"] = OptimInversion(
            m, layers=list(layers), store=store, progress=progress, **options
        )
    if method in ("upconv", "both"):
        try:
            analyses["upconv"] = UpconvInversion(
                m, layers=list(layers), store=store, progress=progress, device=device
            )
        except DecoderMissingError as exc:  # say which command trains them, into this store
            where = f" --store {store_path}" if store_path else ""
            runs = "; ".join(
                f"`pyanalyzer invert train {model} --layer {alias}{where}`" for alias in exc.aliases
            )
            raise UserInputError(
                f"no decoder trained for {', '.join(exc.aliases)} of this model in "
                f"{store.path}: run {runs} first"
            ) from None
    image_source = ImageFiles([image])
    image_source.pixels(0, m.preprocessing)  # an unreadable image: one line, nothing written
    with outputs.writing(), run_on(engine, ray_address) as ex:
        if "optim" in analyses:  # the optimisation runs on a worker; a decoder is one pass
            analyses["optim"].executor = ex
        results = {name: a.run(image_source) for name, a in analyses.items()}
        files = write_inversion(results, out_dir)
    lines = [
        f"{name:6s} {alias:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in errs.items())
        for name, result in results.items()
        for alias, errs in result.errors().items()
    ]
    lines.append(f"strip and reconstructions in {out_dir}")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "method": "invert",
                    "from_store": {n: a.from_store for n, a in analyses.items()},
                    "out": out_dir,
                    "files": [str(p) for p in files],
                    "summary": {n: r.summary() for n, r in results.items()},
                },
                indent=2,
            )
        )
        return
    for line in lines:
        click.echo(line)


@invert.command("train")
@layers_option(multiple=False, help="The layer whose features the decoder inverts.")
@click.option(
    "--images", type=click.Path(), help="Training images (default: synthetic concept scenes)."
)
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the method's).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option(
    "Where torch trains the decoder; auto: CUDA when torch sees a GPU, else the CPU (the "
    "features come from onnxruntime). The stored decoder's weights are read on any device."
)
@progress_option
@json_option
@store_option
@model_options
def invert_train(
    model: str,
    layer: str,
    images: str | None,
    epochs: int | None,
    seed: int,
    device: str,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Train an UpconvNet decoder for --layer and keep it in the store (Dosovitskiy & Brox)."""  # fmt: skip
    from pyanalyzer.data.images import ImageFolder
    from pyanalyzer.methods.inversion import UpconvTraining

    store = open_store(store_path)  # the decoder is kept there: checked before anything runs
    m = open_model(model, kw)
    options: dict[str, Any] = {"seed": seed, "device": device}
    if epochs is not None:
        options["epochs"] = epochs
    training = UpconvTraining(m, layer=layer, store=store, progress=not no_progress, **options)
    source = ImageFolder(images) if images else None
    dec = training.run(source)
    line = f"decoder for {dec.alias} ready in {store.path} ({dec.describe()})"
    report(training, dec, as_json=as_json, lines=[line])
