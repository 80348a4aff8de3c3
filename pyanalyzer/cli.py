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
        type=click.Path(),
        envvar="PYANALYZER_STORE",
        help="Result store (default $PYANALYZER_STORE, else ~/.cache/pyanalyzer/store).",
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
    from importlib.metadata import PackageNotFoundError, version

    # (import name, distribution name): onnx2torch has no __version__, Pillow imports as PIL.
    for mod, dist in (
        ("numpy", "numpy"), ("onnx", "onnx"), ("onnxruntime", None), ("onnx2torch", "onnx2torch"),
        ("torch", "torch"), ("torchvision", "torchvision"), ("h5py", "h5py"),
        ("click", "click"), ("PIL", "Pillow"),
    ):  # fmt: skip
        name = dist or mod
        try:
            module = __import__(mod)
        except Exception as exc:  # a broken install is what doctor is for
            rep[name] = f"NOT AVAILABLE ({type(exc).__name__}: {exc})"
            continue
        try:
            rep[name] = version(dist) if dist else module.__version__
        except PackageNotFoundError:
            rep[name] = getattr(module, "__version__", "?")
    try:
        rep["onnxruntime build"] = f"onnxruntime-gpu {version('onnxruntime-gpu')}"
    except PackageNotFoundError:
        rep["onnxruntime build"] = "onnxruntime (CPU build)"
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


# ---- dissection ---------------------------------------------------------------------------


def concepts_dir(store_path: str | None):
    """Where concept datasets and their decoded-label caches live: beside the store."""
    from pathlib import Path

    from pyanalyzer.store import Store

    return Path(Store(store_path).path).parent / "concepts"


