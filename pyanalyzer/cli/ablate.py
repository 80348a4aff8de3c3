"""``pyanalyzer ablate``: unit ablation (:class:`~pyanalyzer.Ablation`)."""

from __future__ import annotations

from typing import Any

import click

from pyanalyzer.cli.options import (
    Outputs,
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

__all__ = ["ablate"]


@click.command()
@layers_option(multiple=False, help="Layer whose units are ablated (alias or ONNX name).")
@units_option(default="all", help="Units ablated one at a time: all, 5, 0-7 or 1,4,9.")
@click.option("--images", type=click.Path(), help="A folder of images to evaluate on.")
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(),
    help="With --images: a CSV of 'image,label' rows (class number or name) for accuracies.",
)
@click.option(
    "--dataset",
    type=click.Path(),
    help="Evaluate on the images of a Broden-format dataset (no class labels).",
)
@click.option(
    "--n-images",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Synthetic scenes when neither --images nor --dataset is given (labelled with their "
    "shape when the model's classes are the synthetic ones, as the default model's).",
)
@click.option(
    "--output",
    "output_layer",
    help="The class output (alias or ONNX name); default: the model's first [N, classes] output.",
)
@click.option(
    "--top",
    type=int,
    default=5,
    show_default=True,
    help="Per class, ablate its top units by effect together (0: no sets).",
)
@click.option("--joint", help="A set of units to ablate together (5, 0-7, 1,4,9).")
@click.option(
    "--batch-size",
    type=int,
    default=32,
    show_default=True,
    help="Images per pass of the network before the layer.",
)
@click.option(
    "--unit-batch",
    type=int,
    default=16,
    show_default=True,
    help="Ablations per pass of the network after the layer.",
)
@out_option("Folder for index.html, units.csv, classes.csv and summary.json.")
@progress_option
@json_option
@store_option
@model_options
def ablate(
    model: str,
    layer: str,
    units: str,
    images: str | None,
    labels_file: str | None,
    dataset: str | None,
    n_images: int,
    output_layer: str | None,
    top: int,
    joint: str | None,
    batch_size: int,
    unit_batch: int,
    out_dir: str,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Unit ablation: does the model use a unit for its decision?

    Bau et al., PNAS 2020; Zhou et al. 2018. Each unit of --layer is set to zero (a mask input
    added after the layer in the ONNX graph, so one onnxruntime session serves every unit),
    and the model's output is compared with the intact model's: per unit the change of every
    class's mean score and probability, the fraction of images whose top-1 class changes, the
    accuracy drop (with labels); per class the units it relies on most, with their concept
    labels when a dissection of the layer is in the store; and each class's top units (--top)
    and the --joint set ablated together. Writes index.html, units.csv, classes.csv and
    summary.json; the result is cached in the store.
    """  # fmt: skip
    from pyanalyzer.data.defaults import SyntheticImages
    from pyanalyzer.data.images import ImageFolder
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.ablation import Ablation, AblationInputs
    from pyanalyzer.report.ablation import write_ablation

    if images and dataset:
        raise UserInputError("give --images or --dataset, not both")
    if labels_file and not images:
        raise UserInputError("--labels goes with --images (the labels of that folder's images)")
    outputs = Outputs()
    outputs.folder(out_dir, "output folder")
    store = open_store(store_path)
    m = open_model(model, kw)
    method = Ablation(
        m, layer=layer, units=units, output=output_layer, top=top, joint=joint,
        batch_size=batch_size, unit_batch=unit_batch, store=store, progress=not no_progress,
    )  # fmt: skip
    inputs: Any
    if images:
        folder = ImageFolder(images)
        labels = None
        if labels_file:
            from pyanalyzer.data.labels import read_labels

            labels = read_labels(labels_file, folder.root, folder.paths, method.class_names)
        inputs = AblationInputs(folder, labels)
    elif dataset:
        from pyanalyzer.cli.options import concepts_dir
        from pyanalyzer.data.broden import BrodenDataset

        inputs = BrodenDataset(dataset, cache_dir=concepts_dir(store))
    else:
        inputs = SyntheticImages.for_model(m.preprocessing, n_images)  # labelled when the
        # model's classes are the scenes' (see Ablation.prepare)
    method.prepare(inputs)  # bad inputs: one line before anything is written
    with outputs.writing():
        result = method.run(inputs)
        extra = {
            "model_file": str(m.path), "model_sha256": m.sha256,
            "preprocessing": m.preprocessing.to_dict(), "parameters": method.resolved(),
        }  # fmt: skip
        paths = write_ablation(result, out_dir, model=m, extra=extra)
    lines = [
        f"{result.alias}: {len(result.units)} unit(s) ablated on {result.n_images} image(s); "
        f"intact {'accuracy' if result.labels_source != 'predicted' else 'top-1 (as labels)'} "
        f"{result.base_accuracy:.3f}"
    ]
    for k in range(len(result.class_names)):
        if result.class_images[k]:
            lines.append("  " + result.describe_class(k))
    for j, s in enumerate(result.sets):
        lines.append(
            f"  {s['name']} ablated together: {result.set_flipped[j]:.1%} of top-1 changed, "
            f"accuracy {result.base_accuracy:.3f} -> {result.set_accuracy[j]:.3f}"
        )
    source = "answered from the store" if method.from_store else "computed"
    lines.append(f"{source}; report in {out_dir}/index.html")
    report(method, result, as_json=as_json, lines=lines, out_dir=out_dir,
           files=list(paths.values()))  # fmt: skip
