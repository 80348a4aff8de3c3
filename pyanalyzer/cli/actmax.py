"""``pyanalyzer actmax``: activation maximization (:class:`~pyanalyzer.ActivationMaximization`)."""

from __future__ import annotations

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
    units_option,
)
from pyanalyzer.cli.options import engine as run_on

__all__ = ["actmax"]

COLOR_IMAGES = 1000
"""``actmax --color-from``: the colour covariance is estimated from at most this many images."""


@click.command()
@layers_option(
    multiple=False, required=False,
    help="Layer (alias or ONNX name); optional for --objective class.",
)  # fmt: skip
@units_option(help="Units (classes for --objective class, rows of --direction for direction).")
@click.option(
    "--objective",
    type=click.Choice(["channel", "neuron", "class", "direction"]),
    default="channel",
    show_default=True,
)
@click.option(
    "--direction",
    "direction_file",
    type=click.Path(),
    help="For --objective direction: a .npy vector [C] or matrix [K, C] over the layer's "
    "channels, or a text file with one direction per line; one image per direction.",
)
@click.option(
    "--param",
    type=click.Choice(["fft", "pixel"]),
    default="fft",
    show_default=True,
    help="Image parametrization.",
)
@click.option(
    "--regularizers",
    default="lucid",
    show_default=True,
    help="lucid (transforms only), yosinski1..yosinski4 (pixel only), none.",
)
@click.option(
    "--color-from",
    type=click.Path(),
    metavar="DIR",
    help="With --param fft: decorrelate colours with the RGB covariance of the images in DIR "
    f"(at most {COLOR_IMAGES}, by path; default: ImageNet's, as lucid).",
)
@click.option(
    "--start",
    type=click.Choice(["noise", "mean"]),
    help="Start image: the mean image plus small noise, or the mean image alone "
    "(default: the regularizer set's; noise for lucid).",
)
@click.option("--steps", type=int, default=256, show_default=True)
@click.option("--size", type=int, help="Image size (default: the model's input size).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--reference",
    type=click.Path(),
    help="Image folder: also report each unit's activation relative to its maximum there.",
)
@click.option(
    "--batch-size",
    type=int,
    default=64,
    show_default=True,
    help="Units optimised together in one batch (more units: several batches).",
)
@click.option(
    "--one-by-one", is_flag=True, help="Optimise units one after another instead of in batches."
)
@device_option(
    "Where torch optimises the images: auto (CUDA when torch sees a GPU, else the CPU), cpu "
    "or cuda. Results agree across devices to float rounding."
)
@out_option("Folder for the PNGs.")
@engine_options
@progress_option
@json_option
@store_option
@model_options
def actmax(
    model: str,
    layer: str | None,
    units: str,
    objective: str,
    direction_file: str | None,
    param: str,
    regularizers: str,
    color_from: str | None,
    start: str | None,
    steps: int,
    size: int | None,
    seed: int,
    reference: str | None,
    batch_size: int,
    one_by_one: bool,
    device: str,
    out_dir: str,
    engine: str,
    ray_address: str | None,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Activation maximization: the input each unit, channel or class prefers.

    Erhan et al. 2009, Simonyan et al. 2013, Yosinski et al. 2015, Olah et al. 2017 (lucid).
    The requested units are optimised together (in batches of --batch-size), one image per
    unit. Writes a PNG per unit and a montage per layer; results are cached in the store.

    \b
    --objective channel    a channel's mean over positions (default)
    --objective neuron     a channel at the centre position
    --objective class      a class logit (before any softmax); --units are classes
    --objective direction  a direction in the layer's channel space (--direction FILE);
                           --units are the file's rows
    """  # fmt: skip
    import numpy as np

    from pyanalyzer.data.images import ImageFolder
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.actmax import (
        ActivationMaximization,
        color_correlation_from_images,
        load_directions,
    )
    from pyanalyzer.report.actmax import write_actmax

    if direction_file is not None and objective != "direction":
        raise UserInputError("--direction is used with --objective direction only")
    if objective == "direction" and direction_file is None:
        raise UserInputError("--objective direction needs --direction FILE (.npy or text)")
    if color_from is not None and param != "fft":
        raise UserInputError(
            "--color-from applies to --param fft (the pixel one has no colour basis)"
        )
    # Everything is checked before anything is created (the store, the PNGs); the colour
    # statistics of --color-from are computed once the parameters are known to fit the model.
    outputs = Outputs()
    outputs.folder(out_dir, "output folder")
    store = open_store(store_path)
    directions = None if direction_file is None else load_directions(direction_file)
    m = open_model(model, kw)
    options: dict[str, Any] = dict(
        layer=layer, units=units, objective=objective, param=param, regularizers=regularizers,
        steps=steps, size=size, seed=seed, batch=not one_by_one, batch_size=batch_size,
        directions=directions, start=start, device=device, store=store,
        progress=not no_progress,
    )  # fmt: skip
    method = ActivationMaximization(m, **options)
    source = ImageFolder(reference) if reference else None
    if color_from is not None:
        color = color_correlation_from_images(
            ImageFolder(color_from), m.preprocessing, max_images=COLOR_IMAGES
        )
        method = ActivationMaximization(m, color=color, **options)
    with outputs.writing(), run_on(engine, ray_address) as ex:
        method.executor = ex
        result = method.run(source)
        files = write_actmax(result, out_dir)
    rel = result.relative
    noun = {"class": "class(es)", "direction": "direction(s)"}.get(objective, "unit(s)")
    resumed = getattr(method, "resumed_units", 0) if method.resumed else 0
    line = (
        f"{result.alias}: {len(result.units)} {noun}, {objective}; mean activation reached "
        f"{float(result.reached.mean()):.3g} (start image {float(result.start.mean()):.3g}"
        + (f", {float(np.nanmean(rel)):.2f}x the reference maximum" if rel is not None else "")
        + f"); {len(files)} PNG(s) in {out_dir}"
        + (" (from the store)" if method.from_store else "")
        + (f" ({resumed} resumed from a checkpoint)" if resumed else "")
    )
    report(method, result, as_json=as_json, lines=[line], out_dir=out_dir, files=files)