def default_concept_dataset(
    store_path: str | None, n_images: int, size: int, seed: int, progress: bool
):
    """The synthetic Broden-format dataset used when no --dataset is given (made once)."""

    from pyanalyzer.data.broden import BrodenDataset, synth_dataset

    folder = concepts_dir(store_path) / f"synth-n{n_images}-s{size}-seed{seed}"
    if not (folder / "index.csv").is_file():
        click.echo(f"making the synthetic concept dataset {folder} ...", err=True)
        synth_dataset(
            folder, n_images=n_images, size=size, seed=seed, progress=progress, overwrite=True
        )
    return BrodenDataset(folder)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option(
    "--dataset",
    type=click.Path(),
    help="A Broden-format dataset folder (default: synthetic concepts made on the fly).",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    required=True,
    metavar="NAME",
    help="Layer to dissect (alias or ONNX name); repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for the CSV, JSON and HTML reports.",
)
@click.option(
    "--quantile",
    type=float,
    default=0.005,
    show_default=True,
    help="Top fraction of each unit's activations that counts as firing.",
)
@click.option(
    "--iou-threshold",
    type=float,
    default=0.04,
    show_default=True,
    help="A unit is a detector when its best IoU exceeds this.",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--top-k", type=int, default=10, show_default=True, help="Strongest images kept per unit."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the IoU tally runs.",
)
@click.option(
    "--net2vec",
    "net2vec",
    multiple=True,
    metavar="CONCEPT",
    help="Learn a Net2Vec filter combination for this concept (name or number); repeatable.",
)
@click.option(
    "--n-images",
    type=int,
    default=1000,
    show_default=True,
    help="Images of the default synthetic dataset.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the default synthetic dataset."
)
@click.option(
    "--checkpoint-every",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between resumable checkpoints in the store (0: every batch).",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@preprocessing_options
@store_option
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
    n_images: int,
    seed: int,
    checkpoint_every: float,
    no_progress: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Network dissection: align every unit of the chosen layers with concepts by IoU.

    Bau et al., "Network Dissection", CVPR 2017 (Net2Vec: Fong & Vedaldi, CVPR 2018). Writes
    per layer a tally CSV with NetDissect's columns, an HTML page ("X/Y units covering Z
    concepts with IoU >= t", detectors per category, each unit's top images with its mask),
    and summary.json. Results go to the store: the same command answers from it, and a killed
    run started again resumes from its last checkpoint.
    """  # fmt: skip
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.dissection import Dissection, unit_image_provider
    from pyanalyzer.report.dissection import write_dissection_report
    from pyanalyzer.store import Store

    progress = not no_progress
    if quantile <= 0 or quantile >= 1:
        raise UserInputError(f"--quantile must be in (0, 1), got {quantile}")
    m = open_model(model, kw, check_parity=False)
    for name in layers:
        m.spatial_layer(name)
    if dataset is not None:
        ds = BrodenDataset(dataset, cache_dir=concepts_dir(store_path))
    else:
        if n_images < 1:
            raise UserInputError(f"--n-images must be at least 1, got {n_images}")
        size = max(32, min(256, max(m.preprocessing.input_size)))
        ds = default_concept_dataset(store_path, n_images, size, seed, progress)
    store = Store(store_path)
    method = Dissection(
        m, ds, quantile=quantile, iou_threshold=iou_threshold, batch_size=batch_size,
        top_k=top_k, device=device, store=store, checkpoint_every=checkpoint_every,
        net2vec=net2vec, progress=progress,
    )  # fmt: skip
    results = method.run(layers)
    providers = {r.alias: unit_image_provider(m, ds, r) for r in results}
    extra = {
        "model_file": str(m.path), "model_sha256": m.sha256, "dataset": str(ds.root),
        "dataset_digest": ds.digest, "preprocessing": m.preprocessing.to_dict(),
        "parameters": method.params(layers), "from_store": method.from_store,
        "timings": method.timings,
    }  # fmt: skip
    paths = write_dissection_report(out_dir, results, lambda alias: providers[alias], extra)
    for r in results:
        s = r.summary()
        click.echo(
            f"{r.alias}: {s['detectors']}/{s['units']} units covering {s['unique_concepts']} "
            f"concepts with IoU >= {r.iou_threshold:g}"
        )
        for item in r.extra.get("net2vec", []):
            click.echo(
                f"  net2vec {item['name']}: set IoU {item['set_iou']:.3f} "
                f"(best single unit {item['best_unit']}: {item['best_unit_iou']:.3f})"
            )
    source = "answered from the store" if method.from_store else "computed"
    click.echo(f"{source}; reports in {out_dir} ({len(paths)} files)")


# ---- deconvnet ----------------------------------------------------------------------------


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--layer", required=True, metavar="NAME", help="Layer (alias or ONNX name).")
@click.option(
    "--unit", "units", required=True, metavar="N|A-B|all", help="Unit(s): 5, 0-7, 1,4,9 or all."
)
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
    type=int,
    default=200,
    show_default=True,
    help="Synthetic scenes scanned when neither --image nor --images is given.",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the PNGs."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the unpooling kernel runs.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@preprocessing_options
@store_option
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
    no_progress: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Project units back to pixels: DeconvNet, guided backprop or saliency.

    Zeiler & Fergus 2014 (deconv), Springenberg et al. 2015 (guided), Simonyan et al. 2013
    (saliency). With --image, writes the image beside each unit's projection. Otherwise scans
    --images (or synthetic scenes) for each unit's --top-k strongest activations, one per
    image, and writes a montage per unit of the receptive-field patches beside their
    projections, plus one per layer. Results are cached in the store.
    """  # fmt: skip
    import numpy as np

    from pyanalyzer.data.images import ArraySource, ImageFiles, ImageFolder, files_digest
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.deconvnet import Deconvolution, parse_units, top_patch_projections
    from pyanalyzer.report.montage import grid, save_png, upscale
    from pyanalyzer.store import Key, Store

    if image and images:
        raise UserInputError("give --image or --images, not both")
    if top_k < 1:
        raise UserInputError(f"--top-k must be at least 1, got {top_k}")
    m = open_model(model, kw, check_parity=False)
    info = m.spatial_layer(layer)
    chosen = parse_units(units, info.channels)
    Deconvolution(m, method, device)  # fails now: no gradients, unknown method, no CUDA
    spec = m.preprocessing
    store = Store(store_path)
    params: dict[str, Any] = {"layer": info.name, "units": chosen, "method": method,
                              "preprocessing": spec.to_dict()}  # fmt: skip
    out = os.path.abspath(out_dir)
    written: list[str] = []
    if image:
        source = ImageFiles([image])
        pixels = source.pixels(0, spec)  # unreadable image: one line, nothing written
        params.update(image=files_digest([image]), mode=mode, k=top_k)
        key = Key.make(m.sha256, "deconv/image", params)
        entry = store.get(key)
        if entry is None:
            walker = Deconvolution(m, method, device)
            x = spec.normalize(pixels[None])
            views = np.stack(
                [walker.run(x, info.name, u, mode=mode, k=top_k).images()[0] for u in chosen]
            )
            store.put(key, {"projections": views}, params=params, model_file=m.path.name,
                      preprocessing=spec.to_dict())  # fmt: skip
        else:
            views = entry["projections"]
        rgb = pixels if pixels.shape[-1] == 3 else np.repeat(pixels, 3, axis=-1)
        tiles = [upscale(rgb)]
        for u, v in zip(chosen, views, strict=True):
            pair = grid([upscale(rgb), upscale(v)], cols=2, labels=["image", f"unit {u} {method}"])
            written.append(
                str(save_png(os.path.join(out, f"{info.alias}_unit{u:04d}_{method}.png"), pair))
            )
            tiles.append(upscale(v))
        labels = ["image"] + [f"unit {u}" for u in chosen]
        written.append(str(save_png(os.path.join(out, f"{info.alias}_{method}.png"),
                                    grid(tiles, cols=min(len(tiles), 8), labels=labels))))  # fmt: skip
    else:
        from pyanalyzer.methods.patches import TopPatches

        if images:
            source = ImageFolder(images)
            params["images"] = files_digest(source.paths)
        else:
            from pyanalyzer.data import synthetic

            if n_images < 1:
                raise UserInputError(f"--n-images must be at least 1, got {n_images}")
            size = max(32, min(256, max(spec.input_size)))
            arr = np.stack([s.image for s in synthetic.generate(n_images, seed=0, size=size)])
            source = ArraySource(arr)
            params["images"] = f"synthetic n={n_images} size={size} seed=0"
        params["k"] = top_k
        key = Key.make(m.sha256, "deconv/patches", params)
        result = TopPatches(m, info.name, k=top_k, progress=not no_progress).run(source)
        entry = store.get(key)
        if entry is None:
            projections = top_patch_projections(
                m, result, source, chosen, method=method, device=device
            )
            arrays = {f"unit{u:04d}": np.stack(v) if v else np.zeros((0, 1, 1, 3), np.uint8)
                      for u, v in projections.items()}  # fmt: skip
            arrays.update(values=result.values, images=result.images, positions=result.positions)
            store.put(
                key, arrays, params=params, model_file=m.path.name, preprocessing=spec.to_dict()
            )
        else:
            projections = {u: list(entry[f"unit{u:04d}"]) for u in chosen}
        written = [str(p) for p in result.save(out, source, chosen, projections=projections)]
    click.echo(
        f"{info.alias}: {len(chosen)} unit(s), {method}; wrote {len(written)} PNG(s) to {out_dir}"
    )


# ---- activation maximization ---------------------------------------------------------------

COLOR_IMAGES = 1000
"""``actmax --color-from``: the colour covariance is estimated from at most this many images."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option(
    "--layer", metavar="NAME", help="Layer (alias or ONNX name); optional for --objective class."
)
@click.option(
    "--units",
    default="all",
    show_default=True,
    metavar="N|A-B|all",
    help="Units (classes for --objective class, rows of --direction for direction).",
)
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
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the PNGs."
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@preprocessing_options
@store_option
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
    out_dir: str,
    no_progress: bool,
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

    from pyanalyzer.data.images import ImageFolder, files_digest
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.actmax import (
        ActivationMaximization,
        ActmaxResult,
        Rendering,
        color_correlation_from_images,
        load_directions,
    )
    from pyanalyzer.store import Key, Store

    if direction_file is not None and objective != "direction":
        raise UserInputError("--direction is used with --objective direction only")
    if objective == "direction" and direction_file is None:
        raise UserInputError("--objective direction needs --direction FILE (.npy or text)")
    if color_from is not None and param != "fft":
        raise UserInputError(
            "--color-from applies to --param fft (the pixel one has no colour basis)"
        )
    directions = None if direction_file is None else load_directions(direction_file)
    m = open_model(model, kw, check_parity=False)
    color = None
    if color_from is not None:
        color = color_correlation_from_images(
            ImageFolder(color_from), m.preprocessing, max_images=COLOR_IMAGES
        )
    method = ActivationMaximization(
        m, objective=objective, param=param, regularizers=regularizers, steps=steps, size=size,
        seed=seed, batch=not one_by_one, batch_size=batch_size, progress=not no_progress,
        directions=directions, start=start, color=color,
    )  # fmt: skip
    source = ImageFolder(reference) if reference else None
    params = method.params(layer, units)
    if source is not None:
        params["reference"] = files_digest(source.paths)
    store = Store(store_path)
    key = Key.make(m.sha256, "actmax", params)
    entry = store.get(key)
    resumed = 0
    if entry is not None:
        result = ActmaxResult.from_arrays(entry)
    else:
        # Every finished batch is checkpointed, so an interrupted run resumes where it stopped.
        meta = {"model_file": m.path.name, "preprocessing": m.preprocessing.to_dict()}
        partial = store.get(key.partial())
        resume = None
        if partial is not None:
            resume = Rendering(
                pixels=np.asarray(partial["pixels"]), start=np.asarray(partial["start"]),
                reached=np.asarray(partial["reached"]), curve=np.asarray(partial["curve"]),
            )  # fmt: skip
            resumed = len(resume.pixels)

        def checkpoint(done: Rendering) -> None:
            if len(done.pixels) < len(params["units"]):  # the last one is the result itself
                arrays = {"pixels": done.pixels, "start": done.start, "reached": done.reached,
                          "curve": done.curve}  # fmt: skip
                store.put(key.partial(), arrays, params=params, **meta)

        result = method.run(layer, units, reference=source, resume=resume, on_batch=checkpoint)
        with store.transaction() as tx:
            tx.put(key, result.to_arrays(), params=params, **meta)
            tx.remove(key.partial())
    files = result.save(out_dir)
    rel = result.relative
    noun = {"class": "class(es)", "direction": "direction(s)"}.get(objective, "unit(s)")
    click.echo(
        f"{result.alias}: {len(result.units)} {noun}, {objective}; mean activation reached "
        f"{float(result.reached.mean()):.3g} (start image {float(result.start.mean()):.3g}"
        + (f", {float(np.nanmean(rel)):.2f}x the reference maximum" if rel is not None else "")
        + f"); {len(files)} PNG(s) in {out_dir}"
        + (" (from the store)" if entry is not None else "")
        + (f" ({resumed} resumed from a checkpoint)" if resumed else "")
    )


# ---- network inversion ---------------------------------------------------------------------


class _ModelFirstGroup(click.Group):
    """``invert MODEL ...`` runs the inversion; ``invert train MODEL ...`` trains a decoder."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_ModelFirstGroup)
def invert() -> None:
    """Network inversion: reconstruct an image from a layer's features.

    \b
    pyanalyzer invert MODEL --image FILE --layer NAME [--layer NAME ...] [--method optim|upconv] --out DIR
    pyanalyzer invert train MODEL --layer NAME [--images DIR]

    Mahendran & Vedaldi, CVPR 2015 (optim: regularised optimisation); Dosovitskiy & Brox,
    CVPR 2016 (upconv: a trained up-convolutional decoder, kept in the store).
    The options of the first form: `pyanalyzer invert MODEL --help`.
    """


@invert.command("run", hidden=True)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--image", required=True, type=click.Path(), help="The image to reconstruct.")
@click.option(
    "--layer",
    "layers",
    multiple=True,
    required=True,
    metavar="NAME",
    help="Layer(s) to invert from; repeatable (one strip).",
)
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
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for the PNGs and metrics.json.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@preprocessing_options
@store_option
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
    no_progress: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Reconstruct --image from each --layer; writes a strip PNG and metrics.json."""  # fmt: skip
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods.inversion import (
        find_decoder,
        layer_sweep,
        load_images,
        resolve_layers,
    )
    from pyanalyzer.report.montage import save_png
    from pyanalyzer.store import Store

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
    m = open_model(model, kw, check_parity=False)
    infos = resolve_layers(m, layers)
    img = load_images(m, [image])[0]  # unreadable image: one line, nothing written
    store = Store(store_path)
    methods = ("optim", "upconv") if method == "both" else (method,)
    decoders = {}
    if "upconv" in methods:
        missing = []
        for info in infos:
            dec = find_decoder(store, m, info.name)
            if dec is None:
                missing.append(info.alias)
            else:
                decoders[info.name] = dec
        if missing:
            where = f" --store {store_path}" if store_path else ""
            runs = "; ".join(
                f"`pyanalyzer invert train {model} --layer {alias}{where}`" for alias in missing
            )
            raise UserInputError(
                f"no decoder trained for {', '.join(missing)} of this model in {store.path}: "
                f"run {runs} first"
            )
    options: dict[str, Any] = {"optimizer": optimizer, "seed": seed, "jitter": jitter}
    if steps is not None:
        options["steps"] = steps
    sweep = layer_sweep(m, img, [i.name for i in infos], methods=methods, decoders=decoders,
                        store=store, progress=not no_progress, **options)  # fmt: skip
    out = os.path.abspath(out_dir)
    os.makedirs(out, exist_ok=True)
    save_png(os.path.join(out, "inversion.png"), sweep.strip)
    for name, result in sweep.results.items():
        for j, alias in enumerate(result.aliases):
            save_png(os.path.join(out, f"{alias}_{name}.png"), result.uint8()[0, j])
    summary = sweep.summary()
    tmp = os.path.join(out, ".metrics.json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(tmp, os.path.join(out, "metrics.json"))
    for name, per_layer in summary.items():
        for alias, errs in per_layer.items():
            click.echo(
                f"{name:6s} {alias:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in errs.items())
            )
    click.echo(f"strip and reconstructions in {out_dir}")


@invert.command("train")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option(
    "--layer", required=True, metavar="NAME", help="The layer whose features the decoder inverts."
)
@click.option(
    "--images", type=click.Path(), help="Training images (default: synthetic concept scenes)."
)
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the method's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@preprocessing_options
@store_option
def invert_train(
    model: str,
    layer: str,
    images: str | None,
    epochs: int | None,
    seed: int,
    no_progress: bool,
    store_path: str | None,
    **kw: Any,
) -> None:
    """Train an UpconvNet decoder for --layer and keep it in the store (Dosovitskiy & Brox)."""  # fmt: skip
    from pyanalyzer.data.images import ImageFolder
    from pyanalyzer.methods.inversion import resolve_layers, train_upconv
    from pyanalyzer.store import Store

    m = open_model(model, kw, check_parity=False)
    (info,) = resolve_layers(m, layer)
    source = ImageFolder(images) if images else None
    options: dict[str, Any] = {"seed": seed}
    if epochs is not None:
        options["epochs"] = epochs
    dec = train_upconv(
        m, info.name, source, store=Store(store_path), progress=not no_progress, **options
    )
    click.echo(f"decoder for {info.alias} ready in {Store(store_path).path} ({dec.describe()})")


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


def _attach_subcommands() -> None:
    from pyanalyzer.cli_concepts import concepts

    cli.add_command(concepts)


_attach_subcommands()


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
    except click.exceptions.Abort:  # click's form of Ctrl-C (KeyboardInterrupt) and EOF
        click.echo("interrupted", err=True)
        sys.exit(130)
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
