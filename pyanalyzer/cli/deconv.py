"""``pyanalyzer deconv``: DeconvNet, guided backprop and saliency projections on an image, or
each unit's top-k patches beside their projections (:class:`~pyanalyzer.DeconvNet`,
:class:`~pyanalyzer.TopPatches`)."""

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

__all__ = ["deconv"]


@click.command()
@layers_option(multiple=False, help="Layer (alias or ONNX name).")
@units_option(default=None, required=True, alias="--unit", help="Unit(s): 5, 0-7, 1,4,9 or all.")
@click.option("--image", type=click.Path(), help="Project the unit(s) on this image.")
@click.option(
    "--images", type=click.Path(), help="Scan this folder for each unit's top-k images and patches."
)
@click.option(
    "--method",
    type=click.Choice(["deconv", "guided", "saliency"]),
    default="deconv",
    show_default=True,
)
@click.option(
    "--mode",
    type=click.Choice(["max", "map", "topk"]),
    default="max",
    show_default=True,
    help="With --image: project the strongest activation, the whole map, or the top-k.",
)
@click.option(
    "--top-k",
    type=int,
    default=9,
    show_default=True,
    help="Top activations per unit (one per image).",
)
@click.option(
    "--n-images",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Synthetic scenes scanned when neither --image nor --images is given.",
)
@out_option("Folder for the PNGs.")
@device_option(
    "Where the projections run (the torch walk and the unpooling kernel); auto: CUDA when "
    "available, else the CPU."
)
@engine_options
@progress_option
@json_option
@store_option
@model_options
def deconv(
    model: str,
    layer: str,
    units: str,
    image: str | None,
    images: str | None,
    method: str,
    mode: str,
    top_k: int,
    n_images: int,
    out_dir: str,
    device: str,
    engine: str,
    ray_address: str | None,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Project units back to pixels: DeconvNet, guided backprop or saliency.

    Zeiler & Fergus 2014 (deconv), Springenberg et al. 2015 (guided), Simonyan et al. 2013
    (saliency). With --image, writes the image beside each unit's projection. Otherwise scans
    --images (or synthetic scenes) for each unit's --top-k strongest activations, one per
    image, and writes a montage per unit of the receptive-field patches beside their
    projections, plus one per layer. Results are cached in the store (a repeated run scans
    nothing).
    """  # fmt: skip
    from pyanalyzer.data.defaults import SyntheticImages
    from pyanalyzer.data.images import ImageFiles, ImageFolder
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.deconvnet import PROJECTIONS
    from pyanalyzer.methods.patches import TopPatches
    from pyanalyzer.report import write_result

    if image and images:
        raise UserInputError("give --image or --images, not both")
    # Everything is checked before anything is created (the store, the PNGs).
    outputs = Outputs()
    outputs.folder(out_dir, "output folder")
    store = open_store(store_path)
    m = open_model(model, kw)
    progress = not no_progress
    if image:
        analysis: Any = PROJECTIONS[method](
            m, layer=layer, units=units, mode=mode, k=top_k, device=device, store=store,
            progress=progress,
        )  # fmt: skip
        source: Any = ImageFiles([image])
        source.pixels(0, m.preprocessing)  # an unreadable image: one line, nothing written
    else:
        analysis = TopPatches(
            m, layer=layer, units=units, k=top_k, projection=method, device=device,
            store=store, progress=progress,
        )  # fmt: skip
        if images:
            source = ImageFolder(images)
        else:
            source = SyntheticImages.for_model(m.preprocessing, n_images)
    if image and engine != "local":
        raise UserInputError("--engine ray applies to the top-k scan (--images), not to --image")
    with outputs.writing(), run_on(engine, ray_address) as ex:
        analysis.executor = ex
        result = analysis.run(source)
        if image:
            written = write_result(result, out_dir)
            chosen = [int(u) for u in result.units]
        else:
            chosen = analysis.units
            written = write_result(result, out_dir, source=source)
    alias = m.spatial_layer(layer).alias
    lines = [f"{alias}: {len(chosen)} unit(s), {method}; wrote {len(written)} PNG(s) to {out_dir}"]
    if analysis.from_store:
        lines[0] += " (from the store)"
    report(analysis, result, as_json=as_json, lines=lines, out_dir=out_dir, files=written)
