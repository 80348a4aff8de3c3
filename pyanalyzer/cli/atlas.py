"""``pyanalyzer atlas``: a browsable static site per model that joins the four methods unit by
unit (:class:`~pyanalyzer.Atlas`, :func:`~pyanalyzer.write_atlas`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from pyanalyzer.cli.options import (
    FiniteFloat,
    Outputs,
    concept_data_options,
    concepts_dir,
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

__all__ = ["atlas"]

# The options a site remembers in its manifest: extending the site without them reuses them.
_SETTINGS = (
    "dataset", "n_images", "seed", "images", "steps", "top_k", "projection", "samples",
    "invert_steps", "quantile", "iou_threshold",
)  # fmt: skip


@click.command()
@layers_option(
    required=False,
    help="Layer (alias or ONNX name); repeatable. Layers already in the site are kept.",
)
@click.option(
    "--units",
    default="all",
    show_default=True,
    metavar="N|A-B|all",
    help="Units of the given layers (added to those the site already shows).",
)
@concept_data_options
@click.option(
    "--images",
    type=click.Path(),
    help="Image folder scanned for top patches and sampled for the inversion strips "
    "(default: the concept dataset's images).",
)
@out_option("The site's folder (new, empty, or an atlas of this model to extend).")
@click.option(
    "--steps", type=click.IntRange(min=1), default=256, show_default=True,
    help="Activation maximization steps.",
)  # fmt: skip
@click.option(
    "--top-k", type=click.IntRange(min=1), default=9, show_default=True,
    help="Top patches per unit.",
)  # fmt: skip
@click.option(
    "--projection",
    type=click.Choice(["deconv", "guided", "saliency", "none"]),
    default="deconv",
    show_default=True,
    help="How the top patches are projected back to pixels.",
)
@click.option(
    "--samples", type=click.IntRange(min=0, max=16), default=4, show_default=True,
    help="Images of each layer's inversion strip (0: none).",
)  # fmt: skip
@click.option(
    "--invert-steps", type=click.IntRange(min=1), default=200, show_default=True,
    help="Optimisation steps of the inversion strips.",
)  # fmt: skip
@click.option(
    "--quantile", type=FiniteFloat(), default=0.005, show_default=True,
    help="Dissection: top fraction of each unit's activations that counts as firing.",
)  # fmt: skip
@click.option(
    "--iou-threshold", type=FiniteFloat(), default=0.04, show_default=True,
    help="Dissection: a unit is a detector when its best IoU exceeds this.",
)  # fmt: skip
@device_option(
    "Where every part runs: the IoU tally, the projections, activation maximization and the "
    "inversion (auto: CUDA where available)."
)
@engine_options
@progress_option
@json_option
@store_option
@model_options
def atlas(
    model: str,
    layers: tuple[str, ...],
    units: str,
    out_dir: str,
    device: str,
    engine: str,
    ray_address: str | None,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Build a browsable atlas of MODEL: every unit of the chosen layers on its own page.

    For each layer: network dissection (its concepts and IoU, masks over its top images), the
    top-k image patches of each unit beside their DeconvNet projections, the image each
    channel prefers (activation maximization), and an inversion strip (sample images
    reconstructed from the layer). Writes a static site that opens from file:// with no
    network: index.html (the model card and the layers), layers/<alias>/index.html (every
    unit as a card, sortable by unit, IoU or label, filterable by concept category) and
    layers/<alias>/units/<n>.html (one page per unit).

    Every part comes from the store when it is there. Running the command again on the same
    --out adds the new layers and units to the site and computes only those; options not
    given are taken from the site's last build.
    """  # fmt: skip
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.data.defaults import concept_dataset, scene_size
    from pyanalyzer.data.images import ImageFolder
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.atlas import Atlas, AtlasInputs
    from pyanalyzer.report.atlas import read_manifest, write_atlas
    from pyanalyzer.units import select_units

    started = time.monotonic()
    ctx = click.get_current_context()
    given = {k: kw.pop(k) for k in _SETTINGS}
    # Everything is checked before anything is created (the dataset, the store, the site).
    outputs = Outputs()
    outputs.folder(out_dir, "atlas folder", work_dirs=True)
    manifest = read_manifest(out_dir)
    settings = dict(given)
    if manifest is not None:  # options not given: as the site was last built
        saved = manifest.get("settings") or {}
        for name in _SETTINGS:
            source = ctx.get_parameter_source(name)
            if source is not click.core.ParameterSource.COMMANDLINE and name in saved:
                settings[name] = saved[name]
    if not layers and ctx.get_parameter_source("units") is click.core.ParameterSource.COMMANDLINE:
        raise UserInputError("--units applies to the --layer options given with it")
    if not layers and manifest is None:
        raise UserInputError("give at least one --layer (the site holds none yet)")
    store = open_store(store_path)
    m = open_model(model, kw)
    if manifest is not None and manifest.get("model", {}).get("sha256") != m.sha256:
        raise UserInputError(
            f"{out_dir} holds the atlas of another model "
            f"({manifest.get('model', {}).get('file')}); give another --out"
        )
    chosen: dict[str, list[int]] = {}
    for entry in (manifest or {}).get("layers", []):  # the site's layers and units first
        info = m.spatial_layer(str(entry["name"]))
        chosen[info.name] = sorted({int(u) for u in entry["units"]})
    for name in layers:
        info = m.spatial_layer(name)
        new = select_units(units, int(info.channels or 0))
        chosen[info.name] = sorted(set(chosen.get(info.name, [])) | set(new))
    progress = not no_progress
    method = Atlas(
        m,
        layers=list(chosen),
        units=chosen,
        samples=settings["samples"],
        dissect={"quantile": settings["quantile"], "iou_threshold": settings["iou_threshold"],
                 "device": device},
        patches={"k": settings["top_k"], "projection": settings["projection"], "device": device},
        actmax={"steps": settings["steps"], "device": device},
        invert={"steps": settings["invert_steps"], "device": device},
        store=store,
        progress=progress,
    )  # fmt: skip
    concepts = concepts_dir(store)
    ds: Any = None
    if settings["dataset"] is not None:
        ds = BrodenDataset(settings["dataset"], cache_dir=concepts)
        method.prepare(AtlasInputs(ds))
    images = ImageFolder(settings["images"]) if settings["images"] is not None else None
    if images is not None and len(images) == 0:
        raise UserInputError(f"--images {settings['images']}: no images found")
    outputs.folder(concepts, "concept-data folder")
    for key in ("dataset", "images"):  # remembered as absolute paths
        if settings[key] is not None:
            settings[key] = str(Path(settings[key]).resolve())
    with outputs.writing():
        if ds is None:
            size = scene_size(m.preprocessing)
            ds = concept_dataset(
                concepts, settings["n_images"], size, settings["seed"], progress=progress
            )
        with run_on(engine, ray_address) as ex:  # the dissection and actmax parts' shards
            method.executor = ex
            result = method.run(AtlasInputs(ds, images))
        written = write_atlas(
            result, out_dir, model=m, dataset=ds, source=images, settings=settings,
            progress=progress,
        )  # fmt: skip
    lines = []
    for layer in result.layers:
        s = layer.summary()
        lines.append(
            f"{layer.alias}: {len(layer.units)}/{s['channels']} units shown; "
            f"{s['detectors']} detectors covering {s['unique_concepts']} concepts"
        )
    computed = len(result.computed)
    lines.append(
        f"atlas of {m.path.name}: {len(result.layers)} layer(s); {computed} part(s) computed, "
        f"{len(result.parts) - computed} from the store; {written['pages']} pages in "
        f"{written['index']} ({time.monotonic() - started:.1f} s)"
    )
    report(method, result, as_json=as_json, lines=lines, out_dir=out_dir,
           files=[written["index"]])  # fmt: skip
