"""``pyanalyzer dissect``: network dissection and Net2Vec (:class:`~pyanalyzer.Dissection`)."""

from __future__ import annotations

from typing import Any

import click

from pyanalyzer.cli.options import (
    Outputs,
    checkpoint_option,
    concept_data_options,
    concepts_dir,
    device_option,
    dissection_options,
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

__all__ = ["dissect"]


@click.command()
@concept_data_options
@layers_option(help="Layer to dissect (alias or ONNX name); repeatable.")
@out_option("Folder for the CSV, JSON and HTML reports.")
@dissection_options()
@device_option("Where the IoU tally and the Net2Vec training (--net2vec) run.")
@click.option(
    "--net2vec",
    "net2vec",
    multiple=True,
    metavar="CONCEPT",
    help="Learn a Net2Vec filter combination for this concept (name or number); repeatable.",
)
@click.option(
    "--compositional",
    is_flag=True,
    help="Also explain every unit by its best formula of concepts (AND, OR, AND NOT) by beam "
    "search (Mu & Andreas 2020), shown beside the labels.",
)
@click.option(
    "--formula-length",
    type=int,
    default=None,
    help="With --compositional: the longest formula (one pass over the dataset each)  [default: 3]",
)
@click.option(
    "--beam",
    type=int,
    default=None,
    help="With --compositional: formulas kept per unit at each length  [default: 5]",
)
@checkpoint_option
@engine_options
@progress_option
@json_option
@store_option
@model_options
def dissect(
    model: str,
    dataset: str | None,
    layers: tuple[str, ...],
    out_dir: str,
    quantile: float,
    iou_threshold: float,
    batch_size: int,
    top_k: int,
    device: str,
    net2vec: tuple[str, ...],
    compositional: bool,
    formula_length: int | None,
    beam: int | None,
    n_images: int,
    seed: int,
    checkpoint_every: float,
    engine: str,
    ray_address: str | None,
    no_progress: bool,
    as_json: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Network dissection: align every unit of the chosen layers with concepts by IoU.

    Bau et al., "Network Dissection", CVPR 2017 (Net2Vec: Fong & Vedaldi, CVPR 2018). Writes
    per layer a tally CSV with NetDissect's columns, an HTML page ("X/Y units covering Z
    concepts with IoU >= t", detectors per category, each unit's top images with its mask),
    and summary.json. With --compositional, each unit's best formula of concepts (Mu & Andreas,
    NeurIPS 2020; IoU over all pixels) is shown beside its label and appended to the CSV.
    Results go to the store: the same command answers from it, and a killed run started again
    resumes from its last checkpoint.
    """  # fmt: skip
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.data.defaults import concept_dataset, scene_size
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.dissection import Compositional, Dissection
    from pyanalyzer.report.dissection import write_dissection

    # Everything is checked before anything is created (the dataset, the store, the reports).
    progress = not no_progress
    outputs = Outputs()
    outputs.folder(out_dir, "output folder", work_dirs=True)
    store = open_store(store_path)
    m = open_model(model, kw)
    if engine == "ray" and net2vec:
        raise UserInputError("--net2vec runs on the local engine only")
    method = Dissection(
        m, layers=list(layers), quantile=quantile, iou_threshold=iou_threshold,
        batch_size=batch_size, top_k=top_k, device=device, net2vec=list(net2vec),
        store=store, checkpoint_every=checkpoint_every, progress=progress,
    )  # fmt: skip
    composer = None
    if compositional:
        composer = Compositional(
            m, layers=list(layers), quantile=quantile, batch_size=batch_size, device=device,
            max_length=3 if formula_length is None else formula_length,
            beam=5 if beam is None else beam,
            store=store, checkpoint_every=checkpoint_every, progress=progress,
        )  # fmt: skip
    elif formula_length is not None or beam is not None:
        raise UserInputError("--formula-length and --beam go with --compositional")
    concepts = concepts_dir(store)
    if dataset is not None:
        ds = BrodenDataset(dataset, cache_dir=concepts)
        method.prepare(ds)  # --net2vec concepts of the dataset
        if composer is not None:
            composer.prepare(ds)  # its memory estimate, with the dataset's concepts
    else:
        ds = None
        _check_synthetic_concepts(net2vec)
    outputs.folder(concepts, "concept-data folder")  # the synthetic dataset, label caches
    with outputs.writing():
        if ds is None:
            size = scene_size(m.preprocessing)
            ds = concept_dataset(concepts, n_images, size, seed, progress=progress)
        with run_on(engine, ray_address) as ex:
            method.executor = ex
            results = method.run(ds)
        formulas = composer.run(ds) if composer is not None else None
        extra = {
            "model_file": str(m.path), "model_sha256": m.sha256, "dataset": str(ds.root),
            "dataset_digest": ds.digest, "preprocessing": m.preprocessing.to_dict(),
            "parameters": method.resolved(), "from_store": method.from_store,
            "timings": results.timings,
        }  # fmt: skip
        if composer is not None and formulas is not None:
            extra["compositional"] = {
                "parameters": composer.resolved(), "from_store": composer.from_store,
                "timings": formulas.timings,
            }  # fmt: skip
        paths = write_dissection(results, out_dir, model=m, dataset=ds, extra=extra,
                                 compositional=formulas)  # fmt: skip
    lines = []
    for r in results:
        s = r.summary()
        lines.append(
            f"{r.alias}: {s['detectors']}/{s['units']} units covering {s['unique_concepts']} "
            f"concepts with IoU >= {r.iou_threshold:g}"
        )
        for item in r.extra.get("net2vec", []):
            lines.append(
                f"  net2vec {item['name']}: set IoU {item['set_iou']:.3f} "
                f"(best single unit {item['best_unit']}: {item['best_unit_iou']:.3f})"
            )
        if formulas is not None:
            c = formulas.layer(r.layer).summary()
            lines.append(
                f"  compositional: {c['compositional_units']}/{c['units']} units explained "
                f"better by a formula of up to {c['max_length']} concepts (mean IoU "
                f"{c['mean_iou']:.3f}, single concepts {c['mean_single_iou']:.3f})"
            )
    source = "answered from the store" if method.from_store else "computed"
    if engine == "local" and not method.from_store and method.activations == "recompute":
        source += " (activations recomputed in pass 2: the disk had no room for the spill)"
    if engine == "local" and not method.from_store and method.activations == "device":
        source += " (activations kept on the GPU: the forward pass ran again there for pass 2)"
    if engine == "ray" and not method.from_store:
        source += (
            f" on Ray ({getattr(method, 'shards', 0)} shards; activations "
            f"{'spilled on the workers' if getattr(method, 'activations', '') == 'spill' else 'recomputed in pass 2'})"
        )
    if composer is not None and formulas is not None:
        source += "; formulas " + ("answered from the store" if composer.from_store else "computed")
    lines.append(f"{source}; reports in {out_dir} ({len(paths)} files)")
    shown: Any = results if formulas is None else _WithFormulas(results, formulas, composer)
    report(method, shown, as_json=as_json, lines=lines, out_dir=out_dir,
           files=list(paths.values()))  # fmt: skip


class _WithFormulas:
    """The dissection's summary with the compositional explanations' (``--json``)."""

    def __init__(self, dissection: Any, formulas: Any, composer: Any) -> None:
        self.dissection, self.formulas, self.composer = dissection, formulas, composer

    def summary(self) -> dict[str, Any]:
        return {
            **self.dissection.summary(),
            "compositional": {"from_store": self.composer.from_store, **self.formulas.summary()},
        }


def _check_synthetic_concepts(wanted: tuple[str, ...]) -> None:
    """``--net2vec`` concepts without ``--dataset``: each must be a concept of the synthetic
    vocabulary, checked before the synthetic dataset is made (the same message as for a
    dataset: a number, or a name with the closest names suggested)."""
    if not wanted:
        return
    from pyanalyzer.data.broden import synth_concept_names
    from pyanalyzer.methods.dissection import concept_number

    names = synth_concept_names()
    for concept in wanted:
        concept_number(names, concept)
