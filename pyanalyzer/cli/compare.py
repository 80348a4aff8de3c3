"""``pyanalyzer compare``: two versions of a model, unit by unit and in their outputs
(:class:`~pyanalyzer.Comparison`)."""

from __future__ import annotations

import os
from typing import Any

import click

from pyanalyzer.cli.options import (
    Outputs,
    checkpoint_option,
    concept_data_options,
    concepts_dir,
    dissection_options,
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

__all__ = ["compare"]


@click.command()
@concept_data_options
@layers_option(
    help="Layer pair: NAME (the layer of that name in both models) or NAME_A:NAME_B (A's "
    "layer against B's); aliases or ONNX names; repeatable."
)
@out_option("Folder for the HTML page (index.html) and summary.json.")
@dissection_options(top_k_help="Strongest images the dissections keep per unit.")
@checkpoint_option
@progress_option
@json_option
@store_option
@click.option(
    "--no-store",
    is_flag=True,
    help="Compute everything again and store nothing (the synthetic concept dataset is still "
    "made beside the store).",
)
@model_options
@click.argument("model_b", metavar="MODEL_B", type=click.Path(dir_okay=True))
def compare(
    model: str,
    model_b: str,
    dataset: str | None,
    layers: tuple[str, ...],
    out_dir: str,
    quantile: float,
    iou_threshold: float,
    batch_size: int,
    top_k: int,
    n_images: int,
    seed: int,
    checkpoint_every: float,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    no_store: bool,
    **kw: Any,
) -> None:
    """Compare MODEL_B with MODEL (A): two versions of a model, e.g. a fine-tune or a model
    suspected of a backdoor.

    Units are matched across the two models by the Pearson correlation of their activations
    on the same images (the one-to-one matching of largest total correlation; Li et al.,
    "Convergent Learning", ICLR 2016); each layer is dissected in both models (Bau et al.,
    CVPR 2017), which shows the concepts B gained and lost and the matched units whose label
    changed; the outputs are compared on the same images (top-1 agreement, mean absolute
    difference of the softmax probabilities, agreement per class). The preprocessing flags
    apply to both models. Writes index.html and summary.json; results go to the store (both
    dissections too) unless --no-store.
    """  # fmt: skip
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.data.defaults import concept_dataset, scene_size
    from pyanalyzer.methods.compare import Comparison
    from pyanalyzer.report.compare import write_comparison

    # Everything is checked before anything is created (the dataset, the store, the report).
    progress = not no_progress
    outputs = Outputs()
    outputs.folder(out_dir, "output folder")
    store = open_store(store_path, write=not no_store)
    m = open_model(model, dict(kw))
    same_file = os.path.realpath(model) == os.path.realpath(model_b)
    other = m if same_file else open_model(model_b, dict(kw))
    method = Comparison(
        m, layers=list(layers), quantile=quantile, iou_threshold=iou_threshold, top_k=top_k,
        batch_size=batch_size, other=other, store=None if no_store else store,
        checkpoint_every=checkpoint_every, progress=progress,
    )  # fmt: skip
    concepts = concepts_dir(store)
    ds = None
    if dataset is not None:
        ds = BrodenDataset(dataset, cache_dir=concepts)
        method.prepare(ds)
    outputs.folder(concepts, "concept-data folder")  # the synthetic dataset, label caches
    with outputs.writing():
        if ds is None:
            size = scene_size(m.preprocessing)
            ds = concept_dataset(concepts, n_images, size, seed, progress=progress)
        result = method.run(ds)
        extra = {
            "model_a": str(m.path), "model_b": str(other.path), "dataset": str(ds.root),
            "dataset_digest": ds.digest, "parameters": method.resolved(),
            "from_store": method.from_store, "store": None if no_store else str(store.path),
        }  # fmt: skip
        paths = write_comparison(result, out_dir, extra=extra)
    lines = [_layer_line(r) for r in result.summary()["layers"]]
    out = result.outputs
    if out is None:
        lines.append(f"outputs: not compared ({result.outputs_note})")
    else:
        lines.append(
            f"outputs: top-1 agreement {100 * out.top1_agreement:.1f}% over {out.images} images, "
            f"mean |pA - pB| {out.mean_abs_diff:.4f}"
        )
    source = "answered from the store" if method.from_store else "computed"
    lines.append(f"{source}; report in {out_dir} ({len(paths)} files)")
    report(method, result, as_json=as_json, lines=lines, out_dir=out_dir,
           files=list(paths.values()))  # fmt: skip


def _layer_line(s: dict[str, Any]) -> str:
    def r(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    resized = ""
    if s["resized"]:
        (hb, wb), (ha, wa) = s["size_b"], s["size_a"]
        resized = f" (B resized {hb}x{wb} -> {ha}x{wa})"
    gained = ", ".join(s["gained"]) or "none"
    lost = ", ".join(s["lost"]) or "none"
    return (
        f"{s['alias_a']} vs {s['alias_b']}{resized}: {s['matched']} units matched "
        f"(A {s['units_a']}, B {s['units_b']}; {s['same_index']} to the same index), mean r "
        f"{r(s['mean_correlation'])}, median r "
        f"{r(s['median_correlation'])}; detectors {s['detectors_a']} -> {s['detectors_b']}; "
        f"gained: {gained}; lost: {lost}; labels changed: {len(s['changed'])}"
    )
